"""What an error means for the cluster, and finding the writer after a failover.

Driver- and sync/async-free: each dialect maps its driver's exceptions to an ``ErrorKind``
(``dialects/*.py``); this module decides what follows from it and finds the new writer by
asking instances directly, never through the cluster endpoint (whose DNS lags a failover).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from enum import Enum

from .errors import NoWriterAvailable

log = logging.getLogger("aurora_access")


class ErrorKind(Enum):
    """What an error says about the instance it came from."""

    CONNECTION_LOST = "connection lost"  # refused, reset, closed, timed out: instance gone?
    ADMIN_SHUTDOWN = "admin shutdown"  # 57P01-57P03, MySQL 1053: the server is going away
    # 25006, MySQL 1290/1836 on the "writer": a demoted writer behind a stale address
    READ_ONLY = "read only"
    SERIALIZATION = "serialization failure"  # 40001: retry the transaction
    DEADLOCK = "deadlock"  # 40P01, MySQL 1213: retry the transaction
    LOCK_TIMEOUT = "lock wait timeout"  # MySQL 1205: retry the transaction
    OTHER = "other"  # the application's own error: never retried

    @property
    def instance_failed(self) -> bool:
        """The instance is gone or is no longer what we took it for."""
        return self in (ErrorKind.CONNECTION_LOST, ErrorKind.ADMIN_SHUTDOWN,
                        ErrorKind.READ_ONLY)

    @property
    def retryable_transaction(self) -> bool:
        """Running the whole transaction again may succeed."""
        return self is not ErrorKind.OTHER


_REFUSED = ("connection refused", "errno 111", "can't connect to")
_TIMED_OUT = ("timeout", "timed out")
_NO_NAME = ("could not translate host name", "name or service not known", "errno -2",
            "errno -3", "nodename nor servname", "temporary failure in name resolution")


def likely_cause(error: BaseException, connect_timeout: float) -> str:
    """The one likely cause of a failure to reach an instance, said so that it can be acted
    on (psycopg's and PyMySQL's messages, matched on what they say)."""
    text = str(getattr(error, "orig", None) or error).lower()
    if any(words in text for words in _NO_NAME):
        return "the name does not resolve: check AURORA_CLUSTER_ENDPOINT"
    if any(words in text for words in _TIMED_OUT):
        return (f"no answer within AURORA_CONNECT_TIMEOUT={connect_timeout:g} s: check that "
                "this network reaches it (security groups, VPC, a paused instance)")
    if any(words in text for words in _REFUSED):
        return "nothing accepts connections there: check AURORA_PORT and the endpoint"
    if isinstance(error, LookupError):
        return str(error)
    return "it did not answer as a writer"


class WriterDiscovery:
    """Finds the writer by probing every known instance in parallel, one search at a time.

    ``probe(host)`` returns True if the host is a writer (for PostgreSQL: it answers and is not
    in recovery), False if it is a reader, and raises if it does not answer in time. Threads
    that ask while a search runs wait for that search instead of starting their own.
    """

    def __init__(self, probe: Callable[[str], bool], timeout: float,
                 retry_interval: float = 0.05,
                 on_search: Callable[[float, bool], None] = lambda seconds, found: None
                 ) -> None:
        #: told of each search once, by the thread that ran it: its seconds, whether found
        self.on_search = on_search
        self._probe = probe
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._lock = threading.Lock()
        self._running: Future[str] | None = None

    def find(self, hosts: Callable[[], Sequence[str]]) -> str:
        """The writer's host, or NoWriterAvailable after the failover timeout.

        ``hosts`` is asked again on each round, so instances learned meanwhile are probed.
        """
        with self._lock:
            running = self._running
            if running is None:
                running = self._running = Future()
                owner = True
            else:
                owner = False
        if not owner:
            return running.result()
        began = time.monotonic()
        try:
            host = self._search(hosts)
        except BaseException as exc:
            self.on_search(time.monotonic() - began, False)
            running.set_exception(exc)
            raise
        else:
            self.on_search(time.monotonic() - began, True)
            running.set_result(host)
            return host
        finally:
            with self._lock:
                self._running = None

    def _search(self, hosts: Callable[[], Sequence[str]]) -> str:
        """Probe every candidate in parallel, again and again until one is the writer. A host
        that answered is asked again ``retry_interval`` later; one whose probe hangs (a frozen
        host, one starting up: its connect waits AURORA_CONNECT_TIMEOUT) is not waited for,
        so it cannot hold back the others' next answers."""
        began = time.monotonic()
        deadline = began + self._timeout
        last_errors: dict[str, str] = {}
        in_flight: dict[Future[bool], str] = {}
        # not a with block: leaving it would wait for probes still hanging on a dead host
        pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="aurora-access-probe")
        try:
            while True:
                asking = set(in_flight.values())
                for host in dict.fromkeys(hosts()):
                    if host not in asking:
                        in_flight[pool.submit(self._probe, host)] = host
                done, _ = wait(list(in_flight), timeout=max(0.0, deadline - time.monotonic()),
                               return_when=FIRST_COMPLETED)
                for future in done:
                    host = in_flight.pop(future)
                    try:
                        if future.result():
                            log.warning("writer found at %s after %.3f s", host,
                                        time.monotonic() - began)
                            return host
                    except Exception as exc:
                        last_errors[host] = f"{type(exc).__name__}: {exc}"[:200]
                if time.monotonic() + self._retry_interval >= deadline:
                    break
                time.sleep(self._retry_interval)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        details = "; ".join(f"{h}: {e}" for h, e in last_errors.items()) or "no answer"
        raise NoWriterAvailable(
            f"no instance accepted writes within {self._timeout:g} s (AURORA_FAILOVER_TIMEOUT); "
            f"last answers: {details}")


class Watchdog:
    """Calls a function when a deadline passes unless disarmed first: one thread for every
    bounded query (a thread a query would cost more than the query). The thread starts with
    the first ``arm`` and stops at ``close``; a later ``arm`` starts a new one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], object]]] = []
        self._cancelled: set[int] = set()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, timeout: float, action: Callable[[], object]) -> int:
        with self._cond:
            token = next(self._tokens)
            heapq.heappush(self._heap, (time.monotonic() + timeout, token, action))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="aurora-access-watchdog")
                self._thread.start()
            self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._cancelled.add(token)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread; pending actions are dropped."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._heap.clear()
            self._cancelled.clear()
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while True:
                    if self._thread is not me:  # closed (and maybe replaced)
                        return
                    if not self._heap:
                        self._cond.wait()
                        continue
                    deadline, token, action = self._heap[0]
                    if token in self._cancelled:
                        heapq.heappop(self._heap)
                        self._cancelled.discard(token)
                        continue
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        heapq.heappop(self._heap)
                        break
                    self._cond.wait(wait)
            try:
                action()
            except Exception:  # the watchdog must outlive any one action
                log.exception("watchdog action failed")
