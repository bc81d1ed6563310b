"""The instances of a local cluster and the low-level steps on them (start, freeze, kill, wait
until they stream), shared by the cluster's life cycle (``cluster.py``) and its changes
(``changes.py``: faults, readers added and removed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from ..errors import LocalClusterError
from ..topology import Instance
from . import processes
from .endpoints import EndpointControl
from .layout import STATE_FILE, Node, listening
from .mysql import MariaDbServers
from .postgresql import PostgresServers

T = TypeVar("T")


class ClusterNodes:
    """What every part of ``LocalCluster`` works on: its nodes, its servers (engine-specific),
    its endpoint forwarder's control and its directory. ``LocalCluster.__init__`` sets them."""

    port: int
    prefix: str
    dir: Path
    replica_lag_ms: int
    endpoint_delay_s: float
    tls: bool
    cluster_host: str
    reader_host: str
    custom_endpoints: dict[str, tuple[str, ...]]
    _forwarder_pid: int | None
    _nodes: list[Node]
    _servers: PostgresServers | MariaDbServers
    _control: EndpointControl
    _server_user: processes.ServerUser
    _newest_octet: int  # of the instance added last: new ones go after it
    _children: dict[int, subprocess.Popen[bytes]]
    _lock: threading.RLock

    def _save(self) -> None:
        """Write the cluster's state file (``LocalCluster``)."""
        raise NotImplementedError

    def custom_endpoint_host(self, name: str) -> str:
        """The address of custom endpoint ``name`` (``LocalCluster``)."""
        raise NotImplementedError

    def _instance(self, node: Node) -> Instance:
        return Instance(id=node.id, host=node.host, port=self.port, role=node.role)

    @property
    def writer(self) -> Instance:
        return self._instance(self._writer_node())

    @property
    def readers(self) -> list[Instance]:
        return [self._instance(n) for n in self.reader_nodes]

    @property
    def instances(self) -> list[Instance]:
        return [self._instance(n) for n in self._nodes]

    @property
    def reader_nodes(self) -> list[Node]:
        return [n for n in self._nodes if n.role == "reader"]

    def state(self, instance_id: str) -> str:
        """``running``, ``crashed``, ``paused`` (by ``pause``), ``auto-paused`` (idle, with
        ``auto_pause_s``) or ``stopped``."""
        return self._node(instance_id).state

    def _home(self, node: Node) -> Path:
        return self.dir / node.id

    def _node(self, instance_id: str) -> Node:
        for node in self._nodes:
            if node.id == instance_id:
                return node
        raise LocalClusterError(f"no instance {instance_id!r} in this cluster; instances: "
                                f"{', '.join(n.id for n in self._nodes)}")

    def _writer_node(self) -> Node:
        return next(n for n in self._nodes if n.role == "writer")

    def _spawn(self, node: Node) -> None:
        self._wait_closed([node])  # after a crash
        child = self._servers.start(self._home(node))
        self._children[child.pid] = child
        node.pid, node.state = child.pid, "running"

    def _freeze(self, node: Node) -> None:
        if node.state != "running" or node.pid is None:
            raise LocalClusterError(f"instance {node.id} is {node.state}, not running")
        processes.signal_tree(node.pid, signal.SIGSTOP)
        node.state = "paused"

    def _kill(self, node: Node) -> None:
        if node.pid is None or not processes.is_alive(node.pid):
            node.state = "crashed"
            return
        processes.signal_all([node.pid], self._servers.crash_signal)
        if node.state == "paused":
            processes.signal_tree(node.pid, signal.SIGCONT)
        # PostgreSQL's immediate shutdown takes milliseconds, but not always: with a client
        # connecting meanwhile (a paused server, 200 tasks of a benchmark) it did not finish
        # in 10 s, and the failover waited that long; a crashing host runs no shutdown at all
        processes.wait_or_kill(node.pid, timeout=1.0)
        self._children.pop(node.pid, None)
        node.state = "crashed"

    def _wait_closed(self, nodes: list[Node]) -> None:
        """A killed multi-threaded server (mariadbd) looks dead, its main thread a zombie,
        some 10 ms before its last thread has closed its sockets: wait for them, so that the
        address is free again (to start it again, and for ``local down``'s check)."""
        addresses = {f"{n.host}:{self.port}" for n in nodes}
        deadline = time.monotonic() + 5
        while addresses & set(listening()) and time.monotonic() < deadline:
            time.sleep(0.002)

    def _wait_streaming(self, reader_ids: list[str], deadline: float) -> None:
        wanted = set(reader_ids)
        if not wanted:
            return
        writer = self._writer_node()
        while True:
            streaming = self._servers.streaming_readers(writer.host)
            if wanted <= streaming:
                return
            if time.monotonic() > deadline:
                raise LocalClusterError(
                    f"readers {', '.join(sorted(wanted - streaming))} did not start streaming "
                    f"from the writer {writer.id} in time; see {self.dir}/<id>/server.log")
            time.sleep(0.005)

    @staticmethod
    def _parallel(jobs: list[Callable[[], T]]) -> list[T]:
        if len(jobs) <= 1:
            return [job() for job in jobs]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            return list(pool.map(lambda job: job(), jobs))

    def _start_forwarder(self) -> None:
        config = {
            "port": self.port, "cluster_host": self.cluster_host, "reader_host": self.reader_host,
            "control": self._control.name, "writer": self._writer_node().host,
            "readers": [n.host for n in self.reader_nodes],
            "custom": {self.custom_endpoint_host(name): [f"{self.prefix}.{i}" for i in ids]
                       for name, ids in self.custom_endpoints.items()},
            # killed before it could close the cluster, this process takes its servers along
            "owner_pid": os.getpid(), "state_file": str(self.dir / STATE_FILE),
        }
        path = self.dir / "endpoints.json"
        path.write_text(json.dumps(config))
        with open(self.dir / "endpoints.log", "ab") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", "aurora_access.local.endpoints", str(path)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children[child.pid] = child
        self._forwarder_pid = child.pid
        deadline = time.monotonic() + 10
        while not self._control.ping():
            if child.poll() is not None or time.monotonic() > deadline:
                tail = (self.dir / "endpoints.log").read_text(errors="replace")[-1500:]
                raise LocalClusterError(f"the endpoint forwarder did not start:\n{tail}")
            time.sleep(0.005)
