"""The accounts example under real servers, driven over HTTP by several browsers at once:
uvicorn (ASGI, FastAPI, sync endpoints in its thread pool) and gunicorn (WSGI, Flask, two
worker processes of four threads: a browser's next request often lands in another process, so
only the cookie carries its commits). Readers lag (PostgreSQL 50 ms, MariaDB 1 s); every
request must read what its browser wrote before."""

from __future__ import annotations

import json
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
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config

from aurora_access import Database
from aurora_access.local import LocalCluster, free_port

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


def _wait_serving(url: str, process: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}{path}", timeout=1)
            return
        except httpx.TransportError:
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)


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
    _wait_serving(url, process, "/stats")
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
    total["workers"] = len(by_pid)
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


class OutcomeUnknown(Exception):
    """A request's COMMIT was cut off by the failover: its outcome is unknown."""


class ShopBrowser:
    """One browser on the Flask shop: an account, then round after round of reading its own
    writes (profile, password, wish lists, cart, checkout, order history), counting what it
    saw in ``outcomes``. A 503 (the writer failed over under the request, nothing of it
    committed) is sent again, as a client would; a 500 whose commit's outcome is unknown (a
    request session's COMMIT cut off) ends the round, whose state the browser no longer knows."""

    def __init__(self, url: str, outcomes: Counter[str],
                 writes: list[tuple[float, str]] | None = None) -> None:
        self.client = httpx.Client(base_url=url, timeout=60)
        self.outcomes = outcomes
        self.writes = [] if writes is None else writes

    def run(self, stop: threading.Event) -> None:
        with self.client:
            email = f"{uuid.uuid4()}@example.com"
            customer = self.send("POST", "/customers",
                                 json={"email": email, "name": "B", "password": "p"})
            login = self.send("POST", "/login", json={"email": email, "password": "p"})
            auth = {"Authorization": f"Bearer {login.json()['api_key']}"}
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    self.round(n, email, customer.json()["id"], auth)
                except OutcomeUnknown:
                    self.outcomes["commit cut off, outcome unknown (500)"] += 1

    def round(self, n: int, email: str, customer_id: int, auth: dict[str, str]) -> None:
        send, expect = self.send, self.expect
        expect("profile read", send("GET", "/me", headers=auth).status_code == 200)
        send("PUT", "/me/password", json={"password": f"p{n}"}, headers=auth)
        login = send("POST", "/login", json={"email": email, "password": f"p{n}"})
        expect("login with the new password", login.status_code == 200)
        list_id = send("POST", "/me/lists", json={"name": "l"}, headers=auth).json()["id"]
        expect("item on a new list", send("POST", f"/me/lists/{list_id}/items",
               json={"product_id": 1 + n % 40}, headers=auth).status_code == 201)
        send("DELETE", f"/me/lists/{list_id}", headers=auth)
        expect("deleted list refused", send("POST", f"/me/lists/{list_id}/items",
               json={"product_id": 2}, headers=auth).status_code == 404)
        send("POST", f"/customers/{customer_id}/cart/items", json={"product_id": 1 + n % 40})
        order = send("POST", f"/customers/{customer_id}/checkout",
                     json={"order_id": str(uuid.uuid4())}).json()["order_id"]
        history = send("GET", f"/customers/{customer_id}/orders").json()
        expect("order in the history", order in [o["id"] for o in history])

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for _ in range(50):
            response = self.client.request(method, path, **kwargs)
            if response.status_code == 503:
                self.outcomes["503 sent again"] += 1
                time.sleep(0.1)
                continue
            if response.status_code == 500 and response.json().get("outcome") == "unknown":
                raise OutcomeUnknown
            if response.status_code >= 500:
                self.outcomes[f"error: {method} {path} {response.status_code}"] += 1
            elif method != "GET":
                self.writes.append((time.monotonic(), response.headers.get("X-Served-By", "")))
            return response
        raise AssertionError(f"{method} {path}: 503 fifty times")

    def expect(self, what: str, ok: bool) -> None:
        self.outcomes[what if ok else f"stale: {what}"] += 1


# id: (worker class, workers, app, --preload); gthread with --preload (measured in RESULTS.md,
# issue 12) is left out of the suite for time: the sync workers cover --preload's fork
GUNICORN_SHAPES = {
    "gthread": ("gthread", 2, "flask_shop:create_app()", False),
    "sync, preloaded": ("sync", 4, "flask_shop.wsgi:app", True),
}


@pytest.mark.parametrize("shape", list(GUNICORN_SHAPES))
def test_the_flask_shop_under_gunicorn_through_failovers(tmp_path: Path, shape: str) -> None:
    """gunicorn serving the Flask-SQLAlchemy shop to 6 browsers while the writer fails over
    twice: no stale read, no error but the 503s the clients send again (a request whose
    writer failed under it: nothing of it committed). Preloaded, the app and its Database are
    made and used in gunicorn's master before it forks the workers (``flask_shop.wsgi``)."""
    worker_class, workers, app_path, preload = GUNICORN_SHAPES[shape]
    sys.path.insert(0, str(EXAMPLES))
    try:
        import flask_shop  # noqa: PLC0415 - an example, from examples/
        import shop_core  # noqa: PLC0415
        from flask_shop.extensions import db  # noqa: PLC0415
    finally:
        sys.path.remove(str(EXAMPLES))
    binds = json.dumps({"analytics": f"sqlite:///{tmp_path / 'analytics.db'}"})
    with LocalCluster(readers=2, replica_lag_ms=50, endpoint_delay_s=5, port=free_port()) as c:
        database = Database.from_env(c.env())
        try:
            shop_core.create_demo_data(database)
            app = flask_shop.create_app({"SQLALCHEMY_BINDS": json.loads(binds)}, database)
            with app.app_context():
                db.create_all()
        finally:
            database.close()
        port = _free_tcp_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--threads", "4",
             "--worker-class", worker_class, "--bind", f"127.0.0.1:{port}", "--log-level",
             "warning", *(["--preload"] if preload else []), app_path],
            env={**os.environ, **c.env(), "PYTHONPATH": str(EXAMPLES),
                 "FLASK_SQLALCHEMY_BINDS": binds}, cwd=EXAMPLES,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_serving(url, process, "/stats")
            outcomes: Counter[str] = Counter()
            writes: list[tuple[float, str]] = []  # (when, by which worker) of writes served
            stop = threading.Event()
            browsers = [threading.Thread(target=ShopBrowser(url, outcomes, writes).run,
                                         args=(stop,)) for _ in range(6)]
            for browser in browsers:
                browser.start()
            reports, crashes = [], []
            for _ in range(2):
                time.sleep(2)
                crashes.append(time.monotonic())
                reports.append(c.failover())
            time.sleep(2)
            stop.set()
            for browser in browsers:
                browser.join()
            stats = worker_stats(url, workers)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            output = process.communicate(timeout=30)[0].decode()
    recovery = {pid: [round(min((t for t, p in writes if p == pid and t >= crash),
                                default=float("nan")) - crash, 3) for crash in crashes]
                for pid in sorted({p for _, p in writes})}
    print(f"\ngunicorn {shape} through 2 failovers "
          f"({'; '.join(str(r) for r in reports)}): {dict(outcomes)}; crash -> first write "
          f"served, per worker (s): {recovery}; stats summed over workers: {dict(stats)}")
    assert not [k for k in outcomes if k.startswith(("stale", "error"))], output[-5000:]
    assert outcomes["order in the history"] > 20
    assert stats["failovers"] >= 2
    assert stats["reads_on_readers"] > 0
    assert "Traceback" not in output, output
