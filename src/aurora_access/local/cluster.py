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
``MariaDbServers`` (``engine="mysql"``). This module holds the life cycle (start, close, attach,
state on disk) and what users see (addresses, URLs, env); ``changes.py`` the faults and readers
added or removed; ``nodes.py`` the steps on single instances; ``layout.py`` addresses and
directories.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from types import TracebackType

from ..errors import LocalClusterError
from . import processes
from .changes import ClusterChanges
from .endpoints import EndpointControl
from .layout import (
    CLUSTER_ENDPOINT_OCTET,
    CUSTOM_ENDPOINT_FIRST_OCTET,
    FIRST_INSTANCE_OCTET,
    MAX_READERS,
    READER_ENDPOINT_OCTET,
    START_TIMEOUT_S,
    STATE_FILE,
    Node,
    address_prefix,
    check_custom_endpoints,
    cluster_processes,
    default_cache_dir,
    default_runtime_root,
    listening,
)
from .mysql import MariaDbServers
from .pausing import AutoPause
from .postgresql import PostgresServers, check_identifier
from .tls import make_certificates

log = logging.getLogger("aurora_access.local")

_ENGINES: dict[str, type[PostgresServers] | type[MariaDbServers]] = {
    "postgresql": PostgresServers, "mysql": MariaDbServers}


class LocalCluster(ClusterChanges):
    """One writer and ``readers`` readers with real streaming replication, on this machine.

    Use as a context manager (starts on enter, stops everything on exit) or call ``start()``
    and ``close()``. ``LocalCluster.attach(dir)`` takes over a cluster that another process
    (``aurora-access local up``) left running.

    ``engine`` is ``"postgresql"`` or ``"mysql"`` (MariaDB servers). Commits are synchronous
    (MariaDB: semi-synchronous) to at least one reader, so an acknowledged commit survives
    ``failover()`` as on Aurora. ``replica_lag_ms`` delays applying commits on readers; MariaDB
    delays in whole seconds, so there it is rounded up to whole seconds (0 stays 0).
    ``endpoint_delay_s`` keeps the cluster endpoint on the old writer that long after a
    failover (Aurora's DNS lag). ``auto_pause_s`` emulates Serverless v2's auto-pause: an
    instance with no client connection that long is frozen (state ``auto-paused``) and the
    next connection to it is held ``resume_s`` (default 1 s) until it resumes (``pausing.py``).
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
        custom_endpoints: Mapping[str, Sequence[str]] | None = None,
        auto_pause_s: float | None = None,
        resume_s: float | None = None,
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
        self.custom_endpoints = check_custom_endpoints(custom_endpoints or {}, readers)
        self.prefix = address_prefix(self.port)
        self._owns_dir = dir is None
        # made by start(), so a cluster that is never started leaves nothing behind
        self.dir = Path(dir) if dir is not None else (
            default_runtime_root() / f"aurora-local-{secrets.token_hex(6)}")
        self.cluster_host = f"{self.prefix}.{CLUSTER_ENDPOINT_OCTET}"
        self.reader_host = f"{self.prefix}.{READER_ENDPOINT_OCTET}"
        self._nodes = [
            Node(id=str(octet), host=f"{self.prefix}.{octet}",
                  role="writer" if octet == FIRST_INSTANCE_OCTET else "reader")
            for octet in range(FIRST_INSTANCE_OCTET, FIRST_INSTANCE_OCTET + readers + 1)
        ]
        self._newest_octet = FIRST_INSTANCE_OCTET + readers
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._forwarder_pid = None
        self._control = EndpointControl(f"aurora-access-{self.prefix}-{self.port}")
        self._server_user = processes.ServerUser.for_this_process()
        self._servers = _ENGINES[engine](self._server_user, self.port, default_cache_dir())
        self._lock = threading.RLock()
        self.started_in_s: float | None = None
        self.recovered_stale: list[str] = []
        self._auto_pause = AutoPause(self, auto_pause_s, resume_s)

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
        for host in [self.cluster_host, self.reader_host, *(
                self.custom_endpoint_host(name) for name in self.custom_endpoints),
                *(n.host for n in self._nodes)]:
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
            # every address an instance may get (readers added later included)
            tls_files = make_certificates(
                self.dir / "tls", [self.cluster_host, self.reader_host, *(
                    f"{self.prefix}.{octet}" for octet in
                    range(FIRST_INSTANCE_OCTET, FIRST_INSTANCE_OCTET + MAX_READERS + 1))],
                self._server_user,
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
            self._auto_pause.start()
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
        self._auto_pause.stop()
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
        self._auto_pause.stop(wake=True)
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
        cluster._nodes = [Node(**n) for n in state["nodes"]]
        cluster.custom_endpoints = {name: tuple(ids) for name, ids
                                    in state.get("custom_endpoints", {}).items()}
        cluster._newest_octet = state.get("newest_octet", max(int(n.id) for n in cluster._nodes))
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
            "newest_octet": self._newest_octet,
            "custom_endpoints": self.custom_endpoints,
        }
        tmp = self.dir / (STATE_FILE + ".tmp")
        # the file holds the application password: readable by its owner only
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=1)
        tmp.replace(self.dir / STATE_FILE)

    # -- what users see -----------------------------------------------------------------

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
            **({"AURORA_CUSTOM_ENDPOINTS": ";".join(
                f"{name}={','.join(ids)}" for name, ids in self.custom_endpoints.items())}
               if self.custom_endpoints else {}),
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

    def custom_endpoint_host(self, name: str) -> str:
        """The address of custom endpoint ``name`` (a forwarder over its members)."""
        index = list(self.custom_endpoints).index(name)
        return f"{self.prefix}.{CUSTOM_ENDPOINT_FIRST_OCTET + index}"

    def describe(self) -> str:
        parts = [f"{n.id}@{n.host} {n.role} {n.state}" for n in self._nodes]
        return (f"port {self.port}, cluster endpoint {self.cluster_host}, reader endpoint "
                f"{self.reader_host}; " + "; ".join(parts))

    def replica_lags(self) -> dict[str, float | None]:
        """Each instance's replica lag as the writer reports it (None: not streaming)."""
        reported = self._servers.replica_lags(self._writer_node().host)
        return {n.id: reported.get(n.id) for n in self._nodes}

    def listening_addresses(self) -> list[str]:
        """``host:port`` of every socket still listening on this cluster's addresses."""
        return [a for a in listening() if a.startswith(self.prefix + ".")
                and a.endswith(f":{self.port}")]
