"""What happens to a running local cluster: faults (crash, hang, failover, rejoin) and readers
added and removed, as Aurora Auto Scaling adds and deletes replicas."""

from __future__ import annotations

import logging
import shutil
import signal
import time
from functools import partial

from ..errors import LocalClusterError
from ..topology import Instance
from . import processes
from .layout import FIRST_INSTANCE_OCTET, MAX_READERS, START_TIMEOUT_S, FailoverReport, Node
from .nodes import ClusterNodes
from .pausing import AUTO_PAUSED, AutoPause
from .tls import TlsFiles

log = logging.getLogger("aurora_access.local")


class ClusterChanges(ClusterNodes):
    """Faults and membership changes of a running ``LocalCluster``; each returns once the
    cluster has settled (and says how long that took). Each first wakes the instances it
    needs that are auto-paused (at once, as Aurora's control plane does not wait for a
    resume), so that none is frozen while it runs."""

    _auto_pause: AutoPause

    # -- faults -------------------------------------------------------------------------

    def crash(self, instance_id: str) -> float:
        """Kill one instance as a crashed host would; return the seconds it took."""
        began = time.monotonic()
        with self._lock:
            node = self._node(instance_id)
            self._auto_pause.wake([node])
            self._kill(node)
            self._save()
        return time.monotonic() - began

    def restart(self, instance_id: str) -> float:
        """Stop (if running) and start one instance in its current role; return once it
        accepts connections (a reader: once it streams). Returns the seconds it took."""
        began = time.monotonic()
        with self._lock:
            node = self._node(instance_id)
            self._auto_pause.wake()
            if node.pid and processes.is_alive(node.pid):
                processes.signal_tree(node.pid, signal.SIGCONT)
                processes.signal_all([node.pid], self._servers.stop_signal)
                if not processes.wait_exit(node.pid, 30):
                    raise LocalClusterError(f"instance {node.id} did not stop within 30 s")
            self._spawn(node)
            deadline = time.monotonic() + START_TIMEOUT_S
            self._servers.wait_ready(self._home(node), node.host, deadline)
            if node.role == "reader" and self._writer_node().state == "running":
                self._wait_streaming([node.id], deadline)
            self._save()
        return time.monotonic() - began

    def pause(self, instance_id: str) -> float:
        """Freeze an instance (SIGSTOP on all its processes): a hung host. Connections to it
        are accepted by the kernel and then get no answer."""
        began = time.monotonic()
        with self._lock:
            node = self._node(instance_id)
            self._auto_pause.wake([node])  # the user's pause takes over an auto-pause
            self._freeze(node)
            self._save()
        return time.monotonic() - began

    def resume(self, instance_id: str) -> float:
        """Undo ``pause``; an auto-paused instance is woken at once."""
        began = time.monotonic()
        with self._lock:
            node = self._node(instance_id)
            if node.state == AUTO_PAUSED:
                self._auto_pause.wake([node])
                return time.monotonic() - began
            if node.state != "paused" or node.pid is None:
                raise LocalClusterError(f"instance {node.id} is {node.state}, not paused")
            processes.signal_tree(node.pid, signal.SIGCONT)
            node.state = "running"
            self._save()
        return time.monotonic() - began

    def failover(self, wait_for_old_writer: bool = True,
                 hang_old_writer: bool = False) -> FailoverReport:
        """Crash the writer, promote the most advanced reader, repoint the other readers and
        the endpoints, and bring the old writer back as a reader.

        Returns once the new writer has committed a write and (unless
        ``wait_for_old_writer=False``) the old writer streams as a reader. Raises
        LocalClusterError if no running reader can be promoted.

        ``hang_old_writer=True``: the old writer is frozen (``pause``) instead of crashed and
        left so, as a host that stopped answering without closing its connections; clients
        must notice it by themselves. ``crash(id)`` and ``rejoin(id)`` bring it back later.
        """
        with self._lock:
            self._auto_pause.wake()
            old = self._writer_node()
            began = time.monotonic()
            if hang_old_writer:
                if sum(n.state == "running" for n in self.reader_nodes) < 2:
                    raise LocalClusterError(
                        "hang_old_writer needs two running readers: one to promote and one to "
                        "be the new writer's synchronous standby")
                self._freeze(old)
                wait_for_old_writer = False
            else:
                self._kill(old)
            candidates = [n for n in self.reader_nodes if n.state == "running"]
            positions = self._parallel(
                [partial(self._servers.receive_position, n.host) for n in candidates])
            reachable = [(pos, n) for pos, n in zip(positions, candidates, strict=True)
                         if pos is not None]
            if not reachable:
                raise LocalClusterError(
                    f"failover: the writer {old.id} is down and no running reader can be "
                    "promoted; restart one with restart(id)")
            # most advanced first; ties go to the lowest id, as a stable choice
            new = max(reachable, key=lambda pn: (pn[0], -int(pn[1].id)))[1]
            deadline = time.monotonic() + START_TIMEOUT_S
            self._servers.promote(new.host, deadline)
            promoted_s = time.monotonic() - began
            self._servers.record_topology(new.host, new.id, [n.id for n in self._nodes],
                                          self.replica_lag_ms)
            new.role, old.role = "writer", "reader"
            others = [n for n in candidates if n is not new]
            self._control.route(new.host, [n.host for n in others], self.endpoint_delay_s)
            self._parallel([partial(self._servers.follow, self._home(n), n.host, n.id, new.host)
                            for n in others])
            self._save()
            writable_s: float | None = None
            if others:
                self._servers.probe_write(new.host)
                writable_s = time.monotonic() - began
            back_s: float | None = None
            if wait_for_old_writer or (not others and not hang_old_writer):
                self._servers.rewind(self._home(old), old.id, new.host)
                self._spawn(old)
                self._servers.wait_ready(self._home(old), old.host, deadline)
                self._wait_streaming([old.id], deadline)
                self._control.route(new.host, [n.host for n in [*others, old]],
                                    self.endpoint_delay_s)
                back_s = time.monotonic() - began
                self._save()
                if writable_s is None:
                    self._servers.probe_write(new.host)
                    writable_s = time.monotonic() - began
            assert writable_s is not None
        report = FailoverReport(old.id, new.id, promoted_s, writable_s, back_s)
        log.info("%s", report)
        return report

    def wait_replayed(self, timeout: float = 30.0) -> float:
        """Wait until every running reader has applied all the writer has now (for tests
        that wrote around the library and must read it anywhere); returns the seconds waited.
        LocalClusterError if one has not within ``timeout``."""
        began = time.monotonic()
        with self._lock:
            self._auto_pause.wake()
            readers = [n.host for n in self.reader_nodes if n.state == "running"]
            self._servers.wait_replayed(self._writer_node().host, readers, began + timeout)
        return time.monotonic() - began

    def rejoin(self, instance_id: str) -> float:
        """Bring a crashed former writer back as a reader of the current writer (what
        ``failover(wait_for_old_writer=False)`` left undone)."""
        began = time.monotonic()
        with self._lock:
            self._auto_pause.wake()
            node = self._node(instance_id)
            writer = self._writer_node()
            if node.role != "reader" or node.state == "running":
                raise LocalClusterError(f"instance {node.id} is a running {node.role}")
            self._servers.rewind(self._home(node), node.id, writer.host)
            self._spawn(node)
            deadline = time.monotonic() + START_TIMEOUT_S
            self._servers.wait_ready(self._home(node), node.host, deadline)
            self._wait_streaming([node.id], deadline)
            self._control.route(writer.host, [n.host for n in self.reader_nodes
                                              if n.state == "running"], self.endpoint_delay_s)
            self._save()
        return time.monotonic() - began


    # -- readers that come and go ---------------------------------------------------------

    def add_reader(self) -> Instance:
        """Add a reader, as Aurora Auto Scaling does: a new instance made from the writer's
        data (PostgreSQL: a base backup; MariaDB: the template, replaying the writer's binary
        log), streaming from the writer and in the reader endpoint's rotation. Returns it once
        it streams and has replayed the cluster's setup (the application's login)."""
        with self._lock:
            self._auto_pause.wake()
            writer = self._writer_node()
            octet = self._newest_octet = self._free_octet()
            node = Node(id=str(octet), host=f"{self.prefix}.{octet}", role="reader")
            processes.check_free(node.host, self.port)
            home = self._home(node)
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir()
            self._server_user.chown(home)
            self._nodes.append(node)
            ids = [n.id for n in self._nodes]
            deadline = time.monotonic() + START_TIMEOUT_S
            try:
                self._servers.copy_for_reader(home, writer.host)
                self._servers.configure(home, node.id, node.host, ids, writer.host,
                                        self.replica_lag_ms, reader=True, tls=self._tls_files())
                self._spawn(node)
                self._servers.wait_ready(home, node.host, deadline)
                self._wait_streaming([node.id], deadline)
                self._servers.wait_replayed(writer.host, [node.host], deadline)
                self._servers.set_members([(self._home(n), n.host) for n in self._nodes],
                                          writer.host, ids)
                self._servers.record_topology(writer.host, writer.id, ids, self.replica_lag_ms)
            except BaseException:
                self._drop(node)
                raise
            self._route_readers()
            self._save()
        log.info("reader %s added", node.id)
        return self._instance(node)

    def remove_reader(self, instance_id: str) -> float:
        """Delete a reader, as Aurora does: out of the reader endpoint's rotation, its server
        shut down (connections to it are cut: PostgreSQL ends them with an admin shutdown
        error, MariaDB closes them) and its data removed. Returns the seconds it took."""
        began = time.monotonic()
        with self._lock:
            self._auto_pause.wake()
            node = self._node(instance_id)
            if node.role != "reader":
                raise LocalClusterError(f"instance {node.id} is the writer: fail over before "
                                        "removing it")
            writer = self._writer_node()
            self._nodes.remove(node)
            self._route_readers()
            ids = [n.id for n in self._nodes]
            self._servers.set_members([(self._home(n), n.host) for n in self._nodes],
                                      writer.host, ids)
            if writer.state == "running":
                self._servers.record_topology(writer.host, writer.id, ids, self.replica_lag_ms)
            self._drop(node)
            self._save()
        log.info("reader %s removed in %.3f s", instance_id, time.monotonic() - began)
        return time.monotonic() - began

    def _drop(self, node: Node) -> None:
        """Stop ``node``'s server (connections cut), forget it and remove its data."""
        if node.pid and processes.is_alive(node.pid):
            processes.signal_tree(node.pid, signal.SIGCONT)
            processes.signal_all([node.pid], self._servers.stop_signal)
            if not processes.wait_exit(node.pid, 30):
                processes.wait_or_kill(node.pid)
            self._children.pop(node.pid, None)
        node.pid, node.state = None, "stopped"
        self._wait_closed([node])
        if node in self._nodes:
            self._nodes.remove(node)
        shutil.rmtree(self._home(node), ignore_errors=True)

    def _free_octet(self) -> int:
        """The address of a new instance: the first free one after the newest instance
        (wrapping around), so that a new reader does not at once take a removed one's."""
        used = {int(n.id) for n in self._nodes}
        last = FIRST_INSTANCE_OCTET + MAX_READERS
        newest = max(used | {self._newest_octet})
        candidates: list[int] = [*range(newest + 1, last + 1),
                                 *range(FIRST_INSTANCE_OCTET, newest)]
        for octet in candidates:
            if octet not in used:
                return octet
        raise LocalClusterError(f"a local cluster has at most {MAX_READERS} readers")

    def _route_readers(self) -> None:
        self._control.route(self._writer_node().host,
                            [n.host for n in self.reader_nodes if n.state == "running"],
                            self.endpoint_delay_s)

    def _tls_files(self) -> TlsFiles | None:
        if not self.tls:
            return None
        tls = self.dir / "tls"
        return TlsFiles(tls / "ca.crt", tls / "server.crt", tls / "server.key")
