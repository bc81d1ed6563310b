"""What engine-neutral tests need to ask an instance, per engine."""

from __future__ import annotations

from sqlalchemy import TextClause, text
from sqlalchemy.orm import Session

from aurora_access import RoutingSession

# (is this instance a reader, its instance id)
_WHERE = {
    "postgresql": "SELECT pg_is_in_recovery(), aurora_db_instance_identifier()",
    "mysql": "SELECT @@read_only = 1, CAST(@@server_id AS CHAR)",
}
# whether this connection runs over TLS
TLS_IN_USE = {
    "postgresql": "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    "mysql": "SELECT VARIABLE_VALUE <> '' FROM information_schema.SESSION_STATUS "
             "WHERE VARIABLE_NAME = 'Ssl_cipher'",
}


def where_sql(engine: str) -> TextClause:
    return text(_WHERE[engine])


def where(session: RoutingSession | Session, engine: str | None = None) -> tuple[bool, str]:
    """Whether the statement ran on a reader, and on which instance."""
    if engine is None:
        assert isinstance(session, RoutingSession)
        engine = session.router.dialect.name
    in_recovery, instance_id = session.execute(where_sql(engine)).one()
    return bool(in_recovery), str(instance_id)
