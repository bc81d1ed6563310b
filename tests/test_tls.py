"""TLS on the local cluster, and a Database that verifies it (verify-full) end to end."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text

from aurora_access import Database
from aurora_access.local import LocalCluster, free_port

SSL_IN_USE = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(readers=2, port=free_port(), tls=True) as cluster:
        yield cluster


def test_every_address_serves_a_certificate_that_verifies(tls_cluster: LocalCluster) -> None:
    for host in [tls_cluster.cluster_host, tls_cluster.reader_host,
                 *(i.host for i in tls_cluster.instances)]:
        with psycopg.connect(host=host, port=tls_cluster.port, user=tls_cluster.user,
                             password=tls_cluster.password, dbname=tls_cluster.database,
                             sslmode="verify-full", sslrootcert=str(tls_cluster.ca_cert)) as c:
            assert c.execute(SSL_IN_USE).fetchone() == (True,)


def test_a_certificate_from_another_ca_is_refused(tls_cluster: LocalCluster) -> None:
    with LocalCluster(readers=0, port=free_port(0), tls=True) as other, \
            pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(host=tls_cluster.writer.host, port=tls_cluster.port,
                        user=tls_cluster.user, password=tls_cluster.password,
                        dbname=tls_cluster.database, sslmode="verify-full",
                        sslrootcert=str(other.ca_cert)).close()


def test_database_reads_and_writes_over_verified_tls(tls_cluster: LocalCluster) -> None:
    env = tls_cluster.env()
    assert env["AURORA_SSLMODE"] == "verify-full"
    db = Database.from_env(env)
    try:
        with db.session() as s:
            assert s.execute(text(SSL_IN_USE + " AND pg_is_in_recovery()")).scalar() is True
            s.execute(text("CREATE TABLE IF NOT EXISTS tls_probe (id int)"))
            assert s.execute(text(SSL_IN_USE + " AND NOT pg_is_in_recovery()")).scalar()
    finally:
        db.close()


def test_failover_keeps_tls(tls_cluster: LocalCluster) -> None:
    old = tls_cluster.writer
    tls_cluster.failover()
    with psycopg.connect(host=old.host, port=tls_cluster.port, user=tls_cluster.user,
                         password=tls_cluster.password, dbname=tls_cluster.database,
                         sslmode="verify-full", sslrootcert=str(tls_cluster.ca_cert)) as c:
        assert c.execute(SSL_IN_USE + " AND pg_is_in_recovery()").fetchone() == (True,)
