"""The accounts example under real servers, driven over HTTP by several browsers at once:
uvicorn (ASGI, FastAPI, sync endpoints in its thread pool) and gunicorn (WSGI, Flask, two
worker processes of four threads: a browser's next request often lands in another process, so
only the cookie carries its commits). Readers lag (PostgreSQL 50 ms, MariaDB 1 s); every
request must read what its browser wrote before."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.config import Config

from aurora_access import Database
from aurora_access.local import LocalCluster

EXAMPLES = Path(__file__).parent.parent / "examples"
BROWSERS = 4
ROUNDS = 12  # per browser; each round is 8 requests


@pytest.fixture(scope="module")
def migrated(engine_cluster: LocalCluster) -> LocalCluster:
    db = Database.from_env(engine_cluster.env())
    try:
        config = Config(str(EXAMPLES / "accounts" / "alembic.ini"))
        config.attributes["db"] = db
        sys.path.insert(0, str(EXAMPLES))
        try:
            command.upgrade(config, "head")
        finally:
            sys.path.remove(str(EXAMPLES))
    finally:
        db.close()
    return engine_cluster


def _free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(params=["uvicorn", "gunicorn"])
def server(request: pytest.FixtureRequest, migrated: LocalCluster) -> Iterator[str]:
    """A server process on the example; yields its base URL."""
    port = _free_tcp_port()
    if request.param == "uvicorn":
        argv = [sys.executable, "-m", "uvicorn", "--factory", "accounts.fastapi_app:app_from_env",
                "--workers", "2", "--port", str(port), "--log-level", "warning"]
    else:
        argv = [sys.executable, "-m", "gunicorn", "--workers", "2", "--threads", "4",
                "--worker-class", "gthread", "--bind", f"127.0.0.1:{port}",
                "--log-level", "warning", "accounts.flask_app:app_from_env()"]
    env = {**os.environ, **migrated.env(), "PYTHONPATH": str(EXAMPLES),
           "AURORA_RYW_WAIT_MS": "2000" if migrated.engine == "postgresql" else "0"}
    process = subprocess.Popen(argv, env=env, cwd=EXAMPLES, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/stats", timeout=1)
            break
        except httpx.TransportError:
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
    yield url
    os.killpg(process.pid, signal.SIGTERM)
    output = process.communicate(timeout=30)[0].decode()
    assert "Traceback" not in output, output


def browse(url: str, rounds: int, outcomes: Counter[str]) -> None:
    """One browser: sign up, then change its password and log in with it, add an item and
    delete it and list what is left, ``rounds`` times; counts every stale answer."""
    with httpx.Client(base_url=url, timeout=30) as client:
        email = f"{uuid.uuid4()}@example.com"
        created = client.post("/users", json={"email": email, "password": "p0"})
        outcomes["created" if created.status_code == 201 else "create failed"] += 1
        user_id = created.json()["id"]
        for n in range(1, rounds + 1):
            client.put(f"/users/{user_id}/password", json={"password": f"p{n}"})
            new = client.post("/login", json={"email": email, "password": f"p{n}"})
            old = client.post("/login", json={"email": email, "password": f"p{n - 1}"})
            outcomes["login ok" if new.status_code == 200 else "stale login"] += 1
            outcomes["old refused" if old.status_code == 401 else "stale old password"] += 1
            item = client.post(f"/users/{user_id}/items", json={"name": f"i{n}"})
            listed = client.get(f"/users/{user_id}/items").json()
            outcomes["item listed" if item.json()["id"] in [i["id"] for i in listed]
                     else "stale list"] += 1
            client.delete(f"/items/{item.json()['id']}")
            listed = client.get(f"/users/{user_id}/items").json()
            outcomes["deleted gone" if listed == [] else "stale delete"] += 1


def worker_stats(url: str, workers: int = 2) -> Counter[str]:
    """The library's counters summed over the server's worker processes (each request for
    them reaches one worker: asked until every worker has answered)."""
    by_pid: dict[int, dict[str, int]] = {}
    for _ in range(200):
        with httpx.Client() as client:  # a new connection: any worker may accept it
            stats = client.get(f"{url}/stats").json()
        by_pid[stats.pop("pid")] = stats
        if len(by_pid) == workers:
            break
    total: Counter[str] = Counter()
    for stats in by_pid.values():
        total.update(stats)
    return total


def test_browsers_never_read_stale_under_a_real_server(server: str,
                                                       migrated: LocalCluster) -> None:
    outcomes: Counter[str] = Counter()
    rounds = ROUNDS
    browsers = [threading.Thread(target=browse, args=(server, rounds, outcomes))
                for _ in range(BROWSERS)]
    began = time.monotonic()
    for browser in browsers:
        browser.start()
    for browser in browsers:
        browser.join()
    took = time.monotonic() - began
    requests = BROWSERS * (1 + 8 * rounds)
    stats = worker_stats(server)
    print(f"\n{server}: {requests} requests in {took:.1f} s, {dict(outcomes)}; "
          f"reads on readers / writer: {stats['reads_on_readers']} / {stats['reads_on_writer']}"
          f", read-your-writes waits {stats['ryw_waits']}, fallbacks {stats['ryw_fallbacks']}")
    assert outcomes == {"created": BROWSERS, "login ok": BROWSERS * rounds,
                        "old refused": BROWSERS * rounds, "item listed": BROWSERS * rounds,
                        "deleted gone": BROWSERS * rounds}
    if migrated.engine == "postgresql":  # MariaDB's 1 s lag: such reads go to the writer
        assert stats["reads_on_readers"] > 0
