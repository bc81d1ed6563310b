"""Alembic through aurora-access (the README's recipe, as the accounts example uses it): online
migrations on the current writer, also right after a failover while the cluster endpoint still
points at the old writer; offline ``--sql`` from the same configuration, with no database."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy.exc import DBAPIError

from aurora_access import Database
from aurora_access.local import LocalCluster, free_port

EXAMPLES = Path(__file__).parent.parent / "examples"
ALEMBIC_INI = EXAMPLES / "accounts" / "alembic.ini"


def alembic(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The ``alembic`` command line, from ``examples/``, with ``env`` as AURORA_* variables."""
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ALEMBIC_INI), *args],
        env={**os.environ, **env, "PYTHONPATH": str(EXAMPLES)}, cwd=EXAMPLES,
        capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module", params=["postgresql", "mysql"])
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    with LocalCluster(engine=request.param, readers=2, endpoint_delay_s=30.0,
                      port=free_port()) as c:
        yield c


def test_online_migrations_run_on_the_writer_after_a_failover(cluster: LocalCluster) -> None:
    """The cluster endpoint keeps pointing at the old writer (now a reader) for 30 s: a URL
    on it would fail with a read-only error; ``db.engine("writer")`` is the instance that
    takes writes."""
    cluster.failover()
    naive = create_engine(cluster.app_url())  # what a URL in alembic.ini would reach
    try:
        with pytest.raises(DBAPIError, match="read-only"), naive.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE naive_probe (id int)")
    finally:
        naive.dispose()
    done = alembic(cluster.env(), "upgrade", "head")
    assert done.returncode == 0, done.stderr
    db = Database.from_env(cluster.env())
    try:
        writer = db.engine("writer")
        assert db.topology().writer.id == cluster.writer.id
        tables = set(inspect(writer).get_table_names())
        assert {"account_user", "account_item", "alembic_version"} <= tables
    finally:
        db.close()
    assert alembic(cluster.env(), "downgrade", "base").returncode == 0


def test_offline_sql_needs_no_database_and_shows_no_password(cluster: LocalCluster) -> None:
    env = {**cluster.env(), "AURORA_PORT": str(free_port(0)), "AURORA_CONNECT_TIMEOUT": "1"}
    done = alembic(env, "upgrade", "head", "--sql")
    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE account_user" in done.stdout
    assert "CREATE TABLE account_item" in done.stdout
    assert cluster.password not in done.stdout + done.stderr
