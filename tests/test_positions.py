"""Read-your-writes from Aurora PostgreSQL's own log positions (issue 14): the writer's
``durable_lsn`` and a reader's own ``current_read_lsn`` from ``aurora_replica_status()``, and
PostgreSQL's ``pg_*`` functions where Aurora's function is missing. Each source is proven with
the other one taken away from the application role, on a cluster of its own (privileges are
revoked and given back here)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text, update

from aurora_access import Database
from aurora_access.check import run_check
from aurora_access.demo.models import Customer
from aurora_access.local import LocalCluster, free_port
from engines import replay_held, with_demo_data

PG_FUNCTIONS = "pg_current_wal_lsn(), pg_current_wal_flush_lsn(), pg_last_wal_replay_lsn()"
AURORA_FUNCTION = "aurora_replica_status()"
ROUNDS = 500


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Readers 5 ms behind: short enough that 500 rounds run in seconds with reads on readers,
    long enough that a read not held back for its write is stale (shown by the control)."""
    with LocalCluster(port=free_port(), readers=2, replica_lag_ms=5) as c:
        yield with_demo_data(c)


def run(url: str, sql: str) -> Any:
    """``sql`` on one server (autocommit); its first value, if it returns rows."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            result = conn.execute(text(sql))
            return result.scalar() if result.returns_rows else None
    finally:
        engine.dispose()


def admin(cluster: LocalCluster, sql: str, instance_id: str | None = None) -> Any:
    """``sql`` as the superuser, on the writer unless ``instance_id`` (privileges granted or
    revoked on the writer replicate to the readers)."""
    return run(cluster.admin_url(instance_id or cluster.writer.id), sql)


def as_app(cluster: LocalCluster, host: str, sql: str) -> Any:
    return run(cluster.app_url(host), sql)


def stale_rounds(db: Database, rounds: int) -> int:
    """Write then read back, ``rounds`` times; how many reads missed their write."""
    stale = 0
    for i in range(rounds):
        with db.session() as s:
            s.execute(update(Customer).where(Customer.id == 7).values(name=f"p{i}"))
        with db.session() as s:
            if s.scalar(select(Customer.name).where(Customer.id == 7)) != f"p{i}":
                stale += 1
    return stale


def test_the_local_cluster_answers_positions_as_aurora_does(cluster: LocalCluster) -> None:
    """The writer's row tells its flushed position as ``durable_lsn``; a reader's own row,
    asked on that reader, its own replay position (not the writer's feedback view of it)."""
    reader = cluster.readers[0]
    own_row = ("SELECT current_read_lsn FROM aurora_replica_status() "
               "WHERE server_id = aurora_db_instance_identifier()")
    durable = ("SELECT durable_lsn FROM aurora_replica_status() "
               "WHERE session_id = 'MASTER_SESSION_ID'")
    with replay_held(cluster):
        admin(cluster, "UPDATE customers SET name = 'held' WHERE id = 8")
        written = as_app(cluster, cluster.writer.host, durable)
        read_at = as_app(cluster, reader.host, own_row)
        replayed = admin(cluster, "SELECT pg_last_wal_replay_lsn() - '0/0'", reader.id)
        assert read_at == replayed < written  # the reader has not applied the update
        assert as_app(cluster, reader.host, "SELECT name FROM customers WHERE id = 8") != "held"
    cluster.wait_replayed()
    assert as_app(cluster, reader.host, own_row) >= written


def test_aurora_positions_with_the_pg_functions_revoked(cluster: LocalCluster) -> None:
    """As on Aurora, where pg_current_wal_lsn() does not serve: the library reads positions
    from aurora_replica_status() and no read is stale."""
    admin(cluster, f"REVOKE EXECUTE ON FUNCTION {PG_FUNCTIONS} FROM PUBLIC")
    try:
        cluster.wait_replayed()
        with pytest.raises(Exception, match="permission denied"):
            as_app(cluster, cluster.readers[0].host, "SELECT pg_last_wal_replay_lsn()")
        db = Database.from_env({**cluster.env(), "AURORA_RYW_WAIT_MS": "50"})
        try:
            db.topology()
            assert db._monitor.positions is not None
            assert db._monitor.positions.name == AURORA_FUNCTION
            assert stale_rounds(db, ROUNDS) == 0
            stats = db.stats()
            assert stats["reads_on_readers"] > ROUNDS // 2  # the positions let reads go there
        finally:
            db.close()
    finally:
        admin(cluster, f"GRANT EXECUTE ON FUNCTION {PG_FUNCTIONS} TO PUBLIC")


def test_pg_positions_without_aurora_replica_status(cluster: LocalCluster) -> None:
    """RDS or self-managed PostgreSQL: no Aurora metadata, so no instance host pattern; the
    endpoints stand for the instances (the reader endpoint is one replica's, as an RDS read
    replica's is) and positions come from the pg_* functions; no read is stale."""
    admin(cluster, f"REVOKE EXECUTE ON FUNCTION {AURORA_FUNCTION} FROM PUBLIC")
    try:
        cluster.wait_replayed()
        reader = cluster.readers[0]
        with pytest.raises(Exception, match="permission denied"):
            as_app(cluster, reader.host, f"SELECT * FROM {AURORA_FUNCTION}")
        env = {**cluster.env(), "AURORA_RYW_WAIT_MS": "50", "AURORA_READER_ENDPOINT": reader.host}
        del env["AURORA_INSTANCE_HOST_PATTERN"]
        db = Database.from_env(env)
        try:
            assert [r.host for r in db.topology().readers] == [reader.host]
            assert db._monitor.positions is not None
            assert db._monitor.positions.name == "pg_current_wal_lsn()"
            assert stale_rounds(db, ROUNDS) == 0
            assert db.stats()["reads_on_readers"] > ROUNDS // 2
        finally:
            db.close()
    finally:
        admin(cluster, f"GRANT EXECUTE ON FUNCTION {AURORA_FUNCTION} TO PUBLIC")


def test_the_check_names_the_position_source(cluster: LocalCluster) -> None:
    report = run_check(cluster.env())
    topology = next(c for c in report.checks if c.name == "topology")
    assert f"by log position ({AURORA_FUNCTION})" in topology.detail


def test_control_without_read_your_writes_reads_are_stale(cluster: LocalCluster) -> None:
    """The lag is real: the same rounds with read-your-writes off read stale (so the zeros
    above are the positions' doing)."""
    db = Database.from_env({**cluster.env(), "AURORA_READ_YOUR_WRITES": "false"})
    try:
        assert stale_rounds(db, 100) > 10
    finally:
        db.close()
