"""``aurora-access watch``: a live view of the cluster the ``AURORA_*`` configuration points at.

Every ``--interval`` seconds (default 1) until Ctrl-C: the topology as the library sees it
(``Database.topology()``, kept current by its monitor thread), each instance's role and
replica lag, the connections this configuration (its user, to its database) has on each
instance, as that instance's own activity view counts them (``dialect.connections_sql``, asked
on the instance: the application's pools show only this process, the server sees every
process), and the events since the watch began: a failover, a reader added or removed, an
instance that stops or starts answering again. ``--once`` prints one snapshot;
``--once --json`` prints it as one JSON object, for scripts.

The work is split so that each part can be tested alone: ``Watcher.snapshot()`` gathers a
plain ``Snapshot`` (no terminal), ``changes()`` compares two snapshots into ``Event``s (no I/O),
``render()`` and ``as_json()`` turn them into output. The terminal view is rich's ``Live``
``Table``, which wraps and truncates its columns to any terminal width.

The counts include the watch's own connections (its query's, and its Database's monitor's):
they are this configuration's too. No password or token is printed: the header names the user
only, failures are told as ``aurora-access check`` tells them (``check._failure``: the kind of
credential, the driver's first line), scrubbed of the configured password and of anything
shaped like an IAM token. The watch's own Database's warnings are kept out of the live view
(unless logging is configured): they are its own connections' story, not the cluster's.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .check import _failure
from .check_report import _TOKEN
from .database import Database
from .errors import AuroraAccessError
from .settings import Settings
from .topology import Instance, Role

__all__ = ["Event", "InstanceState", "Snapshot", "Watcher", "add_arguments", "as_json",
           "changes", "describe", "render", "run"]

_HIDDEN = "***"
#: at most this many instances asked at once (an Aurora cluster has up to 16)
_MAX_PARALLEL = 16
#: the newest events the live view shows
_EVENTS_SHOWN = 10

EventKind = Literal["failover", "added", "removed", "not answering", "answering again"]


@dataclass(frozen=True)
class InstanceState:
    """One instance at one refresh: what the topology says of it and what it answered.
    ``connections``/``active`` are None when it did not answer (``error`` says why)."""

    id: str
    host: str
    port: int
    role: Role
    lag_ms: float | None
    connections: int | None = None
    active: int | None = None
    error: str | None = None

    @property
    def answering(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Snapshot:
    """The cluster at one refresh: ``at`` is a ``time.time()``, ``stats`` the watch's own
    Database's counters (failovers seen, topology refreshes)."""

    at: float
    writer: str
    instances: tuple[InstanceState, ...]
    stats: dict[str, int]

    def instance(self, instance_id: str) -> InstanceState | None:
        return next((i for i in self.instances if i.id == instance_id), None)


@dataclass(frozen=True)
class Event:
    """A change between two snapshots, as one line: ``12:03:04 failover: writer 11 -> 12``."""

    at: float
    kind: EventKind
    instance: str
    text: str

    def line(self) -> str:
        return f"{_clock(self.at)} {self.text}"


# -- gathering -------------------------------------------------------------------------------


class Watcher:
    """Gathers snapshots of the cluster of ``db`` (which it closes). The instances are asked
    in parallel, so that one that hangs or times out does not delay the others' answers,
    through the Database's own one-statement queries (``ClusterMonitor.query``: its probe
    pools, kept between refreshes, each query cut off after ``AURORA_HUNG_TIMEOUT_S``)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._executor = ThreadPoolExecutor(_MAX_PARALLEL, thread_name_prefix="aurora-watch")
        self._secrets = {db.settings.password} if db.settings.password else set()
        self._hosts: set[str] = set()  # every host asked so far

    def snapshot(self) -> Snapshot:
        """The topology as last seen (the first call logs in and discovers it, raising
        NoWriterAvailable or a refused login), with each instance's answer."""
        topology = self.db.topology()
        instances = topology.instances
        self._hosts |= {i.host for i in instances}
        states = tuple(self._executor.map(self._ask, instances))
        return Snapshot(time.time(), topology.writer.id, states, self.db.stats())

    def _ask(self, instance: Instance) -> InstanceState:
        """The configuration's connections on ``instance``, asked there; its failure in a few
        words if it does not answer."""
        try:
            (total, active), = self.db._monitor.query(instance.host,
                                                      self.db.dialect.connections_sql)
        except Exception as error:  # shown per instance; the others are still asked
            return _state(instance, error=self.scrub(_failure(self.db, error)))
        return _state(instance, int(total), int(active))

    def scrub(self, text: str) -> str:
        """The last guard: no configured password, nothing shaped like an IAM token."""
        for secret in self._secrets:
            text = text.replace(secret, _HIDDEN)
        return _TOKEN.sub(_HIDDEN, text)

    def close(self) -> None:
        """Stop asking: connections still waiting on an instance are cut (so that Ctrl-C does
        not wait for a hung one), then the Database is closed."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        for host in self._hosts:
            self.db._pools.abort_in_use(host)
        self._executor.shutdown(wait=True)
        self.db.close()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _state(instance: Instance, connections: int | None = None, active: int | None = None,
           error: str | None = None) -> InstanceState:
    return InstanceState(instance.id, instance.host, instance.port, instance.role,
                         instance.lag_ms, connections, active, error)


# -- events ----------------------------------------------------------------------------------


def changes(before: Snapshot | None, after: Snapshot) -> list[Event]:
    """What changed from ``before`` to ``after`` (nothing after the first snapshot): a new
    writer, instances that joined or left the topology, instances that stopped or started
    answering. The new writer of a failover was a reader: that is the failover, not a reader
    removed."""
    if before is None:
        return []
    events: list[Event] = []

    def add(kind: EventKind, instance: str, text: str) -> None:
        events.append(Event(after.at, kind, instance, text))

    if before.writer != after.writer:
        add("failover", after.writer, f"failover: writer {before.writer} -> {after.writer}")
    was = {i.id: i for i in before.instances}
    now = {i.id: i for i in after.instances}
    for state in after.instances:
        old = was.get(state.id)
        if old is None:
            silent = "" if state.answering else " (not answering)"
            add("added", state.id, f"{state.role} {state.id} added{silent}")
        elif old.answering != state.answering:
            kind: EventKind = "answering again" if state.answering else "not answering"
            add(kind, state.id, f"{state.role} {state.id} {kind}")
    for state in before.instances:
        if state.id not in now:
            add("removed", state.id, f"{state.role} {state.id} removed")
    return events


# -- output ----------------------------------------------------------------------------------


def describe(settings: Settings) -> str:
    """Which configuration is watched: engine, user, endpoint, database; never a password."""
    user = f"{settings.user}@" if settings.user else ""
    return (f"{settings.engine} {user}{settings.cluster_endpoint}:{settings.port}/"
            f"{settings.database}")


def render(snapshot: Snapshot, events: Iterable[Event], watched: str,
           footer: str = "") -> RenderableType:
    """The view: a header line (time, configuration), a table of the instances, why those that
    do not answer do not, the newest events, and what the counts count. Every column and line
    may wrap, so it fits any width."""
    header = Text.assemble(("aurora-access watch", "bold"), "  ",
                           (_clock(snapshot.at), "cyan"), f"  {watched}")
    parts: list[RenderableType] = [header, _table(snapshot)]
    parts += [Text(f"{i.id} not answering: {i.error}", style="red")
              for i in snapshot.instances if i.error is not None]
    shown = list(events)[-_EVENTS_SHOWN:]
    parts.append(Text("events", style="bold"))
    parts += [Text(f"  {e.line()}") for e in shown] or [Text("  none yet", style="dim")]
    parts.append(Text("connections: this user's to this database, per instance (this watch's "
                      "included); active: running a statement (not counting this watch's)",
                      style="dim"))
    if footer:
        parts.append(Text(footer, style="dim"))
    return Group(*parts)


def _table(snapshot: Snapshot) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("instance", overflow="fold")
    table.add_column("host:port", overflow="fold")
    table.add_column("role")
    table.add_column("lag", justify="right")
    table.add_column("connections", justify="right")
    table.add_column("answers")
    for i in snapshot.instances:
        lag = "-" if i.role == "writer" else "?" if i.lag_ms is None else f"{i.lag_ms:.1f} ms"
        connections = "-" if i.connections is None else f"{i.connections} ({i.active} active)"
        table.add_row(i.id, f"{i.host}:{i.port}",
                      Text(i.role, style="bold" if i.role == "writer" else ""), lag, connections,
                      Text("yes", style="green") if i.answering else Text("no", style="bold red"))
    return table


def as_json(snapshot: Snapshot, events: Iterable[Event] = ()) -> str:
    """One JSON object: ``writer``, ``instances`` (id, host, port, role, lag_ms, connections,
    active, answering, error), ``events`` and ``stats``."""
    document: dict[str, Any] = {
        "at": _iso(snapshot.at),
        "writer": snapshot.writer,
        "instances": [{"id": i.id, "host": i.host, "port": i.port, "role": i.role,
                       "lag_ms": None if i.lag_ms is None else round(i.lag_ms, 3),
                       "connections": i.connections, "active": i.active,
                       "answering": i.answering, "error": i.error}
                      for i in snapshot.instances],
        "events": [{"at": _iso(e.at), "kind": e.kind, "instance": e.instance, "text": e.text}
                   for e in events],
        "stats": snapshot.stats,
    }
    return json.dumps(document, indent=2)


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%H:%M:%S")  # the viewer's local time


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at).astimezone().isoformat(timespec="milliseconds")


# -- the command -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="seconds between refreshes (default %(default)g)")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--json", action="store_true",
                        help="with --once: print the snapshot as one JSON object")


def run(args: argparse.Namespace) -> int:
    """``aurora-access watch``: 0 after ``--once`` or Ctrl-C; a configuration that cannot be
    read or a cluster that cannot be reached at the start is an AuroraAccessError (one line on
    stderr): later failures show in the view instead."""
    if args.interval <= 0:
        raise AuroraAccessError(f"--interval must be above 0, not {args.interval:g}")
    if args.json and not args.once:
        raise AuroraAccessError("--json prints one snapshot: use it with --once")
    try:
        with Watcher(Database.from_env()) as watcher:
            first = _first_snapshot(watcher)
            watched = describe(watcher.db.settings)
            if args.json:
                print(as_json(first))
            elif args.once:
                Console().print(render(first, [], watched))
            else:
                _live(watcher, first, watched, args.interval)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends, even before its first view
    return 0


def _first_snapshot(watcher: Watcher) -> Snapshot:
    """The first snapshot, which logs in and discovers the cluster: what stops it is told in
    one line (the library's errors name no secret; anything else by its kind and first
    line, scrubbed)."""
    try:
        return watcher.snapshot()
    except AuroraAccessError:
        raise
    except Exception as error:  # a credentials provider's (boto3's) own error
        raise AuroraAccessError(
            f"could not start watching: {watcher.scrub(_failure(watcher.db, error))}") from None


@contextmanager
def _library_log_kept_out() -> Iterator[None]:
    """Keep the watch's own Database's warnings (its monitor finding the new writer, ...) out
    of the live view, unless logging was configured: Python's last-resort handler would print
    them over it, and they tell the watch's own connections' story, which the events and the
    per-instance failures already tell of the cluster."""
    library = logging.getLogger("aurora_access")
    handler = logging.NullHandler()
    library.addHandler(handler)
    try:
        yield
    finally:
        library.removeHandler(handler)


def _live(watcher: Watcher, snapshot: Snapshot, watched: str, interval: float) -> None:
    """Refresh every ``interval`` seconds (on a fixed beat: a slow refresh does not push the
    next ones later) until Ctrl-C."""
    events: deque[Event] = deque(maxlen=_EVENTS_SHOWN)
    footer = f"every {interval:g} s, Ctrl-C quits"
    with _library_log_kept_out(), \
            Live(render(snapshot, events, watched, footer), auto_refresh=False) as live:
        beat = time.monotonic()
        while True:
            beat += interval
            time.sleep(max(0.0, beat - time.monotonic()))
            beat = max(beat, time.monotonic() - interval)  # after a long stall: no catch-up
            latest = watcher.snapshot()
            events.extend(changes(snapshot, latest))
            snapshot = latest
            live.update(render(snapshot, events, watched, footer), refresh=True)
