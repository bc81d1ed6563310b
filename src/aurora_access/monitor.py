"""ClusterMonitor: what the cluster looks like now, kept current for the Router.

It discovers the topology (first on the Database's first use, then every
``AURORA_TOPOLOGY_REFRESH_S`` in a daemon thread), asks the writer for a sign of life (a hung
writer is cut off and looked for again), reads log positions for read-your-writes, takes readers
out of the rotation when their connections die and back when they answer, and finds the new
writer when the writer fails (``recover_writer``). Every query it sends is bounded by the
watchdog, so a hung host cannot hold it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DBAPIError

from .auth import first_line, login_refused
from .consistency import PositionQueries, WriterPositions
from .dialects import EngineDialect
from .errors import NoWriterAvailable
from .failover import ErrorKind, Watchdog, WriterDiscovery, likely_cause
from .pools import InstancePools
from .position_source import choose_position_source
from .router import Router
from .settings import Settings
from .stats import Stats
from .topology import Instance, Topology, discover, read_metadata

log = logging.getLogger("aurora_access")

_MARKER_CLEANUP_INTERVAL_S = 3600.0


class ClusterMonitor:
    """Topology, health and positions of one cluster, for one Database's Router."""

    def __init__(self, settings: Settings, dialect: EngineDialect, pools: InstancePools,
                 router: Router, stats: Stats) -> None:
        self.settings = settings
        self.dialect = dialect
        self._pools = pools
        self._router = router
        self._stats = stats
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._watchdog = Watchdog()
        self._discovery = WriterDiscovery(
            self._probe_writer, settings.failover_timeout,
            on_search=self._searched)
        self._topology_lock = threading.Lock()
        self._topology_queries = list(dialect.topology_queries)  # reordered by discover
        #: where log positions are read (chosen at start-up; None: the instances tell none)
        self.positions: PositionQueries | None = dialect.position_queries[0]
        # every instance ever seen, by host: writer discovery asks them all, whatever the last
        # topology said (an instance rejoining after a failover is missing from it)
        self._seen: dict[str, Instance] = {}
        self._thread: threading.Thread | None = None
        self._slept = False  # the pools were closed for idleness (``_idle``)
        #: set by the Database: whether the commit markers' table exists (to clean it up)
        self.markers_ready: Callable[[], bool] = lambda: False
        router.request_refresh = self._wake.set
        router.writer_positions = WriterPositions(self.writer_position, router.blocking)
        router.replica_position = self.replica_position
        router.instance_failed = self.instance_failed
        pools.on_disconnect = self.host_down
        pools.on_wake = self._wake.set

    def start(self) -> None:
        """Discover the cluster and start the monitor thread. Raises NoWriterAvailable if no
        instance answers as the writer, AuroraAccessError if the login is refused; nothing is
        left running then (a later call may try again)."""
        try:
            self.refresh_topology()
            self.positions = choose_position_source(
                self.dialect, self._router.current_topology(), self._position)
            self._router.lag_mode = self.positions is None
        except BaseException:
            self._watchdog.close()
            raise
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="aurora-access-topology")
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the monitor thread (warning if it would not stop within ``timeout``)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                warnings.warn(f"aurora-access topology monitor did not stop in {timeout} s",
                              RuntimeWarning, stacklevel=3)
        self._watchdog.close(timeout)

    # -- topology -----------------------------------------------------------------------

    def refresh_topology(self) -> Topology:
        """Ask the instances for the topology now; keep the old one if none answers."""
        s = self.settings
        known = self._router.topology
        began = time.monotonic_ns()
        try:
            topology = discover(self.query, self.dialect, self._topology_queries,
                                s.cluster_endpoint, s.reader_endpoint, s.port,
                                s.instance_host_pattern,
                                [*self._instance_hosts(), s.cluster_endpoint])
        except Exception as exc:
            if known is None:  # the first discovery: say what was tried and why it failed
                if self.dialect.is_auth_failure(getattr(exc, "orig", exc)):
                    raise login_refused(s, s.cluster_endpoint, s.port, s.user, exc) from None
                raise NoWriterAvailable(
                    f"no writer found through the cluster endpoint {s.cluster_endpoint}:"
                    f"{s.port}: {likely_cause(exc, s.connect_timeout)} (driver: "
                    f"{first_line(exc)})"
                ) from exc
            log.warning("topology refresh failed, keeping the last one: %s", first_line(exc))
            return known
        self._apply(known, topology)
        self._router.topology_at_ns = began
        return topology

    def _apply(self, old: Topology | None, new: Topology) -> None:
        if old is not None and old.writer.id != new.writer.id:
            log.warning("writer changed: %s -> %s", old.writer.id, new.writer.id)
            self._stats.bump("failovers")
            # seen here first when no statement failed on the old writer: timed from now
            self._router.observer.writer_failed(old.writer)
            self._router.observer.writer_changed(new.writer)
            self._router.writer_positions.reset()
            self._router.replica_positions.reset()
        if old is None or {r.id for r in old.readers} != {r.id for r in new.readers}:
            log.info("topology: writer %s, readers %s", new.writer.id,
                     ", ".join(r.id for r in new.readers) or "none")
        if old is not None:
            # a reader that joins (an old writer rejoining, a new replica) gets reads once it
            # has answered the monitor: listed is not ready (a rebuilt MariaDB instance refuses
            # the application's login until it has replayed the account)
            joined = {r.id for r in new.readers} - {r.id for r in old.readers}
            if joined:
                self._router.unhealthy = self._router.unhealthy | joined
        self._router.topology = new
        self._remember(new.instances)
        if old is None or (old.writer.host, old.writer.port) != (new.writer.host,
                                                                  new.writer.port):
            self._router.writer_engine = None
        s = self.settings
        self._pools.retain({new.writer.host, *(r.host for r in new.readers),
                            s.cluster_endpoint, s.reader_endpoint})
        self._stats.bump("topology_refreshes")

    # -- failures -----------------------------------------------------------------------

    def instance_failed(self, instance: Instance, kind: ErrorKind) -> None:
        topology = self._router.current_topology()
        if instance.host != topology.writer.host:
            self.host_down(instance.host)
            return
        self.recover_writer(instance, kind)

    def recover_writer(self, failed: Instance, kind: ErrorKind) -> Instance:
        """Find the writer after ``failed`` failed: drop its whole pool, probe every known
        instance directly and in parallel (never the cluster endpoint, whose DNS lags), adopt
        the one that takes writes. Threads that fail at the same time share one search.
        Raises NoWriterAvailable after AURORA_FAILOVER_TIMEOUT."""
        current = self._router.current_topology()
        if current.writer.host != failed.host:
            return current.writer  # another thread already moved on
        log.warning("writer %s failed (%s): looking for the writer", failed.id, kind.value)
        self._router.observer.writer_failed(failed)
        self._pools.discard(failed.host)
        self._router.writer_engine = None
        with self._router.observer.span("aurora.writer_discovery", {
                "aurora.failed_instance.id": failed.id, "aurora.failure": kind.value}) as span:
            host = self._discovery.find(self._instance_hosts)  # callers share one search
            span.set_attribute("aurora.writer.host", host)
        with self._topology_lock:
            old = self._router.current_topology()
            if old.writer.host == host:
                return old.writer
            seen = self._seen.get(host)
            writer = Instance(id=seen.id if seen is not None else host, host=host,
                              port=self.settings.port, role="writer")
            self._apply(old, Topology(writer, [r for r in old.readers if r.host != host]))
        self._wake.set()  # the monitor fills in the rest (the old writer back as a reader)
        return writer

    def _searched(self, seconds: float, found: bool) -> None:
        # the router's observer, as it is when the search ends (set after construction)
        self._router.observer.writer_discovery(seconds, found)

    def _instance_hosts(self) -> list[str]:
        """Where the writer may be: every instance ever seen, the current topology's first;
        without a host pattern, only the cluster endpoint (the reader endpoint's answer says
        nothing of the next connection it forwards)."""
        if self.settings.instance_host_pattern is None:
            return [self.settings.cluster_endpoint]
        topology = self._router.topology
        current = [] if topology is None else [i.host for i in topology.instances]
        return list(dict.fromkeys([*current, *self._seen]))

    def instance_at(self, host: str) -> Instance | None:
        """The instance seen at ``host`` (in any topology so far), or None (an endpoint)."""
        return self._seen.get(host)

    def _remember(self, instances: list[Instance]) -> None:
        for instance in instances:
            self._seen[instance.host] = instance

    def _probe_writer(self, host: str) -> bool:
        """Whether ``host`` is the writer: it says it takes writes and, where Aurora's
        metadata exists, the metadata on it names no other writer. The instances that
        metadata names are remembered, so the search asks them too (the instance promoted may
        be one the last topology missed)."""
        takes_writes = bool(self.query(host, self.dialect.is_writer_sql)[0][0])
        pattern = self.settings.instance_host_pattern
        if pattern is None:
            return takes_writes
        try:  # a copy of the query list: probes run in parallel, the reordering is discover's
            named = read_metadata(self.query, self.dialect, list(self._topology_queries), host,
                                  pattern, self.settings.port)
        except Exception:  # no metadata to be had here: the instance's word stands
            return takes_writes
        self._remember(named)
        me = self._seen.get(host)
        writers = {i.id for i in named if i.role == "writer"}
        if takes_writes and writers and me is not None and me.id not in writers:
            log.info("%s takes writes but its metadata names %s the writer: not yet", host,
                     ", ".join(sorted(writers)))
            return False
        return takes_writes

    def _heartbeat(self) -> None:
        """Ask the writer whether it still takes writes; one that does not answer in
        AURORA_HUNG_TIMEOUT_S is treated as failed: connections in use on it are cut (their
        callers see the failure at once instead of after the OS's minutes) and the writer is
        looked for again, as it is when the writer answers that it no longer takes writes."""
        writer = self._router.current_topology().writer
        began = time.monotonic()
        try:
            if not self.query(writer.host, self.dialect.is_writer_sql)[0][0]:
                log.warning("writer %s no longer takes writes", writer.id)
                self.recover_writer(writer, ErrorKind.READ_ONLY)
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

    def host_down(self, host: str) -> None:
        """A connection to ``host`` died: a reader there gets no reads until it answers."""
        topology = self._router.topology
        if topology is None:
            return
        for reader in topology.readers:
            if reader.host == host and reader.id not in self._router.unhealthy:
                log.warning("reader %s lost a connection: no reads until it answers again",
                            reader.id)
                self._router.unhealthy = self._router.unhealthy | {reader.id}
                self._wake.set()

    def query(self, host: str, sql: str, timeout: float | None = None) -> list[tuple[Any, ...]]:
        """One statement on one host, cut off after ``timeout`` (default AURORA_HUNG_TIMEOUT_S)
        so that a hung host cannot hold the monitor or a probe. Not traced as the
        application's statements are (``Observer.quiet``)."""
        with self._router.observer.quiet(), \
                self._pools.probe_engine(host, self.settings.port).connect() as conn:
            dbapi_connection = conn.connection.dbapi_connection
            guard = self._watchdog.arm(timeout or self.settings.hung_timeout_s,
                                       lambda: self.dialect.abort_connection(dbapi_connection))
            try:
                result = conn.exec_driver_sql(sql)
                return [tuple(r) for r in result.fetchall()] if result.returns_rows else []
            finally:
                self._watchdog.disarm(guard)

    # -- positions ----------------------------------------------------------------------

    def writer_position(self) -> int | None:
        """The writer's log position now; None if no writer tells it. A writer that fails to
        answer is looked for again and the new one asked: a commit acknowledged by the old
        writer is on the new one (replicated before it was acknowledged), whose position
        covers it; a commit's token must not be lost with the writer that made it."""
        for attempt in range(2):
            writer = self._router.current_topology().writer
            if self.positions is None:
                return None
            try:
                return self._position(writer.host, self.positions.writer_sql)
            except DBAPIError as exc:
                kind = self.dialect.classify(exc)
                if attempt == 0 and kind.instance_failed:
                    try:  # asked from an AsyncSession's work: in a thread, not on the loop
                        self._router.blocking.run(self.recover_writer, writer, kind)
                    except NoWriterAvailable:
                        return None
                    continue
                log.warning("could not read the writer's position: %s", type(exc).__name__)
        return None

    def replica_position(self, reader: Instance) -> int | None:
        """How far ``reader`` has replayed; raises if it does not answer in time."""
        return None if self.positions is None else \
            self._position(reader.host, self.positions.replica_sql)

    def _position(self, host: str, sql: str) -> int | None:
        rows = self.query(host, sql)
        return self.dialect.parse_position(rows[0][0]) if rows else None

    def _refresh_positions(self) -> None:
        topology = self._router.topology
        if topology is None:
            return
        if not self._router.lag_mode:
            began = time.monotonic_ns()
            position = self.writer_position()
            if position is not None:
                self._router.writer_positions.record(began, position)
        healthy: set[str] = set()
        for reader in topology.readers:
            try:
                replayed = self.replica_position(reader)
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

    def _idle(self) -> bool:
        """Whether the application has sent nothing for AURORA_IDLE_PAUSE_S. Then the monitor
        sends nothing either (its heartbeats would keep a Serverless v2 instance from pausing)
        and the pools close their idle connections, until the application is back
        (``InstancePools.touch`` wakes this thread); connections then wait for paused
        instances to resume (AURORA_RESUME_TIMEOUT_S) instead of taking them for failed."""
        if self._pools.idle:
            return True
        pause = self.settings.idle_pause_s
        idle_for = time.monotonic() - self._pools.last_used
        if pause <= 0 or idle_for < pause:
            return False
        s = self.settings
        self._pools.sleep({*self._seen, *self._instance_hosts(), s.cluster_endpoint,
                           s.reader_endpoint})
        self._stats.bump("idle_sleeps")
        self._slept = True
        log.info("no statement for %.0f s: the monitor sleeps and idle connections are "
                 "closed (so that Serverless v2 instances can pause) until the next one",
                 idle_for)
        return True

    def _wake_all(self) -> None:
        """Back from idleness: ask every instance at once, so that those that paused resume
        together instead of one after another as the application's reads reach them."""
        topology = self._router.topology
        for instance in [] if topology is None else topology.instances:
            threading.Thread(target=self._ping, args=(instance.host,), daemon=True,
                             name="aurora-access-wake").start()

    def _ping(self, host: str) -> None:
        with contextlib.suppress(Exception):  # a failure here is the monitor's to notice
            self.query(host, self.dialect.is_reader_sql,
                       timeout=self.settings.resume_timeout_s)

    def _loop(self) -> None:
        next_cleanup = time.monotonic()
        while True:
            self._wake.wait(self.settings.topology_refresh_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self._idle():
                continue
            if self._slept:
                self._slept = False
                self._wake_all()
            try:
                self._heartbeat()
                self.refresh_topology()
                self._refresh_positions()
                self._router.endpoints.refresh()  # RDS's membership, when used, every minute
                self._router.observer.flush()
                if self.markers_ready() and time.monotonic() >= next_cleanup:
                    next_cleanup = time.monotonic() + _MARKER_CLEANUP_INTERVAL_S
                    self.query(self._router.current_topology().writer.host,
                               self.dialect.commit_marker_cleanup_sql)
            except NoWriterAvailable as exc:
                log.warning("%s", exc)
            except Exception:  # the monitor must outlive any one failure
                log.exception("topology monitor iteration failed")
