"""One SQLAlchemy engine (and so one connection pool) per instance.

Reader engines run in AUTOCOMMIT: a read outside a write transaction at READ COMMITTED gains
nothing from BEGIN/ROLLBACK (each statement takes its own snapshot anyway), so it costs one
round trip, and psycopg keeps its prepared statements (its rollback returns early in
autocommit). A session that asks for one consistent snapshot gets a REPEATABLE READ, read-only
transaction on the same pool (``snapshot_engine``).

Commits through the writer's engine that the application is given (``db.engine("writer")``
for Core, ``create_all``, Alembic) count for read-your-writes like a session's: that engine
(``tracked_engine``) shares the writer's pool and adds a commit listener. Sessions use the
engine itself, with no engine event, which keeps their statements on SQLAlchemy's fast path
(any engine event costs every statement about 130 Python calls, measured), and record their
own commits, knowing whether they wrote.

Engines of instances that left the topology are disposed: idle connections close at once,
connections in use close when they are returned, so nothing in flight breaks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import sqlalchemy
import sqlalchemy.ext.asyncio
from sqlalchemy import URL, Engine, event, exc
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util.concurrency import in_greenlet

from .auth import Credentials
from .blocking import Blocking
from .dialects import EngineDialect
from .logins import Logins
from .pool_waits import Waits, pool_class
from .settings import Settings
from .topology import Instance

log = logging.getLogger("aurora_access")

Kind = Literal["transactions", "writer_reads", "autocommit", "probes", "async_probes"]
#: the library's own pool per host: the monitor, one read-your-writes position query at a time
#: per host (concurrent waiters share it), writer discovery, commit markers; kept connections
#: for the monitor and one position query, so that a busy service does not open and close
#: them all the time (an overflow connection is closed when it is returned)
PROBE_POOL_SIZE = 2
PROBE_MAX_OVERFLOW = 3
class InstancePools:
    """Engines keyed by (host, port, kind), made on first use: ``transactions`` (the writer's
    sessions), ``writer_reads`` (reads sent to the writer), ``autocommit`` (reads on readers)
    and ``probes`` (the library's own one-statement queries: the monitor, read-your-writes
    positions, writer discovery, commit markers). A new connection of the writer's two is
    checked to be to an instance that takes writes (``_connect``). The probes have a small
    pool of their own, so that they never wait behind the application's sessions for a
    connection (a read waiting for a reader to replay a commit must be able to ask the reader
    while every application connection is taken).

    The writer's engine runs transactions; readers' engines, and the small probes the
    topology monitor sends to any host, run in autocommit. ``on_disconnect(host)`` is called
    when a connection to a host turns out dead, so the router can stop sending reads there at
    once instead of at the next topology refresh.

    ``asynchronous``: the application's engines, and the probes asked from inside
    SQLAlchemy's greenlet (not the monitor thread's), are asyncio engines; what this class
    hands out of them is their sync facade (``AsyncEngine.sync_engine``), which an
    AsyncSession's sync session binds to. Logins that have work to do go through
    ``blocking`` (signing an IAM token, reading a secret: in a thread, for asyncio).
    Disposing of an asyncio engine closes its connections on its event loop.
    """

    def __init__(self, settings: Settings, dialect: EngineDialect, credentials: Credentials,
                 on_disconnect: Callable[[str], None] | None = None, *,
                 asynchronous: bool = False, blocking: Blocking | None = None) -> None:
        self._settings = settings
        self._dialect = dialect
        self._asynchronous = asynchronous
        self._blocking = blocking or Blocking()
        #: how each new connection is opened (credentials, the writer checked, resumes)
        self.logins = Logins(settings, dialect, credentials, self._blocking)
        self._async: dict[Engine, AsyncEngine] = {}  # sync facade -> its AsyncEngine
        self._loop: asyncio.AbstractEventLoop | None = None  # where the async engines live
        self._disposing: set[concurrent.futures.Future[None]] = set()
        #: called with a host when one of its connections turns out dead
        self.on_disconnect = on_disconnect
        #: called when a transaction commits on a ``tracked_engine``
        self.on_commit: Callable[[], object] | None = None
        self._lock = threading.Lock()
        self._engines: dict[tuple[str, int, Kind], Engine] = {}
        self._snapshot: dict[tuple[str, int], Engine] = {}
        self._tracked: dict[tuple[str, int], Engine] = {}
        # DBAPI connections in use, per host: what to cut when that host hangs
        self._in_use: dict[str, set[Any]] = {}
        # requests for a connection, per host (with metrics on: ``pool_waits``)
        self._waits: dict[str, Waits] = {}
        #: when the application last used a connection (the library's probes do not count)
        self.last_used = time.monotonic()
        #: whether the pools were closed for idleness (``sleep``) and not used since
        self.idle = False
        #: called when the application uses the pools again after ``sleep``
        self.on_wake: Callable[[], None] = lambda: None
        self._asleep: set[str] = set()

    # -- idleness (Aurora Serverless v2 can pause an instance nobody is connected to) --------

    def touch(self) -> None:
        """The application is using the database: note when, and wake up after ``sleep``."""
        self.last_used = time.monotonic()
        if self.idle:
            with self._lock:
                if not self.idle:
                    return
                self.idle = False
                until = time.monotonic() + self._settings.resume_timeout_s
                self.logins.resume_until = dict.fromkeys(self._asleep, until)
            log.info("in use again: connections may wait up to %g s for paused instances "
                     "to resume", self._settings.resume_timeout_s)
            self.on_wake()

    def sleep(self, hosts: set[str]) -> None:
        """Close every pooled connection not in use (the application has been idle), so that
        instances with no other client can pause; ``hosts`` may be paused when next used."""
        with self._lock:
            self.idle = True
            self._asleep = set(hosts)
            engines = list(self._engines.values())
        for engine in engines:
            async_engine = self._async.get(engine)
            if async_engine is None:
                engine.dispose()  # the engine stays; its pool starts empty
            else:
                self._on_loop(async_engine.dispose())

    def url(self, host: str, port: int, asynchronous: bool = False) -> URL:
        """The URL of ``host:port``, without a password: each new connection asks the
        credentials (``_login``)."""
        s = self._settings
        driver = self._dialect.async_drivername if asynchronous else self._dialect.drivername
        return URL.create(driver, username=s.user, host=host, port=port, database=s.database)

    def async_engine(self, engine: Engine) -> AsyncEngine:
        """The AsyncEngine whose sync facade ``engine`` is (an option engine of one too)."""
        found = self._async.get(engine)
        return found if found is not None else AsyncEngine(engine)

    def engine(self, instance: Instance) -> Engine:
        """The writer's transactional engine, or a reader's autocommit engine."""
        return self._engine(instance.host, instance.port,
                            "autocommit" if instance.role == "reader" else "transactions")

    def writer_reads_engine(self, host: str, port: int) -> Engine:
        """The writer's autocommit engine, for reads that go to the writer (no reader has the
        commits they must see, no reader at all). Like the writer's transactions, a new
        connection of it is checked to be the writer's still."""
        return self._engine(host, port, "writer_reads")

    def probe_engine(self, host: str, port: int) -> Engine:
        """The library's own autocommit engine on a host, for one-statement probes, of the
        caller's kind: inside SQLAlchemy's greenlet (an AsyncSession's work), an asyncio
        engine's sync facade, whose I/O is awaited on the event loop; elsewhere (the monitor
        thread, the sync Database) a sync engine."""
        if self._asynchronous and in_greenlet():
            return self._engine(host, port, "async_probes")
        return self._engine(host, port, "probes")

    def _engine(self, host: str, port: int, kind: Kind) -> Engine:
        key = (host, port, kind)
        engine = self._engines.get(key)
        if engine is not None:
            return engine
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = self._make(host, port, kind)
                self._engines[key] = engine
        return engine

    def tracked_engine(self, instance: Instance) -> Engine:
        """``engine(instance)`` for the application: the same pool, and every transaction
        committed through it is reported to ``on_commit``."""
        key = (instance.host, instance.port)
        engine = self._tracked.get(key)
        if engine is None:
            engine = self.engine(instance).execution_options()

            @event.listens_for(engine, "commit")
            def _committed(connection: Any) -> None:
                if self.on_commit is not None:
                    self.on_commit()

            self._tracked[key] = engine
        return engine

    def connect_detached(self, instance: Instance) -> Any:
        """A DBAPI connection to ``instance`` (transactional), logged in as the pools' own
        are, and no longer the pool's: its caller owns and closes it (another engine's pool,
        such as Flask-SQLAlchemy's)."""
        proxy = self.engine(instance).raw_connection()
        proxy.detach()
        return proxy.dbapi_connection

    def snapshot_engine(self, instance: Instance) -> Engine:
        """The reader's pool, in a read-only REPEATABLE READ transaction per session."""
        key = (instance.host, instance.port)
        engine = self._snapshot.get(key)
        if engine is None:
            engine = self.engine(instance).execution_options(**self._dialect.snapshot_options)
            self._snapshot[key] = engine
        return engine

    def _make(self, host: str, port: int, kind: Kind) -> Engine:
        s = self._settings
        autocommit = kind != "transactions"
        probes = kind in ("probes", "async_probes")
        asynchronous = self._asynchronous and kind != "probes"
        options: dict[str, Any] = {
            "pool_size": PROBE_POOL_SIZE if probes else s.pool_size,
            "max_overflow": PROBE_MAX_OVERFLOW if probes else s.max_overflow,
            "pool_timeout": s.connect_timeout if probes else s.pool_timeout,
            "pool_recycle": s.pool_recycle if s.pool_recycle > 0 else -1,
            "pool_pre_ping": False,  # broken connections are handled on the error path
            "connect_args": self._dialect.connect_args(s.sslmode, s.sslrootcert,
                                                       s.connect_timeout, asynchronous),
        }
        if autocommit:
            options["isolation_level"] = "AUTOCOMMIT"
            # nothing to roll back on return in autocommit
            options["pool_reset_on_return"] = None
        observer = self.logins.observer
        measured = observer.enabled and not probes  # the application's waits, not the library's
        options["poolclass"] = pool_class(asynchronous, measured)
        if asynchronous:
            # looked up at each call, as OpenTelemetry's SQLAlchemy instrumentation (and any
            # such wrapper) replaces the module's function: the library's engines are then
            # instrumented like the application's
            async_engine = sqlalchemy.ext.asyncio.create_async_engine(
                self.url(host, port, True), **options)
            engine = async_engine.sync_engine
            self._async[engine] = async_engine
            with contextlib.suppress(RuntimeError):  # made outside the loop: learned later
                self._loop = asyncio.get_running_loop()
        else:
            engine = sqlalchemy.create_engine(self.url(host, port), **options)
        self._dialect.prepare_engine(engine)
        if measured:
            waits = self._waits.get(host)
            if waits is None:
                waits = self._waits[host] = Waits(
                    lambda seconds: observer.connection_wait(host, seconds))
            engine.pool.waits = waits  # type: ignore[attr-defined]
        for_writer = kind in ("transactions", "writer_reads")

        @event.listens_for(engine, "do_connect")
        def _login(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
            return self.logins.connect(dialect, cargs, cparams, host, port, for_writer)

        # A pool event, not an engine one: engine events (handle_error) take every
        # statement off SQLAlchemy's fast path (about 80 us of CPU a read, measured)
        @event.listens_for(engine.pool, "invalidate")
        def _dead_connection(dbapi_connection: Any, record: Any,
                             exception: BaseException | None) -> None:
            self.logins.lost[host] = time.monotonic()
            if self.on_disconnect is not None:
                self.on_disconnect(host)

        in_use = self._in_use.setdefault(host, set())

        @event.listens_for(engine.pool, "checkout")
        def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            if not probes:  # Core and Alembic through db.engine() count too
                self.last_used = time.monotonic()
                if self.idle:
                    self.touch()
            if self._dialect.idle_connection_lost(dbapi_connection):
                # a connection whose server went away (a crash, a failover) is replaced
                # before a statement fails on it (a transaction's first statement, a read to
                # retry elsewhere); no round trip: the socket tells
                raise exc.DisconnectionError(f"the connection to {host} was closed by the "
                                             "server")
            in_use.add(dbapi_connection)

        @event.listens_for(engine.pool, "checkin")
        def _checked_in(dbapi_connection: Any, record: Any) -> None:
            in_use.discard(dbapi_connection)

        @event.listens_for(engine.pool, "close")
        def _closed(dbapi_connection: Any, record: Any) -> None:
            in_use.discard(dbapi_connection)

        @event.listens_for(engine.pool, "detach")
        def _detached(dbapi_connection: Any, record: Any) -> None:
            in_use.discard(dbapi_connection)

        return engine

    def pool_sizes(self) -> list[tuple[str, int, int, int, int]]:
        """(host, idle, in use, most it may open, requests waiting) over every pool of each
        host (metrics)."""
        sizes: dict[str, list[int]] = {}
        s = self._settings
        for (host, _port, kind), engine in list(self._engines.items()):
            pool: Any = engine.pool
            most = PROBE_POOL_SIZE + PROBE_MAX_OVERFLOW if kind in ("probes", "async_probes") \
                else s.pool_size + s.max_overflow
            counts = sizes.setdefault(host, [0, 0, 0])
            counts[0] += int(pool.checkedin())
            counts[1] += int(pool.checkedout())
            counts[2] += most
        return [(host, idle, used, most, waits.pending if (waits := self._waits.get(host)) else 0)
                for host, (idle, used, most) in sizes.items()]

    def abort_in_use(self, host: str) -> int:
        """Cut every connection to ``host`` now in use (a hung instance); returns how many."""
        connections = list(self._in_use.get(host, ()))
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed
                self._dialect.abort_connection(connection)
        return len(connections)

    def checked_out(self, instance: Instance) -> int:
        """Connections of this instance's pool now in use (for least_connections)."""
        engine = self._engines.get((instance.host, instance.port, "autocommit"))
        if engine is None:
            return 0
        checkedout = getattr(engine.pool, "checkedout", None)
        return int(checkedout()) if callable(checkedout) else 0

    def discard(self, host: str) -> None:
        """Drop every pool of ``host`` (a failed writer: its connections are all suspect)."""
        with self._lock:
            gone = [k for k in self._engines if k[0] == host]
            engines = [self._engines.pop(k) for k in gone]
            for cache in (self._snapshot, self._tracked):
                for key in [k for k in cache if k[0] == host]:
                    del cache[key]
            self._in_use.pop(host, None)
        for engine in engines:
            self._dispose(engine)

    def retain(self, hosts: set[str]) -> None:
        """Dispose the engines of hosts no longer in the topology (nor endpoints)."""
        for host in {key[0] for key in list(self._engines)} - hosts:
            self.discard(host)

    def dispose(self) -> None:
        """Close every pool (an asyncio engine's on its loop, when it runs elsewhere)."""
        for engine in self._take_all():
            self._dispose(engine)

    async def dispose_async(self) -> None:
        """Close every pool, from the event loop the asyncio engines live on."""
        for engine in self._take_all():
            async_engine = self._async.pop(engine, None)
            if async_engine is not None:
                await async_engine.dispose()
            else:
                engine.dispose()
        if self._disposing:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in list(self._disposing)),
                                 return_exceptions=True)

    def _take_all(self) -> list[Engine]:
        with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
            self._snapshot.clear()
            self._tracked.clear()
        return engines

    def _dispose(self, engine: Engine) -> None:
        """Dispose of ``engine``; an asyncio one's connections are closed on its loop (the
        monitor thread, say, cannot close them itself), without waiting for that."""
        async_engine = self._async.pop(engine, None)
        if async_engine is None:
            engine.dispose()
            return
        if not self._on_loop(async_engine.dispose()):
            engine.dispose(close=False)  # no loop to close them on: let them go

    def _on_loop(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run ``work`` on the asyncio engines' loop, without waiting; False (and ``work``
        dropped) when there is no loop running."""
        loop = self._loop
        if loop is None or loop.is_closed():
            work.close()
            return False
        future = asyncio.run_coroutine_threadsafe(work, loop)
        self._disposing.add(future)
        future.add_done_callback(self._disposing.discard)
        return True
