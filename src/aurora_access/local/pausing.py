"""Aurora Serverless v2's auto-pause on a local cluster.

On Aurora an instance scaled to zero ACUs pauses once it has had no client connection for a
while, and the next connection to it waits until it has resumed (up to some 15 s). Here a
thread of the cluster watches every instance's client connections; an instance idle for
``auto_pause_s`` is frozen (SIGSTOP on its processes, state ``auto-paused``, distinct from a
user's ``pause()``). A frozen server's kernel still completes TCP handshakes into the listen
backlog, so a new connection is held with no answer; once one is seen the instance is
continued ``resume_s`` later and the held connection is served.

Connections are counted from the kernel's TCP table (/proc/net/tcp), not by asking each
server: that opens no connection of its own every tick, works the same for both engines, and
also sees connections held by a frozen server (accepted or still in its backlog). A
connection is a client's unless its client end belongs to a reader's replication process
(PostgreSQL's walreceiver, MariaDB's server): replication does not keep the writer awake,
while anything else does, monitoring included, as on Aurora.

A commit must not wait for a frozen reader: each engine drops an auto-paused reader from
what its writer waits for (``set_synchronous``, ``pause_replication``) and takes it back
when the reader resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LocalClusterError
from . import processes
from .layout import START_TIMEOUT_S, Node

if TYPE_CHECKING:
    from .nodes import ClusterNodes

log = logging.getLogger("aurora_access.local")

AUTO_PAUSED = "auto-paused"
DEFAULT_RESUME_S = 1.0
# Reading /proc/net/tcp costs ~3.5 ms (the kernel walks its whole connection table):
# measured ~3% of one core at this rate, which also bounds how late a pause or resume is.
TICK_S = 0.15
_ESTABLISHED = "01"


@dataclass
class _Watch:
    """One instance's countdown: idle since when, and when a held connection resumes it."""

    idle_since: float
    resume_at: float | None = None


class AutoPause:
    """Pauses a cluster's idle instances and resumes them when a connection arrives.

    Disabled (every method a no-op) when ``auto_pause_s`` is None. ``resume_s`` defaults to
    ``DEFAULT_RESUME_S`` (1 s: Aurora takes up to ~15 s; tests want it short). Readers pause
    on their own (as Aurora's readers in promotion tiers 2-15), but a reader runs only with
    its writer: the writer does not pause while a reader runs and resumes with a reader, as
    a reader here replicates from it (Aurora's readers read the shared storage, never stale).

    Changes of state happen under the cluster's lock; while a cluster operation holds it
    the instances are its own (it woke them with ``wake``), and the countdown starts again
    after it.
    """

    def __init__(self, cluster: ClusterNodes, auto_pause_s: float | None,
                 resume_s: float | None) -> None:
        if auto_pause_s is None and resume_s is not None:
            raise LocalClusterError("resume_s needs auto_pause_s")
        if (auto_pause_s is not None and auto_pause_s <= 0) or (resume_s or 0) < 0:
            raise LocalClusterError("auto_pause_s must be positive and resume_s not negative")
        self.auto_pause_s = auto_pause_s
        self.resume_s = DEFAULT_RESUME_S if resume_s is None else float(resume_s)
        self._cluster = cluster
        self._watches: dict[str, _Watch] = {}
        self._busy = False  # a cluster operation held the lock at the last tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter = ConnectionCounter(cluster.port, cluster._servers.replication_process)

    def start(self) -> None:
        if self.auto_pause_s is None or self._thread is not None:
            return
        self._stop.clear()
        now = time.monotonic()  # the countdown starts now: start() left no connection open
        self._watches = {n.id: _Watch(now) for n in self._cluster._nodes}
        self._thread = threading.Thread(target=self._run, name="aurora-local-auto-pause",
                                        daemon=True)
        self._thread.start()

    def stop(self, wake: bool = False) -> None:
        """Stop watching; ``wake``: continue the auto-paused instances too (a detached
        cluster outlives this process, and with it the thread that would resume them)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if wake:
            with self._cluster._lock:
                self.wake()

    def wake(self, nodes: list[Node] | None = None) -> None:
        """Continue ``nodes`` (default: all) that are auto-paused, at once, and the writer
        with a reader: a cluster operation (failover, restart, ...) needs them, as Aurora's
        control plane would. Returns once each woken reader has replayed what the writer
        has, so that commits made while it was paused (maybe only on the writer) survive
        what follows. The caller holds the cluster's lock."""
        cluster = self._cluster
        writer = cluster._writer_node()
        wanted = cluster._nodes if nodes is None else nodes
        if any(n.role == "reader" for n in wanted):
            wanted = [writer, *wanted]
        woken = []
        for node in wanted:  # the writer first: a reader reconnects to it
            if node.state == AUTO_PAUSED:
                self._resume(node)
                woken.append(node)
        now = time.monotonic()
        for watch in self._watches.values():
            watch.idle_since, watch.resume_at = now, None
        if not woken:
            return
        cluster._save()
        readers = [n.host for n in woken if n.role == "reader"]
        if readers and writer.state == "running":
            cluster._servers.wait_replayed(writer.host, readers, now + START_TIMEOUT_S)

    # -- the watching thread -----------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self._next_wait()):
            try:
                self._tick()
            except Exception:  # an instance crashed under us: it is seen next tick
                log.exception("auto-pause check failed")

    def _next_wait(self) -> float:
        due = [w.resume_at for w in self._watches.values() if w.resume_at is not None]
        return max(0.0, min([TICK_S, *(at - time.monotonic() for at in due)]))

    def _tick(self) -> None:
        lock = self._cluster._lock
        if not lock.acquire(blocking=False):
            self._busy = True
            return
        try:
            nodes = list(self._cluster._nodes)
            clients = self._counter.clients([n.host for n in nodes],
                                            [n.pid for n in nodes if n.pid])
            now = time.monotonic()
            self._observe(nodes, clients, now)
            writer = self._cluster._writer_node()
            readers = [n for n in nodes if n is not writer]
            # the writer resumes first and pauses last: a reader replicates from it
            changed = [self._resume_if_due(n) for n in [writer, *readers]]
            changed += [self._pause_if_idle(n, now) for n in [*readers, writer]]
            if any(changed):
                self._cluster._save()
        finally:
            lock.release()

    def _observe(self, nodes: list[Node], clients: dict[str, int], now: float) -> None:
        """Update every countdown with the connections seen now; schedule the resume of a
        paused instance a connection waits for (and of the writer with a reader)."""
        self._watches = {n.id: self._watches.get(n.id) or _Watch(now) for n in nodes}
        if self._busy:  # an operation's own connections kept every instance busy
            self._busy = False
            for watch in self._watches.values():
                watch.idle_since = now
        for node in nodes:
            watch = self._watches[node.id]
            if node.state not in ("running", AUTO_PAUSED):  # crashed, stopped, or paused
                watch.idle_since, watch.resume_at = now, None  # by the user: not ours
            elif clients.get(node.host, 0) == 0:
                continue
            elif node.state == "running":
                watch.idle_since = now
            elif watch.resume_at is None:
                watch.resume_at = now + self.resume_s
        writer = self._cluster._writer_node()
        due = [self._watches[n.id].resume_at for n in nodes if n is not writer]
        writer_watch = self._watches[writer.id]
        for at in due:
            if at is not None and writer.state == AUTO_PAUSED:
                writer_watch.resume_at = min(writer_watch.resume_at or at, at)

    def _resume_if_due(self, node: Node) -> bool:
        watch = self._watches[node.id]
        if node.state != AUTO_PAUSED or watch.resume_at is None \
                or time.monotonic() < watch.resume_at:
            return False
        self._resume(node)
        log.info("instance %s resumed %.2f s after a connection came", node.id,
                 time.monotonic() - watch.resume_at + self.resume_s)
        watch.idle_since, watch.resume_at = time.monotonic(), None
        return True

    def _pause_if_idle(self, node: Node, now: float) -> bool:
        idle_s = now - self._watches[node.id].idle_since
        if node.state != "running" or idle_s < (self.auto_pause_s or 0) \
                or node.pid is None or not processes.is_alive(node.pid):
            return False  # busy, or died outside the cluster's control: nothing to pause
        if node.role == "writer" and any(
                n.state == "running" for n in self._cluster._nodes if n is not node):
            return False  # a running reader needs its writer
        self._pause(node)
        log.info("instance %s auto-paused after %.2f s without a client connection",
                 node.id, idle_s)
        return True

    # -- pausing and resuming one instance --------------------------------------------

    def _pause(self, node: Node) -> None:
        assert node.pid is not None
        if node.role == "reader":
            self._cluster._servers.pause_replication(node.host)
        node.state = AUTO_PAUSED
        if node.role == "reader":  # out of the writer's synchronous list before it freezes
            self._update_synchronous()
        # the server first, so that it forks no process (a backend) the tree's walk misses
        processes.signal_all([node.pid], signal.SIGSTOP)
        processes.signal_tree(node.pid, signal.SIGSTOP)

    def _resume(self, node: Node) -> None:
        assert node.pid is not None
        processes.signal_tree(node.pid, signal.SIGCONT)
        node.state = "running"
        if node.role == "reader":
            self._update_synchronous()
            self._cluster._servers.resume_replication(node.host)

    def _update_synchronous(self) -> None:
        cluster = self._cluster
        writer = cluster._writer_node()
        cluster._servers.set_synchronous(
            [cluster._home(n) for n in cluster._nodes], writer.pid,
            [n.id for n in cluster._nodes if n is writer or n.state != AUTO_PAUSED])


class ConnectionCounter:
    """Client connections of instances, from /proc/net/tcp.

    An instance's connection is an ESTABLISHED socket whose local end is the instance's
    address and port: accepted, or still in the backlog of a frozen server. Its client end
    is the matching socket the other way round; its inode says which process holds it. A
    client end held by a replication process of the cluster is replication; everything
    else is a client. What each inode is stays known as long as it is seen, so the
    processes are looked at only when a new connection appears.
    """

    def __init__(self, port: int, replication_process: str) -> None:
        self._port = port
        self._replication_process = replication_process
        self._is_replication: dict[str, bool] = {}  # client end's inode -> replication?

    def clients(self, hosts: list[str], server_pids: list[int]) -> dict[str, int]:
        """host -> number of client connections to it."""
        addresses = {_proc_address(h, self._port): h for h in hosts}
        peers = self._client_ends(addresses)
        seen = {inode for inodes in peers.values() for inode in inodes}
        if seen - self._is_replication.keys():
            replication = _sockets_of(_replication_pids(server_pids,
                                                        self._replication_process))
            self._is_replication = {i: i in replication for i in seen}
        else:
            self._is_replication = {i: self._is_replication[i] for i in seen}
        return {addresses[a]: sum(not self._is_replication.get(i, False) for i in inodes)
                for a, inodes in peers.items()}

    @staticmethod
    def _client_ends(addresses: dict[str, str]) -> dict[str, list[str]]:
        """Instance address (in /proc's form) -> the inodes of its connections' client
        ends ("0", never replication, when the client end is not found)."""
        server_ends: list[tuple[str, str]] = []
        client_inodes: dict[tuple[str, str], str] = {}
        with open("/proc/net/tcp") as table:
            next(table)
            for line in table:
                fields = line.split()
                if fields[3] != _ESTABLISHED:
                    continue
                local, remote = fields[1], fields[2]
                if local in addresses:
                    server_ends.append((local, remote))
                elif remote in addresses:
                    client_inodes[(local, remote)] = fields[9]
        found: dict[str, list[str]] = {a: [] for a in addresses}
        for local, remote in server_ends:
            found[local].append(client_inodes.get((remote, local), "0"))
        return found


def _proc_address(host: str, port: int) -> str:
    """``host:port`` as /proc/net/tcp writes it: the address's 4 bytes read as a native
    integer, in hex, and the port in hex."""
    return f"{int.from_bytes(socket.inet_aton(host), sys.byteorder):08X}:{port:04X}"


def _replication_pids(server_pids: list[int], name: str) -> list[int]:
    """The servers and their children whose command line has ``name`` in it: a reader's
    replication process is its server itself (MariaDB) or one of its children (PostgreSQL's
    walreceiver)."""
    servers = set(server_pids)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            pid = int(entry.name)
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if (pid in servers or parent in servers) and \
                    name in (entry / "cmdline").read_text(errors="replace"):
                found.append(pid)
    return found


def _sockets_of(pids: list[int]) -> set[str]:
    """The inodes of the sockets the processes ``pids`` hold."""
    inodes: set[str] = set()
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        with contextlib.suppress(OSError):
            for fd in os.listdir(fds):
                with contextlib.suppress(OSError):
                    target = os.readlink(fds / fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    return inodes
