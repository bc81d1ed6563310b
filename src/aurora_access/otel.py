"""OpenTelemetry metrics of a Database (extra ``aurora-access[otel]``).

``Database(settings, meter_provider=provider)`` (or ``from_env(..., meter_provider=...)``; pass
``opentelemetry.metrics.get_meter_provider()`` for the global one) records, following the
semantic conventions for database clients:

- ``db.client.operation.duration`` (histogram, s) per statement, with ``db.system.name``,
  ``server.address``, ``server.port``, ``aurora.instance.id``, ``aurora.instance.role`` and
  ``aurora.route`` (why it went there: read, write, pinned, ryw_fallback, no_reader);
- per instance pool (``db.client.connection.pool.name`` = the instance id):
  ``db.client.connection.count`` by ``db.client.connection.state`` (idle, used),
  ``db.client.connection.max``, ``db.client.connection.timeouts``,
  ``db.client.connection.create_time`` (histogram, s);
- the library's own: every ``db.stats()`` counter as ``aurora.<name>`` (failovers, retries,
  ryw_waits, ryw_fallbacks, iam_tokens_generated, ...), ``aurora.writer_discovery.duration``
  (histogram, s: a failover's search for the new writer), ``aurora.ryw.wait.duration``
  (histogram, s, with ``aurora.ryw.outcome`` reader or writer) and ``aurora.replica.lag``
  (gauge, ms, per reader).

Spans of its own (the tracer provider given, else the global one): ``aurora.writer_discovery``,
``aurora.ryw_wait`` and ``aurora.commit_outcome``, with the attributes above and what each
found. Statements' own spans come from ``opentelemetry-instrumentation-sqlalchemy``, which
instruments the library's per-instance engines like any other (``server.address`` is the
instance that ran the statement).

The library's own queries (monitor, positions) are kept out of the instrumentation's spans
(``quiet``). Only this module imports OpenTelemetry, and only when a meter or tracer provider
is given.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import context, trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from .observe import Observer, RouteReason, SpanLike
from .stats import STAT_NAMES, Stats

if TYPE_CHECKING:
    from .pools import InstancePools
    from .router import Router
    from .topology import Instance

#: what instrumentations check (``opentelemetry.instrumentation.utils.suppress_instrumentation``
#: sets it; that package is the instrumentations', not the API's)
_SUPPRESS = getattr(context, "_SUPPRESS_INSTRUMENTATION_KEY", "suppress_instrumentation")
#: the semantic conventions' ``db.system.name`` of each engine
_SYSTEM = {"postgresql": "postgresql", "mysql": "mysql"}
# boundaries for sub-millisecond statements up to failovers (the conventions' advice)
_SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]


class OtelObserver(Observer):
    """Records the library's events as OpenTelemetry metrics of ``meter_provider``."""

    enabled = True

    def __init__(self, meter_provider: MeterProvider, engine: str, router: Router,
                 pools: InstancePools, stats: Stats,
                 tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("aurora_access", tracer_provider=tracer_provider)
        self._router = router
        self._stats = stats
        self._pools = pools
        self._system = _SYSTEM.get(engine, engine)
        meter = meter_provider.get_meter("aurora_access")
        def seconds(name: str, description: str) -> Any:
            return meter.create_histogram(name, unit="s", description=description,
                                          explicit_bucket_boundaries_advisory=_SECONDS)

        self._duration = seconds("db.client.operation.duration",
                                 "Duration of database client operations")
        self._create_time = seconds("db.client.connection.create_time",
                                    "The time it took to create a new connection")
        self._discovery = seconds("aurora.writer_discovery.duration",
                                  "Searches for the writer after it failed, until found or not")
        self._ryw_wait = seconds("aurora.ryw.wait.duration",
                                 "Reads waiting for a reader to replay a commit they must see")
        self._timeouts = meter.create_counter(
            "db.client.connection.timeouts", unit="{timeout}",
            description="Connections that timed out waiting for a pooled one")
        for name in STAT_NAMES:  # read when collected: nothing on a statement's path
            meter.create_observable_counter(
                f"aurora.{name}", [self._stat(name)], description=f"db.stats()['{name}']")
        meter.create_observable_up_down_counter(
            "db.client.connection.count", [self._connection_counts], unit="{connection}",
            description="Connections in each pool, by state")
        meter.create_observable_up_down_counter(
            "db.client.connection.max", [self._connection_max], unit="{connection}",
            description="The most connections each pool may open")
        meter.create_observable_gauge(
            "aurora.replica.lag", [self._replica_lag], unit="ms",
            description="Replica lag each reader last reported")
        self._attributes: dict[tuple[str, str, str], dict[str, Any]] = {}
        # statements' durations not recorded yet (``statement``); bounded by what one refresh
        # interval runs (a busy service: a few thousand)
        self._pending: deque[tuple[float, dict[str, Any]]] = deque()

    # -- events (called by the core) --------------------------------------------------

    def statement(self, instance: Instance | None, route: RouteReason,
                  seconds: float) -> None:
        """Kept for ``flush``: recording into the SDK costs a statement 20-30 us on its
        path (attributes cleaned and hashed on every call: 5-7 % of a routed read,
        measured), a deque append well under one."""
        if instance is not None:
            self._pending.append((seconds, self._statement_attributes(instance, route)))

    def flush(self) -> None:
        """Record the statements' durations kept since the last flush (the monitor's thread
        calls it every refresh, and a collection does before it reads)."""
        pending, record = self._pending, self._duration.record
        while True:
            try:
                seconds, attributes = pending.popleft()
            except IndexError:
                return
            record(seconds, attributes)

    def writer_discovery(self, seconds: float, found: bool) -> None:
        self._discovery.record(seconds, {"db.system.name": self._system,
                                         "aurora.writer_found": found})

    def ryw_wait(self, seconds: float, on_reader: bool) -> None:
        self._ryw_wait.record(seconds, {"db.system.name": self._system,
                                        "aurora.ryw.outcome": "reader" if on_reader
                                        else "writer"})

    def connection_created(self, host: str, seconds: float) -> None:
        self._create_time.record(seconds, {"db.system.name": self._system,
                                           "db.client.connection.pool.name":
                                               self._pool_name(host)})

    def pool_timeout(self, instance: Instance | None) -> None:
        self._timeouts.add(1, {"db.system.name": self._system,
                               "db.client.connection.pool.name":
                                   instance.id if instance else "unknown"})

    def span(self, name: str, attributes: dict[str, Any]) -> AbstractContextManager[SpanLike]:
        return self._tracer.start_as_current_span(
            name, attributes={"db.system.name": self._system, **attributes})

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """The context key OpenTelemetry's instrumentations check before making spans."""
        token = context.attach(context.set_value(_SUPPRESS, True))
        try:
            yield
        finally:
            context.detach(token)

    # -- helpers ------------------------------------------------------------------------

    def _statement_attributes(self, instance: Instance, route: str) -> dict[str, Any]:
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

    def _stat(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            yield Observation(self._stats.snapshot()[name], {"db.system.name": self._system})
        return observe

    def _pool_name(self, host: str) -> str:
        topology = self._router.topology
        for instance in [] if topology is None else topology.instances:
            if instance.host == host:
                return instance.id
        return host

    def _connection_counts(self, options: CallbackOptions) -> Iterable[Observation]:
        self.flush()  # a collection runs the callbacks first: it then has every statement
        for host, idle, used, _ in self._pools.pool_sizes():
            name = self._pool_name(host)
            for state, value in (("idle", idle), ("used", used)):
                yield Observation(value, {"db.system.name": self._system,
                                          "db.client.connection.pool.name": name,
                                          "db.client.connection.state": state})

    def _connection_max(self, options: CallbackOptions) -> Iterable[Observation]:
        for host, _, _, most in self._pools.pool_sizes():
            yield Observation(most, {"db.system.name": self._system,
                                     "db.client.connection.pool.name":
                                         self._pool_name(host)})

    def _replica_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        topology = self._router.topology
        for reader in [] if topology is None else topology.readers:
            if reader.lag_ms is not None:
                yield Observation(reader.lag_ms, {"db.system.name": self._system,
                                                  "aurora.instance.id": reader.id})
