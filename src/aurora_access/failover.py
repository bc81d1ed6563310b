"""What an error means for the cluster, and finding the writer after a failover.

Driver- and sync/async-free: each dialect maps its driver's exceptions to an ``ErrorKind``
(``dialects/*.py``); this module decides what follows from it and finds the new writer by
asking instances directly, never through the cluster endpoint (whose DNS lags a failover).
"""

from __future__ import annotations

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
    ADMIN_SHUTDOWN = "admin shutdown"  # 57P01-57P03: the server is going away
    READ_ONLY = "read only"  # 25006 on the "writer": a demoted writer behind a stale address
    SERIALIZATION = "serialization failure"  # 40001: retry the transaction
    DEADLOCK = "deadlock"  # 40P01: retry the transaction
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


class WriterDiscovery:
    """Finds the writer by probing every known instance in parallel, one search at a time.

    ``probe(host)`` returns True if the host is a writer (for PostgreSQL: it answers and is not
    in recovery), False if it is a reader, and raises if it does not answer in time. Threads
    that ask while a search runs wait for that search instead of starting their own.
    """

    def __init__(self, probe: Callable[[str], bool], timeout: float,
                 retry_interval: float = 0.05) -> None:
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
        try:
            host = self._search(hosts)
        except BaseException as exc:
            running.set_exception(exc)
            raise
        else:
            running.set_result(host)
            return host
        finally:
            with self._lock:
                self._running = None

    def _search(self, hosts: Callable[[], Sequence[str]]) -> str:
        began = time.monotonic()
        deadline = began + self._timeout
        last_errors: dict[str, str] = {}
        # not a with block: leaving it would wait for probes still hanging on a dead host
        pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="aurora-access-probe")
        try:
            while True:
                candidates = list(dict.fromkeys(hosts()))
                futures = {pool.submit(self._probe, host): host for host in candidates}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=FIRST_COMPLETED)
                    for future in done:
                        host = futures[future]
                        try:
                            if future.result():
                                log.warning("writer found at %s after %.3f s", host,
                                            time.monotonic() - began)
                                return host
                        except Exception as exc:
                            last_errors[host] = f"{type(exc).__name__}: {exc}"[:200]
                    if not done:
                        break  # the deadline passed while probes still hang
                if time.monotonic() + self._retry_interval >= deadline:
                    break
                time.sleep(self._retry_interval)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        details = "; ".join(f"{h}: {e}" for h, e in last_errors.items()) or "no answer"
        raise NoWriterAvailable(
            f"no instance accepted writes within {self._timeout:g} s (AURORA_FAILOVER_TIMEOUT); "
            f"last answers: {details}")
