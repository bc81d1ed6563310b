"""OpenTelemetry metrics of a Database (extra ``aurora-access[otel]``).

``Database(settings, meter_provider=provider)`` (or ``from_env(..., meter_provider=...)``; pass
``opentelemetry.metrics.get_meter_provider()`` for the global one) records, following the
semantic conventions for database clients:

- ``db.client.operation.duration`` (histogram, s) per statement, with ``db.system.name``,
  ``server.address``, ``server.port``, ``aurora.instance.id``, ``aurora.instance.role`` and
  ``aurora.route`` (why it went there: read, write, pinned, ryw_fallback, no_reader);
- per instance pool (``db.client.connection.pool.name`` = the instance id):
  ``db.client.connection.count`` by ``db.client.connection.state`` (idle, used),
  ``db.client.connection.max``, ``db.client.connection.pending_requests``,
  ``db.client.connection.timeouts``, ``db.client.connection.create_time`` and
  ``db.client.connection.wait_time`` (histograms, s);
- the library's own: every ``db.stats()`` counter as ``aurora.<name>`` (failovers, retries,
  ryw_waits, ryw_fallbacks, iam_tokens_generated, ...), ``aurora.failover.duration``
  (histogram, s: from the writer found failing to the first statement a writer ran after it,
  or to the writer's change when that statement began after it),
  ``aurora.writer_discovery.duration`` (histogram, s: a failover's search for the new
  writer), ``aurora.ryw.wait.duration`` (histogram, s, with ``aurora.ryw.outcome`` reader or
  writer) and ``aurora.replica.lag`` (gauge, ms, per reader).

Spans of its own (the tracer provider given, else the global one): ``aurora.writer_discovery``,
``aurora.ryw_wait`` and ``aurora.commit_outcome``, with the attributes above and what each
found. Statements' own spans come from ``opentelemetry-instrumentation-sqlalchemy``, which
instruments the library's per-instance engines like any other (``server.address`` is the
instance that ran the statement).

Several Databases may record into one provider (a sync and an async one, two clusters, a
Database made again after ``close``, a forked child's): the instruments are made once per
provider and their callbacks read every live Database of this process, summed per attribute
set; the library's own metrics carry ``aurora.cluster`` (the cluster endpoint) to tell
clusters apart. (A provider keeps the first callback of an instrument name and silently drops
the others: one Database's instruments each would leave all but the first unseen.)

The library's own queries (monitor, positions) are kept out of the instrumentation's spans
(``quiet``). Only this module imports OpenTelemetry, and only when a meter or tracer provider
is given.
"""

from __future__ import annotations

import operator
import os
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from .observe import Observer, RouteReason, SpanLike
from .stats import STAT_NAMES, Stats

if TYPE_CHECKING:
    from .pools import InstancePools
    from .router import Router
    from .topology import Instance

#: the semantic conventions' ``db.system.name`` of each engine
_SYSTEM = {"postgresql": "postgresql", "mysql": "mysql"}
# boundaries for sub-millisecond statements up to failovers (the conventions' advice)
_SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

Attributes = dict[str, Any]
Values = tuple[float, Attributes]  # a value and its attributes, as a callback observes it


class _Instruments:
    """The instruments of one meter provider, shared by the OtelObservers recording into
    it; the observable ones read every live observer of this process when collected."""

    def __init__(self, provider: MeterProvider) -> None:
        meter = provider.get_meter("aurora_access")
        self._lock = threading.Lock()
        self._observers: list[OtelObserver] = []

        def seconds(name: str, description: str) -> Any:
            return meter.create_histogram(name, unit="s", description=description,
                                          explicit_bucket_boundaries_advisory=_SECONDS)

        self.duration = seconds("db.client.operation.duration",
                                "Duration of database client operations")
        self.create_time = seconds("db.client.connection.create_time",
                                   "The time it took to create a new connection")
        self.wait_time = seconds("db.client.connection.wait_time",
                                 "The time it took to obtain an open connection from the pool")
        self.recovery = seconds("aurora.failover.duration",
                                "From the writer found failing to the first statement the "
                                "writer (a new one, or the same one back) ran afterwards")
        self.discovery = seconds("aurora.writer_discovery.duration",
                                 "Searches for the writer after it failed, until found or not")
        self.ryw_wait = seconds("aurora.ryw.wait.duration",
                                "Reads waiting for a reader to replay a commit they must see")
        # counts of Databases closed, per (name, attributes): counters never go down
        self._closed: dict[tuple[str, frozenset[tuple[str, Any]]], tuple[int, Attributes]] = {}
        for name in STAT_NAMES:  # read when collected: nothing on a statement's path
            meter.create_observable_counter(
                f"aurora.{name}", [self._summed(_stat(name), self._closed_counts(name))],
                description=f"db.stats()['{name}']")
        meter.create_observable_up_down_counter(
            "db.client.connection.count", [self._summed(OtelObserver.connection_counts)],
            unit="{connection}", description="Connections in each pool, by state")
        meter.create_observable_up_down_counter(
            "db.client.connection.max", [self._summed(OtelObserver.connection_max)],
            unit="{connection}", description="The most connections each pool may open")
        # observed, not added to: every pool has its series from the start, at 0
        meter.create_observable_counter(
            "db.client.connection.timeouts", [self._summed(OtelObserver.timeouts)],
            unit="{timeout}", description="Connections that timed out waiting for a pooled one")
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            [self._summed(OtelObserver.pending_requests)], unit="{request}",
            description="Requests for a connection not served yet")
        meter.create_observable_gauge(
            "aurora.replica.lag", [self._summed(OtelObserver.replica_lag, combine=max)],
            unit="ms", description="Replica lag each reader last reported")

    def add(self, observer: OtelObserver) -> None:
        with self._lock:  # a forked child's copies of its parent's observers go
            self._observers = [o for o in self._observers if o.pid == os.getpid()]
            self._observers.append(observer)

    def remove(self, observer: OtelObserver) -> None:
        """``observer``'s Database closed: its counts stay in the counters' totals."""
        with self._lock:
            if observer not in self._observers:
                return
            self._observers = [o for o in self._observers if o is not observer]
            for name in STAT_NAMES:
                for value, attributes in observer.stat(name):
                    key = (name, frozenset(attributes.items()))
                    before = self._closed.get(key, (0, attributes))[0]
                    self._closed[key] = (before + int(value), attributes)

    def live(self) -> list[OtelObserver]:
        pid = os.getpid()
        return [o for o in self._observers if o.pid == pid]

    def _closed_counts(self, name: str) -> Callable[[], Iterable[Values]]:
        return lambda: [found for (stat, _), found in self._closed.items() if stat == name]

    def _summed(self, values: Callable[[OtelObserver], Iterable[Values]],
                closed: Callable[[], Iterable[Values]] = tuple,
                combine: Callable[[float, float], float] = operator.add,
                ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """A callback yielding ``values`` of every live observer and what ``closed`` ones
        left, those with the same attributes combined (two Databases on one cluster: one
        series)."""

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            found: dict[frozenset[tuple[str, Any]], tuple[float, Attributes]] = {}
            every: list[Values] = []
            for observer in self.live():
                observer.flush()  # a collection runs the callbacks first: it then has all
                every.extend(values(observer))
            for value, attributes in [*every, *closed()]:
                key = frozenset(attributes.items())
                before = found.get(key)
                found[key] = (value if before is None else combine(before[0], value),
                              attributes)
            return [Observation(value, attributes) for value, attributes in found.values()]

        return observe


def _stat(name: str) -> Callable[[OtelObserver], Iterable[Values]]:
    return lambda observer: observer.stat(name)


_BY_PROVIDER: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
_BY_PROVIDER_LOCK = threading.Lock()


def _instruments(provider: MeterProvider) -> _Instruments:
    with _BY_PROVIDER_LOCK:
        found = _BY_PROVIDER.get(provider)
        if found is None:
            found = _BY_PROVIDER[provider] = _Instruments(provider)
        return found


class OtelObserver(Observer):
    """Records the library's events as OpenTelemetry metrics of ``meter_provider``."""

    enabled = True

    def __init__(self, meter_provider: MeterProvider, engine: str, cluster: str,
                 router: Router, pools: InstancePools, stats: Stats,
                 tracer_provider: trace.TracerProvider | None = None,
                 instance_at: Callable[[str], Instance | None] = lambda host: None) -> None:
        self._tracer = trace.get_tracer("aurora_access", tracer_provider=tracer_provider)
        self._router = router
        self._stats = stats
        self._pools = pools
        self._system = _SYSTEM.get(engine, engine)
        #: attributes of the library's own metrics
        self._own: Attributes = {"db.system.name": self._system, "aurora.cluster": cluster}
        #: the process that made it (a forked child's copy is not its parent's to report)
        self.pid = os.getpid()
        self._attributes: dict[tuple[str, str, str], Attributes] = {}
        self._instance_at = instance_at  # the monitor's: every instance seen, by host
        # statements' durations not recorded yet (``statement``); bounded by what one refresh
        # interval runs (a busy service: a few thousand)
        self._pending: deque[tuple[float, Attributes]] = deque()
        self._waits: deque[tuple[str, float]] = deque()  # (host, seconds), likewise
        #: (the failed writer's id, when) while a failover has not recovered
        self._failed: tuple[str, float] | None = None
        self._changed: float | None = None  # when the writer changed, since ``_failed``
        self._lock = threading.Lock()
        self._timeouts: Counter[str] = Counter()  # PoolExhausted per pool name
        self._instruments = _instruments(meter_provider)
        self._instruments.add(self)

    def close(self) -> None:
        """The Database closed: record what was kept, and report it no more."""
        self.flush()
        self._instruments.remove(self)

    # -- events (called by the core) --------------------------------------------------

    def statement(self, instance: Instance | None, route: RouteReason,
                  seconds: float) -> None:
        """Kept for ``flush``: recording into the SDK costs a statement 20-30 us on its
        path (attributes cleaned and hashed on every call: 5-7 % of a routed read,
        measured), a deque append well under one."""
        if instance is not None:
            self._pending.append((seconds, self._statement_attributes(instance, route)))
            if self._failed is not None and instance.role == "writer":
                self._recovered(instance, seconds)

    def flush(self) -> None:
        """Record the statements' durations and connection waits kept since the last flush
        (the monitor's thread calls it every refresh, and a collection does before it
        reads)."""
        pending, record = self._pending, self._instruments.duration.record
        while True:
            try:
                seconds, attributes = pending.popleft()
            except IndexError:
                break
            record(seconds, attributes)
        waits, record = self._waits, self._instruments.wait_time.record
        pools: dict[str, Attributes] = {}  # host -> its attributes, for this flush
        while True:
            try:
                host, seconds = waits.popleft()
            except IndexError:
                return
            if host not in pools:
                pools[host] = self._pool_attributes(host)
            record(seconds, pools[host])

    def writer_failed(self, writer: Instance) -> None:
        if self._failed is None:  # threads failing together: the first one's time
            self._failed = (writer.id, time.perf_counter())
            self._changed = None

    def writer_changed(self, writer: Instance) -> None:
        if self._failed is not None and self._changed is None:
            self._changed = time.perf_counter()

    def _recovered(self, writer: Instance, seconds: float) -> None:
        """A statement ran on the writer: the first one that began after the failure ends
        the failover's recovery; at its end if it began before the new writer was known (it
        waited for it), else when the writer changed (a quiet service sends its next
        statement later: that wait is not the failover's)."""
        with self._lock:  # statements of several threads may end it at once
            failed, changed = self._failed, self._changed
            now = time.perf_counter()
            began = now - seconds
            if failed is None or began < failed[1]:
                return
            self._failed = None
        end = now if changed is None or began < changed else changed
        self._instruments.recovery.record(end - failed[1], {
            **self._own, "aurora.failed_instance.id": failed[0],
            "aurora.instance.id": writer.id})

    def writer_discovery(self, seconds: float, found: bool) -> None:
        self._instruments.discovery.record(seconds, {**self._own, "aurora.writer_found": found})

    def ryw_wait(self, seconds: float, on_reader: bool) -> None:
        self._instruments.ryw_wait.record(seconds, {
            **self._own, "aurora.ryw.outcome": "reader" if on_reader else "writer"})

    def connection_created(self, host: str, seconds: float) -> None:
        self._instruments.create_time.record(seconds, self._pool_attributes(host))

    def connection_wait(self, host: str, seconds: float) -> None:
        """Kept for ``flush``, as a statement's duration is: a read asks its pool once."""
        self._waits.append((host, seconds))

    def pool_timeout(self, instance: Instance | None) -> None:
        with self._lock:
            self._timeouts[instance.id if instance else "unknown"] += 1

    def span(self, name: str, attributes: dict[str, Any]) -> AbstractContextManager[SpanLike]:
        return self._tracer.start_as_current_span(
            name, attributes={"db.system.name": self._system, **attributes})

    # -- what a collection reads (``_Instruments``) -----------------------------------

    def stat(self, name: str) -> Iterable[Values]:
        yield self._stats.snapshot()[name], self._own

    def connection_counts(self) -> Iterable[Values]:
        for host, idle, used, _, _ in self._pools.pool_sizes():
            pool = self._pool_attributes(host)
            for state, value in (("idle", idle), ("used", used)):
                yield value, {**pool, "db.client.connection.state": state}

    def connection_max(self) -> Iterable[Values]:
        for host, _, _, most, _ in self._pools.pool_sizes():
            yield most, self._pool_attributes(host)

    def timeouts(self) -> Iterable[Values]:
        counts = Counter(dict.fromkeys(
            (self._pool_name(host) for host, *_ in self._pools.pool_sizes()), 0))
        counts.update(self._timeouts)
        for name, count in counts.items():
            yield count, {"db.system.name": self._system,
                          "db.client.connection.pool.name": name}

    def pending_requests(self) -> Iterable[Values]:
        for host, _, _, _, pending in self._pools.pool_sizes():
            yield pending, self._pool_attributes(host)

    def replica_lag(self) -> Iterable[Values]:
        topology = self._router.topology
        for reader in [] if topology is None else topology.readers:
            if reader.lag_ms is not None:
                yield reader.lag_ms, {**self._own, "aurora.instance.id": reader.id}

    # -- helpers ------------------------------------------------------------------------

    def _statement_attributes(self, instance: Instance, route: str) -> Attributes:
        """One attributes dict per (instance, role, route), made once: a statement's path
        builds none."""
        key = (instance.id, instance.role, route)
        found = self._attributes.get(key)
        if found is None:
            found = self._attributes[key] = {
                "db.system.name": self._system, "server.address": instance.host,
                "server.port": instance.port, "aurora.instance.id": instance.id,
                "aurora.instance.role": instance.role, "aurora.route": route}
        return found

    def _pool_attributes(self, host: str) -> Attributes:
        return {"db.system.name": self._system,
                "db.client.connection.pool.name": self._pool_name(host)}

    def _pool_name(self, host: str) -> str:
        """The id of the instance at ``host``, as once seen in the topology (a failed writer
        leaves it for a while, its pools' last waits are recorded after); the host itself
        for an endpoint."""
        instance = self._instance_at(host)
        return host if instance is None else instance.id
