"""Faults on the local cluster: failover, crash, restart, pause, resume, replica lag."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pymysql
import pytest

from aurora_access.local import FailoverReport, LocalCluster, free_port
from helpers import admin, app, mysql_admin, mysql_app, mysql_rows, mysql_scalar, scalar


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A cluster of this module's own: its tests change roles and kill instances."""
    with LocalCluster(readers=2, port=free_port()) as c:
        yield c


def _wait_caught_up(cluster: LocalCluster, timeout: float = 10) -> None:
    with admin(cluster, cluster.writer.host) as conn:
        target = scalar(conn, "SELECT pg_current_wal_lsn()")
    for reader in cluster.readers:
        deadline = time.monotonic() + timeout
        with admin(cluster, reader.host) as conn:
            while not scalar(conn, f"SELECT pg_last_wal_replay_lsn() >= '{target}'"):
                assert time.monotonic() < deadline, f"reader {reader.id} did not catch up"
                time.sleep(0.01)


def test_failover_promotes_a_reader_and_brings_the_old_writer_back(
        cluster: LocalCluster) -> None:
    old = cluster.writer
    report = cluster.failover()
    new = cluster.writer
    assert (report.old_writer, report.new_writer) == (old.id, new.id) and new.id != old.id
    assert 0 < report.promoted_s <= report.writable_s <= (report.old_writer_back_s or 0)
    assert old.id in {r.id for r in cluster.readers}
    with admin(cluster, old.host) as conn:
        assert scalar(conn, "SELECT pg_is_in_recovery()") is True
    with app(cluster, cluster.cluster_host) as conn:
        assert scalar(conn, "SELECT aurora_db_instance_identifier()") == new.id
        conn.execute("CREATE TABLE IF NOT EXISTS after_failover (id int)")
        conn.execute("INSERT INTO after_failover VALUES (1)")
    with admin(cluster, new.host) as conn:
        streaming = {r[0] for r in conn.execute(
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")}
    assert streaming == {r.id for r in cluster.readers}
    for instance in cluster.instances:  # the metadata follows on every instance
        with app(cluster, instance.host) as conn:
            writers = conn.execute("SELECT server_id FROM aurora_replica_status() "
                                   "WHERE session_id = 'MASTER_SESSION_ID'").fetchall()
        assert writers == [(new.id,)]


def test_acknowledged_commits_survive_a_failover(cluster: LocalCluster) -> None:
    with app(cluster, cluster.writer.host) as conn:
        conn.execute("DROP TABLE IF EXISTS acked")
        conn.execute("CREATE TABLE acked (id int PRIMARY KEY)")
    acknowledged, failed_attempts, report = _commit_race(
        cluster, lambda conn, i: conn.execute("INSERT INTO acked VALUES (%s)", (i,)),
        lambda: app(cluster, cluster.cluster_host), psycopg.Error)
    assert failed_attempts >= 1, "the commits did not race the failover"
    _wait_caught_up(cluster)
    for instance in cluster.instances:
        with admin(cluster, instance.host) as conn:
            present = {r[0] for r in conn.execute("SELECT id FROM acked")}
        missing = set(acknowledged) - present
        assert not missing, f"{len(missing)} acknowledged commits missing on {instance.id}"
    print(f"\n1000 acknowledged commits across {report}; {failed_attempts} attempts failed "
          "during the failover; all 1000 present on every instance")


def _commit_race(cluster: LocalCluster, insert: Callable[[Any, int], object],
                 connect: Callable[[], Any], errors: type[Exception],
                 commits: int = 1000) -> tuple[list[int], int, FailoverReport]:
    """``commits`` acknowledged inserts through the cluster endpoint, racing a failover
    started after 300 of them; returns the acknowledged ids, the failed attempts (in flight
    at the crash: outcome unknown) and the failover's report."""
    acknowledged: list[int] = []
    failed_attempts = 0
    started_failover = threading.Event()

    def commit_loop() -> None:
        nonlocal failed_attempts
        next_id = 0
        conn = None
        while len(acknowledged) < commits:
            next_id += 1
            try:
                if conn is None:
                    conn = connect()
                insert(conn, next_id)
                acknowledged.append(next_id)
                if len(acknowledged) == 300:
                    started_failover.set()
            except errors:
                failed_attempts += 1
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                time.sleep(0.005)
        if conn is not None:
            conn.close()

    writer_thread = threading.Thread(target=commit_loop)
    writer_thread.start()
    assert started_failover.wait(30)
    report = cluster.failover()
    writer_thread.join(60)
    assert not writer_thread.is_alive()
    return acknowledged, failed_attempts, report


def test_crash_and_restart_a_reader(cluster: LocalCluster) -> None:
    reader = cluster.readers[0]
    cluster.crash(reader.id)
    assert cluster.state(reader.id) == "crashed"
    with pytest.raises(psycopg.OperationalError):
        admin(cluster, reader.host).close()
    with app(cluster, cluster.writer.host) as conn:  # the other reader keeps commits going
        conn.execute("CREATE TABLE IF NOT EXISTS while_down (id int)")
        conn.execute("INSERT INTO while_down VALUES (1)")
    cluster.restart(reader.id)
    assert cluster.state(reader.id) == "running"
    _wait_caught_up(cluster)
    with admin(cluster, reader.host) as conn:
        assert scalar(conn, "SELECT count(*) FROM while_down") >= 1


def test_pause_hangs_an_instance_until_resumed(cluster: LocalCluster) -> None:
    reader = cluster.readers[-1]
    cluster.pause(reader.id)
    try:
        began = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="timeout"):
            admin(cluster, reader.host, timeout=2).close()
        assert time.monotonic() - began >= 1.5  # hung, not refused
    finally:
        cluster.resume(reader.id)
    with admin(cluster, reader.host) as conn:
        assert scalar(conn, "SELECT 1") == 1


def test_restart_the_writer_keeps_its_role(cluster: LocalCluster) -> None:
    writer = cluster.writer
    cluster.restart(writer.id)
    assert cluster.writer == writer
    with app(cluster, cluster.cluster_host) as conn:
        assert scalar(conn, "SELECT pg_is_in_recovery()") is False


def test_replica_lag_is_emulated() -> None:
    with LocalCluster(readers=1, replica_lag_ms=300, port=free_port(1)) as lagged, \
            app(lagged, lagged.writer.host) as writer, \
            app(lagged, lagged.readers[0].host) as reader:
        writer.execute("CREATE TABLE lagged (id int)")
        deadline = time.monotonic() + 5
        while scalar(reader, "SELECT to_regclass('lagged') IS NOT NULL") is False:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        writer.execute("INSERT INTO lagged VALUES (1)")
        committed = time.monotonic()
        assert scalar(reader, "SELECT count(*) FROM lagged") == 0
        while scalar(reader, "SELECT count(*) FROM lagged") == 0:
            time.sleep(0.005)
        visible_after = time.monotonic() - committed
        assert 0.2 < visible_after < 2.0
        lag = lagged.replica_lags()[lagged.readers[0].id]
        assert lag is not None and lag >= 0


def test_endpoint_delay_keeps_the_cluster_endpoint_on_the_old_writer() -> None:
    with LocalCluster(readers=2, endpoint_delay_s=4.0, port=free_port()) as c:
        old = c.writer
        report = c.failover()
        # the delay runs from the promotion; failover() returned once the old writer was back
        switched = time.monotonic() - ((report.old_writer_back_s or 0) - report.promoted_s)
        # The old writer is back as a reader: through the stale endpoint writes fail read-only
        with app(c, c.cluster_host) as conn:
            assert scalar(conn, "SELECT aurora_db_instance_identifier()") == old.id
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("CREATE TABLE stale_endpoint (id int)")
        time.sleep(max(0.0, 4.1 - (time.monotonic() - switched)))
        with app(c, c.cluster_host) as conn:
            assert scalar(conn, "SELECT aurora_db_instance_identifier()") == c.writer.id


def test_failover_can_leave_the_old_writer_hung(cluster: LocalCluster) -> None:
    old = cluster.writer
    report = cluster.failover(hang_old_writer=True)
    assert report.old_writer_back_s is None and cluster.state(old.id) == "paused"
    with pytest.raises(psycopg.OperationalError, match="timeout"):
        admin(cluster, old.host, timeout=2).close()
    with app(cluster, cluster.writer.host) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS after_hang (id int)")
    cluster.crash(old.id)
    cluster.rejoin(old.id)
    with admin(cluster, old.host) as conn:
        assert scalar(conn, "SELECT pg_is_in_recovery()") is True


# -- MariaDB (engine="mysql") ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mysql_cluster() -> Iterator[LocalCluster]:
    """A MariaDB cluster of this module's own: its tests change roles and kill instances."""
    with LocalCluster(engine="mysql", readers=2, port=free_port()) as c:
        yield c


def _mysql_wait_caught_up(cluster: LocalCluster, timeout: float = 10) -> None:
    with mysql_admin(cluster, cluster.writer.host) as conn:
        target = mysql_scalar(conn, "SELECT @@gtid_binlog_pos")
    for reader in cluster.readers:
        with mysql_admin(cluster, reader.host, timeout=int(timeout) + 2) as conn:
            reached = mysql_scalar(conn, "SELECT MASTER_GTID_WAIT(%s, %s)", (target, timeout))
        assert reached == 0, f"reader {reader.id} did not catch up with {target}"


def _mysql_is_read_only(cluster: LocalCluster, host: str) -> bool:
    with mysql_admin(cluster, host) as conn:
        return bool(mysql_scalar(conn, "SELECT @@read_only"))


def test_mysql_failover_promotes_a_reader_and_brings_the_old_writer_back(
        mysql_cluster: LocalCluster) -> None:
    cluster = mysql_cluster
    old = cluster.writer
    report = cluster.failover()
    new = cluster.writer
    assert (report.old_writer, report.new_writer) == (old.id, new.id) and new.id != old.id
    assert 0 < report.promoted_s <= report.writable_s <= (report.old_writer_back_s or 0)
    assert old.id in {r.id for r in cluster.readers}
    assert _mysql_is_read_only(cluster, old.host)
    with mysql_app(cluster, cluster.cluster_host) as conn:
        assert str(mysql_scalar(conn, "SELECT @@server_id")) == new.id
        mysql_rows(conn, "CREATE TABLE IF NOT EXISTS after_failover (id int)")
        mysql_rows(conn, "INSERT INTO after_failover VALUES (1)")
    with mysql_admin(cluster, new.host) as conn:
        streaming = {str(r[0]) for r in mysql_rows(conn, "SHOW SLAVE HOSTS")}
    assert streaming == {r.id for r in cluster.readers}
    for instance in cluster.instances:  # the metadata follows on every instance
        with mysql_app(cluster, instance.host) as conn:
            rows = mysql_rows(conn, "SELECT SERVER_ID, SESSION_ID "
                                    "FROM aurora_local.replica_host_status")
        assert sorted(r[0] for r in rows) == sorted(i.id for i in cluster.instances)
        assert [r[0] for r in rows if r[1] == "MASTER_SESSION_ID"] == [new.id]
    _mysql_wait_caught_up(cluster)
    with mysql_admin(cluster, old.host) as conn:  # rebuilt: it replayed the whole history
        assert mysql_scalar(conn, "SELECT count(*) FROM after_failover") >= 1


def test_mysql_acknowledged_commits_survive_a_failover(mysql_cluster: LocalCluster) -> None:
    cluster = mysql_cluster
    with mysql_app(cluster, cluster.writer.host) as conn:
        mysql_rows(conn, "DROP TABLE IF EXISTS acked")
        mysql_rows(conn, "CREATE TABLE acked (id int PRIMARY KEY)")
    acknowledged, failed_attempts, report = _commit_race(
        cluster, lambda conn, i: mysql_rows(conn, "INSERT INTO acked VALUES (%s)", (i,)),
        lambda: mysql_app(cluster, cluster.cluster_host), pymysql.err.MySQLError)
    assert failed_attempts >= 1, "the commits did not race the failover"
    _mysql_wait_caught_up(cluster)
    for instance in cluster.instances:
        with mysql_admin(cluster, instance.host) as conn:
            present = {r[0] for r in mysql_rows(conn, "SELECT id FROM acked")}
        missing = set(acknowledged) - present
        assert not missing, f"{len(missing)} acknowledged commits missing on {instance.id}"
    print(f"\n1000 acknowledged commits across {report}; {failed_attempts} attempts failed "
          "during the failover; all 1000 present on every instance")


def test_mysql_crash_and_restart_a_reader(mysql_cluster: LocalCluster) -> None:
    cluster = mysql_cluster
    reader = cluster.readers[0]
    cluster.crash(reader.id)
    assert cluster.state(reader.id) == "crashed"
    with pytest.raises(pymysql.err.OperationalError):
        mysql_admin(cluster, reader.host).close()
    with mysql_app(cluster, cluster.writer.host) as conn:  # the other reader acknowledges
        mysql_rows(conn, "CREATE TABLE IF NOT EXISTS while_down (id int)")
        mysql_rows(conn, "INSERT INTO while_down VALUES (1)")
    cluster.restart(reader.id)
    assert cluster.state(reader.id) == "running"
    _mysql_wait_caught_up(cluster)
    with mysql_admin(cluster, reader.host) as conn:
        assert mysql_scalar(conn, "SELECT count(*) FROM while_down") >= 1


def test_mysql_pause_hangs_an_instance_until_resumed(mysql_cluster: LocalCluster) -> None:
    cluster = mysql_cluster
    reader = cluster.readers[-1]
    cluster.pause(reader.id)
    try:
        began = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError, match="timed out"):
            mysql_admin(cluster, reader.host, timeout=2).close()
        assert time.monotonic() - began >= 1.5  # hung, not refused
    finally:
        cluster.resume(reader.id)
    with mysql_admin(cluster, reader.host) as conn:
        assert mysql_scalar(conn, "SELECT 1") == 1


def test_mysql_restart_the_writer_keeps_its_role(mysql_cluster: LocalCluster) -> None:
    cluster = mysql_cluster
    writer = cluster.writer
    cluster.restart(writer.id)
    assert cluster.writer == writer
    assert not _mysql_is_read_only(cluster, writer.host)
    for reader in cluster.readers:  # a restarted promoted writer must not turn read-only
        assert _mysql_is_read_only(cluster, reader.host)
    with mysql_app(cluster, cluster.cluster_host) as conn:
        mysql_rows(conn, "CREATE TABLE IF NOT EXISTS after_restart (id int)")


def test_mysql_replica_lag_is_emulated_in_whole_seconds() -> None:
    """300 ms of lag becomes MASTER_DELAY = 1 s; a failover does not wait for it."""
    with LocalCluster(engine="mysql", readers=1, replica_lag_ms=300,
                      port=free_port(1)) as lagged, \
            mysql_app(lagged, lagged.writer.host) as writer, \
            mysql_app(lagged, lagged.readers[0].host) as reader:
        mysql_rows(writer, "CREATE TABLE lagged (id int)")
        mysql_rows(writer, "INSERT INTO lagged VALUES (1)")
        committed = time.monotonic()
        while not mysql_rows(reader, "SELECT 1 FROM information_schema.tables "
                                     "WHERE table_name = 'lagged'") or \
                mysql_scalar(reader, "SELECT count(*) FROM lagged") == 0:
            assert time.monotonic() - committed < 5
            time.sleep(0.01)
        visible_after = time.monotonic() - committed
        assert 0.9 < visible_after < 3.0
        assert lagged.replica_lags()[lagged.readers[0].id] == 1000.0
        for i in range(2, 52):
            mysql_rows(writer, "INSERT INTO lagged VALUES (%s)", (i,))
        report = lagged.failover(wait_for_old_writer=False)
        assert report.promoted_s < 0.5  # the promoted reader applied at once what it had
        with mysql_app(lagged, lagged.writer.host) as conn:
            assert mysql_scalar(conn, "SELECT count(*) FROM lagged") == 51


def test_mysql_endpoint_delay_keeps_the_cluster_endpoint_on_the_old_writer() -> None:
    with LocalCluster(engine="mysql", readers=2, endpoint_delay_s=4.0, port=free_port()) as c:
        old = c.writer
        report = c.failover()
        switched = time.monotonic() - ((report.old_writer_back_s or 0) - report.promoted_s)
        # The old writer is back as a reader: through the stale endpoint writes fail read-only
        with mysql_app(c, c.cluster_host) as conn:
            assert str(mysql_scalar(conn, "SELECT @@server_id")) == old.id
            with pytest.raises(pymysql.err.OperationalError) as caught:
                mysql_rows(conn, "CREATE TABLE stale_endpoint (id int)")
            assert caught.value.args[0] == 1290
        time.sleep(max(0.0, 4.1 - (time.monotonic() - switched)))
        with mysql_app(c, c.cluster_host) as conn:
            assert str(mysql_scalar(conn, "SELECT @@server_id")) == c.writer.id


def test_mysql_failover_can_leave_the_old_writer_hung(mysql_cluster: LocalCluster) -> None:
    cluster = mysql_cluster
    old = cluster.writer
    report = cluster.failover(hang_old_writer=True)
    assert report.old_writer_back_s is None and cluster.state(old.id) == "paused"
    assert report.writable_s < 5  # the readers left the frozen writer at once
    with pytest.raises(pymysql.err.OperationalError, match="timed out"):
        mysql_admin(cluster, old.host, timeout=2).close()
    with mysql_app(cluster, cluster.writer.host) as conn:
        mysql_rows(conn, "CREATE TABLE IF NOT EXISTS after_hang (id int)")
    cluster.crash(old.id)
    cluster.rejoin(old.id)
    assert _mysql_is_read_only(cluster, old.host)
    _mysql_wait_caught_up(cluster)
    with mysql_admin(cluster, old.host) as conn:
        assert mysql_scalar(conn, "SELECT count(*) FROM after_hang") == 0
