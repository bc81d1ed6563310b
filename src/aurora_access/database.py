"""Database: the facade users hold. Sessions, units of work, tokens, topology, stats.

Making one does no I/O: it validates its arguments and builds its parts. The first use (a
session's first statement, ``topology()``, ``engine()``, ``run_transaction``, ``wait_ready``)
connects, discovers the cluster and starts the monitor thread; if that fails, the error reaches
that caller and the next use tries again. The parts:

- ``Router`` (``router.py``): which instance serves each routed statement;
- ``ClusterMonitor`` (``monitor.py``): topology, health, positions, writer discovery;
- ``TransactionRunner`` (``transactions.py``): ``run_transaction`` and commit outcomes;
- ``InstancePools`` (``pools.py``): one engine per instance;
- ``RoutingSession`` (``session.py``), built on the application's Session class.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Generic, Literal, TypeVar, cast

from sqlalchemy import URL, Engine
from sqlalchemy.orm import Session, sessionmaker
from typing_extensions import TypeVar as DefaultTypeVar

from .auth import credentials_for
from .consistency import CommitMark, UnitOfWork, decode_token, encode_token
from .dialects import for_engine
from .errors import NoWriterAvailable
from .monitor import ClusterMonitor
from .pools import InstancePools
from .router import Router
from .session import RoutingSession, routing_session_class
from .settings import Settings
from .stats import STAT_NAMES, Stats
from .topology import Topology
from .transactions import Outcome, TransactionRunner

__all__ = ["STAT_NAMES", "Database"]

T = TypeVar("T")
#: the Session class a Database's sessions are (typed as the class given; at run time a
#: subclass of it and of RoutingSession)
SessionT = DefaultTypeVar("SessionT", bound=Session, default=RoutingSession)

_WAIT_READY_POLL_S = 0.5
# every Database not closed, for the fork hook (weakly: a Database dropped is no concern)
_LIVE: weakref.WeakSet[Database[Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for database in list(_LIVE):
        database._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


class StartOnce:
    """Runs ``start`` once it succeeds; concurrent first callers wait for one attempt, and a
    failed attempt is tried again by the next caller."""

    def __init__(self, start: Callable[[], None]) -> None:
        self._start = start
        self._lock = threading.Lock()
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        with self._lock:
            if not self.done:
                self._start()
                self.done = True


class Database(Generic[SessionT]):
    """Sessions that route reads and writes over an Aurora cluster's instances.

    ``session_class``: the Session class to build sessions on (SQLModel's ``Session``, a
    project's own subclass; default SQLAlchemy's); every session this Database gives is a
    subclass of it that routes (``session_class`` attribute). Raises TypeError if it is not a
    Session class. Construction does no I/O (see the module docstring); ``close()`` stops the
    monitor thread and closes every pool.
    """

    def __init__(self, settings: Settings, session_class: type[SessionT] | None = None) -> None:
        self.settings = settings
        self._build()
        #: the routing Session class of this Database, for frameworks that take a class
        self.session_class: type[SessionT] = cast(
            "type[SessionT]", routing_session_class(session_class, self._router))
        #: a ``sessionmaker`` of ``session_class``, for existing code
        self.sessionmaker: sessionmaker[SessionT] = sessionmaker(class_=self.session_class)
        self._transactions = self._build_transactions()
        self._inherited: list[object] = []  # a forked child's parts of its parent (below)
        _LIVE.add(self)

    def _build(self) -> None:
        """The parts that hold connections, threads, locks and marks; made anew in a child
        process after a fork."""
        settings = self.settings
        self.dialect = for_engine(settings.engine)
        self._stats = Stats()
        self.credentials = credentials_for(
            settings, on_token=lambda: self._stats.bump("iam_tokens_generated"))
        self._pools = InstancePools(settings, self.dialect, self.credentials)
        self._router = Router(settings, self.dialect, self._pools, self._stats)
        self._monitor = ClusterMonitor(settings, self.dialect, self._pools, self._router,
                                       self._stats)
        self._pools.on_commit = self._router.committed  # Core, create_all, Alembic
        self._started = StartOnce(self._start)
        self._router.start = self._started

    def _build_transactions(self) -> TransactionRunner[SessionT]:
        runner: TransactionRunner[SessionT] = TransactionRunner(
            self.settings, self.dialect, self._pools, self._router, self._monitor, self._stats,
            self.sessionmaker)
        self._monitor.markers_ready = lambda: runner.markers_ready
        return runner

    def _after_fork_in_child(self) -> None:
        """A child process (gunicorn --preload, multiprocessing's fork, Celery's prefork) got
        a copy of this Database: its sockets are the parent's, its threads did not survive
        the fork, its locks may be held for good, its commit marks are the parent's. The
        child gets parts of its own: fresh pools (the parent's are kept, never closed here, so
        that no goodbye reaches the parent's sessions), monitor and watchdog threads started
        on first use, no commit mark. The session class and sessionmaker stay the same
        objects (frameworks hold them), routed by the new parts."""
        self._inherited.append((self._pools, self._monitor, self._router, self._transactions))
        self._build()
        self.session_class.aurora_router = self._router  # type: ignore[attr-defined]
        self._transactions = self._build_transactions()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, prefix: str = "AURORA_", *,
                 session_class: type[SessionT] | None = None) -> Database[SessionT]:
        """A Database configured from ``AURORA_*`` variables (``environ``, default
        ``os.environ``); ConfigError naming the variable if one is missing or malformed."""
        return cls(Settings.from_env(environ, prefix), session_class=session_class)

    def _start(self) -> None:
        try:
            self._monitor.start()
        except BaseException:
            self._pools.dispose()  # leave no connection behind a failed start
            raise

    def wait_ready(self, timeout: float = 30.0) -> Topology:
        """Connect and discover the cluster, trying again until a writer answers; returns the
        topology. Raises NoWriterAvailable (with the last error) once ``timeout`` seconds have
        passed, and at once an AuroraAccessError that waiting cannot cure (a refused login).
        For a start-up script that waits for the database."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._router.current_topology()
            except NoWriterAvailable as error:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NoWriterAvailable(
                        f"no writer answered within {timeout:g} s (wait_ready); the last try: "
                        f"{error}") from error
                time.sleep(min(_WAIT_READY_POLL_S, left))

    # -- sessions -----------------------------------------------------------------------

    def session(self, after: str | None = None) -> AbstractContextManager[SessionT]:
        """A routing session: commits on success, rolls back on error, always closes.

        ``after``: a commit token (``commit_token()``) whose commit every read must see.
        Raises InvalidCommitToken (a ValueError) for a token that is not one of ours.
        """
        return self._session("auto", after, snapshot=False)

    def read_only(self, snapshot: bool = False,
                  after: str | None = None) -> AbstractContextManager[SessionT]:
        """Readers only; a write raises ReadOnlySessionError before any SQL is sent.

        ``snapshot=True``: every read of the session sees one consistent snapshot (one
        REPEATABLE READ, read-only transaction on one reader) instead of one per statement.
        """
        return self._session("read_only", after, snapshot=snapshot)

    def writer(self) -> AbstractContextManager[SessionT]:
        """Everything on the writer, in one transaction."""
        return self._session("writer", None, snapshot=False)

    @contextmanager
    def _session(self, mode: Literal["auto", "read_only", "writer"], after: str | None,
                 snapshot: bool) -> Iterator[SessionT]:
        mark = decode_token(self.dialect.name, after) if after else None
        session = self.sessionmaker(mode=mode, after=mark, snapshot=snapshot)
        routing = cast(RoutingSession, session)
        try:
            yield session
            # a session that only read on readers has nothing to commit: skip the commit
            # machinery (pending ORM changes still flush and commit)
            if routing.wrote or routing.has_pending_changes() or \
                    routing.holds_writer_transaction():
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
        return self._transactions.run(fn, max_attempts)

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
        mark = decode_token(self.dialect.name, after) if after else None
        return self._router.commits.unit_of_work(mark, self._token)

    def commit_token(self) -> str | None:
        """An opaque token for the newest commit made in this context (or in its open unit of
        work), or None.

        Pass it to ``session(after=token)`` in another context (a later request, another
        service) to read only from instances that have applied that commit. Costs at most one
        query on the writer (shared with concurrent callers), none if the position is known.
        Raises NoWriterAvailable if the writer cannot tell its position.
        """
        mark = self._router.commits.current()
        return None if mark is None else self._token(mark, True)

    def _token(self, mark: CommitMark, may_ask: bool) -> str | None:
        """The token of ``mark``; None if ``may_ask`` is False and that would take a query."""
        if not self._router.lag_mode and mark.position is None:
            mark.position = self._router.writer_positions.known_after(mark.committed_ns)
            if mark.position is None:
                if not may_ask:
                    return None
                if self._router.needed_position([mark]) is None:
                    raise NoWriterAvailable("the writer did not answer with its log position")
        return encode_token(self.dialect.name, mark)

    def forget_commits(self) -> None:
        """End read-your-writes for this context's commits so far.

        A unit of work (``unit_of_work``, the web middleware) forgets its commits when it ends;
        call this where a context lives on without one (a thread that serves one job after
        another), so that the next job does not wait for the last one's commits. A job that
        must see them carries ``commit_token()`` instead.
        """
        self._router.commits.forget()

    # -- introspection ------------------------------------------------------------------

    def topology(self) -> Topology:
        """The writer and readers as last seen (the first call connects)."""
        return self._router.current_topology()

    def stats(self) -> dict[str, int]:
        """Counters since this Database was made (names in ``STAT_NAMES``)."""
        return self._stats.snapshot()

    def engine(self, role: str) -> Engine:
        """A SQLAlchemy Engine (for Core, Alembic) on the current writer ("writer"), on a
        reader ("reader"; the writer if there is none), or on one instance by its id.
        Transactions committed through the writer's count for read-your-writes. ValueError
        naming the instances if ``role`` is none of those."""
        topology = self.topology()
        if role in ("writer", topology.writer.id):
            return self._pools.tracked_engine(topology.writer)
        if role == "reader":
            readers = [r for r in topology.readers if r.id not in self._router.unhealthy]
            return self._pools.engine(readers[0] if readers else topology.writer)
        instances = [topology.writer, *topology.readers]
        for instance in instances:
            if instance.id == role:
                return self._pools.engine(instance)
        raise ValueError(f"not 'writer', 'reader' nor an instance id of this cluster: {role!r} "
                         f"(instances: {', '.join(i.id for i in instances)})")

    def url(self) -> URL:
        """The writer's SQLAlchemy URL, without a password (the cluster endpoint until the
        cluster has been discovered); no I/O. For Alembic's offline mode and for logs."""
        topology = self._router.topology
        host = self.settings.cluster_endpoint if topology is None else topology.writer.host
        return self._pools.url(host, self.settings.port)

    def refresh_topology(self) -> Topology:
        """Ask the instances for the topology now; keep the old one if none answers."""
        self._started()
        return self._monitor.refresh_topology()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the monitor thread and close every pool. The process can then exit."""
        _LIVE.discard(self)
        self._monitor.close(timeout)
        self._pools.dispose()

    def __enter__(self) -> Database[SessionT]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Database {self.settings.engine} {self.settings.cluster_endpoint}:"
                f"{self.settings.port}/{self.settings.database}>")
