"""How long callers wait for a pooled connection, and how many are waiting now (metrics).

SQLAlchemy's pool has events for a connection checked out, not for one asked for, so the
wait is measured around ``Pool.connect`` (what ``Engine.connect`` and a Session's bind call):
the queue, a new connection's login when the pool opens one, and the checkout events. Only
the application's pools made while metrics are on are of these classes (not the library's
probes); the others pay nothing.

``Engine.dispose`` replaces its pool by ``pool.recreate()``, which makes one of the same class
from its settings: the waits are handed on there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import cast

from sqlalchemy.pool import AsyncAdaptedQueuePool, PoolProxiedConnection, QueuePool


class Waits:
    """The requests for a connection to one host (all of its pools): how many are pending,
    and ``on_wait(seconds)`` for each one served."""

    def __init__(self, on_wait: Callable[[float], None]) -> None:
        self.on_wait = on_wait
        #: requests asked and not yet served (nor failed)
        self.pending = 0
        self._lock = threading.Lock()  # held for an addition only: never across an await

    def add(self, n: int) -> None:
        with self._lock:
            self.pending += n


class MeasuredQueuePool(QueuePool):
    """A QueuePool that reports to ``waits`` each request for a connection."""

    waits: Waits | None = None

    def connect(self) -> PoolProxiedConnection:
        waits = self.waits
        if waits is None:
            return super().connect()
        waits.add(1)
        began = time.perf_counter()
        try:
            connection = super().connect()
        finally:
            waits.add(-1)
        waits.on_wait(time.perf_counter() - began)  # served: a timeout is counted elsewhere
        return connection

    def recreate(self) -> QueuePool:
        pool = cast("MeasuredQueuePool", super().recreate())
        pool.waits = self.waits
        return pool


class MeasuredAsyncQueuePool(MeasuredQueuePool, AsyncAdaptedQueuePool):
    """The same for an asyncio engine (whose pool is asked from SQLAlchemy's greenlet)."""


def measured_pool_class(asynchronous: bool) -> type[QueuePool]:
    return MeasuredAsyncQueuePool if asynchronous else MeasuredQueuePool
