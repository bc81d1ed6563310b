"""What ``Database`` and ``AsyncDatabase`` share: their parts, their start, fork safety,
read-your-writes tokens and marks, and what they tell of the cluster.

Making one does no I/O: it validates its arguments and builds its parts. The first use
connects, discovers the cluster and starts the monitor thread; if that fails, the error reaches
that caller and the next use tries again. The parts:

- ``Router`` (``router.py``): which instance serves each routed statement;
- ``ClusterMonitor`` (``monitor.py``): topology, health, positions, writer discovery (a thread,
  with sync connections of its own, in both facades);
- ``TransactionRunner`` (``transactions.py``): ``run_transaction`` and commit outcomes;
- ``InstancePools`` (``pools.py``): one engine per instance (async ones for ``AsyncDatabase``);
- ``RoutingSession`` (``session.py``), built on the application's Session class (for
  ``AsyncDatabase``, the sync session of its AsyncSession class).

The two facades differ only in I/O: ``AsyncDatabase`` gives the router a ``Blocking`` that runs
the core's blocking work in a thread and sleeps with asyncio.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from sqlalchemy import URL, Engine

from .auth import credentials_for
from .blocking import Blocking
from .consistency import CommitMark, UnitOfWork, decode_token, encode_token
from .dialects import for_engine
from .errors import NoWriterAvailable
from .monitor import ClusterMonitor
from .pools import InstancePools
from .router import Router
from .session import RoutingSession
from .settings import Settings
from .stats import STAT_NAMES, Stats
from .topology import Instance, Topology
from .transactions import TransactionRunner

__all__ = ["STAT_NAMES", "BaseDatabase"]

_WAIT_READY_POLL_S = 0.5
# every Database not closed, for the fork hook (weakly: a Database dropped is no concern)
_LIVE: weakref.WeakSet[BaseDatabase] = weakref.WeakSet()


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


class BaseDatabase:
    """The parts and the I/O-free API of both facades (module docstring)."""

    #: whether the application's engines are asyncio ones (AsyncDatabase)
    asynchronous: ClassVar[bool] = False
    _transactions: TransactionRunner

    def __init__(self, settings: Settings, meter_provider: Any = None,
                 tracer_provider: Any = None) -> None:
        self.settings = settings
        #: an OpenTelemetry MeterProvider that records the metrics of ``otel.py`` (None: none)
        self.meter_provider = meter_provider
        #: the TracerProvider of the library's own spans (None: the global one, with metrics)
        self.tracer_provider = tracer_provider
        self._build()
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
        blocking = self._blocking()
        self._pools = InstancePools(settings, self.dialect, self.credentials,
                                    asynchronous=self.asynchronous, blocking=blocking)
        self._router = Router(settings, self.dialect, self._pools, self._stats,
                              blocking=blocking)
        self._monitor = ClusterMonitor(settings, self.dialect, self._pools, self._router,
                                       self._stats)
        self._pools.on_commit = self._router.committed  # Core, create_all, Alembic
        if self.meter_provider is not None or self.tracer_provider is not None:
            from opentelemetry.metrics import NoOpMeterProvider  # noqa: PLC0415

            from .otel import OtelObserver  # noqa: PLC0415 - only with metrics asked for

            observer = OtelObserver(self.meter_provider or NoOpMeterProvider(),
                                    settings.engine, settings.cluster_endpoint, self._router,
                                    self._pools, self._stats, self.tracer_provider,
                                    self._monitor.instance_at)
            self._router.observer = self._pools.logins.observer = observer
        self._started = StartOnce(self._start)
        self._router.start = self._started

    def _blocking(self) -> Blocking:
        """How the core waits: here, in the calling thread."""
        return Blocking()

    def _routing_class(self) -> type[RoutingSession]:
        """The routing (sync) session class whose router a fork must replace."""
        raise NotImplementedError

    def _new_routing_session(self) -> RoutingSession:
        """A writer session for run_transaction."""
        raise NotImplementedError

    def _build_transactions(self) -> TransactionRunner:
        runner = TransactionRunner(
            self.settings, self.dialect, self._pools, self._router, self._monitor, self._stats,
            self._new_routing_session)
        self._monitor.markers_ready = lambda: runner.markers_ready
        return runner

    def _after_fork_in_child(self) -> None:
        """A child process (gunicorn --preload, multiprocessing's fork, Celery's prefork) got
        a copy of this Database: its sockets are the parent's, its threads did not survive
        the fork, its locks may be held for good, its commit marks are the parent's. The
        child gets parts of its own: fresh pools (the parent's are kept, never closed here, so
        that no goodbye reaches the parent's sessions), monitor and watchdog threads started
        on first use, no commit mark. The session classes and sessionmaker stay the same
        objects (frameworks hold them), routed by the new parts."""
        self._inherited.append((self._pools, self._monitor, self._router, self._transactions))
        self._build()
        self._routing_class().aurora_router = self._router
        self._transactions = self._build_transactions()

    def _start(self) -> None:
        try:
            self._monitor.start()
        except BaseException:
            self._pools.dispose()  # leave no connection behind a failed start
            raise

    def _wait_ready(self, timeout: float) -> Topology:
        """``wait_ready``'s blocking loop (the asyncio facade runs it in a thread)."""
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

    # -- read-your-writes ---------------------------------------------------------------

    def request_unit(self, after: str | None = None) -> AbstractContextManager[UnitOfWork]:
        """A unit of work, as a plain context manager whatever the facade (for the web
        middleware; ``unit_of_work`` is the application's). No I/O."""
        mark = decode_token(self.dialect.name, after) if after else None
        return self._router.commits.unit_of_work(mark, self._token)

    def _token(self, mark: CommitMark, may_ask: bool) -> str | None:
        """The token of ``mark``; None if ``may_ask`` is False and that would take a query
        (which blocks: the asyncio facade asks it in a thread)."""
        if not self._router.lag_mode and mark.position is None:
            mark.position = self._router.writer_positions.known_after(mark.committed_ns)
            if mark.position is None:
                if not may_ask:
                    return None
                if self._router.needed_position([mark]) is None:
                    raise NoWriterAvailable("the writer did not answer with its log position")
        return encode_token(self.dialect.name, mark)

    def _current_token(self) -> str | None:
        mark = self._router.commits.current()
        return None if mark is None else self._token(mark, True)

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
        """The writer and readers as last seen. The first call connects, in the calling
        thread: in asyncio code, ``await db.wait_ready()`` first."""
        return self._router.current_topology()

    def stats(self) -> dict[str, int]:
        """Counters since this Database was made (names in ``STAT_NAMES``)."""
        return self._stats.snapshot()

    def _instance(self, role: str) -> tuple[Instance, bool]:
        """The instance ``role`` names ("writer", "reader" or an instance id), and whether it
        is the writer. ValueError naming the instances for anything else."""
        topology = self.topology()
        if role in ("writer", topology.writer.id):
            return topology.writer, True
        if role == "reader":
            readers = [r for r in topology.readers if r.id not in self._router.unhealthy]
            return (readers[0], False) if readers else (topology.writer, True)
        for instance in topology.readers:
            if instance.id == role:
                return instance, False
        raise ValueError(f"not 'writer', 'reader' nor an instance id of this cluster: {role!r} "
                         f"(instances: {', '.join(i.id for i in topology.instances)})")

    def _engine(self, role: str) -> Engine:
        """The (sync, or async's sync facade) engine of ``engine(role)``: the writer's counts
        its commits for read-your-writes."""
        instance, writer = self._instance(role)
        return self._pools.tracked_engine(instance) if writer else self._pools.engine(instance)

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

    def _close_threads(self, timeout: float) -> None:
        _LIVE.discard(self)
        self._monitor.close(timeout)
        self._router.observer.close()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.settings.engine} {self.settings.cluster_endpoint}"
                f":{self.settings.port}/{self.settings.database}>")
