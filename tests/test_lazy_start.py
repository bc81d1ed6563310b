"""Making a Database does no I/O; the first use connects; ``wait_ready`` waits for a writer."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from aurora_access import ConfigError, Database, NoWriterAvailable
from aurora_access.local import LocalCluster, free_port

EXAMPLES = Path(__file__).parent.parent / "examples"


def _library_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("aurora-access")]


def _nowhere() -> dict[str, str]:
    """A configuration whose every address refuses connections."""
    return {"AURORA_CLUSTER_ENDPOINT": "127.0.0.1", "AURORA_PORT": str(free_port(0)),
            "AURORA_DATABASE": "app", "AURORA_USER": "app", "AURORA_PASSWORD": "secret",
            "AURORA_CONNECT_TIMEOUT": "1"}


def test_making_a_database_connects_to_nothing() -> None:
    before = _library_threads()
    db = Database.from_env(_nowhere())
    try:
        assert _library_threads() == before
        assert str(db.url()).startswith("postgresql+psycopg://app@127.0.0.1:")
        assert "secret" not in repr(db) and "secret" not in str(db.url())
        with pytest.raises(NoWriterAvailable, match=r"127\.0\.0\.1"):
            db.topology()  # the first use
        with pytest.raises(NoWriterAvailable), db.session() as s:
            s.execute(text("SELECT 1"))
        assert _library_threads() == before  # a failed start leaves nothing running
    finally:
        db.close()


def test_a_bad_configuration_still_fails_at_once() -> None:
    with pytest.raises(ConfigError, match="AURORA_PORT"):
        Database.from_env({**_nowhere(), "AURORA_PORT": "eighty"})


def test_wait_ready_gives_up_with_the_last_error() -> None:
    db = Database.from_env(_nowhere())
    began = time.monotonic()
    with pytest.raises(NoWriterAvailable, match=r"within 1\.5 s.*127\.0\.0\.1"):
        db.wait_ready(timeout=1.5)
    assert 1.5 <= time.monotonic() - began < 4
    db.close()


def test_wait_ready_waits_for_a_cluster_that_starts_later() -> None:
    """A pre-start script: the application starts before its database does."""
    cluster = LocalCluster(readers=1, port=free_port(1))
    db = Database.from_env({**cluster.env(), "AURORA_TOPOLOGY_REFRESH_S": "0.2"})
    starter = threading.Timer(1.0, cluster.start)
    starter.start()
    try:
        began = time.monotonic()
        topology = db.wait_ready(timeout=30)
        waited = time.monotonic() - began
        assert topology.writer.id == cluster.writer.id and len(topology.readers) == 1
        assert waited >= 1.0
        time.sleep(0.5)  # a few refreshes: the monitor keeps running after the failed tries
        assert "aurora-access-topology" in _library_threads()
        with db.session() as s:
            assert s.execute(text("SELECT 1")).scalar() == 1
    finally:
        starter.join()
        db.close()
        cluster.close()


def test_importing_an_application_needs_no_database() -> None:
    """OpenAPI export, CLI tools: a module-level Database must not need the database."""
    script = ("from accounts.fastapi_app import app_from_env\n"
              "schema = app_from_env().openapi()\n"
              "assert '/users' in schema['paths']\n"
              "print('ok')\n")
    env = {**os.environ, **_nowhere(), "PYTHONPATH": str(EXAMPLES)}
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert time.monotonic() - began < 30
