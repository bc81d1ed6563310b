"""What the library reports while it works, for metrics exporters.

The core (sessions, router, monitor, pools) calls an ``Observer``; the default one does nothing
and says so (``enabled`` is False), so a statement's path pays one attribute check and no
clock reading when no exporter is configured. ``otel.OtelObserver`` records OpenTelemetry
metrics; another exporter implements the same methods. Nothing here imports a metrics library.

Routes (``aurora.route``): why a statement went where it went.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from .topology import Instance

#: ``read``: a reader; ``write``: the writer, for a write or inside a transaction that wrote;
#: ``pinned``: where ``aurora_route`` or a writer session sent it; ``ryw_fallback``: the writer,
#: as no reader had a commit the read must see in time; ``no_reader``: the writer, as no reader
#: was usable (none, down, lagging beyond the limit)
RouteReason = Literal["read", "write", "pinned", "ryw_fallback", "no_reader"]


class SpanLike(Protocol):
    """What the library does with a span of its own: say what it found."""

    def set_attribute(self, key: str, value: Any) -> object: ...


class _NoSpan:
    def set_attribute(self, key: str, value: Any) -> None:
        pass


class Observer:
    """Receives the library's events; this one ignores them (no exporter configured)."""

    #: whether anything is recorded: when False, callers skip even reading the clock
    enabled = False

    def statement(self, instance: Instance | None, route: RouteReason,
                  seconds: float) -> None:
        """A statement ran on ``instance`` for ``route``, taking ``seconds``."""

    def writer_failed(self, writer: Instance) -> None:
        """The writer stopped answering (a statement's connection, the heartbeat), or the
        monitor saw another instance take its place: a failover's recovery is timed from the
        first of these."""

    def writer_changed(self, writer: Instance) -> None:
        """``writer`` is the writer now (found by a search, or seen by the monitor)."""

    def writer_discovery(self, seconds: float, found: bool) -> None:
        """A search for the writer ended (found, or NoWriterAvailable) after ``seconds``."""

    def ryw_wait(self, seconds: float, on_reader: bool) -> None:
        """A read waited ``seconds`` for a reader to replay a commit; ``on_reader``: one did
        (else it went to the writer)."""

    def connection_created(self, host: str, seconds: float) -> None:
        """A new connection to ``host`` was opened (login included) in ``seconds``."""

    def connection_wait(self, host: str, seconds: float) -> None:
        """A caller got a connection to ``host`` from its pool after ``seconds`` (the queue,
        and a new connection's login when one was opened for it)."""

    def pool_timeout(self, instance: Instance | None) -> None:
        """A caller waited AURORA_POOL_TIMEOUT for a connection and got PoolExhausted."""

    def span(self, name: str, attributes: dict[str, Any]) -> AbstractContextManager[SpanLike]:
        """A span around work of the library's own (writer discovery, a read-your-writes
        wait, a commit's outcome being resolved), current while it runs."""
        return nullcontext(_NO_SPAN)

    def close(self) -> None:
        """The Database closed: what was kept is handed over, and nothing more reported."""

    def flush(self) -> None:
        """Hand what was kept to the exporter (called by the monitor's thread each refresh)."""

    def quiet(self) -> AbstractContextManager[object]:
        """Work of the library's own (its monitor's and positions' one-statement queries)
        that tracing instrumentations should leave out: as statement spans they would bury
        the application's (a read-your-writes wait asks every 2 ms). Whether or not this
        Database was given a provider: an application that instruments SQLAlchemy has
        imported OpenTelemetry, whose context says so; one that has not pays a dict
        lookup."""
        context = sys.modules.get("opentelemetry.context")
        return nullcontext() if context is None else _suppressed(context)


@contextmanager
def _suppressed(context: Any) -> Iterator[None]:
    """The key OpenTelemetry's instrumentations check before making spans, set (the API's
    ``opentelemetry.context`` module, already imported by the application)."""
    key = getattr(context, "_SUPPRESS_INSTRUMENTATION_KEY", "suppress_instrumentation")
    token = context.attach(context.set_value(key, True))
    try:
        yield
    finally:
        context.detach(token)


_NO_SPAN = _NoSpan()


NO_OBSERVER = Observer()
