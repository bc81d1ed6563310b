"""Database: the facade users hold. Sessions, topology, pools, read-your-writes, stats.

``Router`` picks the instance for each statement that ``RoutingSession`` routed: the writer,
or a reader that is healthy, within the lag limit and (read-your-writes) has replayed the
context's last commit; else the writer, counted in ``ryw_fallbacks``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Literal, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import sessionmaker

from .auth import credentials_for
from .consistency import (
    CommitMark,
    CommitTracker,
    ReplicaPositions,
    WriterPositions,
    decode_token,
    encode_token,
)
from .dialects import EngineDialect, for_engine
from .errors import (
    AuroraAccessError,
    CommitOutcomeUnknown,
    NoWriterAvailable,
    TransactionReplayRequired,
)
from .failover import ErrorKind, Watchdog, WriterDiscovery
from .pools import InstancePools
from .session import RoutingSession
from .settings import Settings
from .topology import Instance, Topology, discover

log = logging.getLogger("aurora_access")
T = TypeVar("T")

STAT_NAMES = ("reads_on_readers", "reads_on_writer", "writes", "failovers", "retries",
              "ryw_fallbacks", "ryw_waits", "iam_tokens_generated", "topology_refreshes",
              "writer_heartbeat_failures")
_RYW_POLL_S = 0.002
_MARKER_CLEANUP_INTERVAL_S = 3600.0


class _RetryableError(Exception):
    """A serialization failure or deadlock inside run_transaction (its cause is the driver's
    error, raised as is once the attempts are spent)."""


class Stats:
    """Named counters, safe to bump from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter({name: 0 for name in STAT_NAMES})

    def bump(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counts[name] += by

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class Router:
    """Chooses instances for routed statements; shared by every session of one Database."""

    def __init__(self, settings: Settings, dialect: EngineDialect, pools: InstancePools,
                 stats: Stats,
                 observe_writer_position: Callable[[], int | None] = lambda: None,
                 replica_position: Callable[[Instance], int | None] = lambda r: None) -> None:
        self.settings = settings
        self.dialect = dialect
        self.pools = pools
        self.stats = stats
        self.commits = CommitTracker()
        self.writer_positions = WriterPositions(observe_writer_position)
        self.replica_position = replica_position  # raises if the reader does not answer
        self.replica_positions = ReplicaPositions()
        self.topology: Topology | None = None
        self.writer_engine: Engine | None = None  # the current writer's, kept at hand
        self.topology_at_ns = 0  # when the topology (and its lag figures) was read
        self.unhealthy: set[str] = set()
        # True where the instances cannot tell log positions (Aurora): read-your-writes
        # then goes by reported replica lag (see consistency.py)
        self.lag_mode = False
        self.request_refresh: Callable[[], None] = lambda: None
        # set by Database: what to do when an instance fails under a session
        self.instance_failed: Callable[[Instance, ErrorKind], None] = lambda i, k: None
        self._next = 0

    # -- binds for RoutingSession -------------------------------------------------------

    def writer_bind(self, session: RoutingSession) -> Engine:
        self.stats.bump("writes" if session.wrote else "reads_on_writer")
        topology = self._topology()
        session.last_instance = topology.writer
        engine = self.writer_engine
        if engine is None:
            engine = self.writer_engine = self.pools.engine(topology.writer)
        return engine

    def reader_bind(self, session: RoutingSession, snapshot: bool = False) -> Engine:
        topology = self._topology()
        reader = self._choose_reader(topology, session.after)
        if reader is None:
            writer = session.last_instance = topology.writer
            self.stats.bump("reads_on_writer")
            if snapshot:
                return self.pools.engine(writer)
            # a read, even on the writer, needs no transaction: autocommit, one round trip
            return self.pools.probe_engine(writer.host, writer.port)
        session.last_instance = reader
        self.stats.bump("reads_on_readers")
        return self.pools.snapshot_engine(reader) if snapshot else self.pools.engine(reader)

    def committed(self) -> None:
        if self.settings.read_your_writes:
            self.commits.committed()

    # -- reader choice ------------------------------------------------------------------

    def _choose_reader(self, topology: Topology, after: CommitMark | None) -> Instance | None:
        max_lag = self.settings.max_replica_lag_ms
        usable = [r for r in topology.readers if r.id not in self.unhealthy
                  and (r.lag_ms is None or r.lag_ms <= max_lag)]
        if not usable:
            return None
        marks = [m for m in (after, self.commits.current() if self.settings.read_your_writes
                             else None) if m is not None]
        if not marks:
            return self._pick(usable)
        if self.lag_mode:
            return self._choose_by_lag(usable, max(m.committed_ns for m in marks))
        return self._choose_by_position(usable, marks)

    def _choose_by_position(self, usable: list[Instance],
                            marks: list[CommitMark]) -> Instance | None:
        """A reader that has replayed every commit of ``marks``: proven by known positions
        (no round trip), else asked, waiting up to ryw_wait_ms; None: read on the writer."""
        needed = self.needed_position(marks)
        if needed is None:  # a commit to see whose position could not be learned
            self.stats.bump("ryw_fallbacks")
            return None
        proven = [r for r in usable if self.replica_positions.reached(r.id, needed)]
        if proven:
            return self._pick(proven)
        self.stats.bump("ryw_waits")
        deadline = time.monotonic() + self.settings.ryw_wait_ms / 1000
        while True:
            for reader in usable:
                if self._replica_reached(reader, needed):
                    return reader
            if time.monotonic() >= deadline:
                break
            time.sleep(_RYW_POLL_S)
        self.stats.bump("ryw_fallbacks")
        log.debug("read-your-writes: no reader has replayed %s within %.0f ms; reading on "
                  "the writer", self.dialect.format_position(needed), self.settings.ryw_wait_ms)
        return None

    def _choose_by_lag(self, usable: list[Instance], committed_ns: int) -> Instance | None:
        """Aurora's fallback: a reader whose reported lag, at the time it was reported, is
        shorter than the time from the commit to that report has (by that report) applied it."""
        deadline = time.monotonic() + self.settings.ryw_wait_ms / 1000
        waited = False
        while True:
            topology = self._topology()
            since_commit_ms = (self.topology_at_ns - committed_ns) / 1e6
            fresh = [r for r in topology.readers if r in usable and r.lag_ms is not None
                     and r.lag_ms < since_commit_ms]
            if fresh:
                return self._pick(fresh)
            if time.monotonic() >= deadline:
                break
            if not waited:
                self.stats.bump("ryw_waits")
                waited = True
                self.request_refresh()
            time.sleep(_RYW_POLL_S)
        self.stats.bump("ryw_fallbacks")
        return None

    def needed_position(self, marks: list[CommitMark]) -> int | None:
        """The newest log position among ``marks``, learning those not yet known (a shared
        query on the writer at most). None if the writer could not say."""
        needed = -1
        current = self.commits.current()
        for mark in marks:
            position = mark.position
            if position is None:
                position = self.writer_positions.position_after(
                    mark.committed_ns, self.settings.connect_timeout)
                if position is None:
                    return None
                if mark is current:
                    self.commits.learned(mark, position)
            needed = max(needed, position)
        return needed

    def _replica_reached(self, reader: Instance, needed: int) -> bool:
        try:
            position = self.replica_position(reader)
        except Exception as exc:
            log.warning("reader %s did not answer its replay position: %s", reader.id,
                        type(exc).__name__)
            self.unhealthy = self.unhealthy | {reader.id}
            return False
        self.replica_positions.update(reader.id, position)
        return position is not None and position >= needed

    def _pick(self, readers: list[Instance]) -> Instance:
        strategy = self.settings.reader_selection
        if len(readers) == 1:
            return readers[0]
        if strategy == "random":
            return random.choice(readers)  # noqa: S311 - load spreading, not security
        if strategy == "least_connections":
            return min(readers, key=self.pools.checked_out)
        if strategy == "lowest_lag":
            return min(readers, key=lambda r: r.lag_ms if r.lag_ms is not None else 0.0)
        self._next = (self._next + 1) % len(readers)
        return readers[self._next]

    # -- positions and topology ---------------------------------------------------------

    def _topology(self) -> Topology:
        topology = self.topology
        if topology is None:
            raise NoWriterAvailable("no writer is known for this cluster")
        return topology


class Database:
    """Sessions that route reads and writes over an Aurora cluster's instances.

    Construction discovers the topology (raising NoWriterAvailable if no instance answers as
    the writer) and starts a daemon thread that refreshes it every
    ``topology_refresh_s``; ``close()`` stops it and closes every pool.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dialect = for_engine(settings.engine)
        self._stats = Stats()
        self.credentials = credentials_for(
            settings, on_token=lambda: self._stats.bump("iam_tokens_generated"))
        self._pools = InstancePools(settings, self.dialect, self.credentials,
                                    on_disconnect=self._host_down)
        self._router = Router(settings, self.dialect, self._pools, self._stats,
                              self._writer_position, self._replica_position)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._watchdog = Watchdog()
        self._router.request_refresh = self._wake.set
        self._router.instance_failed = self._instance_failed
        self._discovery = WriterDiscovery(self._is_writer, settings.failover_timeout)
        self._topology_lock = threading.Lock()
        self._topology_queries = list(self.dialect.topology_queries)  # reordered by discover
        self._markers_ready = False
        self.sessionmaker: sessionmaker[RoutingSession] = sessionmaker(
            class_=RoutingSession, router=self._router)
        try:
            self.refresh_topology()
            self._router.lag_mode = not self._positions_supported()
        except BaseException:
            self._watchdog.close()  # leave no thread or connection behind a failed start
            self._pools.dispose()
            raise
        self._monitor = threading.Thread(target=self._monitor_loop, daemon=True,
                                         name="aurora-access-topology")
        self._monitor.start()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 prefix: str = "AURORA_") -> Database:
        return cls(Settings.from_env(environ, prefix))

    # -- sessions -----------------------------------------------------------------------

    def session(self, after: str | None = None) -> AbstractContextManager[RoutingSession]:
        """A routing session: commits on success, rolls back on error, always closes.

        ``after``: a commit token (``commit_token()``) whose commit every read must see.
        Raises InvalidCommitToken (a ValueError) for a token that is not one of ours.
        """
        return self._session("auto", after, snapshot=False)

    def read_only(self, snapshot: bool = False,
                  after: str | None = None) -> AbstractContextManager[RoutingSession]:
        """Readers only; a write raises ReadOnlySessionError before any SQL is sent.

        ``snapshot=True``: every read of the session sees one consistent snapshot (one
        REPEATABLE READ, read-only transaction on one reader) instead of one per statement.
        """
        return self._session("read_only", after, snapshot=snapshot)

    def writer(self) -> AbstractContextManager[RoutingSession]:
        """Everything on the writer, in one transaction."""
        return self._session("writer", None, snapshot=False)

    @contextmanager
    def _session(self, mode: Literal["auto", "read_only", "writer"], after: str | None,
                 snapshot: bool) -> Iterator[RoutingSession]:
        mark = decode_token(self.dialect.name, after) if after else None
        session = self.sessionmaker(mode=mode, after=mark, snapshot=snapshot)
        try:
            yield session
            # a session that only read on readers has nothing to commit: skip the commit
            # machinery (pending ORM changes still flush and commit)
            if session.wrote or session.has_pending_changes() or \
                    session.holds_writer_transaction():
                session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def run_transaction(self, fn: Callable[[RoutingSession], T], max_attempts: int = 3) -> T:
        """Run ``fn(session)`` in a writer transaction and commit it; return what fn returned.

        Re-runs fn (with jittered backoff, up to ``max_attempts`` runs in all) after
        TransactionReplayRequired (a failover rolled it back), a serialization failure or a
        deadlock. A COMMIT cut off by a failover is resolved on the new writer: committed ->
        fn's result is returned and fn is never run again; aborted -> fn runs again;
        undeterminable -> CommitOutcomeUnknown. Other errors (the application's own) propagate
        at once, after a rollback.

        To resolve a commit, a transaction that wrote also inserts a row into
        ``aurora_access_commit_markers`` (made on first use; rows older than a day are deleted
        by the monitor), sent with the COMMIT in one round trip.
        """
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
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_once(self, fn: Callable[[RoutingSession], T]) -> T:
        try:
            self._ensure_commit_markers()
        except DBAPIError as error:
            writer, kind = self.topology().writer, self.dialect.classify(error)
            if not kind.instance_failed:
                raise
            self.recover_writer(writer, kind)
            raise TransactionReplayRequired(
                f"the writer {writer.id} failed before the transaction began; run it again",
                writer.id) from error
        session = self.sessionmaker(mode="writer")
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
            self.recover_writer(writer, kind)
        outcome = self.resolve_commit_outcome(marker)
        log.warning("a COMMIT cut off on %s (%s) was %s", writer.id, kind.value, outcome)
        if outcome == "committed":
            self._router.committed()  # read-your-writes holds for it as for any commit
            return result
        if outcome == "aborted":
            raise TransactionReplayRequired(
                f"the commit on {writer.id} did not survive the failover: run it again",
                writer.id) from None
        raise CommitOutcomeUnknown(
            f"the connection to the writer {writer.id} failed during COMMIT ({kind.value}) and "
            "no writer could say whether it committed", writer.id)

    def _ensure_commit_markers(self) -> None:
        if self._markers_ready:
            return
        writer = self.topology().writer
        try:
            with self._pools.probe_engine(writer.host, writer.port).connect() as conn:
                conn.exec_driver_sql(self.dialect.commit_marker_ddl)
        except IntegrityError:
            pass  # another process made it at the same moment
        self._markers_ready = True

    def resolve_commit_outcome(self, marker: str, timeout: float | None = None) -> str:
        """'committed', 'aborted' or 'unknown': whether the transaction that wrote ``marker``
        committed, as the current writer (which has every acknowledged commit) sees it."""
        deadline = time.monotonic() + (self.settings.failover_timeout if timeout is None
                                       else timeout)
        while True:
            writer = self.topology().writer
            try:
                with self._pools.probe_engine(writer.host, writer.port).connect() as conn:
                    found = conn.exec_driver_sql(self.dialect.commit_marker_check_sql,
                                                 {"id": marker}).scalar()
                return "committed" if found else "aborted"
            except DBAPIError as error:
                kind = self.dialect.classify(error)
                if not kind.instance_failed or time.monotonic() >= deadline:
                    return "unknown"
                with contextlib.suppress(Exception):
                    self.recover_writer(writer, kind)
                time.sleep(0.05)

    def commit_token(self) -> str | None:
        """An opaque token for the newest commit made in this context, or None.

        Pass it to ``session(after=token)`` in another context (a later request, another
        service) to read only from instances that have applied that commit. Costs at most one
        query on the writer (shared with concurrent callers), none if the position is known.
        Raises NoWriterAvailable if the writer cannot tell its position.
        """
        mark = self._router.commits.current()
        if mark is None:
            return None
        if not self._router.lag_mode and mark.position is None:
            position = self._router.needed_position([mark])
            if position is None:
                raise NoWriterAvailable("the writer did not answer with its log position")
            mark = CommitMark(mark.committed_ns, position)
        return encode_token(self.dialect.name, mark)

    def forget_commits(self) -> None:
        """End read-your-writes for this context's commits so far.

        Call it when a unit of work ends in a context that lives on: a server that reuses a
        thread for one request after another (gunicorn's gthread workers, a thread pool), so
        that the next request does not wait for the last one's commits. A request that must
        see them carries ``commit_token()`` instead.
        """
        self._router.commits.forget()

    # -- introspection ------------------------------------------------------------------

    def topology(self) -> Topology:
        return self._router._topology()

    def stats(self) -> dict[str, int]:
        return self._stats.snapshot()

    def engine(self, role: str) -> Engine:
        """A SQLAlchemy Engine (for Core, Alembic) on the current writer ("writer"), on a
        reader ("reader"; the writer if there is none), or on one instance by its id."""
        topology = self.topology()
        if role == "writer":
            return self._pools.engine(topology.writer)
        if role == "reader":
            readers = [r for r in topology.readers if r.id not in self._router.unhealthy]
            return self._pools.engine(readers[0] if readers else topology.writer)
        instances = [topology.writer, *topology.readers]
        for instance in instances:
            if instance.id == role:
                return self._pools.engine(instance)
        raise ValueError(f"not 'writer', 'reader' nor an instance id of this cluster: {role!r} "
                         f"(instances: {', '.join(i.id for i in instances)})")

    # -- topology -----------------------------------------------------------------------

    def refresh_topology(self) -> Topology:
        """Ask the instances for the topology now; keep the old one if none answers."""
        s = self.settings
        known = self._router.topology
        hosts = [] if known is None else [known.writer.host, *(r.host for r in known.readers)]
        began = time.monotonic_ns()
        try:
            topology = discover(self._query, self.dialect, self._topology_queries,
                                s.cluster_endpoint, s.reader_endpoint, s.port,
                                s.instance_host_pattern, [*hosts, s.cluster_endpoint])
        except Exception as exc:
            if known is None and self.dialect.is_auth_failure(getattr(exc, "orig", exc)):
                how = ("an IAM auth token" if s.iam_auth else
                       f"secret {s.secret_id}" if s.secret_id else "a password")
                raise AuroraAccessError(
                    f"{s.cluster_endpoint}:{s.port} refused the login of user {s.user!r} with "
                    f"{how}: check AURORA_USER, AURORA_REGION and the IAM policy, the "
                    "password or the secret") from None
            if known is None:
                raise NoWriterAvailable(
                    f"no instance of {s.cluster_endpoint}:{s.port} answered as the writer "
                    f"({type(exc).__name__}: {exc})") from exc
            log.warning("topology refresh failed, keeping the last one: %s", exc)
            return known
        self._apply(known, topology)
        self._router.topology_at_ns = began
        return topology

    def _apply(self, old: Topology | None, new: Topology) -> None:
        if old is not None and old.writer.id != new.writer.id:
            log.warning("writer changed: %s -> %s", old.writer.id, new.writer.id)
            self._stats.bump("failovers")
            self._router.writer_positions.reset()
            self._router.replica_positions.reset()
        if old is None or {r.id for r in old.readers} != {r.id for r in new.readers}:
            log.info("topology: writer %s, readers %s", new.writer.id,
                     ", ".join(r.id for r in new.readers) or "none")
        self._router.topology = new
        if old is None or (old.writer.host, old.writer.port) != (new.writer.host,
                                                                  new.writer.port):
            self._router.writer_engine = None
        s = self.settings
        self._pools.retain({new.writer.host, *(r.host for r in new.readers),
                            s.cluster_endpoint, s.reader_endpoint})
        self._stats.bump("topology_refreshes")

    # -- failures -----------------------------------------------------------------------

    def _instance_failed(self, instance: Instance, kind: ErrorKind) -> None:
        topology = self.topology()
        if instance.host != topology.writer.host:
            self._host_down(instance.host)
            return
        self.recover_writer(instance, kind)

    def recover_writer(self, failed: Instance, kind: ErrorKind) -> Instance:
        """Find the writer after ``failed`` failed: drop its whole pool, probe every known
        instance directly and in parallel (never the cluster endpoint, whose DNS lags), adopt
        the one that takes writes. Threads that fail at the same time share one search.
        Raises NoWriterAvailable after AURORA_FAILOVER_TIMEOUT."""
        current = self.topology()
        if current.writer.host != failed.host:
            return current.writer  # another thread already moved on
        log.warning("writer %s failed (%s): looking for the writer", failed.id, kind.value)
        self._pools.discard(failed.host)
        self._router.writer_engine = None
        host = self._discovery.find(self._instance_hosts)
        with self._topology_lock:
            old = self.topology()
            if old.writer.host == host:
                return old.writer
            known = {i.host: i for i in [old.writer, *old.readers]}
            writer = Instance(id=known[host].id if host in known else host, host=host,
                              port=self.settings.port, role="writer")
            self._apply(old, Topology(writer, [r for r in old.readers if r.host != host]))
        self._wake.set()  # the monitor fills in the rest (the old writer back as a reader)
        return writer

    def _instance_hosts(self) -> list[str]:
        topology = self.topology()
        return [topology.writer.host, *(r.host for r in topology.readers)]

    def _is_writer(self, host: str) -> bool:
        return bool(self._query(host, self.dialect.is_writer_sql)[0][0])

    def _heartbeat(self) -> None:
        """Ask the writer for a sign of life; one that does not answer in
        AURORA_HUNG_TIMEOUT_S is treated as failed: connections in use on it are cut (their
        callers see the failure at once instead of after the OS's minutes) and the writer is
        looked for again."""
        writer = self.topology().writer
        began = time.monotonic()
        try:
            self._query(writer.host, "SELECT 1")
        except DBAPIError as error:
            kind = self.dialect.classify(error)
            if not kind.instance_failed:
                raise
            cut = self._pools.abort_in_use(writer.host)
            log.warning("writer %s did not answer the heartbeat within %.1f s (%s); cut %d "
                        "connection(s) in use", writer.id, time.monotonic() - began,
                        kind.value, cut)
            self._stats.bump("writer_heartbeat_failures")
            self.recover_writer(writer, kind)

    def _host_down(self, host: str) -> None:
        topology = self._router.topology
        if topology is None:
            return
        for reader in topology.readers:
            if reader.host == host and reader.id not in self._router.unhealthy:
                log.warning("reader %s lost a connection: no reads until it answers again",
                            reader.id)
                self._router.unhealthy = self._router.unhealthy | {reader.id}
                self._wake.set()

    def _query(self, host: str, sql: str, timeout: float | None = None) -> list[tuple[Any, ...]]:
        """One statement on one host, cut off after ``timeout`` (default AURORA_HUNG_TIMEOUT_S)
        so that a hung host cannot hold the monitor or a probe."""
        with self._pools.probe_engine(host, self.settings.port).connect() as conn:
            dbapi_connection = conn.connection.dbapi_connection
            guard = self._watchdog.arm(timeout or self.settings.hung_timeout_s,
                                       lambda: self.dialect.abort_connection(dbapi_connection))
            try:
                result = conn.exec_driver_sql(sql)
                return [tuple(r) for r in result.fetchall()] if result.returns_rows else []
            finally:
                self._watchdog.disarm(guard)

    def _writer_position(self) -> int | None:
        """The writer's log position now; None if it does not answer (the heartbeat and the
        sessions deal with a failing writer)."""
        try:
            return self.dialect.parse_position(
                self._query(self.topology().writer.host, self.dialect.writer_position_sql)[0][0])
        except DBAPIError as exc:
            log.warning("could not read the writer's position: %s", type(exc).__name__)
            return None

    def _replica_position(self, reader: Instance) -> int | None:
        """How far ``reader`` has replayed; raises if it does not answer in time."""
        return self.dialect.parse_position(
            self._query(reader.host, self.dialect.replica_position_sql)[0][0])

    def _refresh_positions(self) -> None:
        topology = self._router.topology
        if topology is None:
            return
        if not self._router.lag_mode:
            began = time.monotonic_ns()
            position = self._writer_position()
            if position is not None:
                self._router.writer_positions.record(began, position)
        healthy: set[str] = set()
        for reader in topology.readers:
            try:
                replayed = self._replica_position(reader)
            except Exception as exc:
                log.debug("reader %s did not answer: %s", reader.id, type(exc).__name__)
                if isinstance(exc, DBAPIError) and self.dialect.classify(exc).instance_failed:
                    self._pools.abort_in_use(reader.host)  # reads hung on it fail now
                continue
            self._router.replica_positions.update(reader.id, replayed)
            healthy.add(reader.id)
        back = self._router.unhealthy & healthy
        if back:
            log.info("readers answering again: %s", ", ".join(sorted(back)))
        self._router.unhealthy = {r.id for r in topology.readers} - healthy

    def _positions_supported(self) -> bool:
        """Whether the writer tells its log position and readers their replay position
        (PostgreSQL and MariaDB do; Aurora does not). An instance that does not answer (down,
        or refusing the login) is no evidence either way: another reader is asked, and with no
        answer at all positions are assumed until shown otherwise."""
        topology = self.topology()
        for host, sql in [(topology.writer.host, self.dialect.writer_position_sql),
                          *((r.host, self.dialect.replica_position_sql)
                            for r in topology.readers)]:
            try:
                rows = self._query(host, sql)
            except DBAPIError as exc:
                if exc.connection_invalidated or self.dialect.classify(exc).instance_failed \
                        or self.dialect.is_auth_failure(exc.orig or exc):
                    continue
                log.info("log positions unavailable (%s): read-your-writes goes by replica lag",
                         type(exc.orig).__name__)
                return False
            if rows[0][0] is None:
                return False
            if host != topology.writer.host:
                return True  # a reader answered (and the writer, unless it did not answer)
        return True

    def _monitor_loop(self) -> None:
        next_cleanup = time.monotonic()
        while True:
            self._wake.wait(self.settings.topology_refresh_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._heartbeat()
                self.refresh_topology()
                self._refresh_positions()
                if self._markers_ready and time.monotonic() >= next_cleanup:
                    next_cleanup = time.monotonic() + _MARKER_CLEANUP_INTERVAL_S
                    self._query(self.topology().writer.host,
                                self.dialect.commit_marker_cleanup_sql)
            except NoWriterAvailable as exc:
                log.warning("%s", exc)
            except Exception:  # the monitor must outlive any one failure
                log.exception("topology monitor iteration failed")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the monitor thread and close every pool. The process can then exit."""
        self._stop.set()
        self._wake.set()
        if self._monitor.is_alive() and self._monitor is not threading.current_thread():
            self._monitor.join(timeout)
            if self._monitor.is_alive():
                warnings.warn(f"aurora-access topology monitor did not stop in {timeout} s",
                              RuntimeWarning, stacklevel=2)
        self._watchdog.close(timeout)
        self._pools.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
