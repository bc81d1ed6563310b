"""The local Aurora-like cluster: shape, metadata, replication and endpoints (shared cluster)."""

from __future__ import annotations

import psycopg
import pytest

from aurora_access.local import LocalCluster
from helpers import admin, app, scalar


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
