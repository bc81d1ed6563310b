"""Named counters of one Database (``db.stats()``), safe to bump from any thread."""

from __future__ import annotations

import threading
from collections import Counter

#: every counter ``db.stats()`` reports, zero until something happens
STAT_NAMES = (
    "reads_on_readers",  # statements routed to a reader
    "reads_on_writer",  # reads routed to the writer (no usable reader, a writer session, ...)
    "writes",  # statements of a transaction that wrote
    "failovers",  # writer changes seen
    "retries",  # reads retried elsewhere and transactions re-run
    "ryw_fallbacks",  # reads sent to the writer because no reader had a commit in time
    "ryw_waits",  # reads that waited for a reader to replay a commit
    "ryw_own_on_writer",  # a session's reads of its own commit, served by the writer at once
    "ryw_tokens_ignored",  # tokens from clients that claimed a position beyond the writer's
    "iam_tokens_generated",
    "topology_refreshes",
    "writer_heartbeat_failures",
    "idle_sleeps",  # times the monitor slept and closed idle connections (AURORA_IDLE_PAUSE_S)
)


class Stats:
    """Named counters, safe to bump from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter({name: 0 for name in STAT_NAMES})

    def bump(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counts[name] += by

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
