"""RoutingSession: a SQLAlchemy Session whose ``get_bind`` sends each statement to an instance.

The session carries only state (its mode, whether its transaction wrote, the commit position
it must see); the decision is ``routing.statement_route`` and the choice of instance is the
``Router``'s (``database.py``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError, SAWarning
from sqlalchemy.orm import Session

from .consistency import CommitMark, decode_token
from .errors import CommitOutcomeUnknown, ReadOnlySessionError, TransactionReplayRequired
from .routing import ROUTE_OPTION, Route, statement_route

if TYPE_CHECKING:
    from .database import Router
    from .topology import Instance

#: a read that failed with its instance is retried this many times on another instance
READ_RETRIES = 2

Mode = Literal["auto", "read_only", "writer"]


class RoutingSession(Session):
    """Reads to readers, writes to the writer; once its transaction wrote, it stays there.

    ``mode``: "auto" routes by statement; "read_only" raises ReadOnlySessionError on a write
    before any SQL is sent; "writer" sends everything to the writer. ``after``: a commit token
    whose commit every read must see. ``snapshot``: reads share one REPEATABLE READ, read-only
    transaction on one reader instead of autocommit statements.

    When an instance fails under it (connection lost, server shutting down, a writer that
    turned read-only): a read outside a write transaction is retried on another instance
    without the caller seeing it; inside a write transaction the session is rolled back and
    TransactionReplayRequired raised (nothing of it was committed); a COMMIT cut off raises
    CommitOutcomeUnknown (``db.run_transaction`` resolves that case itself). A writer failure
    also makes the Database find the new writer before the error reaches the caller.
    """

    def __init__(self, router: Router, mode: Mode = "auto",
                 after: CommitMark | str | None = None, snapshot: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.router = router
        self.mode: Mode = mode
        # ``db.sessionmaker(after=token)`` takes a commit token as ``db.session`` does
        self.after = decode_token(router.dialect.name, after) if isinstance(after, str) \
            else after
        self.snapshot = snapshot
        self.wrote = False
        self.last_instance: Instance | None = None  # where the latest statement was sent
        # the writer this transaction uses: it stays there even if the Database learns of a
        # new writer meanwhile (a transaction cannot move; it fails and is replayed instead)
        self.transaction_writer: tuple[Engine, Instance] | None = None
        self._snapshot_bind: Engine | None = None

    # -- failures -------------------------------------------------------------------------

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self._retrying(super().execute, *args, **kwargs)

    def scalar(self, *args: Any, **kwargs: Any) -> Any:
        return self._retrying(super().scalar, *args, **kwargs)

    def scalars(self, *args: Any, **kwargs: Any) -> Any:
        return self._retrying(super().scalars, *args, **kwargs)

    def _retrying(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        for attempt in range(READ_RETRIES + 1):
            try:
                return call(*args, **kwargs)
            except DBAPIError as error:
                self._after_failure(error, retry=attempt < READ_RETRIES)
        raise AssertionError("unreachable")  # pragma: no cover

    def flush(self, objects: Any = None) -> None:
        try:
            super().flush(objects)
        except DBAPIError as error:
            # a flush writes: its transaction is lost (SQLAlchemy has already rolled the
            # session back, so ``wrote`` no longer says so)
            self._after_failure(error, retry=False, writing=True)

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
            self.router.instance_failed(instance, kind)
            raise CommitOutcomeUnknown(
                f"the connection to the writer {instance.id} ({instance.host}) failed during "
                f"COMMIT ({kind.value}): the transaction may or may not have committed. Use "
                "db.run_transaction() to have such outcomes resolved", instance.id) from error

    def _after_failure(self, error: DBAPIError, retry: bool, writing: bool = False) -> None:
        """Return to retry the statement; otherwise raise what the caller should see."""
        kind = self.router.dialect.classify(error)
        instance = self.last_instance
        if not kind.instance_failed or instance is None:
            raise error
        # a transaction that wrote, or one snapshot, cannot go on elsewhere: it is replayed
        in_transaction = writing or self.wrote or self.snapshot
        self._clean()
        self.router.instance_failed(instance, kind)  # may raise NoWriterAvailable
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

    def has_pending_changes(self) -> bool:
        """``new or dirty or deleted``, without building those sets (a hot path)."""
        return bool(self._new or self._deleted or self.identity_map._modified)

    def holds_writer_transaction(self) -> bool:
        """Whether this session has a connection to the writer in its transaction (reader
        connections are autocommit or read-only: ending them has nothing to commit)."""
        return self.transaction_writer is not None

    def _writer(self) -> Engine:
        if self.transaction_writer is None:
            engine = self.router.writer_bind(self)
            assert self.last_instance is not None
            self.transaction_writer = (engine, self.last_instance)
            return engine
        engine, self.last_instance = self.transaction_writer
        self.router.stats.bump("writes" if self.wrote else "reads_on_writer")
        return engine

    def get_bind(self, mapper: Any = None, *, clause: Any = None, **kw: Any) -> Engine:
        # pinned at the call: session.execute(stmt, bind_arguments={"aurora_route": ...})
        pinned = kw.get(ROUTE_OPTION)
        if self.wrote:  # the transaction stays on its writer, whatever comes next
            return self._writer()
        route = statement_route(clause, flushing=self._flushing, wrote=self.wrote,
                                pinned=pinned)
        if self.mode == "writer" and route is Route.READER:
            return self._writer()
        if route is Route.WRITER:
            if self.mode == "read_only":
                raise ReadOnlySessionError(
                    "a write in a read-only session (db.read_only()); nothing was sent. Use "
                    "db.session() or db.writer() for work that writes")
            if pinned is None and (clause is None or
                                   clause.get_execution_options().get(ROUTE_OPTION) is None):
                self.wrote = True
            return self._writer()
        if self.snapshot:
            if self._snapshot_bind is None:
                self._snapshot_bind = self.router.reader_bind(self, snapshot=True)
            return self._snapshot_bind
        return self.router.reader_bind(self)


@event.listens_for(RoutingSession, "after_commit")
def _after_commit(session: Session) -> None:
    if isinstance(session, RoutingSession):
        if session.wrote:
            session.router.committed()
        session.wrote = False
        session.transaction_writer = None
        session._snapshot_bind = None


@event.listens_for(RoutingSession, "after_rollback")
def _after_rollback(session: Session) -> None:
    if isinstance(session, RoutingSession):
        session.wrote = False
        session.transaction_writer = None
        session._snapshot_bind = None
