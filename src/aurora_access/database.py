"""Database: the facade a threaded application holds (``AsyncDatabase`` is asyncio's).

Sessions (``session``, ``read_only``, ``writer``, ``sessionmaker``), ``run_transaction``, units
of work and commit tokens; what it shares with ``AsyncDatabase`` (its parts, lazy start, fork
safety, topology, stats) is in ``base.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Generic, Literal, TypeVar, cast

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from typing_extensions import TypeVar as DefaultTypeVar

from .base import STAT_NAMES, BaseDatabase
from .consistency import UnitOfWork, decode_token
from .session import RoutingSession, routing_session_class
from .settings import Settings
from .topology import Topology
from .transactions import Outcome

__all__ = ["STAT_NAMES", "Database"]

T = TypeVar("T")
#: the Session class a Database's sessions are (typed as the class given; at run time a
#: subclass of it and of RoutingSession)
SessionT = DefaultTypeVar("SessionT", bound=Session, default=RoutingSession)


class Database(BaseDatabase, Generic[SessionT]):
    """Sessions that route reads and writes over an Aurora cluster's instances.

    ``session_class``: the Session class to build sessions on (SQLModel's ``Session``, a
    project's own subclass; default SQLAlchemy's); every session this Database gives is a
    subclass of it that routes (``session_class`` attribute). Raises TypeError if it is not a
    Session class. Construction does no I/O (see ``base.py``); ``close()`` stops the monitor
    thread and closes every pool.
    """

    def __init__(self, settings: Settings, session_class: type[SessionT] | None = None, *,
                 meter_provider: Any = None, tracer_provider: Any = None) -> None:
        super().__init__(settings, meter_provider, tracer_provider)
        #: the routing Session class of this Database, for frameworks that take a class
        self.session_class: type[SessionT] = cast(
            "type[SessionT]", routing_session_class(session_class, self._router))
        #: a ``sessionmaker`` of ``session_class``, for existing code
        self.sessionmaker: sessionmaker[SessionT] = sessionmaker(class_=self.session_class)
        self._transactions = self._build_transactions()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, prefix: str = "AURORA_", *,
                 session_class: type[SessionT] | None = None,
                 meter_provider: Any = None,
                 tracer_provider: Any = None) -> Database[SessionT]:
        """A Database configured from ``AURORA_*`` variables (``environ``, default
        ``os.environ``); ConfigError naming the variable if one is missing or malformed.
        ``meter_provider``, ``tracer_provider``: OpenTelemetry's, for its metrics and spans
        (``otel.py``)."""
        return cls(Settings.from_env(environ, prefix), session_class=session_class,
                   meter_provider=meter_provider, tracer_provider=tracer_provider)

    def _routing_class(self) -> type[RoutingSession]:
        return cast("type[RoutingSession]", self.session_class)

    def _new_routing_session(self) -> RoutingSession:
        return cast(RoutingSession, self.sessionmaker(mode="writer"))

    def wait_ready(self, timeout: float = 30.0) -> Topology:
        """Connect and discover the cluster, trying again until a writer answers; returns the
        topology. Raises NoWriterAvailable (with the last error) once ``timeout`` seconds have
        passed, and at once an AuroraAccessError that waiting cannot cure (a refused login).
        For a start-up script that waits for the database."""
        return self._wait_ready(timeout)

    # -- sessions -----------------------------------------------------------------------

    def session(self, after: str | None = None,
                endpoint: str | None = None) -> AbstractContextManager[SessionT]:
        """A routing session: commits on success, rolls back on error, always closes.

        ``after``: a commit token (``commit_token()``) whose commit every read must see.
        Raises InvalidCommitToken (a ValueError) for a token that is not one of ours.
        ``endpoint``: a custom endpoint whose members alone serve the reads (writes still go
        to the writer); EndpointUnavailable when none of them can.
        """
        return self._session("auto", after, snapshot=False, endpoint=endpoint)

    def read_only(self, snapshot: bool = False, after: str | None = None,
                  endpoint: str | None = None) -> AbstractContextManager[SessionT]:
        """Readers only; a write raises ReadOnlySessionError before any SQL is sent.

        ``snapshot=True``: every read of the session sees one consistent snapshot (one
        REPEATABLE READ, read-only transaction on one reader) instead of one per statement.
        ``endpoint``: a custom endpoint whose members alone serve the reads.
        """
        return self._session("read_only", after, snapshot=snapshot, endpoint=endpoint)

    def writer(self) -> AbstractContextManager[SessionT]:
        """Everything on the writer, in one transaction."""
        return self._session("writer", None, snapshot=False)

    @contextmanager
    def _session(self, mode: Literal["auto", "read_only", "writer"], after: str | None,
                 snapshot: bool, endpoint: str | None = None) -> Iterator[SessionT]:
        mark = decode_token(self.dialect.name, after) if after else None
        session = self.sessionmaker(mode=mode, after=mark, snapshot=snapshot, endpoint=endpoint)
        try:
            yield session
            # a session that only read on readers has nothing to commit: skip the commit
            # machinery (pending ORM changes still flush and commit)
            if cast(RoutingSession, session).needs_commit():
                session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def run_transaction(self, fn: Callable[[SessionT], T], max_attempts: int = 3) -> T:
        """Run ``fn(session)`` in a writer transaction and commit it; return what fn returned.

        Re-runs fn (with jittered backoff, up to ``max_attempts`` runs in all) after
        TransactionReplayRequired (a failover rolled it back), a serialization failure or a
        deadlock. A COMMIT cut off by a failover is resolved on the new writer: committed ->
        fn's result is returned and fn is never run again; aborted -> fn runs again;
        undeterminable -> CommitOutcomeUnknown. Other errors (the application's own) propagate
        at once, after a rollback. ValueError if ``max_attempts`` is below 1.

        To resolve a commit, a transaction that wrote also inserts a row into
        ``aurora_access_commit_markers`` (made on first use; rows older than a day are deleted
        by the monitor), sent with the COMMIT in one round trip.
        """
        return self._transactions.run(cast("Callable[[RoutingSession], T]", fn), max_attempts)

    def resolve_commit_outcome(self, marker: str, timeout: float | None = None) -> Outcome:
        """'committed', 'aborted' or 'unknown': whether the transaction that wrote ``marker``
        committed, as the current writer (which has every acknowledged commit) sees it."""
        return self._transactions.resolve_commit_outcome(marker, timeout)

    # -- read-your-writes ---------------------------------------------------------------

    def unit_of_work(self, after: str | None = None) -> AbstractContextManager[UnitOfWork]:
        """A unit of work (a web request, a queued task, a script's step): every read inside
        it, in any thread or task whose context was copied from this one (a framework's
        worker threads, background tasks), sees every commit made inside it; when it ends its
        commits are forgotten (the context's own earlier commits are not). ``after``: a
        commit token its reads must also see (InvalidCommitToken, a ValueError, if it is not
        one of ours). The unit's ``token`` (after or inside it) is its newest commit's, for the
        next request or task. No I/O to open or close it; units nest (an inner unit's commits
        count for the outer one too).
        """
        return self.request_unit(after)

    def commit_token(self) -> str | None:
        """An opaque token for the newest commit made in this context (or in its open unit of
        work), or None.

        Pass it to ``session(after=token)`` in another context (a later request, another
        service) to read only from instances that have applied that commit. Costs at most one
        query on the writer (shared with concurrent callers), none if the position is known.
        Raises NoWriterAvailable if the writer cannot tell its position.
        """
        return self._current_token()

    # -- introspection ------------------------------------------------------------------

    def engine(self, role: str) -> Engine:
        """A SQLAlchemy Engine (for Core, Alembic) on the current writer ("writer"), on a
        reader ("reader"; the writer if there is none), or on one instance by its id.
        Transactions committed through the writer's count for read-your-writes. ValueError
        naming the instances if ``role`` is none of those."""
        return self._engine(role)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the monitor thread and close every pool. The process can then exit."""
        self._close_threads(timeout)
        self._pools.dispose()

    def __enter__(self) -> Database[SessionT]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
