"""Engine-specific SQL and driver settings, one module per engine.

The core (routing, topology, consistency) talks to an engine only through ``EngineDialect``;
adding an engine means adding a module here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from sqlalchemy import Engine

from ..consistency import PositionQueries
from ..errors import ConfigError
from ..failover import ErrorKind
from .mysql import MySqlDialect
from .postgresql import PostgresDialect


class EngineDialect(Protocol):
    name: str
    drivername: str
    async_drivername: str
    #: rows of (instance id, is writer, replica lag in ms) from Aurora's metadata; tried in
    #: order until one answers (the next where a table or function is missing)
    topology_queries: tuple[str, ...]
    is_reader_sql: str
    #: where log positions are read, tried in order at start-up; none answering: lag mode
    position_queries: tuple[PositionQueries, ...]
    is_writer_sql: str
    max_connections_sql: str
    #: (connections, of them active) of the current user to the current database on the
    #: instance asked, the query's own included (``aurora-access watch``)
    connections_sql: str
    snapshot_options: Mapping[str, Any]
    commit_marker_ddl: str
    #: (takes writes, marker found) for a marker ``%(id)s``
    commit_marker_check_sql: str
    commit_marker_cleanup_sql: str

    def classify(self, error: BaseException) -> ErrorKind: ...

    def abort_connection(self, dbapi_connection: Any) -> None: ...

    def idle_connection_lost(self, dbapi_connection: Any) -> bool:
        """Whether an idle connection (between transactions) is known dead without a round
        trip: its server closed it or said goodbye (a crash, a shutdown, a failover)."""

    def commit_with_marker_statements(self, marker: str) -> list[str]:
        """The marker's INSERT, with the COMMIT where both go in one round trip (else the
        session's commit sends it)."""

    def is_auth_failure(self, error: BaseException) -> bool: ...

    def lost_connection_error(self, message: str) -> Exception:
        """A driver error that ``classify`` takes for a lost connection."""

    def prepare_engine(self, engine: Engine) -> None: ...

    def connected(self, dbapi_connection: Any) -> None: ...

    def parse_position(self, value: Any) -> int | None: ...

    def format_position(self, position: int) -> str: ...

    def connect_args(self, sslmode: str, sslrootcert: str | None, connect_timeout: float,
                     asynchronous: bool = False) -> dict[str, Any]: ...

    def tls_in_use(self, dbapi_connection: Any) -> str | None:
        """The TLS protocol and cipher of a live connection (``"TLSv1.3
        TLS_AES_256_GCM_SHA384"``, or just ``"TLS"`` where the driver cannot tell which), None
        when it runs in clear; read from the driver, no round trip."""


def takes_writes(dialect: EngineDialect, dbapi_connection: Any) -> bool:
    """Whether the instance of a new DBAPI connection (sync, or SQLAlchemy's asyncio adapter
    of one, inside its greenlet) takes writes; leaves no transaction open."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(dialect.is_writer_sql)
        row = cursor.fetchone()
    finally:
        cursor.close()
    dbapi_connection.rollback()
    return bool(row and row[0])


def for_engine(name: str) -> EngineDialect:
    if name == "postgresql":
        return PostgresDialect()
    if name == "mysql":
        return MySqlDialect()
    raise ConfigError("AURORA_ENGINE", f"engine {name!r} is not supported; use postgresql or "
                      "mysql")
