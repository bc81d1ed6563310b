"""``commit(); return obj`` endpoint latency: aurora-access against a plain single-engine app.

Run: .venv/bin/python benchmarks/web_commit_latency.py [--requests 60] [--rounds 10]
                                                        [--lags 0,50,200] [--engine postgresql]

For each replica lag: a local cluster (1 writer, 2 readers lagging that much), the accounts
example's schema (Alembic), and two uvicorn processes (one worker each) serving the *same*
endpoint code (``examples/accounts/fastapi_app.py``: ``session.add(user); session.commit();
return user``, a sync endpoint whose returned object FastAPI reloads in another context):

- plain: the router with its session dependency overridden by ``Session(engine)`` on one engine
  through the cluster endpoint (what the application had before aurora-access);
- aurora-access: the example as it ships (``Database.from_env(session_class=Session)``,
  ``CommitTokenMiddleware``, which also sets the cookie and header of the commit).

One client per server (each keeps its cookies, as a browser would), POST /users timed end to
end; the servers take turns in blocks of ``--requests`` in a shuffled order, ``--rounds``
blocks each. Reported: median and p90 per server and the ratio of medians, per lag.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from alembic import command
from alembic.config import Config

from aurora_access import Database
from aurora_access.local import LocalCluster, free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def plain_app() -> object:
    """For ``uvicorn --factory``: the example's endpoints on one plain engine (PLAIN_URL)."""
    from accounts import fastapi_app  # noqa: PLC0415
    from fastapi import FastAPI  # noqa: PLC0415 - in the server process only
    from sqlalchemy import create_engine  # noqa: PLC0415
    from sqlmodel import Session  # noqa: PLC0415

    engine = create_engine(os.environ["PLAIN_URL"])

    def plain_session() -> Iterator[Session]:
        with Session(engine) as session:
            yield session

    app = FastAPI()
    app.include_router(fastapi_app.router)
    app.dependency_overrides[fastapi_app.get_session] = plain_session
    return app


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def uvicorn(factory: str, env: dict[str, str]) -> Iterator[str]:
    port = _port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", factory, "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        env={**os.environ, **env, "PYTHONPATH": f"{EXAMPLES}:{ROOT / 'benchmarks'}"},
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/docs", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{factory} did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def create_users(client: httpx.Client, count: int) -> list[float]:
    timings = []
    for _ in range(count):
        email = f"{uuid.uuid4()}@example.com"
        began = time.perf_counter()
        response = client.post("/users", json={"email": email, "password": "x"})
        timings.append(time.perf_counter() - began)
        if response.status_code != 201 or response.json()["email"] != email:
            raise SystemExit(f"{client.base_url}: {response.status_code} {response.text}")
    return timings


def measure(engine: str, lag_ms: int, requests: int, rounds: int) -> dict[str, list[float]]:
    with LocalCluster(engine=engine, readers=2, replica_lag_ms=lag_ms,
                      port=free_port()) as cluster:
        db = Database.from_env(cluster.env())
        try:
            config = Config(str(EXAMPLES / "accounts" / "alembic.ini"))
            config.attributes["db"] = db
            sys.path.insert(0, str(EXAMPLES))
            command.upgrade(config, "head")
        finally:
            db.close()
        env = {**cluster.env(), "PLAIN_URL": cluster.app_url()}
        with uvicorn("web_commit_latency:plain_app", env) as plain_url, \
                uvicorn("accounts.fastapi_app:app_from_env", env) as aurora_url, \
                httpx.Client(base_url=plain_url) as plain, \
                httpx.Client(base_url=aurora_url) as aurora:
            clients = {"plain": plain, "aurora-access": aurora}
            for client in clients.values():
                create_users(client, 20)  # warm pools, imports, prepared statements
            timings: dict[str, list[float]] = {name: [] for name in clients}
            for _ in range(rounds):
                order = list(clients)
                random.shuffle(order)
                for name in order:
                    timings[name] += create_users(clients[name], requests)
            return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--lags", default="0,50,200")
    parser.add_argument("--engine", choices=["postgresql", "mysql"], default="postgresql")
    args = parser.parse_args()
    print(f"{args.engine}: POST /users (commit; return user) through uvicorn, "
          f"{args.rounds} rounds x {args.requests} requests per server, interleaved")
    print("| replica lag | plain p50 / p90 ms | aurora-access p50 / p90 ms | "
          "aurora-access / plain |")
    print("|---|---|---|---|")
    for lag in (int(x) for x in args.lags.split(",")):
        timings = measure(args.engine, lag, args.requests, args.rounds)
        plain, ours = (sorted(timings[k]) for k in ("plain", "aurora-access"))
        p90 = lambda t: t[int(len(t) * 0.9)] * 1000  # noqa: E731
        ratio = statistics.median(ours) / statistics.median(plain)
        print(f"| {lag} ms | {statistics.median(plain) * 1000:.2f} / {p90(plain):.2f} | "
              f"{statistics.median(ours) * 1000:.2f} / {p90(ours):.2f} | {ratio:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
