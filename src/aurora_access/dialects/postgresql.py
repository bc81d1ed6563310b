"""Aurora PostgreSQL (and plain PostgreSQL) through psycopg 3: every piece of its SQL."""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import psycopg
from sqlalchemy import Engine

from ..consistency import PositionQueries
from ..failover import ErrorKind

_BY_SQLSTATE = {
    "57P01": ErrorKind.ADMIN_SHUTDOWN,  # admin_shutdown
    "57P02": ErrorKind.ADMIN_SHUTDOWN,  # crash_shutdown
    "57P03": ErrorKind.ADMIN_SHUTDOWN,  # cannot_connect_now (starting up, shutting down)
    "25006": ErrorKind.READ_ONLY,  # read_only_sql_transaction
    "40001": ErrorKind.SERIALIZATION,  # serialization_failure
    "40P01": ErrorKind.DEADLOCK,  # deadlock_detected
}

def _driver(dbapi_connection: Any) -> Any:
    """psycopg's own connection, whether SQLAlchemy's asyncio adapter wraps it or not."""
    return getattr(dbapi_connection, "driver_connection", dbapi_connection)


class PostgresDialect:
    name = "postgresql"
    drivername = "postgresql+psycopg"
    async_drivername = "postgresql+psycopg_async"

    # Aurora's view of the cluster; rows not updated for 5 minutes are instances gone.
    topology_queries: tuple[str, ...] = ((
        "SELECT server_id, session_id = 'MASTER_SESSION_ID', replica_lag_in_msec "
        "FROM pg_catalog.aurora_replica_status() "
        "WHERE session_id = 'MASTER_SESSION_ID' OR last_update_timestamp IS NULL "
        "OR last_update_timestamp > now() - interval '300 seconds'"
    ),)
    is_reader_sql = "SELECT pg_is_in_recovery()"
    # Log positions, the first source that answers (decided at start-up):
    # - Aurora's: the writer's row tells the log position durable in storage, which a commit
    #   has reached when it returns; a reader's own row (asked on that reader) the position
    #   it reads at. Both are LSNs as bigints.
    # - PostgreSQL's own (RDS PostgreSQL, self-managed; synchronous_commit must not be off):
    #   the writer's WAL position, a standby's replay position (NULL on a writer).
    position_queries: tuple[PositionQueries, ...] = (
        PositionQueries(
            "aurora_replica_status()",
            "SELECT durable_lsn FROM pg_catalog.aurora_replica_status() "
            "WHERE session_id = 'MASTER_SESSION_ID'",
            "SELECT current_read_lsn FROM pg_catalog.aurora_replica_status() "
            "WHERE server_id = pg_catalog.aurora_db_instance_identifier()"),
        PositionQueries("pg_current_wal_lsn()", "SELECT pg_current_wal_lsn()",
                        "SELECT pg_last_wal_replay_lsn()"),
    )

    # how many connections an unprivileged role may open (the connection budget)
    max_connections_sql = ("SELECT current_setting('max_connections')::int "
                           "- current_setting('superuser_reserved_connections')::int")
    # this configuration's connections to the instance asked (the activity view shows a
    # role's own sessions in full without extra privileges), and those running a statement
    # besides the one asking
    connections_sql = ("SELECT count(*), "
                       "count(*) FILTER (WHERE state = 'active' AND pid <> pg_backend_pid()) "
                       "FROM pg_catalog.pg_stat_activity "
                       "WHERE usename = current_user AND datname = current_database()")
    # Whether an instance takes writes: asked of every instance after a writer failure.
    is_writer_sql = "SELECT NOT pg_is_in_recovery()"
    # one consistent snapshot for a read_only(snapshot=True) session
    snapshot_options: Mapping[str, Any] = MappingProxyType(
        {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True})
    # A commit's fate after a crash is read from a marker row written in the transaction
    # (not from pg_xact_status: a transaction id whose WAL never reached the new writer is
    # handed out again there, and its status then describes another transaction).
    commit_marker_ddl = (
        "CREATE TABLE IF NOT EXISTS aurora_access_commit_markers "
        "(id text PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now())"
    )
    # (whether this instance takes writes, whether the marker is there): only the writer's
    # answer counts, a reader's copy may lag behind an acknowledged commit
    commit_marker_check_sql = (
        "SELECT NOT pg_is_in_recovery(), "
        "EXISTS (SELECT 1 FROM aurora_access_commit_markers WHERE id = %(id)s)"
    )
    commit_marker_cleanup_sql = (
        "DELETE FROM aurora_access_commit_markers WHERE created_at < now() - interval '1 day'"
    )

    def classify(self, error: BaseException) -> ErrorKind:
        """What a psycopg error (or SQLAlchemy's wrapper of one) says about the instance."""
        orig = getattr(error, "orig", None) or error
        sqlstate = getattr(orig, "sqlstate", None)
        if sqlstate in _BY_SQLSTATE:
            return _BY_SQLSTATE[sqlstate]
        if sqlstate is not None and sqlstate.startswith("08"):  # connection_exception class
            return ErrorKind.CONNECTION_LOST
        if isinstance(orig, psycopg.OperationalError) and sqlstate is None:
            # refused, reset, "server closed the connection unexpectedly", timeouts
            return ErrorKind.CONNECTION_LOST
        if getattr(error, "connection_invalidated", False):
            return ErrorKind.CONNECTION_LOST
        return ErrorKind.OTHER

    def is_auth_failure(self, error: BaseException) -> bool:
        """The server refused the login (a wrong or expired password or IAM token; Aurora
        reports IAM refusals as PAM authentication failures). psycopg gives no SQLSTATE for
        errors while connecting, so the server's message is what there is."""
        return isinstance(error, psycopg.OperationalError) and \
            "authentication failed" in str(error)

    def lost_connection_error(self, message: str) -> Exception:
        return psycopg.OperationalError(message)

    def commit_with_marker_statements(self, marker: str) -> list[str]:
        """Insert the marker and commit, in one round trip (no parameters: psycopg then sends
        it as a simple query, which may hold several statements). ``marker`` is our own hex."""
        if not marker.isalnum():
            raise ValueError(f"a commit marker is hex digits, not {marker!r}")
        return [f"INSERT INTO aurora_access_commit_markers (id) VALUES ('{marker}'); COMMIT"]

    def abort_connection(self, dbapi_connection: Any) -> None:
        """Cut a connection's socket under whatever thread is blocked on it, so that it
        fails at once (a hung server acknowledges TCP but never answers: neither keepalives
        nor a cancel request can end the wait). The descriptor stays psycopg's to close."""
        fd = _driver(dbapi_connection).pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)

    def idle_connection_lost(self, dbapi_connection: Any) -> bool:
        """An idle connection whose socket has something to read got either a notification
        (NOTIFY, a parameter change: read it, the connection stays good) or its server's
        goodbye (a FATAL message, the end of the stream): libpq says which once it reads it."""
        pgconn = _driver(dbapi_connection).pgconn
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            return True
        for _ in range(4):  # a goodbye is a FATAL message, then the end of the stream
            if not select.select([pgconn.socket], [], [], 0)[0]:
                return False
            try:
                pgconn.consume_input()
            except psycopg.OperationalError:
                return True
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                return True
        return False

    def prepare_engine(self, engine: Engine) -> None:
        """Nothing to do: psycopg's rollback in autocommit sends nothing."""

    def connected(self, dbapi_connection: Any) -> None:
        """Nothing to do: libpq's connect_timeout covers the whole handshake."""

    def parse_position(self, value: Any) -> int | None:
        """An LSN (``'16/B374D848'``, or Aurora's bigint) as an integer; None stays None."""
        if value is None or isinstance(value, int):
            return value
        high, _, low = str(value).partition("/")
        if not low:
            raise ValueError(f"not a PostgreSQL LSN: {value!r}")
        return (int(high, 16) << 32) | int(low, 16)

    def format_position(self, position: int) -> str:
        return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"

    def connect_args(self, sslmode: str, sslrootcert: str | None, connect_timeout: float,
                     asynchronous: bool = False) -> dict[str, Any]:
        """libpq's arguments, for psycopg's sync and async connections alike (libpq's
        ``connect_timeout`` covers the whole handshake in both)."""
        args: dict[str, Any] = {
            "sslmode": sslmode,
            "connect_timeout": max(1, round(connect_timeout)),
            # a dead peer is noticed in seconds, not after the kernel's two hours
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
            "keepalives_count": 2,
        }
        if sslrootcert:
            args["sslrootcert"] = sslrootcert
        return args

    def tls_in_use(self, dbapi_connection: Any) -> str | None:
        """``"TLS"`` when the connection is encrypted, else None (psycopg tells only whether;
        ``pg_stat_ssl`` on the server tells which protocol and cipher)."""
        return "TLS" if _driver(dbapi_connection).pgconn.ssl_in_use else None
