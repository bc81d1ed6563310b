"""AsyncDatabase: ``Database`` for asyncio (FastAPI, Starlette, Litestar), same guarantees.

SQLAlchemy's asyncio extension runs an AsyncSession's work in a greenlet, as its sync session;
that sync session here is a ``RoutingSession`` (``sync_session_class``), so routing,
read-your-writes, retries and failover handling are the very code ``Database`` runs. What
differs is waiting: the core's blocking work (its own queries for positions, writer discovery,
starting, signing an IAM token, reading a secret, resolving a commit's outcome) runs in a thread
and its sleeps are asyncio's (``_AsyncioBlocking``), so none of it holds the event loop.
``run_transaction`` runs ``Database``'s transaction runner inside the greenlet, awaiting the
application's function there. The monitor stays a thread with sync connections of its own: it
must go on while the loop is busy (a hung writer is noticed by a heartbeat that does not wait
for the loop), and it shares the sync side's code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Generic, Literal, TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session
from sqlalchemy.util.concurrency import await_, greenlet_spawn, in_greenlet
from typing_extensions import TypeVar as DefaultTypeVar

from .base import STAT_NAMES, BaseDatabase
from .blocking import Blocking, Signal
from .consistency import CommitMark, UnitOfWork, decode_token
from .session import RoutingSession, routing_session_class
from .settings import Settings
from .topology import Topology
from .transactions import Outcome

__all__ = ["STAT_NAMES", "AsyncDatabase", "AsyncUnitOfWork"]

T = TypeVar("T")
AsyncSessionT = DefaultTypeVar("AsyncSessionT", bound=AsyncSession, default=AsyncSession)

_ASYNC_SESSION = "aurora_access.async_session"  # a routing session's AsyncSession, in .info


class _AsyncioBlocking(Blocking):
    """Inside SQLAlchemy's greenlet (a session's work): blocking work in a thread and sleeps
    with asyncio, awaited through the greenlet, so that the event loop runs meanwhile.
    Elsewhere (a thread of the library's, or code already in a thread) as ``Blocking``."""

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        if in_greenlet():
            return await_(asyncio.to_thread(fn, *args))
        return fn(*args)

    def sleep(self, seconds: float) -> None:
        if in_greenlet():
            await_(asyncio.sleep(seconds))
        else:
            super().sleep(seconds)

    def wait(self, signal: Signal, timeout: float | None = None) -> bool:
        if not in_greenlet():
            return signal.wait(timeout)
        future = signal.future(asyncio.get_running_loop())
        if future is None:
            return True
        try:
            await_(asyncio.wait_for(future, timeout))
        except TimeoutError:
            return False
        return True


class AsyncUnitOfWork:
    """``UnitOfWork`` for asyncio code: its ``token()`` is awaited."""

    def __init__(self, unit: UnitOfWork) -> None:
        self.unit = unit

    @property
    def committed(self) -> bool:
        return self.unit.committed

    @property
    def after(self) -> CommitMark | None:
        return self.unit.after

    @property
    def latest(self) -> CommitMark | None:
        return self.unit.latest

    def known_token(self) -> str | None:
        return self.unit.known_token()

    async def token(self) -> str | None:
        """The token of the unit's newest commit, or None (learning its position may take a
        query on the writer, awaited on this loop)."""
        return self.unit.known_token() or await greenlet_spawn(lambda: self.unit.token)


class AsyncDatabase(BaseDatabase, Generic[AsyncSessionT]):
    """Async sessions that route reads and writes over an Aurora cluster's instances.

    ``session_class``: the AsyncSession class to build sessions on (SQLModel's
    ``AsyncSession`` with ``exec()``, a project's own subclass; default SQLAlchemy's); its
    sync session class gets the routing. Raises TypeError if it is not an AsyncSession class.
    Construction does no I/O; the first session (or ``await wait_ready()``) connects; ``await
    close()`` stops the monitor thread and closes every pool.
    """

    asynchronous = True

    def __init__(self, settings: Settings,
                 session_class: type[AsyncSessionT] | None = None, *,
                 meter_provider: Any = None, tracer_provider: Any = None) -> None:
        super().__init__(settings, meter_provider, tracer_provider)
        base = AsyncSession if session_class is None else session_class
        if not (isinstance(base, type) and issubclass(base, AsyncSession)):
            raise TypeError("session_class must be a subclass of "
                            f"sqlalchemy.ext.asyncio.AsyncSession, not {base!r}")
        sync_base = getattr(base, "sync_session_class", None) or Session
        #: the AsyncSession class of this Database's sessions
        self.session_class = cast("type[AsyncSessionT]", base)
        #: the routing Session class its sessions run as their sync session
        self.sync_session_class = routing_session_class(sync_base, self._router)
        #: an ``async_sessionmaker`` of routing sessions, for existing code
        self.sessionmaker: async_sessionmaker[AsyncSessionT] = async_sessionmaker(
            class_=self.session_class, sync_session_class=self.sync_session_class)
        self._transactions = self._build_transactions()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, prefix: str = "AURORA_", *,
                 session_class: type[AsyncSessionT] | None = None,
                 meter_provider: Any = None,
                 tracer_provider: Any = None) -> AsyncDatabase[AsyncSessionT]:
        """An AsyncDatabase configured from ``AURORA_*`` variables (``environ``, default
        ``os.environ``); ConfigError naming the variable if one is missing or malformed.
        ``meter_provider``, ``tracer_provider``: OpenTelemetry's, for its metrics and spans
        (``otel.py``)."""
        return cls(Settings.from_env(environ, prefix), session_class=session_class,
                   meter_provider=meter_provider, tracer_provider=tracer_provider)

    def _blocking(self) -> Blocking:
        return _AsyncioBlocking()

    def _routing_class(self) -> type[RoutingSession]:
        return self.sync_session_class

    def _new_routing_session(self) -> RoutingSession:
        session = self.sessionmaker(mode="writer")
        routing = cast(RoutingSession, session.sync_session)
        routing.info[_ASYNC_SESSION] = session
        return routing

    async def wait_ready(self, timeout: float = 30.0) -> Topology:
        """Connect and discover the cluster, trying again until a writer answers (in a
        thread: the loop runs meanwhile); returns the topology. NoWriterAvailable (with the
        last error) after ``timeout`` seconds; a refused login at once."""
        return await asyncio.to_thread(self._wait_ready, timeout)

    # -- sessions -----------------------------------------------------------------------

    def session(self, after: str | None = None, endpoint: str | None = None
                ) -> AbstractAsyncContextManager[AsyncSessionT]:
        """``async with db.session() as s``: a routing AsyncSession that commits on success,
        rolls back on error, always closes. ``after``: a commit token every read must see
        (InvalidCommitToken, a ValueError, if it is not one of ours). ``endpoint``: a custom
        endpoint whose members alone serve the reads."""
        return self._session("auto", after, snapshot=False, endpoint=endpoint)

    def read_only(self, snapshot: bool = False, after: str | None = None,
                  endpoint: str | None = None) -> AbstractAsyncContextManager[AsyncSessionT]:
        """Readers only; a write raises ReadOnlySessionError before any SQL is sent.
        ``snapshot=True``: one REPEATABLE READ, read-only transaction on one reader.
        ``endpoint``: a custom endpoint whose members alone serve the reads."""
        return self._session("read_only", after, snapshot=snapshot, endpoint=endpoint)

    def writer(self) -> AbstractAsyncContextManager[AsyncSessionT]:
        """Everything on the writer, in one transaction."""
        return self._session("writer", None, snapshot=False)

    @asynccontextmanager
    async def _session(self, mode: Literal["auto", "read_only", "writer"], after: str | None,
                       snapshot: bool, endpoint: str | None = None
                       ) -> AsyncIterator[AsyncSessionT]:
        mark = decode_token(self.dialect.name, after) if after else None
        session = self.sessionmaker(mode=mode, after=mark, snapshot=snapshot,
                                    endpoint=endpoint)
        try:
            yield session
            if cast(RoutingSession, session.sync_session).needs_commit():
                await session.commit()
        except BaseException:
            await session.rollback()
            raise
        finally:
            await session.close()

    async def run_transaction(self, fn: Callable[[AsyncSessionT], Awaitable[T]],
                              max_attempts: int = 3) -> T:
        """``await fn(session)`` in a writer transaction and commit it; return what fn
        returned. The same semantics as ``Database.run_transaction``: re-run after a failover
        rolled it back, a serialization failure or a deadlock; a COMMIT cut off by a failover
        resolved on the new writer, never committed twice; CommitOutcomeUnknown when no writer
        can tell."""

        def run_in_greenlet(routing: RoutingSession) -> T:
            return await_(fn(cast(AsyncSessionT, routing.info[_ASYNC_SESSION])))

        return await greenlet_spawn(self._transactions.run, run_in_greenlet, max_attempts)

    async def resolve_commit_outcome(self, marker: str,
                                     timeout: float | None = None) -> Outcome:
        """'committed', 'aborted' or 'unknown' for a commit marker (see ``Database``)."""
        return await asyncio.to_thread(self._transactions.resolve_commit_outcome, marker,
                                       timeout)

    # -- read-your-writes ---------------------------------------------------------------

    def unit_of_work(self, after: str | None = None
                     ) -> AbstractAsyncContextManager[AsyncUnitOfWork]:
        """``async with db.unit_of_work(after=token) as unit``: ``Database.unit_of_work`` for
        tasks (commits in every task created inside it count for its reads); ``await
        unit.token()`` after. No I/O to open or close it."""
        return _async_unit(self.request_unit(after))

    async def commit_token(self) -> str | None:
        """The token of the newest commit made in this task (or its unit of work), or None;
        at most one query on the writer, awaited on this loop."""
        mark = self._router.commits.current()
        if mark is None:
            return None
        return self._token(mark, False) or await greenlet_spawn(self._token, mark, True)

    # -- introspection ------------------------------------------------------------------

    def engine(self, role: str) -> AsyncEngine:
        """An AsyncEngine on the current writer ("writer"), on a reader ("reader") or on one
        instance by its id; commits through the writer's count for read-your-writes."""
        return self._pools.async_engine(self._engine(role))

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the monitor thread and close every pool (on this loop)."""
        await asyncio.to_thread(self._close_threads, timeout)
        await self._pools.dispose_async()

    async def __aenter__(self) -> AsyncDatabase[AsyncSessionT]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@asynccontextmanager
async def _async_unit(scope: Any) -> AsyncIterator[AsyncUnitOfWork]:
    with scope as unit:
        yield AsyncUnitOfWork(unit)
