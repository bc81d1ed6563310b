"""Read-your-writes by replication position, shared by sync and async sessions.

After a commit that wrote, the context (thread or asyncio task) remembers it as a
``CommitMark``. A later read in that context may run on a reader only once the reader has
replayed the writer's log up to a position at least as new as that commit.

Keeping the write path free of extra round trips: the commit only records *when* it returned
(a monotonic clock reading). The position is learned lazily, from any observation of the
writer's position that began after that moment (``WriterPositions``): the topology monitor
makes one every refresh, and a read that needs one sooner makes one, shared by every context
waiting at the same time. A writer position read after a commit returned covers that commit.

Guarantees: with LSN functions (PostgreSQL, and MariaDB GTIDs), a read in the same context
after a commit sees that commit, on whichever instance it runs. On Aurora, whose readers have no
replay-position function, the fallback is lag-based: a reader qualifies when its reported
``replica_lag_in_msec`` is less than the time since the commit; that is as fresh as Aurora's
lag report, which AWS updates about every second, so it is best effort, not a proof.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from .errors import InvalidCommitToken


@dataclass(frozen=True, slots=True)
class CommitMark:
    """A commit made in this context: when it returned and, once learned, its position."""

    committed_ns: int
    position: int | None = None


class WriterPositions:
    """Observations of the writer's log position, newest first, shared by all contexts."""

    def __init__(self, observe: Callable[[], int | None]) -> None:
        self._observe = observe
        self._lock = threading.Lock()
        self._latest: tuple[int, int] | None = None  # (began_ns, position)
        self._in_flight: threading.Event | None = None
        self._in_flight_began = 0

    def record(self, began_ns: int, position: int) -> None:
        with self._lock:
            if self._latest is None or began_ns > self._latest[0]:
                self._latest = (began_ns, position)

    def reset(self) -> None:
        """Forget observations (the writer changed: its positions are a new timeline)."""
        with self._lock:
            self._latest = None

    def position_after(self, committed_ns: int, timeout: float) -> int | None:
        """A writer position observed after ``committed_ns``; observes one if none is known.

        Concurrent callers share one observation. None if the writer could not be asked.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._latest is not None and self._latest[0] >= committed_ns:
                    return self._latest[1]
                waiting = self._in_flight
                if waiting is None or self._in_flight_began < committed_ns:
                    waiting = None
                    self._in_flight = done = threading.Event()
                    self._in_flight_began = began = time.monotonic_ns()
            if waiting is not None:
                if not waiting.wait(max(0.0, deadline - time.monotonic())):
                    return None
                continue
            try:
                position = self._observe()
            finally:
                with self._lock:
                    if self._in_flight is done:
                        self._in_flight = None
                done.set()
            if position is None:
                return None
            self.record(began, position)
            return position


class ReplicaPositions:
    """The newest replay position known for each reader (monotonic per timeline)."""

    def __init__(self) -> None:
        self._known: dict[str, int] = {}

    def update(self, instance_id: str, position: int | None) -> None:
        if position is not None and position > self._known.get(instance_id, -1):
            self._known[instance_id] = position

    def reached(self, instance_id: str, needed: int) -> bool:
        return self._known.get(instance_id, -1) >= needed

    def reset(self) -> None:
        self._known.clear()


class CommitTracker:
    """The newest commit made in each context, for one Database."""

    def __init__(self) -> None:
        self._mark: ContextVar[CommitMark | None] = ContextVar("aurora_commit", default=None)

    def committed(self) -> None:
        """Called right after a commit that wrote returned (cheap: no I/O)."""
        self._mark.set(CommitMark(time.monotonic_ns()))

    def current(self) -> CommitMark | None:
        return self._mark.get()

    def forget(self) -> None:
        self._mark.set(None)

    def learned(self, mark: CommitMark, position: int) -> None:
        """Remember the position of ``mark`` unless a newer commit replaced it meanwhile."""
        if self._mark.get() is mark:
            self._mark.set(CommitMark(mark.committed_ns, position))


TOKEN_PREFIX = "aurora1:"  # noqa: S105 - a format marker, not a secret


def encode_token(engine: str, mark: CommitMark) -> str:
    """``aurora1:<engine>:<position in hex, or empty>:<commit wall-clock ms>``."""
    age_ns = time.monotonic_ns() - mark.committed_ns
    wall_ms = (time.time_ns() - age_ns) // 1_000_000
    position = "" if mark.position is None else f"{mark.position:x}"
    return f"{TOKEN_PREFIX}{engine}:{position}:{wall_ms}"


def decode_token(engine: str, token: str) -> CommitMark:
    """The commit a token stands for; InvalidCommitToken (a ValueError) naming the token if it
    is not one of ours."""
    prefix = f"{TOKEN_PREFIX}{engine}:"
    if not isinstance(token, str) or not token.startswith(prefix):
        raise InvalidCommitToken(f"not an aurora-access commit token for {engine}: {token!r}")
    try:
        position_text, wall_text = token[len(prefix):].split(":")
        position = int(position_text, 16) if position_text else None
        age_ns = time.time_ns() - int(wall_text) * 1_000_000
    except ValueError:
        raise InvalidCommitToken(f"malformed aurora-access commit token: {token!r}") from None
    return CommitMark(time.monotonic_ns() - max(0, age_ns), position)
