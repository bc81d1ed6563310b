"""Small helpers the tests share: raw connections to instances of a local cluster."""

from __future__ import annotations

from typing import Any

import psycopg
import pymysql
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


def mysql_admin(cluster: LocalCluster, host: str, timeout: int = 2) -> pymysql.Connection[Any]:
    """MariaDB superuser autocommit connection to one address of the cluster (no password;
    ``timeout`` bounds the handshake too, which a frozen server never answers)."""
    return pymysql.connect(host=host, port=cluster.port, user="root", database=cluster.database,
                           connect_timeout=timeout, read_timeout=timeout, autocommit=True,
                           ssl_disabled=True)


def mysql_app(cluster: LocalCluster, host: str, timeout: int = 2,
              **ssl: Any) -> pymysql.Connection[Any]:
    """The application user's MariaDB autocommit connection (TLS when ``ssl_ca`` & co given)."""
    return pymysql.connect(host=host, port=cluster.port, user=cluster.user,
                           password=cluster.password, database=cluster.database,
                           connect_timeout=timeout, read_timeout=timeout, autocommit=True,
                           **(ssl or {"ssl_disabled": True}))


def mysql_scalar(conn: pymysql.Connection[Any], sql: str, args: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        row = cur.fetchone()
    assert row is not None
    return row[0]


def mysql_rows(conn: pymysql.Connection[Any], sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())
