"""RoutingSession: a SQLAlchemy Session whose ``get_bind`` sends each statement to an instance.

The session carries only state (its mode, whether its transaction wrote, the commits it must
see); the decision is ``routing.statement_route`` and the choice of instance is the
``Router``'s (``router.py``).

Any Session class can route: ``routing_session_class(base, router)`` puts ``RoutingSession``
before ``base`` in the method order (SQLModel's ``Session``, a project's own subclass), and
the retries live in ``_execute_internal``, which every entry point reaches (``execute``,
``scalar``, ``scalars``, ``get``, lazy loads, refreshes, SQLModel's ``exec``), so none of them
can skip routing or failover handling.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import warnings
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError, SAWarning
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from .auth import login_refused
from .consistency import decode_token
from .errors import (
    CommitOutcomeUnknown,
    PoolExhausted,
    ReadOnlySessionError,
    TransactionReplayRequired,
)
from .routing import ROUTE_OPTION, Route, statement_route

if TYPE_CHECKING:
    from .consistency import CommitMark
    from .observe import RouteReason
    from .router import Router
    from .topology import Instance

#: a read that failed with its instance is retried this many times on another instance
READ_RETRIES = 2
# a bind argument of _open_writer_connection's: the writer, with nothing routed or counted
_OPEN_WRITER = "aurora_open_writer"

Mode = Literal["auto", "read_only", "writer"]


class RoutingSession(Session):
    """Reads to readers, writes to the writer; once its transaction wrote, it stays there.

    ``mode``: "auto" routes by statement; "read_only" raises ReadOnlySessionError on a write
    before any SQL is sent; "writer" sends everything to the writer. ``after``: a commit token
    whose commit every read must see. ``snapshot``: reads share one REPEATABLE READ, read-only
    transaction on one reader instead of autocommit statements.

    When an instance fails under it (connection lost, server shutting down, a writer that
    turned read-only): a read outside a write transaction is retried on another instance
    without the caller seeing it, and so is the first statement of a write transaction
    (nothing of the transaction ran, nothing reached the caller: it runs on the new writer);
    once a statement of a write transaction has run, the session is rolled back and
    TransactionReplayRequired raised (nothing of it was committed); a COMMIT cut off raises
    CommitOutcomeUnknown (``db.run_transaction`` resolves that case itself). A writer failure
    also makes the Database find the new writer before the error reaches the caller. An ORM
    flush that opens a write transaction first takes its writer connection, retrying that on
    the new writer, because SQLAlchemy discards the flush's pending changes when a flush
    fails.

    ``own_commit``: the last commit this session made; every later read through it sees that
    commit, in whatever context it runs (a framework may reload a returned object elsewhere).
    """

    #: the Router of the Database whose ``session_class`` this is (``routing_session_class``)
    aurora_router: Router | None = None

    def __init__(self, router: Router | None = None, mode: Mode = "auto",
                 after: CommitMark | str | None = None, snapshot: bool = False,
                 endpoint: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        router = router or self.aurora_router
        if router is None:
            raise TypeError(f"{type(self).__name__} needs a router: make sessions with "
                            "db.session(), db.sessionmaker or db.session_class")
        self.router = router
        self.mode: Mode = mode
        # ``db.sessionmaker(after=token)`` takes a commit token as ``db.session`` does
        self.after = decode_token(router.dialect.name, after) if isinstance(after, str) \
            else after
        self.snapshot = snapshot
        self.endpoint = endpoint  # a custom endpoint: reads only on its members
        self.wrote = False
        self.own_commit: CommitMark | None = None
        self.last_instance: Instance | None = None  # where the latest statement was sent
        self.last_route: RouteReason = "read"  # and why (for metrics)
        # the writer this transaction uses: it stays there even if the Database learns of a
        # new writer meanwhile (a transaction cannot move; it fails and is replayed instead)
        self.transaction_writer: tuple[Engine, Instance] | None = None
        # whether a statement has run on the writer in this transaction: until one has, a
        # failure there leaves nothing to replay, and the statement runs on the new writer
        self.writer_ran = False
        self._snapshot_bind: Engine | None = None

    # -- failures -------------------------------------------------------------------------

    def _execute_internal(self, *args: Any, **kwargs: Any) -> Any:
        # SQLAlchemy's one door for execute(), scalar(), scalars(), get(), lazy loads and
        # refreshes (and SQLModel's exec(), which calls Session.execute past any subclass's
        # execute): retrying here covers them all. A statement run by a do_orm_execute hook
        # inside another one is retried with its parent, not on its own.
        call = super()._execute_internal
        if kwargs.get("_parent_execute_state") is not None:
            return call(*args, **kwargs)
        observer = self.router.observer
        for attempt in range(READ_RETRIES + 1):
            began = time.perf_counter() if observer.enabled else 0.0
            try:
                result = call(*args, **kwargs)
            except DBAPIError as error:
                self._after_failure(error, retry=attempt < READ_RETRIES)
                continue
            except PoolTimeoutError as error:
                raise self._pool_exhausted() from error
            if self.transaction_writer is not None:
                self.writer_ran = True
            if observer.enabled:
                observer.statement(self.last_instance, self.last_route,
                                   time.perf_counter() - began)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def flush(self, objects: Any = None) -> None:
        if self.transaction_writer is None and self.mode != "read_only" and \
                self._flush_reaches_writer():
            self._open_writer_connection()
        observer = self.router.observer
        # metrics: a flush that writes is one operation on the writer (its INSERT, UPDATE and
        # DELETE statements run inside SQLAlchemy's unit of work, past _execute_internal)
        timed = observer.enabled and self.transaction_writer is not None and \
            self._flush_reaches_writer()
        began = time.perf_counter() if timed else 0.0
        try:
            super().flush(objects)
        except DBAPIError as error:
            # a flush writes: its transaction is lost (SQLAlchemy has already rolled the
            # session back, so ``wrote`` no longer says so)
            self._after_failure(error, retry=False, writing=True)
        except PoolTimeoutError as error:
            raise self._pool_exhausted() from error
        if self.transaction_writer is not None:
            self.writer_ran = True
            if timed:
                observer.statement(self.transaction_writer[1], "write",
                                   time.perf_counter() - began)

    def _flush_reaches_writer(self) -> bool:
        """Whether the pending changes include some that go to Aurora's writer."""
        states = itertools.chain(self._new, self._deleted, self.identity_map._modified)
        return any(self.routes(state.mapper) for state in states)

    def routes(self, mapper: Any) -> bool:
        """Whether statements on ``mapper``'s table are routed (True here; a subclass whose
        session also reaches other databases says which are not)."""
        return True

    def _open_writer_connection(self) -> None:
        """Take the writer connection a flush will use, before the flush: a connection the
        server closed is replaced (the pool's check), a writer that does not answer is looked
        for again and this tried on the new one. Raises what the last try raised."""
        for attempt in range(READ_RETRIES + 1):
            try:
                self.connection(bind_arguments={_OPEN_WRITER: True})
                return
            except PoolTimeoutError as error:
                raise self._pool_exhausted() from error
            except DBAPIError as error:
                kind = self.router.dialect.classify(error)
                instance = self.transaction_writer[1] if self.transaction_writer else None
                self.transaction_writer = None  # no connection was made: nothing to end
                if not kind.instance_failed or instance is None or attempt == READ_RETRIES:
                    raise
                self.router.fail(instance, kind)  # may raise NoWriterAvailable
                self.router.stats.bump("retries")

    def commit(self) -> None:
        if self.wrote or self.has_pending_changes():
            self.flush()  # a failure here is before COMMIT: the outcome is known
        try:
            super().commit()
        except DBAPIError as error:
            kind = self.router.dialect.classify(error)
            instance = self.transaction_writer[1] if self.transaction_writer else \
                self.last_instance
            if not kind.instance_failed or instance is None:
                raise
            self._clean()
            self.router.fail(instance, kind)
            raise CommitOutcomeUnknown(
                f"the connection to the writer {instance.id} ({instance.host}) failed during "
                f"COMMIT ({kind.value}): the transaction may or may not have committed. Use "
                "db.run_transaction() to have such outcomes resolved", instance.id) from error

    def _pool_exhausted(self) -> PoolExhausted:
        """What SQLAlchemy's pool timeout means here: which instance's pool, and what to do."""
        instance, s = self.last_instance, self.router.settings
        self.router.observer.pool_timeout(instance)
        where = "an instance" if instance is None else \
            f"the {instance.role} {instance.id} ({instance.host}:{instance.port})"
        return PoolExhausted(
            f"no connection to {where} within AURORA_POOL_TIMEOUT={s.pool_timeout:g} s: the "
            f"AURORA_POOL_SIZE={s.pool_size} + AURORA_MAX_OVERFLOW={s.max_overflow} "
            "connections of its pool are all in use in this process; hold sessions for less "
            "time, or make the pool larger within the instance's max_connections "
            "(aurora-access check --workers N)", instance.id if instance else None,
            instance.role if instance else None)

    def _after_failure(self, error: DBAPIError, retry: bool, writing: bool = False) -> None:
        """Return to retry the statement; otherwise raise what the caller should see."""
        kind = self.router.dialect.classify(error)
        instance = self.last_instance
        if instance is not None and self.router.dialect.is_auth_failure(error.orig or error):
            settings = self.router.settings
            raise login_refused(settings, instance.host, instance.port, None, error) from None
        if not kind.instance_failed or instance is None:
            raise error
        # a transaction that ran statements on the writer, or a snapshot, cannot go on
        # elsewhere: it is replayed. One whose first statement failed has nothing to replay.
        in_transaction = writing or self.snapshot or (
            self.writer_ran and (self.wrote or self.transaction_writer is not None))
        self._clean()
        self.router.fail(instance, kind)  # may raise NoWriterAvailable
        if in_transaction:
            raise TransactionReplayRequired(
                f"instance {instance.id} ({instance.host}) failed during a transaction "
                f"({kind.value}); it was rolled back, nothing of it was committed: run it "
                "again", instance.id) from error
        if not retry:
            raise error
        self.router.stats.bump("retries")

    def _clean(self) -> None:
        # the failed connection is invalidated; rolling back returns the session to a state
        # where it can run again (reader connections are autocommit: nothing is lost). After a
        # failed flush SQLAlchemy has already let go of the connection's transaction and
        # warns that there is nothing left to roll back there: expected, not news.
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "transaction already deassociated",
                                    category=SAWarning)
            self.rollback()

    # -- state ---------------------------------------------------------------------------

    def needs_commit(self) -> bool:
        """Whether ending the session's work must commit: it wrote, has changes to flush, or
        holds a writer transaction (a session that only read on readers has nothing)."""
        return self.wrote or self.has_pending_changes() or self.holds_writer_transaction()

    def has_pending_changes(self) -> bool:
        """``new or dirty or deleted``, without building those sets (a hot path)."""
        return bool(self._new or self._deleted or self.identity_map._modified)

    def holds_writer_transaction(self) -> bool:
        """Whether this session has a connection to the writer in its transaction (reader
        connections are autocommit or read-only: ending them has nothing to commit)."""
        return self.transaction_writer is not None

    def _writer(self, count: bool = True) -> Engine:
        self.last_route = "write"
        if self.transaction_writer is None:
            engine = self.router.writer_bind(self, count)
            assert self.last_instance is not None
            self.transaction_writer = (engine, self.last_instance)
            return engine
        engine, self.last_instance = self.transaction_writer
        if count:
            self.router.stats.bump("writes" if self.wrote else "reads_on_writer")
        return engine

    def get_bind(self, mapper: Any = None, *, clause: Any = None, **kw: Any) -> Engine:
        if kw.get(_OPEN_WRITER):  # _open_writer_connection: no statement yet, nothing to count
            return self._writer(count=False)
        # pinned at the call: session.execute(stmt, bind_arguments={"aurora_route": ...})
        pinned = kw.get(ROUTE_OPTION)
        if self.wrote:  # the transaction stays on its writer, whatever comes next
            return self._writer()
        route = statement_route(clause, flushing=self._flushing, wrote=self.wrote,
                                pinned=pinned)
        if self.mode == "writer" and route is Route.READER:
            engine = self._writer()
            self.last_route = "pinned"
            return engine
        if route is Route.WRITER:
            if self.mode == "read_only":
                raise ReadOnlySessionError(
                    "a write in a read-only session (db.read_only()); nothing was sent. Use "
                    "db.session() or db.writer() for work that writes")
            explicit = pinned is not None or (
                clause is not None and clause.get_execution_options().get(ROUTE_OPTION)
                is not None)
            if not explicit:
                self.wrote = True
            engine = self._writer()
            if explicit:
                self.last_route = "pinned"
            return engine
        if self.snapshot:
            if self._snapshot_bind is None:
                self._snapshot_bind = self.router.reader_bind(self, snapshot=True)
            return self._snapshot_bind
        return self.router.reader_bind(self)


def routing_session_class(base: type[Session] | None, router: Router) -> type[RoutingSession]:
    """A session class that routes through ``router``, built on ``base`` (any Session
    subclass; None for SQLAlchemy's own): ``RoutingSession`` comes first in its method order,
    so routing, retries and failover handling hold whatever ``base`` adds. Raises TypeError
    naming ``base`` if it is not a Session class."""
    if base is None:
        base = Session
    if not (isinstance(base, type) and issubclass(base, Session)):
        raise TypeError(f"session_class must be a subclass of sqlalchemy.orm.Session, not "
                        f"{base!r}")
    if issubclass(base, RoutingSession):
        bases: tuple[type, ...] = (base,)
        name = base.__qualname__
    else:
        bases = (RoutingSession, base)
        name = "RoutingSession" if base is Session else \
            f"RoutingSession[{base.__module__}.{base.__qualname__}]"
    return type(name, bases, {"aurora_router": router, "__module__": __name__,
                              "__qualname__": name})


@event.listens_for(RoutingSession, "after_commit")
def _after_commit(session: Session) -> None:
    if isinstance(session, RoutingSession):
        if session.wrote:
            session.own_commit = session.router.committed() or session.own_commit
        _transaction_ended(session)


@event.listens_for(RoutingSession, "after_rollback")
def _after_rollback(session: Session) -> None:
    if isinstance(session, RoutingSession):
        _transaction_ended(session)


def _transaction_ended(session: RoutingSession) -> None:
    session.wrote = False
    session.writer_ran = False
    session.transaction_writer = None
    session._snapshot_bind = None
