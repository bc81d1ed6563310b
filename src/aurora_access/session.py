"""RoutingSession: a SQLAlchemy Session whose ``get_bind`` sends each statement to an instance.

The session carries only state (its mode, whether its transaction wrote, the commit position
it must see); the decision is ``routing.statement_route`` and the choice of instance is the
``Router``'s (``database.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from .consistency import CommitMark
from .errors import ReadOnlySessionError
from .routing import ROUTE_OPTION, Route, statement_route

if TYPE_CHECKING:
    from .database import Router

Mode = Literal["auto", "read_only", "writer"]


class RoutingSession(Session):
    """Reads to readers, writes to the writer; once its transaction wrote, it stays there.

    ``mode``: "auto" routes by statement; "read_only" raises ReadOnlySessionError on a write
    before any SQL is sent; "writer" sends everything to the writer. ``after``: a commit token
    whose commit every read must see. ``snapshot``: reads share one REPEATABLE READ, read-only
    transaction on one reader instead of autocommit statements.
    """

    def __init__(self, router: Router, mode: Mode = "auto", after: CommitMark | None = None,
                 snapshot: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.router = router
        self.mode: Mode = mode
        self.after = after
        self.snapshot = snapshot
        self.wrote = False
        self._snapshot_bind: Engine | None = None

    def has_pending_changes(self) -> bool:
        """``new or dirty or deleted``, without building those sets (a hot path)."""
        return bool(self._new or self._deleted or self.identity_map._modified)

    def holds_writer_transaction(self) -> bool:
        """Whether this session has a connection to the writer in its transaction (reader
        connections are autocommit or read-only: ending them has nothing to commit)."""
        transaction = self.get_transaction()
        if transaction is None:
            return False
        writer = self.router.current_writer_engine()
        return any(bind is writer for bind in transaction._connections)

    def get_bind(self, mapper: Any = None, *, clause: Any = None, **kw: Any) -> Engine:
        # pinned at the call: session.execute(stmt, bind_arguments={"aurora_route": ...})
        pinned = kw.get(ROUTE_OPTION)
        if self.wrote:  # the transaction stays on the writer, whatever comes next
            return self.router.writer_bind(self)
        route = statement_route(clause, flushing=self._flushing, wrote=self.wrote,
                                pinned=pinned)
        if self.mode == "writer" and route is Route.READER:
            return self.router.writer_bind(self)
        if route is Route.WRITER:
            if self.mode == "read_only":
                raise ReadOnlySessionError(
                    "a write in a read-only session (db.read_only()); nothing was sent. Use "
                    "db.session() or db.writer() for work that writes")
            if pinned is None and (clause is None or
                                   clause.get_execution_options().get(ROUTE_OPTION) is None):
                self.wrote = True
            return self.router.writer_bind(self)
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
        session._snapshot_bind = None


@event.listens_for(RoutingSession, "after_rollback")
def _after_rollback(session: Session) -> None:
    if isinstance(session, RoutingSession):
        session.wrote = False
        session._snapshot_bind = None
