"""Read-your-writes by replication position: commit marks, their scopes, positions, tokens.

After a commit that wrote, the library keeps a ``CommitMark``. A later read that must see it may
run on a reader only once the reader has replayed the writer's log up to a position at least as
new as that commit. Who must see a commit (its scope):

- the session that made it, for as long as it lives (``RoutingSession.own_commit``), in
  whatever context its later reads run: a web framework that reloads a returned object in
  another copy of the request's context still sees it;
- the context that made it (thread or asyncio task, a ``ContextVar``), unless a unit of work
  is open there;
- a unit of work (``UnitOfWork``: one web request, one task of a queue): every context copied
  from the one that opened it shares one mutable record of its commits, so a commit in a
  framework's worker thread is seen by the request's later reads everywhere, and forgotten when
  the unit ends;
- with ``AURORA_RYW_SCOPE=process``, the whole process: every read waits for the newest commit
  any thread made (test suites, where the test's own session reads what a request just wrote).

Keeping the write path free of extra round trips: the commit only records *when* it returned (a
monotonic clock reading). The position is learned lazily, from any observation of the writer's
position that began after that moment (``WriterPositions``): the topology monitor makes one
every refresh, and a read that needs one sooner makes one, shared by every context waiting at
the same time. A writer position read after a commit returned covers that commit.

Guarantees: with log positions (PostgreSQL, MariaDB GTIDs), a read that must see a commit sees
it, on whichever instance it runs. On Aurora, whose readers have no replay-position function,
the fallback is lag-based: a reader qualifies when its reported ``replica_lag_in_msec`` is less
than the time since the commit; that is as fresh as Aurora's lag report, so it is best effort.

Tokens carry a commit to another process: its position (and the wall-clock time of the commit,
for lag mode). A token comes from a client, so nothing in it is trusted: a position beyond the
writer's own is implausible and ignored (``CommitMark.from_token``; checked by the router).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal, NamedTuple

from .blocking import Blocking, Signal
from .errors import InvalidCommitToken

Scope = Literal["context", "process"]


class PositionQueries(NamedTuple):
    """Where one kind of log position is read: the writer's (read after a commit returned, it
    covers that commit) and a reader's (what a snapshot begun there now sees). Both answer
    one value in the same order (NULL, or no row: unknown, which proves nothing)."""

    name: str
    writer_sql: str
    replica_sql: str


class CommitMark:
    """A commit: when it returned (``time.monotonic_ns()``) and, once learned, its position.

    The position is set once it is known (any observation of the writer made after the commit
    is a valid one), so every holder of the mark (session, context, unit of work) learns it at
    once. ``from_token``: the mark came from outside (a client's token) and its position is
    checked against the writer's before a read waits for it; ``ignored``: it failed that check.
    """

    __slots__ = ("committed_ns", "from_token", "ignored", "position")

    def __init__(self, committed_ns: int, position: int | None = None, *,
                 from_token: bool = False) -> None:
        self.committed_ns = committed_ns
        self.position = position
        self.from_token = from_token
        self.ignored = False

    def __repr__(self) -> str:
        return f"CommitMark(committed_ns={self.committed_ns}, position={self.position})"


def newest(marks: list[CommitMark | None]) -> CommitMark | None:
    """The mark that returned last, or None."""
    present = [m for m in marks if m is not None]
    return max(present, key=lambda m: m.committed_ns) if present else None


class WriterPositions:
    """Observations of the writer's log position, newest first, shared by all contexts."""

    def __init__(self, observe: Callable[[], int | None],
                 blocking: Blocking | None = None) -> None:
        self._observe = observe
        self.blocking = blocking or Blocking()
        self._lock = threading.Lock()
        self._latest: tuple[int, int] | None = None  # (began_ns, position)
        self._in_flight: Signal | None = None

    def record(self, began_ns: int, position: int) -> None:
        with self._lock:
            if self._latest is None or began_ns > self._latest[0]:
                self._latest = (began_ns, position)

    def reset(self) -> None:
        """Forget observations (the writer changed: its positions are a new timeline)."""
        with self._lock:
            self._latest = None

    def known_after(self, committed_ns: int) -> int | None:
        """A position observed after ``committed_ns`` if one is already known; no I/O."""
        latest = self._latest
        return latest[1] if latest is not None and latest[0] >= committed_ns else None

    def latest(self) -> int | None:
        """The newest position observed, whenever that was; no I/O."""
        latest = self._latest
        return None if latest is None else latest[1]

    def position_after(self, committed_ns: int, timeout: float) -> int | None:
        """A writer position observed after ``committed_ns``; observes one if none is known.

        One question at a time: callers whose commit the question under way covers (it
        began after the commit) wait for its answer; the others wait for it to end and then
        share the next one. So a busy writer is asked once per round trip, not once per
        commit, over one connection. None if the writer could not be asked in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._latest is not None and self._latest[0] >= committed_ns:
                    return self._latest[1]
                waiting = self._in_flight
                if waiting is None:
                    self._in_flight = done = Signal()
                    began = time.monotonic_ns()
            if waiting is not None:
                if not self.blocking.wait(waiting, max(0.0, deadline - time.monotonic())):
                    return None
                continue  # answered: covered by it, else sharing (or asking) the next one
            try:
                position = self._observe()
            finally:
                with self._lock:
                    self._in_flight = None
                done.set()
            if position is None:
                return None
            self.record(began, position)
            return position


class ReplicaPositions:
    """The newest replay position known for each reader (monotonic per timeline), and the
    questions asked for it: one at a time per reader, shared by every read waiting for it (200
    waiting reads ask a reader once, not 200 times)."""

    def __init__(self, blocking: Blocking | None = None) -> None:
        self.blocking = blocking or Blocking()
        self._known: dict[str, int] = {}
        self._lock = threading.Lock()
        self._asking: dict[str, _Question] = {}

    def observe(self, instance_id: str, ask: Callable[[], int | None]) -> int | None:
        """The reader's replay position, asked now (``ask``), or the answer to the question
        already under way; raises what asking raised."""
        with self._lock:
            question = self._asking.get(instance_id)
            mine = question is None
            if question is None:
                question = self._asking[instance_id] = _Question()
        if not mine:
            self.blocking.wait(question.answered)
            if question.error is not None:
                raise question.error
            return question.position
        try:
            question.position = ask()
            self.update(instance_id, question.position)
        except BaseException as error:
            question.error = error
            raise
        finally:
            with self._lock:
                del self._asking[instance_id]
            question.answered.set()
        return question.position

    def update(self, instance_id: str, position: int | None) -> None:
        if position is not None and position > self._known.get(instance_id, -1):
            self._known[instance_id] = position

    def reached(self, instance_id: str, needed: int) -> bool:
        return self._known.get(instance_id, -1) >= needed

    def reset(self) -> None:
        self._known.clear()


class _Question:
    """A replay position asked of one reader, awaited by those who would have asked too."""

    def __init__(self) -> None:
        self.answered = Signal()
        self.position: int | None = None
        self.error: BaseException | None = None


class UnitOfWork:
    """One unit of work (a web request, a queued task, a script's step): its commits are seen
    by every read inside it, in every context copied from the one that opened it, and are
    forgotten when it ends. ``after``: a commit (from a token) its reads must also see.

    ``token`` is the token of its newest commit (None if it committed nothing), for a cookie, a
    header or the next task; getting it may ask the writer for its position (one query, shared
    with concurrent callers), which ``known_token`` never does.
    """

    def __init__(self, after: CommitMark | None, parent: UnitOfWork | None,
                 encode: Callable[[CommitMark, bool], str | None]) -> None:
        self.after = after
        self.latest: CommitMark | None = None
        self._parent = parent
        self._encode = encode
        self._lock = threading.Lock()

    def record(self, mark: CommitMark) -> None:
        with self._lock:
            if self.latest is None or mark.committed_ns >= self.latest.committed_ns:
                self.latest = mark
        if self._parent is not None:
            self._parent.record(mark)

    def marks(self) -> list[CommitMark]:
        unit: UnitOfWork | None = self
        found: list[CommitMark] = []
        while unit is not None:
            found += [m for m in (unit.after, unit.latest) if m is not None]
            unit = unit._parent
        return found

    @property
    def committed(self) -> bool:
        """Whether anything inside it committed a write."""
        return self.latest is not None

    @property
    def token(self) -> str | None:
        mark = self.latest
        return None if mark is None else self._encode(mark, True)

    def known_token(self) -> str | None:
        """``token`` if it can be made without asking the writer, else None."""
        mark = self.latest
        return None if mark is None else self._encode(mark, False)


class CommitTracker:
    """The commits a read must see, by scope (see the module docstring), for one Database."""

    def __init__(self, scope: Scope = "context") -> None:
        self.scope = scope
        self._mark: ContextVar[CommitMark | None] = ContextVar("aurora_commit", default=None)
        self._unit: ContextVar[UnitOfWork | None] = ContextVar("aurora_unit_of_work",
                                                               default=None)
        self._process_latest: CommitMark | None = None

    def committed(self) -> CommitMark:
        """Record a commit that wrote and just returned (cheap: no I/O); returns its mark."""
        mark = CommitMark(time.monotonic_ns())
        self._process_latest = mark
        unit = self._unit.get()
        if unit is not None:
            unit.record(mark)
        else:
            self._mark.set(mark)
        return mark

    def marks(self) -> list[CommitMark]:
        """What a read in this context must see, beyond its own session's commits."""
        if self.scope == "process":
            latest = self._process_latest
            return [] if latest is None else [latest]
        mark, unit = self._mark.get(), self._unit.get()
        found = [] if unit is None else unit.marks()
        return found if mark is None else [mark, *found]

    def current(self) -> CommitMark | None:
        """The newest commit made in this context (its unit of work included)."""
        unit = self._unit.get()
        return newest([self._mark.get(), None if unit is None else unit.latest])

    def forget(self) -> None:
        """Forget this context's commits (not those of an open unit of work)."""
        self._mark.set(None)

    @contextmanager
    def unit_of_work(self, after: CommitMark | None,
                     encode: Callable[[CommitMark, bool], str | None]) -> Iterator[UnitOfWork]:
        unit = UnitOfWork(after, self._unit.get(), encode)
        reset = self._unit.set(unit)
        try:
            yield unit
        finally:
            try:
                self._unit.reset(reset)
            except ValueError:  # ended in another context than it began (a WSGI server's close)
                self._unit.set(unit._parent)


TOKEN_PREFIX = "aurora1:"  # noqa: S105 - a format marker, not a secret
_MAX_TOKEN_LENGTH = 100  # ours are about 40 characters; anything longer is not one


def encode_token(engine: str, mark: CommitMark) -> str:
    """``aurora1:<engine>:<position in hex, or empty>:<commit wall-clock ms>``."""
    age_ns = time.monotonic_ns() - mark.committed_ns
    wall_ms = (time.time_ns() - age_ns) // 1_000_000
    position = "" if mark.position is None else f"{mark.position:x}"
    return f"{TOKEN_PREFIX}{engine}:{position}:{wall_ms}"


def decode_token(engine: str, token: str) -> CommitMark:
    """The commit a token stands for; InvalidCommitToken (a ValueError) naming the token if it
    is not one of ours. A commit time in the future counts as now."""
    prefix = f"{TOKEN_PREFIX}{engine}:"
    if not isinstance(token, str) or not token.startswith(prefix) \
            or len(token) > _MAX_TOKEN_LENGTH:
        shown = token if not isinstance(token, str) or len(token) <= 60 else f"{token[:57]}..."
        raise InvalidCommitToken(f"not an aurora-access commit token for {engine}: {shown!r}")
    try:
        position_text, wall_text = token[len(prefix):].split(":")
        position = int(position_text, 16) if position_text else None
        age_ns = time.time_ns() - int(wall_text) * 1_000_000
    except ValueError:
        raise InvalidCommitToken(f"malformed aurora-access commit token: {token!r}") from None
    if position is not None and position < 0:
        raise InvalidCommitToken(f"malformed aurora-access commit token: {token!r}")
    return CommitMark(time.monotonic_ns() - max(0, age_ns), position, from_token=True)
