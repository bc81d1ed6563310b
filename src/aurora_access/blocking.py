"""How the core waits and runs its blocking work: ``Blocking`` does it in the calling thread
(the threaded ``Database``); ``AsyncDatabase`` gives the core one that runs blocking work in a
thread and sleeps with asyncio, so that nothing the core does holds the event loop."""

from __future__ import annotations

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
