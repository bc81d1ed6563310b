"""LocalCluster: an Aurora-shaped cluster of real database servers on this machine.

The shape is Aurora's, so that code (ours, the peer wrapper, a user's service) meets what it
meets on AWS: every instance listens on its own loopback address with one shared port, the
cluster endpoint and the reader endpoint are forwarders on their own addresses, instance ids
map to hosts through a pattern, and the metadata functions answer the topology.

Addresses come from the port, so two clusters on different ports never collide: port 15432 gives
``127.60.72.x`` (15432 = 60 * 256 + 72); the cluster endpoint is ``.2``, the reader endpoint
``.3``, and instance ``N`` (11, 12, ...) is ``.N``, so ``AURORA_INSTANCE_HOST_PATTERN`` is
``127.60.72.?``.

What is engine-specific (templates, replication, promotion) sits behind ``PostgresServers`` and
``MariaDbServers`` (``engine="mysql"``); this module only orchestrates: processes, faults,
endpoints, state on disk.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from ..errors import LocalClusterError
from ..topology import Instance, Role
from . import processes
from .endpoints import EndpointControl
from .mysql import MariaDbServers
from .postgresql import PostgresServers, check_identifier
from .tls import make_certificates

log = logging.getLogger("aurora_access.local")

STATE_FILE = "state.json"
CLUSTER_ENDPOINT_OCTET = 2
READER_ENDPOINT_OCTET = 3
FIRST_INSTANCE_OCTET = 11
MAX_READERS = 15
START_TIMEOUT_S = 60.0

T = TypeVar("T")

_ENGINES: dict[str, type[PostgresServers] | type[MariaDbServers]] = {
    "postgresql": PostgresServers, "mysql": MariaDbServers}


def default_cache_dir() -> Path:
    """Where templates are kept between runs (``AURORA_LOCAL_CACHE_DIR`` overrides)."""
    override = os.environ.get("AURORA_LOCAL_CACHE_DIR")
    if override:
        return Path(override)
    if os.geteuid() == 0:
        # must be readable by the unprivileged server user, unlike /root
        return Path("/var/cache/aurora-access")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aurora-access"


def default_runtime_root() -> Path:
    """tmpfs when there is one: the data is throwaway and start-up is I/O-bound."""
    shm = Path("/dev/shm")  # noqa: S108 - mkdtemp makes a private directory inside it
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def address_prefix(port: int) -> str:
    return f"127.{(port >> 8) & 255}.{port & 255}"


@dataclass
class _Node:
    id: str
    host: str
    role: Role
    pid: int | None = None
    state: str = "stopped"  # running | crashed | paused | stopped


@dataclass(frozen=True)
class FailoverReport:
    """What ``failover()`` did and how long each step took, in seconds from the crash."""

    old_writer: str
    new_writer: str
    promoted_s: float  # the new writer left recovery
    writable_s: float  # a write committed on the new writer (synchronously replicated)
    old_writer_back_s: float | None  # the old writer streams as a reader (None: not waited for)

    def __str__(self) -> str:
        back = "" if self.old_writer_back_s is None else (
            f", old writer {self.old_writer} back as a reader after {self.old_writer_back_s:.3f} s")
        return (f"failover {self.old_writer} -> {self.new_writer}: promoted after "
                f"{self.promoted_s:.3f} s, accepting writes after {self.writable_s:.3f} s{back}")


class LocalCluster:
    """One writer and ``readers`` readers with real streaming replication, on this machine.

    Use as a context manager (starts on enter, stops everything on exit) or call ``start()``
    and ``close()``. ``LocalCluster.attach(dir)`` takes over a cluster that another process
    (``aurora-access local up``) left running.

    ``engine`` is ``"postgresql"`` or ``"mysql"`` (MariaDB servers). Commits are synchronous
    (MariaDB: semi-synchronous) to at least one reader, so an acknowledged commit survives
    ``failover()`` as on Aurora. ``replica_lag_ms`` delays applying commits on readers; MariaDB
    delays in whole seconds, so there it is rounded up to whole seconds (0 stays 0).
    ``endpoint_delay_s`` keeps the cluster endpoint on the old writer that long after a
    failover (Aurora's DNS lag).
    """

    def __init__(
        self,
        engine: str = "postgresql",
        readers: int = 2,
        replica_lag_ms: int = 0,
        endpoint_delay_s: float = 0.0,
        *,
        port: int | None = None,
        dir: str | Path | None = None,
        database: str = "app",
        user: str = "app",
        password: str | None = None,
        tls: bool = False,
    ) -> None:
        if engine not in _ENGINES:
            raise LocalClusterError(f"engine {engine!r} is not supported by the local cluster; "
                                    f"use one of {', '.join(map(repr, _ENGINES))}")
        if not 0 <= readers <= MAX_READERS:
            raise LocalClusterError(f"readers must be between 0 and {MAX_READERS}, not {readers}")
        if replica_lag_ms < 0 or endpoint_delay_s < 0:
            raise LocalClusterError("replica_lag_ms and endpoint_delay_s cannot be negative")
        self.engine = engine
        self.replica_lag_ms = int(replica_lag_ms)
        self.endpoint_delay_s = float(endpoint_delay_s)
        self.port = int(port) if port is not None else _ENGINES[engine].default_port
        if not 1024 <= self.port <= 65535:
            raise LocalClusterError(f"port must be between 1024 and 65535, not {self.port}")
        self.database = check_identifier("database", database)
        self.user = check_identifier("user", user)
        self.password = password or secrets.token_urlsafe(18)
        self.tls = tls
        self.prefix = address_prefix(self.port)
        self._owns_dir = dir is None
        # made by start(), so a cluster that is never started leaves nothing behind
        self.dir = Path(dir) if dir is not None else (
            default_runtime_root() / f"aurora-local-{secrets.token_hex(6)}")
        self.cluster_host = f"{self.prefix}.{CLUSTER_ENDPOINT_OCTET}"
        self.reader_host = f"{self.prefix}.{READER_ENDPOINT_OCTET}"
        self._nodes = [
            _Node(id=str(octet), host=f"{self.prefix}.{octet}",
                  role="writer" if octet == FIRST_INSTANCE_OCTET else "reader")
            for octet in range(FIRST_INSTANCE_OCTET, FIRST_INSTANCE_OCTET + readers + 1)
        ]
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._forwarder_pid: int | None = None
        self._control = EndpointControl(f"aurora-access-{self.prefix}-{self.port}")
        self._server_user = processes.ServerUser.for_this_process()
        self._servers = _ENGINES[engine](self._server_user, self.port, default_cache_dir())
        self._lock = threading.RLock()
        self.started_in_s: float | None = None
        self.recovered_stale: list[str] = []

    # -- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        if self._forwarder_pid is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> LocalCluster:
        """Start every instance and both endpoints; return once all readers stream.

        Raises LocalClusterError naming the cause: binaries missing, an address in use, a
        directory the server user cannot write, or a cluster already running in ``dir``.
        A state left in ``dir`` by a crashed run is cleaned up (listed in ``recovered_stale``).
        """
        began = time.monotonic()
        self._prepare_dir()
        for host in [self.cluster_host, self.reader_host] + [n.host for n in self._nodes]:
            processes.check_free(host, self.port)
        template = self._servers.template()
        atexit.register(self.close)
        try:
            copies = []
            for node in self._nodes:
                home = self._home(node)
                home.mkdir()
                self._server_user.chown(home)
                # a copy of the template is each instance's data, whatever the engine
                copies.append(self._server_user.popen(["cp", "-a", template, home / "data"]))
            if any(c.wait() != 0 for c in copies):
                raise LocalClusterError(f"copying the template {template} into {self.dir} failed")
            writer = self._nodes[0]
            ids = [n.id for n in self._nodes]
            tls_files = make_certificates(
                self.dir / "tls", [self.cluster_host, self.reader_host,
                                   *(n.host for n in self._nodes)], self._server_user,
            ) if self.tls else None
            for node in self._nodes:
                self._servers.configure(self._home(node), node.id, node.host, ids, writer.host,
                                        self.replica_lag_ms, reader=node.role == "reader",
                                        tls=tls_files)
            for node in self._nodes:
                self._spawn(node)
            self._save()
            deadline = time.monotonic() + START_TIMEOUT_S
            self._parallel([partial(self._servers.wait_ready, self._home(n), n.host, deadline)
                            for n in self._nodes])
            self._servers.configure_app(writer.host, self.database, self.user, self.password)
            self._servers.record_topology(writer.host, writer.id, ids, self.replica_lag_ms)
            self._wait_streaming([n.id for n in self.reader_nodes], deadline)
            # a lagging reader applies the setup (the application's login) that much later
            self._servers.wait_replayed(writer.host, [n.host for n in self.reader_nodes],
                                        deadline)
            self._start_forwarder()
            self._save()
        except BaseException:
            self.close()
            raise
        self.started_in_s = time.monotonic() - began
        log.info("local cluster up in %.3f s: %s", self.started_in_s, self.describe())
        return self

    def _prepare_dir(self) -> None:
        if self._owns_dir:
            self.dir.mkdir(mode=0o755)
            self.dir.chmod(0o755)  # whatever the umask: the server user must get in
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
        if not self._server_user.can_enter(self.dir):
            raise LocalClusterError(
                f"the server user {self._server_user.name!r} cannot enter {self.dir} (or one "
                "of its parents is closed to it); choose a directory it can reach, such as one "
                "under /dev/shm or /tmp")
        state = self.dir / STATE_FILE
        if state.exists():
            alive = cluster_processes(json.loads(state.read_text()))
            if alive:
                raise LocalClusterError(
                    f"a local cluster is already running in {self.dir} (pids "
                    f"{', '.join(map(str, alive))}); stop it first with: aurora-access local "
                    f"down --dir {self.dir}")
            self.recovered_stale.append(f"removed the state of a crashed run in {self.dir}")
            state.unlink()
        for node in self._nodes:
            home = self._home(node)
            if home.exists():
                if not any((home / conf).exists() for conf in ("instance.conf", "my.cnf")) \
                        and any(home.iterdir()):
                    raise LocalClusterError(f"{home} exists and is not a local-cluster instance; "
                                            "choose another --dir")
                shutil.rmtree(home)
                self.recovered_stale.append(f"removed the leftover instance directory {home}")
        for line in self.recovered_stale:
            log.warning("%s", line)

    def close(self) -> None:
        """Stop every process of the cluster and remove its data. Safe to call twice."""
        with self._lock:
            atexit.unregister(self.close)
            if self._forwarder_pid:
                processes.signal_all([self._forwarder_pid], signal.SIGTERM)
                processes.wait_exit(self._forwarder_pid, 5)
                self._forwarder_pid = None
            for node in self._nodes:
                if node.pid and processes.is_alive(node.pid):
                    processes.signal_all([node.pid], self._servers.crash_signal)
                    processes.signal_tree(node.pid, signal.SIGCONT)
            for node in self._nodes:  # all signalled first: they stop in parallel
                if node.pid:
                    processes.wait_or_kill(node.pid)
                node.pid, node.state = None, "stopped"
            self._wait_closed(self._nodes)
            for child in self._children.values():
                with contextlib.suppress(Exception):
                    child.wait(1)
            self._children.clear()
            if self._owns_dir:
                shutil.rmtree(self.dir, ignore_errors=True)
            else:
                for node in self._nodes:
                    shutil.rmtree(self._home(node), ignore_errors=True)
                for name in (STATE_FILE, "endpoints.json", "endpoints.log"):
                    (self.dir / name).unlink(missing_ok=True)
                shutil.rmtree(self.dir / "tls", ignore_errors=True)

    def detach(self) -> None:
        """Leave the cluster running after this process exits (``aurora-access local up``)."""
        atexit.unregister(self.close)
        self._control.request({"op": "detach"})
        self._children.clear()

    @classmethod
    def attach(cls, dir: str | Path) -> LocalCluster:
        """The cluster that ``aurora-access local up --dir DIR`` left running."""
        path = Path(dir) / STATE_FILE
        if not path.exists():
            raise LocalClusterError(f"no local cluster in {dir} (no {STATE_FILE}); start one "
                                    f"with: aurora-access local up --dir {dir}")
        state = json.loads(path.read_text())
        cluster = cls(engine=state["engine"], readers=0,
                      replica_lag_ms=state["replica_lag_ms"],
                      endpoint_delay_s=state["endpoint_delay_s"], port=state["port"], dir=dir,
                      database=state["database"], user=state["user"], password=state["password"],
                      tls=state.get("tls", False))
        cluster._nodes = [_Node(**n) for n in state["nodes"]]
        cluster._forwarder_pid = state["forwarder_pid"]
        cluster._owns_dir = state.get("owns_dir", False)
        return cluster

    def _save(self) -> None:
        state = {
            "engine": self.engine, "port": self.port, "replica_lag_ms": self.replica_lag_ms,
            "endpoint_delay_s": self.endpoint_delay_s, "database": self.database,
            "user": self.user, "password": self.password, "owns_dir": self._owns_dir,
            "tls": self.tls,
            "forwarder_pid": self._forwarder_pid, "nodes": [asdict(n) for n in self._nodes],
        }
        tmp = self.dir / (STATE_FILE + ".tmp")
        # the file holds the application password: readable by its owner only
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=1)
        tmp.replace(self.dir / STATE_FILE)

    # -- what users see -----------------------------------------------------------------

    def _instance(self, node: _Node) -> Instance:
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
    def reader_nodes(self) -> list[_Node]:
        return [n for n in self._nodes if n.role == "reader"]

    def state(self, instance_id: str) -> str:
        """``running``, ``crashed``, ``paused`` or ``stopped``."""
        return self._node(instance_id).state

    @property
    def instance_host_pattern(self) -> str:
        return f"{self.prefix}.?"

    def env(self) -> dict[str, str]:
        """The AURORA_* variables that point ``Database.from_env`` at this cluster."""
        return {
            "AURORA_ENGINE": self.engine,
            "AURORA_CLUSTER_ENDPOINT": self.cluster_host,
            "AURORA_READER_ENDPOINT": self.reader_host,
            "AURORA_PORT": str(self.port),
            "AURORA_DATABASE": self.database,
            "AURORA_USER": self.user,
            "AURORA_PASSWORD": self.password,
            "AURORA_INSTANCE_HOST_PATTERN": self.instance_host_pattern,
            **({"AURORA_SSLMODE": "verify-full", "AURORA_SSLROOTCERT": str(self.ca_cert)}
               if self.tls else {}),
        }

    @property
    def ca_cert(self) -> Path:
        """The CA that signed the instances' certificate (with ``tls=True``)."""
        if not self.tls:
            raise LocalClusterError("this cluster was started without tls=True")
        return self.dir / "tls" / "ca.crt"

    def admin_url(self, instance_id: str) -> str:
        """Superuser SQLAlchemy URL of one instance (for tests; no password needed)."""
        return self._servers.admin_url(self._node(instance_id).host, self.database)

    def app_url(self, host: str | None = None) -> str:
        """The application role's SQLAlchemy URL for ``host`` (default: the cluster endpoint)."""
        return (f"{self._servers.url_scheme}://{self.user}:{self.password}@"
                f"{host or self.cluster_host}:{self.port}/{self.database}")

    def peer_wrapper_args(self) -> tuple[str, dict[str, object]]:
        """Conninfo and properties with which aws-advanced-python-wrapper, unmodified, treats
        this cluster as Aurora PostgreSQL: ``AwsWrapperConnection.connect(
        psycopg.Connection.connect, conninfo, plugins=..., **properties)``. PostgreSQL only:
        the wrapper's Aurora MySQL dialect needs ``information_schema.replica_host_status``
        and ``@@aurora_server_id``, which MariaDB cannot have."""
        if self.engine != "postgresql":
            raise LocalClusterError("peer_wrapper_args needs engine='postgresql'")
        conninfo = (f"host={self.cluster_host} port={self.port} dbname={self.database} "
                    f"user={self.user} password={self.password}")
        return conninfo, {
            "wrapper_dialect": "aurora-pg",
            "cluster_instance_host_pattern": f"{self.instance_host_pattern}:{self.port}",
            # without it failover_v2 learns the topology only at the first failover
            "enable_connect_failover": True,
            # one topology cache per cluster (the wrapper keys it by this id)
            "cluster_id": f"local-{self.port}",
        }

    def describe(self) -> str:
        parts = [f"{n.id}@{n.host} {n.role} {n.state}" for n in self._nodes]
        return (f"port {self.port}, cluster endpoint {self.cluster_host}, reader endpoint "
                f"{self.reader_host}; " + "; ".join(parts))

    # -- faults -------------------------------------------------------------------------

    def crash(self, instance_id: str) -> float:
        """Kill one instance as a crashed host would; return the seconds it took."""
        began = time.monotonic()
        with self._lock:
            node = self._node(instance_id)
            self._kill(node)
            self._save()
        return time.monotonic() - began

    def restart(self, instance_id: str) -> float:
        """Stop (if running) and start one instance in its current role; return once it
        accepts connections (a reader: once it streams). Returns the seconds it took."""
        began = time.monotonic()
        with self._lock:
            node = self._node(instance_id)
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
            self._freeze(self._node(instance_id))
            self._save()
        return time.monotonic() - began

    def resume(self, instance_id: str) -> float:
        """Undo ``pause``."""
        began = time.monotonic()
        with self._lock:
            node = self._node(instance_id)
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
            readers = [n.host for n in self.reader_nodes if n.state == "running"]
            self._servers.wait_replayed(self._writer_node().host, readers, began + timeout)
        return time.monotonic() - began

    def rejoin(self, instance_id: str) -> float:
        """Bring a crashed former writer back as a reader of the current writer (what
        ``failover(wait_for_old_writer=False)`` left undone)."""
        began = time.monotonic()
        with self._lock:
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

    # -- internals ----------------------------------------------------------------------

    def _home(self, node: _Node) -> Path:
        return self.dir / node.id

    def _node(self, instance_id: str) -> _Node:
        for node in self._nodes:
            if node.id == instance_id:
                return node
        raise LocalClusterError(f"no instance {instance_id!r} in this cluster; instances: "
                                f"{', '.join(n.id for n in self._nodes)}")

    def _writer_node(self) -> _Node:
        return next(n for n in self._nodes if n.role == "writer")

    def _spawn(self, node: _Node) -> None:
        self._wait_closed([node])  # after a crash
        child = self._servers.start(self._home(node))
        self._children[child.pid] = child
        node.pid, node.state = child.pid, "running"

    def _freeze(self, node: _Node) -> None:
        if node.state != "running" or node.pid is None:
            raise LocalClusterError(f"instance {node.id} is {node.state}, not running")
        processes.signal_tree(node.pid, signal.SIGSTOP)
        node.state = "paused"

    def _kill(self, node: _Node) -> None:
        if node.pid is None or not processes.is_alive(node.pid):
            node.state = "crashed"
            return
        processes.signal_all([node.pid], self._servers.crash_signal)
        if node.state == "paused":
            processes.signal_tree(node.pid, signal.SIGCONT)
        processes.wait_or_kill(node.pid)
        self._children.pop(node.pid, None)
        node.state = "crashed"

    def _wait_closed(self, nodes: list[_Node]) -> None:
        """A killed multi-threaded server (mariadbd) looks dead, its main thread a zombie,
        some 10 ms before its last thread has closed its sockets: wait for them, so that the
        address is free again (to start it again, and for ``local down``'s check)."""
        addresses = {f"{n.host}:{self.port}" for n in nodes}
        deadline = time.monotonic() + 5
        while addresses & set(_listening()) and time.monotonic() < deadline:
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

    def _start_forwarder(self) -> None:
        config = {
            "port": self.port, "cluster_host": self.cluster_host, "reader_host": self.reader_host,
            "control": self._control.name, "writer": self._writer_node().host,
            "readers": [n.host for n in self.reader_nodes],
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

    @staticmethod
    def _parallel(jobs: list[Callable[[], T]]) -> list[T]:
        if len(jobs) <= 1:
            return [job() for job in jobs]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            return list(pool.map(lambda job: job(), jobs))

    def replica_lags(self) -> dict[str, float | None]:
        """Each instance's replica lag as the writer reports it (None: not streaming)."""
        reported = self._servers.replica_lags(self._writer_node().host)
        return {n.id: reported.get(n.id) for n in self._nodes}

    def listening_addresses(self) -> list[str]:
        """``host:port`` of every socket still listening on this cluster's addresses."""
        return [a for a in _listening() if a.startswith(self.prefix + ".")
                and a.endswith(f":{self.port}")]


def _listening() -> Iterator[str]:
    """Listening IPv4 TCP sockets of this machine, from /proc/net/tcp."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            octets = [str(int(hex_addr[i:i + 2], 16)) for i in (6, 4, 2, 0)]
            yield f"{'.'.join(octets)}:{int(hex_port, 16)}"


def free_port(readers: int = 2, first: int = 25432, tries: int = 200) -> int:
    """A port in ``first`` .. ``first + tries - 1`` whose cluster addresses (endpoints and
    ``readers + 1`` instances) are all free. The search starts at a random place in the range,
    so that processes starting clusters at the same moment seldom pick the same port."""
    start = random.randrange(tries)  # noqa: S311 - spreading, not secrecy
    for port in (first + (start + k) % tries for k in range(tries)):
        prefix = address_prefix(port)
        octets = [CLUSTER_ENDPOINT_OCTET, READER_ENDPOINT_OCTET,
                  *range(FIRST_INSTANCE_OCTET, FIRST_INSTANCE_OCTET + readers + 1)]
        try:
            for octet in octets:
                processes.check_free(f"{prefix}.{octet}", port)
        except LocalClusterError:
            continue
        return port
    raise LocalClusterError(f"no free port for a local cluster in {first}-{first + tries - 1}")


def cluster_processes(state: dict[str, Any]) -> list[int]:
    """Pids recorded in a state file that are still alive."""
    pids = [state.get("forwarder_pid")] + [n.get("pid") for n in state.get("nodes", [])]
    return [p for p in pids if p and processes.is_alive(p)]
