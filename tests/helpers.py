"""Small helpers the tests share: raw connections to instances of a local cluster."""

from __future__ import annotations

import psycopg
from sqlalchemy import create_engine, text

from aurora_access.local import LocalCluster


def admin(cluster: LocalCluster, host: str, timeout: int = 2) -> psycopg.Connection[tuple]:
    """Superuser autocommit connection to one address of the cluster (instance or endpoint)."""
    return psycopg.connect(host=host, port=cluster.port, user="postgres", dbname=cluster.database,
                           connect_timeout=timeout, autocommit=True)


def app(cluster: LocalCluster, host: str, timeout: int = 2) -> psycopg.Connection[tuple]:
    """The application role's autocommit connection to one address of the cluster."""
    return psycopg.connect(host=host, port=cluster.port, user=cluster.user,
                           password=cluster.password, dbname=cluster.database,
                           connect_timeout=timeout, autocommit=True)


def scalar(conn: psycopg.Connection[tuple], sql: str) -> object:
    row = conn.execute(sql.encode()).fetchone()
    assert row is not None
    return row[0]


def set_app_password(cluster: LocalCluster, password: str) -> None:
    """Give the application role/user a new password, on the writer (replication carries it
    to the readers). Any engine."""
    if cluster.engine == "postgresql":
        with admin(cluster, cluster.writer.host) as conn:
            conn.execute(psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                psycopg.sql.Identifier(cluster.user), psycopg.sql.Literal(password)))
        return
    engine = create_engine(cluster.admin_url(cluster.writer.id), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f"ALTER USER '{cluster.user}'@'%' IDENTIFIED BY :password"),
                         {"password": password})
    finally:
        engine.dispose()
