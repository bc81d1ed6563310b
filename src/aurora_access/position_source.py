"""Where read-your-writes reads log positions: chosen once, at start-up, among the dialect's
sources (Aurora's metadata first, then the engine's own functions), by asking the instances.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError

from .auth import first_line
from .consistency import PositionQueries
from .dialects import EngineDialect
from .topology import Topology

log = logging.getLogger("aurora_access")

#: reads one position: (host, sql) -> the value, None when unknown; raises DBAPIError
Position = Callable[[str, str], "int | None"]


def choose_position_source(dialect: EngineDialect, topology: Topology,
                           position: Position) -> PositionQueries | None:
    """The first of the dialect's position sources that the writer and a reader answer;
    None when none does (Aurora MySQL): read-your-writes then goes by replica lag."""
    for source in dialect.position_queries:
        if _answers(dialect, topology, position, source):
            log.info("read-your-writes by log position: %s", source.name)
            return source
    log.info("no log positions here: read-your-writes goes by replica lag")
    return None


def _answers(dialect: EngineDialect, topology: Topology, position: Position,
             source: PositionQueries) -> bool:
    """Whether the writer and a reader tell positions from ``source``. An instance that does
    not answer (down, or refusing the login) is no evidence either way: another reader is
    asked, and with no answer at all the source is assumed until shown otherwise. A refusal
    (a missing function, a revoked privilege) or a NULL is a no."""
    for host, sql in [(topology.writer.host, source.writer_sql),
                      *((r.host, source.replica_sql) for r in topology.readers)]:
        try:
            found = position(host, sql)
        except DBAPIError as exc:
            if exc.connection_invalidated or dialect.classify(exc).instance_failed \
                    or dialect.is_auth_failure(exc.orig or exc):
                continue
            log.debug("log positions from %s unavailable: %s", source.name,
                      first_line(exc.orig or exc))
            return False
        if found is None:
            return False
        if host != topology.writer.host:
            return True  # a reader answered (and the writer, unless it did not answer)
    return True
