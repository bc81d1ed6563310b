"""The local Aurora-like cluster: shape, metadata, replication and endpoints (shared cluster)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from aurora_access.local import LocalCluster, free_port
from helpers import admin, app, mysql_admin, mysql_app, mysql_rows, mysql_scalar, scalar


def test_each_instance_answers_its_own_id_and_role(aurora_cluster: LocalCluster) -> None:
    for instance in aurora_cluster.instances:
        with admin(aurora_cluster, instance.host) as conn:
            assert scalar(conn, "SELECT aurora_db_instance_identifier()") == instance.id
            in_recovery = scalar(conn, "SELECT pg_is_in_recovery()")
            assert in_recovery is (instance.role == "reader")


def test_replica_status_shows_the_whole_cluster_on_every_instance(
        aurora_cluster: LocalCluster) -> None:
    expected = {i.id: ("MASTER_SESSION_ID" if i.role == "writer" else "reader")
                for i in aurora_cluster.instances}
    for instance in aurora_cluster.instances:
        # what the application role sees, as on Aurora (no superuser needed)
        with app(aurora_cluster, instance.host) as conn:
            rows = conn.execute(
                "SELECT server_id, session_id, replica_lag_in_msec, last_update_timestamp "
                "FROM aurora_replica_status()").fetchall()
        seen = {r[0]: ("MASTER_SESSION_ID" if r[1] == "MASTER_SESSION_ID" else "reader")
                for r in rows}
        assert seen == expected, f"as seen from {instance.id}"
        assert all(r[2] is not None and r[2] >= 0 and r[3] is not None for r in rows)


def test_cluster_endpoint_reaches_the_writer_and_reader_endpoint_spreads(
        aurora_cluster: LocalCluster) -> None:
    with app(aurora_cluster, aurora_cluster.cluster_host) as conn:
        assert scalar(conn, "SELECT aurora_db_instance_identifier()") == aurora_cluster.writer.id
        assert scalar(conn, "SELECT pg_is_in_recovery()") is False
    seen = set()
    for _ in range(2 * len(aurora_cluster.readers)):
        with app(aurora_cluster, aurora_cluster.reader_host) as conn:
            seen.add(scalar(conn, "SELECT aurora_db_instance_identifier()"))
            assert scalar(conn, "SELECT pg_is_in_recovery()") is True
    assert seen == {r.id for r in aurora_cluster.readers}


def test_application_role_is_unprivileged_and_needs_its_password(
        aurora_cluster: LocalCluster) -> None:
    with app(aurora_cluster, aurora_cluster.writer.host) as conn:
        assert scalar(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
        assert scalar(conn, "SELECT current_database()") == aurora_cluster.database
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=aurora_cluster.writer.host, port=aurora_cluster.port,
                        user=aurora_cluster.user, password="wrong",
                        dbname=aurora_cluster.database, connect_timeout=2).close()


def test_env_describes_the_cluster(aurora_cluster: LocalCluster) -> None:
    env = aurora_cluster.env()
    assert env["AURORA_CLUSTER_ENDPOINT"] == aurora_cluster.cluster_host
    assert env["AURORA_PORT"] == str(aurora_cluster.port)
    pattern = env["AURORA_INSTANCE_HOST_PATTERN"]
    assert {pattern.replace("?", i.id) for i in aurora_cluster.instances} == {
        i.host for i in aurora_cluster.instances}
    with psycopg.connect(host=env["AURORA_CLUSTER_ENDPOINT"], port=int(env["AURORA_PORT"]),
                         user=env["AURORA_USER"], password=env["AURORA_PASSWORD"],
                         dbname=env["AURORA_DATABASE"]) as conn:
        assert scalar(conn, "SELECT 1") == 1
    with admin(aurora_cluster, aurora_cluster.writer.host) as conn:
        assert aurora_cluster.admin_url(aurora_cluster.writer.id).startswith(
            "postgresql+psycopg://postgres@")


def test_an_acknowledged_commit_is_already_on_a_reader(aurora_cluster: LocalCluster) -> None:
    with admin(aurora_cluster, aurora_cluster.writer.host) as conn:
        sync = conn.execute("SELECT application_name, sync_state FROM pg_stat_replication"
                            ).fetchall()
        assert {s for _, s in sync} == {"quorum"}
        conn.execute("CREATE TABLE IF NOT EXISTS sync_probe (id int)")
        for _ in range(20):
            conn.execute("INSERT INTO sync_probe VALUES (1)")
            commit_lsn = scalar(conn, "SELECT pg_current_wal_lsn()")
            flushed = conn.execute(
                "SELECT count(*) FROM pg_stat_replication WHERE flush_lsn >= %s",
                (commit_lsn,)).fetchone()
            assert flushed is not None and flushed[0] >= 1


# -- MariaDB (engine="mysql"): the same shape, through Aurora MySQL's names -------------------


def test_mysql_each_instance_answers_its_own_id_and_role(
        aurora_mysql_cluster: LocalCluster) -> None:
    for instance in aurora_mysql_cluster.instances:
        with mysql_app(aurora_mysql_cluster, instance.host) as conn:
            assert str(mysql_scalar(conn, "SELECT @@server_id")) == instance.id
            assert mysql_scalar(conn, "SELECT @@read_only") == (instance.role == "reader")


def test_mysql_replica_host_status_shows_the_whole_cluster_on_every_instance(
        aurora_mysql_cluster: LocalCluster) -> None:
    expected = {i.id: ("MASTER_SESSION_ID" if i.role == "writer" else "reader")
                for i in aurora_mysql_cluster.instances}
    for instance in aurora_mysql_cluster.instances:
        with mysql_app(aurora_mysql_cluster, instance.host) as conn:
            rows = mysql_rows(conn, "SELECT SERVER_ID, SESSION_ID, REPLICA_LAG_IN_MILLISECONDS, "
                                    "LAST_UPDATE_TIMESTAMP, CPU "
                                    "FROM aurora_local.replica_host_status")
        seen = {r[0]: ("MASTER_SESSION_ID" if r[1] == "MASTER_SESSION_ID" else "reader")
                for r in rows}
        assert seen == expected, f"as seen from {instance.id}"
        assert all(r[2] is not None and r[2] >= 0 and r[3] is not None and r[4] == 0
                   for r in rows)
    lags = aurora_mysql_cluster.replica_lags()
    # MariaDB delays in whole seconds: the configured lag rounded up
    rounded = -(-aurora_mysql_cluster.replica_lag_ms // 1000) * 1000
    assert lags == {i.id: (0.0 if i.role == "writer" else rounded)
                    for i in aurora_mysql_cluster.instances}


def test_mysql_writes_on_the_writer_reach_every_reader(
        aurora_mysql_cluster: LocalCluster) -> None:
    with mysql_app(aurora_mysql_cluster, aurora_mysql_cluster.writer.host) as conn:
        mysql_rows(conn, "CREATE TABLE IF NOT EXISTS replicated (id int PRIMARY KEY)")
        mysql_rows(conn, "REPLACE INTO replicated VALUES (7)")
    for reader in aurora_mysql_cluster.readers:
        deadline = time.monotonic() + 5 + aurora_mysql_cluster.replica_lag_ms / 1000
        with mysql_app(aurora_mysql_cluster, reader.host) as conn:
            while not mysql_rows(conn, "SELECT 1 FROM information_schema.tables WHERE "
                                       "table_name = 'replicated'") or \
                    mysql_scalar(conn, "SELECT count(*) FROM replicated WHERE id = 7") == 0:
                assert time.monotonic() < deadline, f"reader {reader.id} did not get the row"
                time.sleep(0.02)


def test_mysql_cluster_endpoint_reaches_the_writer_and_reader_endpoint_spreads(
        aurora_mysql_cluster: LocalCluster) -> None:
    cluster = aurora_mysql_cluster
    with mysql_app(cluster, cluster.cluster_host) as conn:
        assert str(mysql_scalar(conn, "SELECT @@server_id")) == cluster.writer.id
        assert mysql_scalar(conn, "SELECT @@read_only") == 0
    seen = set()
    for _ in range(2 * len(cluster.readers)):
        with mysql_app(cluster, cluster.reader_host) as conn:
            seen.add(str(mysql_scalar(conn, "SELECT @@server_id")))
            assert mysql_scalar(conn, "SELECT @@read_only") == 1
    assert seen == {r.id for r in cluster.readers}


def test_mysql_application_user_has_narrow_grants_and_needs_its_password(
        aurora_mysql_cluster: LocalCluster) -> None:
    cluster = aurora_mysql_cluster
    with mysql_app(cluster, cluster.writer.host) as conn:
        grants = " ".join(r[0] for r in mysql_rows(conn, "SHOW GRANTS"))
        assert "ON *.*" not in grants.replace("GRANT USAGE ON *.*", "")
        assert mysql_scalar(conn, "SELECT database()") == cluster.database
        mysql_rows(conn, "CREATE TABLE IF NOT EXISTS grants_probe (id int)")
        mysql_rows(conn, "INSERT INTO grants_probe VALUES (1)")
    # a global ALL would include READ ONLY ADMIN, and with it writes on a read-only reader
    with mysql_app(cluster, cluster.readers[0].host) as conn, \
            pytest.raises(pymysql.err.OperationalError) as caught:
        mysql_rows(conn, "CREATE TABLE IF NOT EXISTS on_a_reader (id int)")
    assert caught.value.args[0] == 1290
    with pytest.raises(pymysql.err.OperationalError) as denied:
        pymysql.connect(host=cluster.writer.host, port=cluster.port, user=cluster.user,
                        password="wrong", database=cluster.database, connect_timeout=2,
                        ssl_disabled=True).close()
    assert denied.value.args[0] == 1045


def test_mysql_env_describes_the_cluster(aurora_mysql_cluster: LocalCluster) -> None:
    env = aurora_mysql_cluster.env()
    assert env["AURORA_ENGINE"] == "mysql"
    assert env["AURORA_CLUSTER_ENDPOINT"] == aurora_mysql_cluster.cluster_host
    with pymysql.connect(host=env["AURORA_CLUSTER_ENDPOINT"], port=int(env["AURORA_PORT"]),
                         user=env["AURORA_USER"], password=env["AURORA_PASSWORD"],
                         database=env["AURORA_DATABASE"], ssl_disabled=True) as conn:
        assert mysql_scalar(conn, "SELECT 1") == 1
    assert aurora_mysql_cluster.admin_url(aurora_mysql_cluster.writer.id).startswith(
        "mysql+pymysql://root@")


def test_mysql_an_acknowledged_commit_is_already_on_a_reader(
        aurora_mysql_cluster: LocalCluster) -> None:
    """Semi-synchronous replication: every commit waits for a reader's acknowledgement."""
    def status(conn: pymysql.Connection[Any]) -> dict[str, str]:
        return {str(k): str(v) for k, v in mysql_rows(
            conn, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_%'")}

    with mysql_admin(aurora_mysql_cluster, aurora_mysql_cluster.writer.host) as conn:
        before = status(conn)
        assert before["Rpl_semi_sync_master_status"] == "ON"
        assert int(before["Rpl_semi_sync_master_clients"]) == len(aurora_mysql_cluster.readers)
        mysql_rows(conn, "CREATE TABLE IF NOT EXISTS sync_probe (id int)")
        for _ in range(20):
            mysql_rows(conn, "INSERT INTO sync_probe VALUES (1)")
        after = status(conn)
    assert int(after["Rpl_semi_sync_master_yes_tx"]) - int(
        before["Rpl_semi_sync_master_yes_tx"]) == 21
    assert after["Rpl_semi_sync_master_no_tx"] == before["Rpl_semi_sync_master_no_tx"]


def test_mysql_tls_verifies_the_instance_address(shm_dir: Path) -> None:
    with LocalCluster(engine="mysql", readers=1, tls=True, port=free_port(1),
                      dir=shm_dir) as cluster:
        for host in (cluster.writer.host, cluster.readers[0].host, cluster.cluster_host):
            with mysql_app(cluster, host, ssl_ca=str(cluster.ca_cert),
                           ssl_verify_cert=True, ssl_verify_identity=True) as conn:
                cipher = mysql_rows(conn, "SHOW SESSION STATUS LIKE 'Ssl_cipher'")
                assert cipher[0][1], f"no TLS to {host}"
        with pytest.raises(pymysql.err.OperationalError):  # a CA that did not sign it
            mysql_app(cluster, cluster.writer.host, ssl_ca="/etc/ssl/certs/ca-certificates.crt",
                      ssl_verify_cert=True).close()
