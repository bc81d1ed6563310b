"""Router: which instance serves a statement that ``RoutingSession`` routed.

The writer, or a reader that is healthy, within the lag limit and has replayed every commit the
read must see (``consistency.py``); else the writer. Commits a read must see, and how it is
served when no reader has them yet:

- the session's own last commit: a reader known to have it (no round trip), else the writer at
  once (the data is hot there; ``ryw_own_on_writer``);
- the context's, its unit of work's, a token's (``after``) or, in process scope, the process's:
  a reader known to have them, else readers are asked for up to AURORA_RYW_WAIT_MS, else the
  writer (``ryw_fallbacks``).

Shared by every session of one Database; holds the cluster state the monitor keeps current
(topology, unhealthy readers, positions). Free of I/O of its own: it asks the callables it is
given (the writer's position, a reader's replay position, starting the Database), and waits
through ``blocking`` (blocking.py). Log positions are asked directly: the library's engines
are of the caller's kind (inside an AsyncSession's greenlet, asyncio ones), so those queries,
the hot path of read-your-writes, hold no thread and no event loop. Starting and writer
discovery go through ``blocking.run`` (for asyncio, a thread).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Engine

from .blocking import Blocking
from .consistency import CommitMark, CommitTracker, ReplicaPositions, WriterPositions
from .dialects import EngineDialect
from .endpoints import CustomEndpoints
from .errors import EndpointUnavailable, NoWriterAvailable
from .failover import ErrorKind
from .observe import NO_OBSERVER, Observer
from .pools import InstancePools
from .settings import Settings
from .stats import Stats
from .topology import Instance, Topology

if TYPE_CHECKING:
    from .session import RoutingSession

log = logging.getLogger("aurora_access")
T = TypeVar("T")

_RYW_POLL_S = 0.002
_NOTHING: frozenset[str] = frozenset()


class Router:
    """Chooses instances for routed statements; shared by every session of one Database."""

    def __init__(self, settings: Settings, dialect: EngineDialect, pools: InstancePools,
                 stats: Stats,
                 observe_writer_position: Callable[[], int | None] = lambda: None,
                 replica_position: Callable[[Instance], int | None] = lambda r: None,
                 blocking: Blocking | None = None) -> None:
        self.settings = settings
        self.dialect = dialect
        self.pools = pools
        self.stats = stats
        self.commits = CommitTracker(settings.ryw_scope)
        #: how the core waits (the sync Database: in the calling thread)
        self.blocking = blocking or Blocking()
        self.writer_positions = WriterPositions(observe_writer_position, self.blocking)
        self.replica_position = replica_position  # raises if the reader does not answer
        self.replica_positions = ReplicaPositions(self.blocking)
        self.endpoints = CustomEndpoints(settings)
        #: where statements, waits and counters are reported (metrics exporters)
        self.observer: Observer = NO_OBSERVER
        self.topology: Topology | None = None
        self.writer_engine: Engine | None = None  # the current writer's, kept at hand
        self.topology_at_ns = 0  # when the topology (and its lag figures) was read
        self.unhealthy: set[str] = set()
        # True where the instances cannot tell log positions (Aurora): read-your-writes
        # then goes by reported replica lag (see consistency.py)
        self.lag_mode = False
        self.request_refresh: Callable[[], None] = lambda: None
        # set by Database: connect and discover on first use (construction does no I/O)
        self.start: Callable[[], None] = lambda: None
        # set by Database: what to do when an instance fails under a session
        self.instance_failed: Callable[[Instance, ErrorKind], None] = lambda i, k: None
        self._next = 0

    # -- binds for RoutingSession -------------------------------------------------------

    def writer_bind(self, session: RoutingSession, count: bool = True) -> Engine:
        pools = self.pools  # the application is using the database (wake up after idling)
        pools.last_used = time.monotonic()
        if pools.idle:
            pools.touch()
        if count:
            self.stats.bump("writes" if session.wrote else "reads_on_writer")
        topology = self.current_topology()
        session.last_instance = topology.writer
        engine = self.writer_engine
        if engine is None:
            engine = self.writer_engine = self.pools.engine(topology.writer)
        return engine

    def reader_bind(self, session: RoutingSession, snapshot: bool = False) -> Engine:
        pools = self.pools  # as in writer_bind
        pools.last_used = time.monotonic()
        if pools.idle:
            pools.touch()
        topology = self.current_topology()
        endpoint = session.endpoint
        members = None if endpoint is None else self._members(endpoint, topology)
        usable = self._usable(topology, members)
        reader = self._choose_among(usable, session.after, session.own_commit,
                                    members is not None) if usable else None
        if reader is None:
            writer = session.last_instance = topology.writer
            if members is not None and writer.id not in members:
                raise self._endpoint_unavailable(endpoint, members, topology)
            # with a usable reader, the read came here for read-your-writes
            session.last_route = "ryw_fallback" if usable else "no_reader"
            self.stats.bump("reads_on_writer")
            if snapshot:
                return self.pools.engine(writer)
            # a read, even on the writer, needs no transaction: autocommit, one round trip
            return self.pools.writer_reads_engine(writer.host, writer.port)
        session.last_instance = reader
        session.last_route = "read"
        self.stats.bump("reads_on_readers")
        return self.pools.snapshot_engine(reader) if snapshot else self.pools.engine(reader)

    def _endpoint_unavailable(self, endpoint: str | None, members: frozenset[str],
                              topology: Topology) -> EndpointUnavailable:
        """No member of a custom endpoint can serve a read (as a connection to an Aurora
        custom endpoint whose members are all down fails): say why, member by member."""
        readers = {r.id: r for r in topology.readers}
        why = []
        for member in sorted(members):
            reader = readers.get(member)
            if reader is None:
                why.append(f"{member} is not in the topology")
            elif member in self.unhealthy:
                why.append(f"{member} is not answering")
            elif reader.lag_ms is not None and reader.lag_ms > self.settings.max_replica_lag_ms:
                why.append(f"{member} lags {reader.lag_ms:.0f} ms")
            else:
                why.append(f"{member} has not replayed the commits this read must see")
        return EndpointUnavailable(f"no member of custom endpoint {endpoint!r} can serve this "
                                   f"read: {'; '.join(why) or 'it has no member'}", endpoint)

    def fail(self, instance: Instance, kind: ErrorKind) -> None:
        """An instance failed under a session: the monitor deals with it (a writer is looked
        for again: raises NoWriterAvailable if none is found in time)."""
        self.blocking.run(self.instance_failed, instance, kind)

    def committed(self) -> CommitMark | None:
        """Record a commit that wrote; its mark, or None with read-your-writes off."""
        return self.commits.committed() if self.settings.read_your_writes else None

    # -- reader choice ------------------------------------------------------------------

    def _choose_reader(self, topology: Topology, after: CommitMark | None,
                       own: CommitMark | None = None,
                       members: frozenset[str] | None = None) -> Instance | None:
        """A reader for a read, or None (the writer). ``members``: a custom endpoint's, the
        only instances the read may use (else those of exclusive endpoints are left out)."""
        usable = self._usable(topology, members)
        return self._choose_among(usable, after, own, members is not None) if usable else None

    def _usable(self, topology: Topology, members: frozenset[str] | None) -> list[Instance]:
        """The readers a read may go to: answering, within the lag limit, members of its
        custom endpoint if it has one (else not of an exclusive one)."""
        max_lag = self.settings.max_replica_lag_ms
        left_out = self._excluded(topology) if members is None and self.endpoints.exclusive \
            else _NOTHING
        return [r for r in topology.readers if r.id not in self.unhealthy
                and (members is None or r.id in members) and r.id not in left_out
                and (r.lag_ms is None or r.lag_ms <= max_lag)]

    def _choose_among(self, usable: list[Instance], after: CommitMark | None,
                      own: CommitMark | None, endpoint_read: bool) -> Instance | None:
        """One of the ``usable`` readers that has the commits the read must see, or None
        (the writer, for read-your-writes)."""
        marks = [] if after is None else [after]
        if self.settings.read_your_writes:
            marks += self.commits.marks()
            if own is not None and not endpoint_read:
                usable = self._proven_at_once(usable, own)
                if not usable:
                    self.stats.bump("ryw_own_on_writer")
                    return None
                marks = [m for m in marks if m is not own]
            elif own is not None and own not in marks:
                marks.append(own)  # no writer to go to: wait for a member to have it
        if not marks:
            return self._pick(usable)
        # a custom endpoint's read has no writer to fall back on: it may wait as long as a
        # reader within the lag limit can take to replay a commit
        wait_ms = max(self.settings.ryw_wait_ms, self.settings.max_replica_lag_ms) \
            if endpoint_read else self.settings.ryw_wait_ms
        if self.lag_mode:
            return self._choose_by_lag(usable, max(m.committed_ns for m in marks), wait_ms)
        return self._choose_by_position(usable, marks, wait_ms)

    def _members(self, endpoint: str, topology: Topology) -> frozenset[str]:
        if self.endpoints.must_ask():
            self.blocking.run(self.endpoints.refresh, True)
        return self.endpoints.members(endpoint, [i.id for i in topology.instances])

    def _excluded(self, topology: Topology) -> frozenset[str]:
        if self.endpoints.must_ask():
            self.blocking.run(self.endpoints.refresh, True)
        return self.endpoints.excluded([i.id for i in topology.instances])

    def _proven_at_once(self, usable: list[Instance], mark: CommitMark) -> list[Instance]:
        """The readers known, without asking anyone, to have applied ``mark``."""
        if self.lag_mode:
            since_commit_ms = (self.topology_at_ns - mark.committed_ns) / 1e6
            return [r for r in usable if r.lag_ms is not None and r.lag_ms < since_commit_ms]
        if mark.position is None:
            mark.position = self.writer_positions.known_after(mark.committed_ns)
            if mark.position is None:
                return []
        needed = mark.position
        return [r for r in usable if self.replica_positions.reached(r.id, needed)]

    def _choose_by_position(self, usable: list[Instance], marks: list[CommitMark],
                            wait_ms: float) -> Instance | None:
        """A reader that has replayed every commit of ``marks``: proven by known positions
        (no round trip), else asked, waiting up to ``wait_ms``; None: read on the writer."""
        needed = self.needed_position(marks)
        if needed is None:  # a commit to see whose position could not be learned
            self.stats.bump("ryw_fallbacks")
            return None
        proven = [r for r in usable if self.replica_positions.reached(r.id, needed)]
        if proven:
            return self._pick(proven)
        self.stats.bump("ryw_waits")
        with self.observer.span("aurora.ryw_wait", {"aurora.ryw.position": needed}) as span:
            chosen = self._wait_for_replay(usable, needed, wait_ms)
            span.set_attribute("aurora.ryw.outcome", "reader" if chosen else "writer")
            if chosen is not None:
                span.set_attribute("aurora.instance.id", chosen.id)
                return chosen
        self.stats.bump("ryw_fallbacks")
        log.debug("read-your-writes: no reader has replayed %s within %.0f ms; reading on "
                  "the writer", self.dialect.format_position(needed), wait_ms)
        return None

    def _wait_for_replay(self, usable: list[Instance], needed: int,
                         wait_ms: float) -> Instance | None:
        """Ask the readers until one has replayed ``needed``, for up to ``wait_ms``."""
        began = time.monotonic()
        deadline = began + wait_ms / 1000
        while True:
            for reader in usable:
                if self._replica_reached(reader, needed):
                    self.observer.ryw_wait(time.monotonic() - began, True)
                    return reader
            if time.monotonic() >= deadline:
                self.observer.ryw_wait(time.monotonic() - began, False)
                return None
            self.blocking.sleep(_RYW_POLL_S)

    def _choose_by_lag(self, usable: list[Instance], committed_ns: int,
                       wait_ms: float) -> Instance | None:
        """Aurora's fallback: a reader whose reported lag, at the time it was reported, is
        shorter than the time from the commit to that report has (by that report) applied it."""
        deadline = time.monotonic() + wait_ms / 1000
        waited = False
        while True:
            topology = self.current_topology()
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
            self.blocking.sleep(_RYW_POLL_S)
        self.stats.bump("ryw_fallbacks")
        return None

    def needed_position(self, marks: list[CommitMark]) -> int | None:
        """The newest log position among ``marks``, learning those not yet known (a shared
        query on the writer at most). None if the writer could not say."""
        needed = -1
        for mark in marks:
            if mark.from_token and not mark.ignored and mark.position is not None:
                self._check_token(mark)
            if mark.ignored:
                continue
            if mark.position is None:
                mark.position = self.writer_positions.position_after(
                    mark.committed_ns, self.settings.connect_timeout)
                if mark.position is None:
                    return None
            needed = max(needed, mark.position)
        return needed

    def _check_token(self, mark: CommitMark) -> None:
        """A token's position is a client's claim: beyond the writer's own position (asked
        anew if the last one known is older) it is no commit of this cluster and is ignored,
        so that a client cannot make reads wait for a position no reader will reach."""
        assert mark.position is not None
        latest = self.writer_positions.latest()
        if latest is None or mark.position > latest:
            latest = self.writer_positions.position_after(time.monotonic_ns(),
                                                          self.settings.connect_timeout)
        mark.from_token = False  # checked, once
        if latest is not None and mark.position > latest:
            mark.ignored = True
            self.stats.bump("ryw_tokens_ignored")
            log.debug("ignoring a commit token for %s: the writer is at %s",
                      self.dialect.format_position(mark.position),
                      self.dialect.format_position(latest))

    def _replica_reached(self, reader: Instance, needed: int) -> bool:
        try:
            position = self.replica_positions.observe(reader.id,
                                                      lambda: self.replica_position(reader))
        except Exception as exc:
            log.warning("reader %s did not answer its replay position: %s", reader.id,
                        type(exc).__name__)
            self.unhealthy = self.unhealthy | {reader.id}
            return False
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

    # -- topology -----------------------------------------------------------------------

    def current_topology(self) -> Topology:
        """The topology; the first call connects and discovers it (``start``), raising
        NoWriterAvailable (or AuroraAccessError for a refused login) if that fails; a later
        call tries again."""
        topology = self.topology
        if topology is None:
            self.blocking.run(self.start)
            topology = self.topology
            if topology is None:
                raise NoWriterAvailable("no writer is known for this cluster")
        return topology

