"""Waiting for a pooled connection: in turn (asyncio), and measured (metrics).

**In turn.** SQLAlchemy's asyncio pool hands a returned connection to whichever task asks
next: a waiting task is woken, but a task that returns its connection and asks again at once
(a busy request handler, a worker loop) takes it back before the woken one runs, and the woken
one queues again at the back. Measured with 8 tasks on a pool of 3 for 3 s: 3 tasks ran every
operation, the 5 others waited the whole 3 s (until the pool timeout, in a longer run:
PoolExhausted under load). ``FairAsyncQueuePool`` lets the woken task go first: a caller that
finds others waiting yields to the event loop once before it takes a connection.

**Measured.**

SQLAlchemy's pool has events for a connection checked out, not for one asked for, so the
wait is measured around ``Pool.connect`` (what ``Engine.connect`` and a Session's bind call):
the queue, a new connection's login when the pool opens one, and the checkout events. Only
the application's pools made while metrics are on are of these classes (not the library's
probes); the others pay nothing.

``Engine.dispose`` replaces its pool by ``pool.recreate()``, which makes one of the same class
from its settings: the waits are handed on there.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy.pool import AsyncAdaptedQueuePool, PoolProxiedConnection, QueuePool
from sqlalchemy.pool.base import ConnectionPoolEntry
from sqlalchemy.util.concurrency import await_, in_greenlet


class Waits:
    """The application's requests for a connection to one host (all of its application
    pools): how many are pending, and ``on_wait(seconds)`` for each one served."""

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


class FairAsyncQueuePool(AsyncAdaptedQueuePool):
    """An asyncio engine's pool whose waiting tasks are served in turn (module docstring)."""

    def _do_get(self) -> ConnectionPoolEntry:
        queue: Any = getattr(self._pool, "_queue", None)  # AsyncAdaptedQueue's asyncio.Queue
        if queue is not None and getattr(queue, "_getters", None) and in_greenlet():
            # others wait: the one just woken (if any) takes the connection returned first
            await_(asyncio.sleep(0))
        return super()._do_get()


class MeasuredAsyncQueuePool(MeasuredQueuePool, FairAsyncQueuePool):
    """The measured pool of an asyncio engine (asked from SQLAlchemy's greenlet)."""


def pool_class(asynchronous: bool, measured: bool) -> type[QueuePool]:
    """The pool class of an engine: asyncio ones serve waiting tasks in turn."""
    if asynchronous:
        return MeasuredAsyncQueuePool if measured else FairAsyncQueuePool
    return MeasuredQueuePool if measured else QueuePool
