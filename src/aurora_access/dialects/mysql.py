"""Aurora MySQL (and MariaDB, MySQL) through PyMySQL: every piece of its SQL.

Topology comes from Aurora MySQL's ``information_schema.replica_host_status``; where that table
does not exist, from ``aurora_local.replica_host_status`` (the local cluster's emulation, with
the same columns: MariaDB cannot add tables to information_schema); else from the endpoints and
``@@read_only``.

Replication positions are MariaDB GTIDs (``domain-server-seq``): the writer's
``@@gtid_binlog_pos`` after a commit covers it, a reader's ``@@gtid_slave_pos`` is what it has
applied. With ``gtid_strict_mode`` sequence numbers only grow within a replication domain, and
keep growing across a promotion, so a position is the newest sequence number. One writer at a
time writes one domain (the default, ``gtid_domain_id=0``); a cluster that writes several
domains at once would need per-domain comparison, which this does not do. Aurora MySQL and
MySQL 8 have no ``@@gtid_binlog_pos``: read-your-writes then goes by reported replica lag.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import ssl
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import aiomysql
import pymysql
from sqlalchemy import Engine

from ..consistency import PositionQueries
from ..failover import ErrorKind

_CONNECTION_LOST = {
    2002,  # can't connect through the socket
    2003,  # can't connect to server (refused, unreachable, timed out)
    2006,  # server has gone away
    2013,  # lost connection during query
    2055,  # lost connection at 'reading ...'
    1152,  # aborted connection
    1927,  # connection killed (MariaDB)
    4031,  # disconnected by the server (MySQL 8)
}
_BY_CODE = {
    1053: ErrorKind.ADMIN_SHUTDOWN,  # server shutdown in progress
    1290: ErrorKind.READ_ONLY,  # running with --read-only
    1836: ErrorKind.READ_ONLY,  # running in read-only mode
    1792: ErrorKind.READ_ONLY,  # cannot execute in a READ ONLY transaction
    1213: ErrorKind.DEADLOCK,  # deadlock found; the transaction was rolled back
    1205: ErrorKind.LOCK_TIMEOUT,  # lock wait timeout exceeded
    1020: ErrorKind.SERIALIZATION,  # record changed since last read (snapshot isolation)
} | dict.fromkeys(_CONNECTION_LOST, ErrorKind.CONNECTION_LOST)
_ACCESS_DENIED = 1045

_STATUS_WHERE = (
    "WHERE SESSION_ID = 'MASTER_SESSION_ID' OR LAST_UPDATE_TIMESTAMP IS NULL "
    "OR LAST_UPDATE_TIMESTAMP > utc_timestamp() - INTERVAL 300 SECOND"
)


def _status_query(table: str) -> str:
    # rows not updated for 5 minutes are instances gone
    return ("SELECT SERVER_ID, SESSION_ID = 'MASTER_SESSION_ID', REPLICA_LAG_IN_MILLISECONDS "
            f"FROM {table} {_STATUS_WHERE}")


def _driver(dbapi_connection: Any) -> Any:
    """The driver's own connection (PyMySQL's, or aiomysql's under SQLAlchemy's adapter)."""
    return getattr(dbapi_connection, "driver_connection", dbapi_connection)


def _socket(dbapi_connection: Any) -> Any:
    """A connection's socket: PyMySQL keeps it, aiomysql's stream transport has it."""
    raw = _driver(dbapi_connection)
    sock = getattr(raw, "_sock", None)
    if sock is None and getattr(raw, "_writer", None) is not None:
        sock = raw._writer.get_extra_info("socket")
    return sock


class MySqlDialect:
    """PyMySQL, and for asyncio aiomysql: PyMySQL's own protocol code, errors and login
    plugins (``mysql_clear_password`` for IAM) on asyncio streams, so that both are classified
    and behave alike (asyncmy, measured about 15 % faster under 50 concurrent tasks in a raw
    benchmark, reimplements all of that with its own errors)."""

    name = "mysql"
    drivername = "mysql+pymysql"
    async_drivername = "mysql+aiomysql"

    topology_queries: tuple[str, ...] = (
        _status_query("information_schema.replica_host_status"),
        _status_query("aurora_local.replica_host_status"),
    )
    # Aurora MySQL readers run with innodb_read_only; MariaDB/MySQL replicas with read_only
    is_reader_sql = "SELECT @@read_only OR @@innodb_read_only"
    is_writer_sql = "SELECT NOT (@@read_only OR @@innodb_read_only)"
    # how many connections clients may open (one more is kept for a SUPER/CONNECTION ADMIN)
    max_connections_sql = "SELECT @@max_connections"
    # this configuration's connections to the instance asked: the process list shows a user
    # its own threads without PROCESS; CURRENT_USER() is the account, ``user@host pattern``;
    # and those running a statement besides the one asking
    connections_sql = ("SELECT count(*), "
                       "COALESCE(SUM(COMMAND <> 'Sleep' AND ID <> CONNECTION_ID()), 0) "
                       "FROM information_schema.PROCESSLIST "
                       "WHERE USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1) AND DB = DATABASE()")
    # MariaDB's GTIDs (Aurora MySQL has none of its readers: it goes by replica lag)
    position_queries: tuple[PositionQueries, ...] = (
        PositionQueries("gtid", "SELECT @@gtid_binlog_pos", "SELECT @@gtid_slave_pos"),
    )
    snapshot_options: Mapping[str, Any] = MappingProxyType({"isolation_level": "REPEATABLE READ"})

    commit_marker_ddl = (
        "CREATE TABLE IF NOT EXISTS aurora_access_commit_markers "
        "(id varchar(64) NOT NULL PRIMARY KEY, "
        "created_at timestamp(6) NOT NULL DEFAULT current_timestamp(6)) ENGINE=InnoDB"
    )
    # (whether this instance takes writes, whether the marker is there): only the writer's
    # answer counts, a reader's copy may lag behind an acknowledged commit
    commit_marker_check_sql = (
        "SELECT NOT (@@read_only OR @@innodb_read_only), "
        "EXISTS (SELECT 1 FROM aurora_access_commit_markers WHERE id = %(id)s)"
    )
    commit_marker_cleanup_sql = (
        "DELETE FROM aurora_access_commit_markers WHERE created_at < now(6) - INTERVAL 1 DAY"
    )

    def __init__(self) -> None:
        self._contexts: dict[tuple[str, str | None], ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def classify(self, error: BaseException) -> ErrorKind:
        """What a PyMySQL error (or SQLAlchemy's wrapper of one) says about the instance."""
        orig = getattr(error, "orig", None) or error
        if isinstance(orig, pymysql.err.InterfaceError):
            return ErrorKind.CONNECTION_LOST  # "(0, '')": the connection is already closed
        code = orig.args[0] if isinstance(orig, pymysql.err.MySQLError) and orig.args else None
        if isinstance(code, int) and code in _BY_CODE:
            return _BY_CODE[code]
        if getattr(error, "connection_invalidated", False):
            return ErrorKind.CONNECTION_LOST
        return ErrorKind.OTHER

    def is_auth_failure(self, error: BaseException) -> bool:
        """The server refused the login (1045: a wrong or expired password or IAM token)."""
        return isinstance(error, pymysql.err.OperationalError) and bool(error.args) and \
            error.args[0] == _ACCESS_DENIED

    def lost_connection_error(self, message: str) -> Exception:
        return pymysql.err.OperationalError(2013, message)

    def commit_with_marker_statements(self, marker: str) -> list[str]:
        """Insert the marker; the COMMIT follows as the driver's own (PyMySQL's ``commit()``
        always sends one, so a COMMIT here would make it two). That is one round trip more than
        a bare COMMIT: MySQL runs several statements in one only with CLIENT_MULTI_STATEMENTS,
        which would also let any SQL injection in the application stack statements on every
        connection."""
        if not marker.isalnum():
            raise ValueError(f"a commit marker is hex digits, not {marker!r}")
        return [f"INSERT INTO aurora_access_commit_markers (id) VALUES ('{marker}')"]

    def abort_connection(self, dbapi_connection: Any) -> None:
        """Cut a connection's socket under whatever thread is blocked on it (a hung server
        never answers); the descriptor stays PyMySQL's to close."""
        sock = _socket(dbapi_connection)
        if sock is None:
            return
        with socket.socket(fileno=os.dup(sock.fileno())) as dup:
            dup.shutdown(socket.SHUT_RDWR)

    def idle_connection_lost(self, dbapi_connection: Any) -> bool:
        """A MySQL server sends nothing unasked to an idle connection but its goodbye (an
        error packet before it closes, or the end of the stream): anything to read means
        the connection is lost."""
        raw = _driver(dbapi_connection)
        reader = getattr(raw, "_reader", None)  # aiomysql: what asyncio has read already
        if reader is not None and (reader.at_eof() or len(getattr(reader, "_buffer", b""))):
            return True
        sock = _socket(dbapi_connection)
        return sock is None or bool(select.select([sock], [], [], 0)[0])

    def prepare_engine(self, engine: Engine) -> None:
        """SQLAlchemy ends every use of a connection with the DBAPI's ``rollback()``, also in
        autocommit, where there is nothing to roll back; PyMySQL sends it anyway, a round trip
        per read on a reader. Skip it on a connection in autocommit (PyMySQL keeps the flag
        from the server's last OK packet, no round trip). Nothing weaker: whether a
        transaction is open cannot be told that way, since PyMySQL takes no status flags from
        a SELECT's result, and a transaction that only read (FOR UPDATE, say) would stay open
        in the pool, holding its locks (found by the examples' tests). A rollback on a
        connection whose server is gone has nothing to undo and does not fail."""
        rollback = engine.dialect.do_rollback

        def do_rollback(dbapi_connection: Any) -> None:
            if dbapi_connection.get_autocommit():
                return
            try:
                rollback(dbapi_connection)
            except Exception as error:
                # The server is gone, and its transaction with it: nothing is left to roll
                # back. (Raised while the pool resets a returned connection, SQLAlchemy logs
                # a traceback at ERROR for every connection of a failed writer, as aiomysql's
                # do; the dead connection is replaced at its next checkout.)
                if not self.classify(error).instance_failed:
                    raise

        engine.dialect.do_rollback = do_rollback  # type: ignore[method-assign]

    def connected(self, dbapi_connection: Any) -> None:
        """A new connection is open: its handshake timeout no longer applies (PyMySQL's;
        aiomysql's handshake is bounded by ``connect_args``' creator instead)."""
        raw = _driver(dbapi_connection)
        if hasattr(raw, "_read_timeout"):
            raw._read_timeout = None

    def parse_position(self, value: Any) -> int | None:
        """A MariaDB GTID position (``'0-11-42'``, possibly several domains) as its newest
        sequence number; empty (nothing replicated yet) is 0; None stays None."""
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else str(value)
        if not text.strip():
            return 0
        try:
            parts = [[int(n) for n in gtid.strip().split("-")] for gtid in text.split(",")]
        except ValueError:
            parts = []
        if not parts or any(len(p) != 3 for p in parts):
            raise ValueError(f"not a MariaDB GTID position: {value!r}")
        return max(seq for _, _, seq in parts)

    def format_position(self, position: int) -> str:
        return f"GTID sequence {position}"

    def connect_args(self, sslmode: str, sslrootcert: str | None, connect_timeout: float,
                     asynchronous: bool = False) -> dict[str, Any]:
        """PyMySQL's arguments. TLS: ``disable`` turns it off; ``prefer`` is PyMySQL's own
        default (TLS when the server offers it); ``require`` and stricter pass one SSLContext,
        built once, so PyMySQL refuses a server without TLS before sending any credentials
        and no connection pays for building a context (22 ms each)."""
        # PyMySQL's connect_timeout covers the TCP connect only; the handshake reads wait
        # read_timeout, forever by default: a hung server (which the kernel still accepts
        # connections for) would hold the caller. read_timeout bounds the handshake and
        # ``connected`` lifts it, so queries may run as long as they need.
        if asynchronous:
            return self._async_connect_args(sslmode, sslrootcert, connect_timeout)
        args: dict[str, Any] = {"connect_timeout": connect_timeout,
                                "read_timeout": connect_timeout}
        if sslmode == "disable":
            args["ssl_disabled"] = True
        elif sslmode != "prefer":
            args["ssl"] = self._ssl_context(sslmode, sslrootcert)
        return args

    def _async_connect_args(self, sslmode: str, sslrootcert: str | None,
                            connect_timeout: float) -> dict[str, Any]:
        """aiomysql's: TLS as PyMySQL's (``prefer`` connects in clear: aiomysql does not
        offer TLS unasked); the whole connect, handshake included, bounded by
        ``connect_timeout`` (aiomysql bounds only the TCP connect)."""

        async def connect_within(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.wait_for(aiomysql.connect(*args, **kwargs), connect_timeout)

        args: dict[str, Any] = {"connect_timeout": connect_timeout,
                                "async_creator_fn": connect_within}
        if sslmode not in ("disable", "prefer"):
            args["ssl"] = self._ssl_context(sslmode, sslrootcert)
        return args

    def tls_in_use(self, dbapi_connection: Any) -> str | None:
        """PyMySQL wraps its socket in an ``ssl.SSLSocket`` once TLS is negotiated; aiomysql's
        stream transport holds an ``ssl.SSLObject``."""
        raw = _driver(dbapi_connection)
        writer = getattr(raw, "_writer", None)
        tls = writer.get_extra_info("ssl_object") if writer is not None else \
            getattr(raw, "_sock", None)
        if not isinstance(tls, ssl.SSLSocket | ssl.SSLObject):
            return None
        cipher = tls.cipher()
        return " ".join(part for part in (tls.version(), cipher and cipher[0]) if part) or "TLS"

    def _ssl_context(self, sslmode: str, sslrootcert: str | None) -> ssl.SSLContext:
        key = (sslmode, sslrootcert)
        with self._lock:
            context = self._contexts.get(key)
            if context is None:
                if sslmode == "require":
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                else:
                    cafile = None if sslrootcert in (None, "system") else sslrootcert
                    context = ssl.create_default_context(cafile=cafile)
                    context.check_hostname = sslmode == "verify-full"
                self._contexts[key] = context
        return context
