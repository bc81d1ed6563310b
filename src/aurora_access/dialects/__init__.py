"""Engine-specific SQL and driver settings, one module per engine.

The core (routing, topology, consistency) talks to an engine only through ``EngineDialect``;
adding an engine means adding a module here.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import ConfigError
from ..failover import ErrorKind
from .postgresql import PostgresDialect


class EngineDialect(Protocol):
    name: str
    drivername: str
    #: rows of (instance id, is writer, replica lag in ms) from Aurora's metadata
    topology_sql: str
    is_reader_sql: str
    writer_position_sql: str
    replica_position_sql: str
    is_writer_sql: str
    commit_marker_ddl: str
    commit_marker_check_sql: str
    commit_marker_cleanup_sql: str

    def classify(self, error: BaseException) -> ErrorKind: ...

    def abort_connection(self, dbapi_connection: Any) -> None: ...

    def commit_with_marker_sql(self, marker: str) -> str: ...

    def is_auth_failure(self, error: BaseException) -> bool: ...

    def parse_position(self, value: Any) -> int | None: ...

    def format_position(self, position: int) -> str: ...

    def connect_args(self, sslmode: str, sslrootcert: str | None,
                     connect_timeout: float) -> dict[str, Any]: ...


def for_engine(name: str) -> EngineDialect:
    if name == "postgresql":
        return PostgresDialect()
    raise ConfigError("AURORA_ENGINE", f"engine {name!r} is not supported yet; use postgresql")
