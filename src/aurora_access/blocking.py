"""How the core waits and runs its blocking work: ``Blocking`` does it in the calling thread
(the threaded ``Database``); ``AsyncDatabase`` gives the core one that runs blocking work in a
thread and sleeps and waits with asyncio, so that nothing the core does holds the event loop.

Three kinds of work, three methods:

- ``run(fn)``: work that blocks in ways only a thread can absorb (a boto3 call, writer
  discovery with its own threads and locks);
- ``sleep(s)`` and ``wait(event, timeout)``: waiting for time, or for another caller's answer
  (read-your-writes waits, a log position asked by someone else);
- the library's own queries (log positions) are plain calls: their engines are the caller's
  kind (``InstancePools.probe_engine``: an asyncio engine's sync facade inside SQLAlchemy's
  greenlet), so their I/O is the caller's too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Blocking:
    """How the core waits and runs its blocking work (queries of its own, writer discovery):
    here, in the calling thread. ``AsyncDatabase`` gives one that keeps the event loop free."""

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, signal: Signal, timeout: float | None = None) -> bool:
        """Until ``signal`` is set (True) or ``timeout`` seconds have passed (False)."""
        return signal.wait(timeout)


class Signal:
    """An answer being awaited: set once, by a thread or a task, and waited for by threads
    (``wait``) and by asyncio tasks of any loop (``future``) alike."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._futures: list[tuple[Any, Any]] = []  # (event loop, its future)

    def set(self) -> None:
        with self._lock:
            self._event.set()
            futures, self._futures = self._futures, []
        for loop, future in futures:
            loop.call_soon_threadsafe(_resolve, future)

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def future(self, loop: Any) -> Any:
        """A future of ``loop`` done when the signal is set; None if it is set already."""
        with self._lock:
            if self._event.is_set():
                return None
            future = loop.create_future()
            self._futures.append((loop, future))
            return future


def _resolve(future: Any) -> None:
    if not future.done():
        future.set_result(None)
