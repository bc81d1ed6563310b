"""What the demo shows while it runs (issue 15): a live panel, the library's events, progress.

A single status line redrawn with ``\\r`` wrapped at 80 columns and scrolled instead of
updating, and the library's warnings landed in the middle of it. Here a terminal gets rich's
live display instead: a panel that reflows to the terminal's width, with events printed above
it as whole lines, and a spinner while the cluster starts and the catalogue loads. Anything
else (a pipe, a CI log, a test's StringIO) gets plain lines without escape codes.

Eight shoppers that lose the writer together each log "writer 11 failed": ``Events`` holds a
message for a short window and says it once, with how many times it came.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TextIO

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.measure import Measurement
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

TICK_S = 0.2  # how often pending events are said and the panel's clock checked
TTY_PERIOD_S = 1.0  # the panel's refresh (and its operations/s window)
PLAIN_PERIOD_S = 5.0  # a progress line this often when not on a terminal, as before
UNBOUNDED = 10_000  # columns: to measure how wide a grid wants to be


@dataclass(frozen=True)
class Snapshot:
    """The traffic at one moment: what the panel (or a plain line) shows."""

    elapsed_s: float
    duration_s: float
    ops_per_s: float
    orders: int
    stale_reads: int
    reads_on_readers: int
    reads_on_writer: int
    p50_ms: float | None
    p99_ms: float | None
    failovers: int
    last_recovery_s: float | None  # None: no failover yet, or the last one still recovering

    def recovery(self) -> str:
        if not self.failovers:
            return "-"
        return "recovering..." if self.last_recovery_s is None else f"{self.last_recovery_s:.2f} s"

    def latency(self) -> str:
        return f"{_ms(self.p50_ms)} / {_ms(self.p99_ms)} ms"

    def cells(self) -> list[tuple[str, Text]]:
        """(label, value) in reading order; four to a row fit 160 columns, two fit 80."""
        stale = "bold red" if self.stale_reads else "bold green"
        recovering = self.failovers and self.last_recovery_s is None
        return [
            ("elapsed", Text(f"{self.elapsed_s:.0f} / {self.duration_s:.0f} s")),
            ("operations/s", Text(f"{self.ops_per_s:,.0f}")),
            ("orders placed", Text(f"{self.orders:,}")),
            ("stale reads", Text(f"{self.stale_reads:,}", style=stale)),
            ("reads readers/writer",
             Text(f"{self.reads_on_readers:,} / {self.reads_on_writer:,}")),
            ("latency p50/p99", Text(self.latency())),
            ("failovers", Text(f"{self.failovers}")),
            ("last recovery", Text(self.recovery(), style="yellow" if recovering else "")),
        ]

    def plain(self) -> str:
        """One line for logs: no colours, no redrawing."""
        return (f"  {self.elapsed_s:.0f}/{self.duration_s:.0f} s  {self.ops_per_s:,.0f} ops/s  "
                f"orders {self.orders:,}  stale reads {self.stale_reads}  reads readers/writer "
                f"{self.reads_on_readers:,}/{self.reads_on_writer:,}  p50/p99 {self.latency()}  "
                f"failovers {self.failovers}, last recovery {self.recovery()}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


class Board:
    """The panel of a snapshot: a progress bar over the duration, then label/value pairs, as
    many to a row as the width takes (4, 2 or 1), so no line is wider than the terminal."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        snap = self.snapshot
        bar = Table.grid(expand=True)  # a bar alone ends no line: a row of its own does
        bar.add_row(ProgressBar(total=max(snap.duration_s, 1e-9),
                                completed=min(snap.elapsed_s, snap.duration_s)))
        yield Panel(Group(bar, _Pairs(snap.cells())), title="aurora-access demo",
                    title_align="left", border_style="blue")


class _Pairs:
    """Label/value pairs in a grid of the most pairs to a row that fit the width given."""

    def __init__(self, cells: list[tuple[str, Text]]) -> None:
        self.cells = cells

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        unbounded = options.update(max_width=UNBOUNDED)  # a measure is clamped to the width
        for per_row in (4, 2):
            table = _grid(self.cells, per_row)
            if Measurement.get(console, unbounded, table).maximum <= options.max_width:
                yield table
                return
        yield _grid(self.cells, 1)  # rich wraps inside its cells if even this is too wide


def _grid(cells: list[tuple[str, Text]], per_row: int) -> Table:
    table = Table.grid(padding=(0, 1))
    for pair in range(per_row):
        if pair:
            table.add_column(width=1)  # with the padding, 3 spaces between pairs
        table.add_column(justify="right", style="dim")
        table.add_column(justify="left", style="bold")
    for first in range(0, len(cells), per_row):
        row: list[str | Text] = []
        for pair, (label, value) in enumerate(cells[first:first + per_row]):
            row += ([""] if pair else []) + [label, value]
        table.add_row(*row)
    return table


@dataclass
class _Burst:
    first: float
    level: int
    count: int = 1


class Events:
    """Library messages, each said once per burst: the first of a message is held for
    ``window_s`` and identical ones arriving meanwhile are counted into it ("(x8)"). Bursts are
    said in the order they began, by ``flush`` (the ticker calls it)."""

    def __init__(self, say: Callable[[str, int], None], window_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._say = say
        self._window_s = window_s
        self._clock = clock
        self._pending: dict[str, _Burst] = {}  # in order of arrival
        self._lock = threading.Lock()  # shoppers add while the ticker flushes
        self._saying = threading.Lock()  # keeps bursts in order between flushing threads

    def add(self, message: str, level: int = logging.WARNING) -> None:
        with self._lock:
            burst = self._pending.get(message)
            if burst is None:
                self._pending[message] = _Burst(self._clock(), level)
            else:
                burst.count += 1

    def flush(self, force: bool = False) -> None:
        """Say the bursts whose window is over (all of them with ``force``)."""
        with self._saying:
            for message, burst in self._due(force):
                times = f" (x{burst.count})" if burst.count > 1 else ""
                self._say(message + times, burst.level)

    def _due(self, force: bool) -> list[tuple[str, _Burst]]:
        with self._lock:
            now = self._clock()
            due = [(m, b) for m, b in self._pending.items()
                   if force or now - b.first >= self._window_s]
            for message, _ in due:
                del self._pending[message]
            return due


class EventHandler(logging.Handler):
    """Feeds log records to ``Events`` instead of writing them where the panel is drawn."""

    def __init__(self, events: Events, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.events.add(self.format(record), record.levelno)
        except Exception:  # logging must never break the shoppers
            self.handleError(record)


class Screen:
    """Where the demo talks while it runs (a context manager: a ticker thread says pending
    events and refreshes the panel). On a terminal: rich's live display; otherwise plain
    lines. ``console`` replaces the terminal's (tests)."""

    def __init__(self, stream: TextIO, console: Console | None = None,
                 window_s: float = 1.0) -> None:
        self.stream = stream
        self.console = console if console is not None else (
            Console(file=stream) if stream.isatty() else None)
        self.events = Events(self._event, window_s)
        self._board: Callable[[float], None] | None = None
        self._board_lock = threading.Lock()
        self._done = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="demo-screen", daemon=True)

    def __enter__(self) -> Screen:
        self._ticker.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._done.set()
        self._ticker.join(5)
        self.events.flush(force=True)

    def note(self, text: str) -> None:
        """A line of the demo's own, after the library events that came before it."""
        self.events.flush(force=True)
        self._line("demo:", text, "")

    @contextmanager
    def status(self, text: str) -> Iterator[None]:
        """A spinner with ``text`` while the block runs (on a terminal); else one line."""
        if self.console is None:
            self._line("demo:", text, "")
            yield
            return
        with self.console.status(Text(text)):
            yield

    @contextmanager
    def board(self, snapshot: Callable[[float], Snapshot]) -> Iterator[None]:
        """The panel while the block runs, refreshed every second from ``snapshot(window)``;
        not on a terminal, a plain line every 5 s."""
        if self.console is None:
            with self._showing(lambda window: self._line("", snapshot(window).plain(), ""),
                               PLAIN_PERIOD_S):
                yield
            return
        live = Live(Board(snapshot(TTY_PERIOD_S)), console=self.console, auto_refresh=False,
                    redirect_stdout=False, redirect_stderr=True)
        with live, self._showing(
                lambda window: live.update(Board(snapshot(window)), refresh=True),
                TTY_PERIOD_S):
            yield
            live.update(Board(snapshot(TTY_PERIOD_S)), refresh=True)  # the final figures

    @contextmanager
    def _showing(self, show: Callable[[float], None], period: float) -> Iterator[None]:
        """Has the ticker call ``show(period)`` every ``period`` seconds while the block runs."""
        due = time.monotonic() + period

        def tick(now: float) -> None:
            nonlocal due
            if now >= due:
                due = max(due + period, now)
                show(period)

        with self._board_lock:
            self._board = tick
        try:
            yield
        finally:
            with self._board_lock:
                self._board = None

    def _tick(self) -> None:
        while not self._done.wait(TICK_S):
            self.events.flush()
            with self._board_lock:
                if self._board is not None:
                    self._board(time.monotonic())

    def _event(self, message: str, level: int) -> None:
        self._line("  library:", message, "red" if level >= logging.ERROR else "yellow")

    def _line(self, prefix: str, text: str, style: str) -> None:
        """On a terminal through the console: above the live panel, wrapped to its width under
        the text's start; else as it is."""
        if self.console is None:
            print(f"{prefix} {text}" if prefix else text, file=self.stream, flush=True)
            return
        line = Table.grid(padding=(0, 1))
        line.add_column(no_wrap=True, style="dim")
        line.add_column(style=style)
        line.add_row(prefix, Text(text))
        self.console.print(line)
