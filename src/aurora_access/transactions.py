"""run_transaction: a writer transaction that survives failovers, committed at most once.

fn(session) runs in a writer transaction. After a failover rolled it back
(TransactionReplayRequired), a serialization failure or a deadlock it runs again, with jittered
backoff. A COMMIT cut off by a failover is resolved on the new writer by a marker row the
transaction wrote (``aurora_access_commit_markers``, sent in the same round trip as the COMMIT
where the driver allows it): there -> committed, fn's result is returned and fn never runs
again; absent -> fn runs again; no writer to ask -> CommitOutcomeUnknown. (``pg_xact_status``
on the transaction id is unsound for this: an id whose WAL never reached the new writer is handed
out again there, and its status then describes another transaction.)
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import time
from collections.abc import Callable
from typing import Literal, TypeVar

from sqlalchemy.exc import DBAPIError, IntegrityError

from .dialects import EngineDialect
from .errors import CommitOutcomeUnknown, NoWriterAvailable, TransactionReplayRequired
from .failover import ErrorKind
from .monitor import ClusterMonitor
from .pools import InstancePools
from .router import Router
from .session import READ_RETRIES, RoutingSession
from .settings import Settings
from .stats import Stats
from .topology import Instance

log = logging.getLogger("aurora_access")
T = TypeVar("T")

Outcome = Literal["committed", "aborted", "unknown"]


class _RetryableError(Exception):
    """A serialization failure or deadlock inside run_transaction (its cause is the driver's
    error, raised as is once the attempts are spent)."""


class TransactionRunner:
    """``run_transaction`` and commit-outcome resolution for one Database.

    Works on the routing (sync) session that ``new_session`` makes; ``fn`` receives it. The
    asyncio Database runs this same code inside SQLAlchemy's greenlet, its ``fn`` awaiting the
    application's async function, and its router's ``blocking`` keeping the event loop free
    (this module's own waits and queries go through it)."""

    def __init__(self, settings: Settings, dialect: EngineDialect, pools: InstancePools,
                 router: Router, monitor: ClusterMonitor, stats: Stats,
                 new_session: Callable[[], RoutingSession]) -> None:
        self.settings = settings
        self.dialect = dialect
        self._pools = pools
        self._router = router
        self._monitor = monitor
        self._stats = stats
        self._new_session = new_session
        self.markers_ready = False

    def run(self, fn: Callable[[RoutingSession], T], max_attempts: int) -> T:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
        for attempt in range(1, max_attempts + 1):
            try:
                return self._run_once(fn)
            except (TransactionReplayRequired, _RetryableError) as error:
                if attempt == max_attempts:
                    if isinstance(error, _RetryableError) and error.__cause__ is not None:
                        raise error.__cause__ from None
                    raise
                self._stats.bump("retries")
                delay = min(0.02 * 2 ** attempt, 1.0) * random.uniform(0.5, 1.5)  # noqa: S311
                log.info("transaction attempt %d failed (%s); running it again in %.0f ms",
                         attempt, error, delay * 1000)
                self._router.blocking.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_once(self, fn: Callable[[RoutingSession], T]) -> T:
        for attempt in range(READ_RETRIES + 1):
            try:
                if not self.markers_ready:  # once per writer: no thread to learn it is done
                    self._router.blocking.run(self._ensure_commit_markers)
                break
            except DBAPIError as error:  # before the transaction: nothing to replay yet
                writer = self._router.current_topology().writer
                kind = self.dialect.classify(error)
                if not kind.instance_failed:
                    raise
                self._router.fail(writer, kind)
                if attempt == READ_RETRIES:
                    raise TransactionReplayRequired(
                        f"the writer {writer.id} failed before the transaction began; run it "
                        "again", writer.id) from error
        session = self._new_session()
        committing: tuple[Instance, str, T] | None = None  # writer, marker, fn's result
        try:
            try:
                result = fn(session)
                session.flush()
                if not session.wrote or session.transaction_writer is None:
                    session.commit()  # nothing written: nothing to resolve
                    return result
                # time first: the markers' index grows at its right edge, not at random pages
                marker = f"{time.time_ns():016x}{secrets.token_hex(6)}"
                committing = (session.transaction_writer[1], marker, result)
                self._commit_with_marker(session, marker)
            except DBAPIError as error:
                kind = self.dialect.classify(error)
                if kind.instance_failed and committing is not None:
                    return self._after_cut_off_commit(session, kind, *committing)
                if kind.retryable_transaction:
                    raise _RetryableError(str(error)) from error
                raise
            try:
                # PostgreSQL has committed: this closes the books; MySQL: this is the COMMIT
                session.commit()
            except CommitOutcomeUnknown as error:
                assert committing is not None
                cause = error.__cause__ if error.__cause__ is not None else error
                return self._after_cut_off_commit(session, self.dialect.classify(cause),
                                                  *committing)
            return result
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def _commit_with_marker(self, session: RoutingSession, marker: str) -> None:
        """INSERT the marker (and COMMIT, in the same round trip, where the driver can), on the
        DBAPI cursor itself (the statements need none of SQLAlchemy's machinery, which would
        cost more than they do)."""
        connection = session.connection()
        dbapi_error = connection.dialect.loaded_dbapi.Error
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        sql = ""
        try:
            for sql in self.dialect.commit_with_marker_statements(marker):
                cursor.execute(sql)
        except dbapi_error as error:
            wrapped = DBAPIError.instance(sql, None, error, dbapi_error)
            if self.dialect.classify(wrapped).instance_failed:
                connection.invalidate(error)
            raise wrapped from error
        finally:
            with contextlib.suppress(Exception):
                cursor.close()

    def _after_cut_off_commit(self, session: RoutingSession, kind: ErrorKind,
                              writer: Instance, marker: str, result: T) -> T:
        """The connection died while INSERT marker + COMMIT were in flight."""
        with contextlib.suppress(Exception):
            session.rollback()
        with contextlib.suppress(NoWriterAvailable):
            self._router.fail(writer, kind)
        with self._router.observer.span("aurora.commit_outcome", {
                "aurora.failed_instance.id": writer.id, "aurora.failure": kind.value}) as span:
            outcome = self._router.blocking.run(self.resolve_commit_outcome, marker)
            span.set_attribute("aurora.commit.outcome", outcome)
        log.warning("a COMMIT cut off on %s (%s) was %s", writer.id, kind.value, outcome)
        if outcome == "committed":
            # read-your-writes holds for it as for any commit, the session's own included
            session.own_commit = self._router.committed() or session.own_commit
            return result
        if outcome == "aborted":
            raise TransactionReplayRequired(
                f"the commit on {writer.id} did not survive the failover: run it again",
                writer.id) from None
        raise CommitOutcomeUnknown(
            f"the connection to the writer {writer.id} failed during COMMIT ({kind.value}) and "
            "no writer could say whether it committed", writer.id)

    def _ensure_commit_markers(self) -> None:
        if self.markers_ready:
            return
        writer = self._router.current_topology().writer
        try:
            with self._pools.probe_engine(writer.host, writer.port).connect() as conn:
                conn.exec_driver_sql(self.dialect.commit_marker_ddl)
        except IntegrityError:
            pass  # another process made it at the same moment
        self.markers_ready = True

    def resolve_commit_outcome(self, marker: str, timeout: float | None = None) -> Outcome:
        """Whether the transaction that wrote ``marker`` committed, as the writer (which has
        every acknowledged commit) sees it: an instance that answers but no longer takes
        writes (a demoted writer, reached through an old connection) is not asked, its copy
        may lag, and the writer is looked for instead."""
        deadline = time.monotonic() + (self.settings.failover_timeout if timeout is None
                                       else timeout)
        while True:
            writer = self._router.current_topology().writer
            try:
                with self._pools.probe_engine(writer.host, writer.port).connect() as conn:
                    takes_writes, found = conn.exec_driver_sql(
                        self.dialect.commit_marker_check_sql, {"id": marker}).one()
                if takes_writes:
                    return "committed" if found else "aborted"
                kind = ErrorKind.READ_ONLY
            except DBAPIError as error:
                kind = self.dialect.classify(error)
                if not kind.instance_failed:
                    return "unknown"
            if time.monotonic() >= deadline:
                return "unknown"
            with contextlib.suppress(Exception):
                self._monitor.recover_writer(writer, kind)
            time.sleep(0.05)
