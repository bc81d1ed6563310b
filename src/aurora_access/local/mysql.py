"""MariaDB servers for the local cluster: template, replication, promotion, Aurora metadata.

Every piece of MariaDB-specific SQL and server handling of the local cluster lives here
(what instances are made from: ``mariadb_template.py``);
``cluster.py`` orchestrates through the same methods as ``PostgresServers``.

How an instance is laid out (``<cluster dir>/<instance id>/``):

- ``data/``: the datadir, a copy of a cached template made once by ``mariadb-install-db``, with
  the binary log and relay log inside it (so a rebuild removes them too);
- ``my.cnf``: the whole server configuration (``mariadbd --defaults-file``), outside the datadir;
- ``replication.json``: the writer this instance follows (none for the writer) and its delay,
  what ``wait_ready`` makes true once the server accepts connections;
- ``server.log``, the socket and the pid file.

Aurora MySQL's topology table ``information_schema.replica_host_status`` cannot be added to
MariaDB's information_schema, so the template holds a view with its column names,
``aurora_local.replica_host_status``, over a table that ``record_topology`` rewrites on the
writer and replication carries to the readers. An instance's id is its ``@@server_id``.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors

from ..errors import LocalClusterError
from .mariadb_template import (
    SEMI_SYNC_TIMEOUT_MS,
    SERVER_CNF,
    SUPERUSER,
    TEMPLATE_KEY,
    build_template,
    find_binaries,
)
from .processes import ServerUser, cached_template, wait_connect
from .tls import TlsFiles

DEFAULT_PORT = 13306
REPLICATION_FILE = "replication.json"
# Accounts and topology live in Aurora's shared storage, so no reader lags behind on them: a
# session that changes them backdates its events, and MASTER_DELAY (which counts from an
# event's timestamp) applies them on readers at once.
_UNDELAYED = "SET timestamp = unix_timestamp() - 86400"


def replica_delay_s(replica_lag_ms: int) -> int:
    """MariaDB delays replicas in whole seconds: the lag is rounded up (0 stays 0)."""
    return math.ceil(replica_lag_ms / 1000)


def _gtid_seq(position: str | None) -> int:
    """The highest sequence number in a GTID position (``domain-server-seq[,...]``)."""
    return max((int(g.rsplit("-", 1)[1]) for g in (position or "").split(",") if g.strip()),
               default=0)


class MariaDbServers:
    """Makes, starts, promotes and rebuilds local MariaDB instances of one cluster.

    Replication is GTID-based and semi-synchronous (AFTER_SYNC): a commit is acknowledged
    once at least one reader has it in its relay log, so it survives ``failover()``. A writer
    with no reader connected, or whose readers have not acknowledged within
    ``SEMI_SYNC_TIMEOUT_MS``, replicates asynchronously until a reader has caught up; so does
    a new writer for the few ms until a repointed reader has caught up with it (``failover()``
    returns after that: ``probe_write``), and a second crash inside that window could lose
    those commits, which Aurora would not.

    Replica lag is emulated with ``MASTER_DELAY``, which counts whole seconds: ``replica_lag_ms``
    is rounded up to whole seconds (300 ms lag becomes 1 s; 0 stays 0).
    """

    engine = "mysql"
    crash_signal = signal.SIGKILL  # one process; InnoDB and the binary log recover from it
    stop_signal = signal.SIGTERM
    default_port = DEFAULT_PORT
    url_scheme = "mysql+pymysql"
    # one process: its only connections to other instances are its replica's
    replication_process = "mariadbd"

    def __init__(self, user: ServerUser, port: int, cache_dir: Path) -> None:
        self.user = user
        self.port = port
        self.binaries = find_binaries()
        self.cache_dir = cache_dir

    # -- template -----------------------------------------------------------------------

    @functools.cached_property
    def server_version(self) -> str:
        """Asked once: ``mariadbd --version`` takes 30 ms and ``rewind`` needs the template."""
        out = subprocess.run([str(self.binaries["mariadbd"]), "--version"], capture_output=True,
                             text=True, check=True).stdout
        return out.split(" Ver ", 1)[1].split()[0]

    def template(self) -> Path:
        """The cached template datadir, made on first use (about 1 s)."""
        return cached_template(self.cache_dir, f"mariadb-{self.server_version}-{TEMPLATE_KEY}",
                               self.user, "aurora_local", self._build_template)

    def _build_template(self, work: Path) -> None:
        build_template(work, self.binaries, self.user)

    # -- instances ----------------------------------------------------------------------

    def configure(self, home: Path, instance_id: str, host: str, all_ids: list[str],
                  writer_host: str, replica_lag_ms: int, reader: bool,
                  tls: TlsFiles | None = None) -> None:
        """Write the instance's ``my.cnf`` and whom it follows (a reader: ``writer_host``)."""
        lines = [
            "[mariadbd]", SERVER_CNF,
            f"datadir = {home / 'data'}",
            f"socket = {home / 'mariadbd.sock'}",
            f"pid-file = {home / 'mariadbd.pid'}",
            "log-bin = binlog",
            "relay-log = relay",
            f"server-id = {int(instance_id)}",
            f"bind-address = {host}",
            f"port = {self.port}",
            f"report-host = {host}",
            f"report-port = {self.port}",
            f"read-only = {'ON' if reader else 'OFF'}",
        ]
        if tls is not None:
            lines += [f"ssl-cert = {tls.server_cert}", f"ssl-key = {tls.server_key}"]
        conf = home / "my.cnf"
        conf.write_text("\n".join(lines) + "\n")
        self.user.chown(conf)
        self._write_replication(home, writer_host if reader else None,
                                replica_delay_s(replica_lag_ms))

    def start(self, home: Path) -> subprocess.Popen[bytes]:
        return self.user.popen([self.binaries["mariadbd"], f"--defaults-file={home / 'my.cnf'}"],
                               home / "server.log", detach=True)

    def admin_url(self, host: str, dbname: str) -> str:
        return f"{self.url_scheme}://{SUPERUSER}@{host}:{self.port}/{dbname}"

    def connect(self, host: str, timeout: float = 2,
                read_timeout: float = 30) -> pymysql.connections.Connection[Any]:
        """A superuser autocommit connection without TLS (PyMySQL would otherwise build a TLS
        context on every connect: 28 ms against 0.2 ms). ``read_timeout`` bounds the
        handshake too: a frozen server accepts TCP connections and never answers."""
        return pymysql.connect(host=host, port=self.port, user=SUPERUSER, autocommit=True,
                               connect_timeout=timeout, read_timeout=read_timeout,
                               write_timeout=read_timeout, ssl_disabled=True)

    def wait_ready(self, home: Path, host: str, deadline: float) -> None:
        """Wait until the instance accepts connections; a reader whose replication is not
        set up for the writer it follows gets it set up and started (a restarted reader keeps
        its own and restarts it by itself)."""
        conn = wait_connect(lambda: self.connect(host), pymysql.err.OperationalError, deadline,
                            f"instance at {host}:{self.port}", home / "server.log")
        with conn:
            writer_host, delay_s = self._read_replication(home)
            if writer_host is None:
                return
            status = _slave_status(conn)
            if status is not None and status["Master_Host"] == writer_host:
                return
            # started before the writer listens, the replica would retry only after 1 s
            self._wait_reachable(writer_host, deadline)
            self._change_master(conn, writer_host, delay_s)

    def _wait_reachable(self, host: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                self.connect(host, timeout=1, read_timeout=1).close()
                return
            except pymysql.err.OperationalError:
                time.sleep(0.005)

    def _change_master(self, conn: pymysql.connections.Connection[Any], writer_host: str,
                       delay_s: int) -> None:
        with conn.cursor() as cur:
            cur.execute("STOP SLAVE")
            cur.execute(f"CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = {self.port}, "
                        f"MASTER_USER = '{SUPERUSER}', MASTER_PASSWORD = '', "
                        "MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1, "
                        f"MASTER_DELAY = {delay_s}", (writer_host,))
            cur.execute("START SLAVE")

    @staticmethod
    def _write_replication(home: Path, writer_host: str | None, delay_s: int) -> None:
        path = home / REPLICATION_FILE
        path.write_text(json.dumps({"writer_host": writer_host, "delay_s": delay_s}))

    @staticmethod
    def _read_replication(home: Path) -> tuple[str | None, int]:
        state = json.loads((home / REPLICATION_FILE).read_text())
        return state["writer_host"], int(state["delay_s"])

    def configure_app(self, writer_host: str, database: str, user: str, password: str) -> None:
        """Make the application's database and user with narrow grants: a global ALL would
        include READ ONLY ADMIN, with which it could write on a read-only reader. Runs on
        the writer; replication carries it to the readers."""
        account = f"'{user}'@'%%'"
        pattern = database.replace("_", r"\_")  # '_' is a wildcard in a grant's database
        with self.connect(writer_host) as conn, conn.cursor() as cur:
            cur.execute(_UNDELAYED)
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4")
            cur.execute(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY %s", (password,))
            cur.execute(f"ALTER USER {account} IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL PRIVILEGES ON `{pattern}`.* TO {account}", ())
            cur.execute(f"GRANT SELECT ON aurora_local.* TO {account}", ())

    def record_topology(self, writer_host: str, writer_id: str, instance_ids: list[str],
                        replica_lag_ms: int) -> None:
        """Rewrite ``aurora_local.instances`` on the writer: replication carries it to every
        reader (undelayed), so ``aurora_local.replica_host_status`` answers the same
        everywhere."""
        lag_ms = replica_delay_s(replica_lag_ms) * 1000.0
        rows = [(i, "MASTER_SESSION_ID", 0.0) if i == writer_id else (i, f"replica-{i}", lag_ms)
                for i in instance_ids]
        with self.connect(writer_host) as conn, conn.cursor() as cur:
            cur.execute(_UNDELAYED)
            cur.execute("BEGIN")
            cur.execute("DELETE FROM aurora_local.instances")
            cur.executemany("INSERT INTO aurora_local.instances VALUES (%s, %s, %s)", rows)
            cur.execute("COMMIT")

    def wait_replayed(self, writer_host: str, reader_hosts: list[str], deadline: float) -> None:
        """Until every reader has applied all the writer has now (its setup: the application
        account)."""
        with self.connect(writer_host) as conn, conn.cursor() as cur:
            cur.execute("SELECT @@gtid_binlog_pos")
            target = cur.fetchone()[0]
        for host in reader_hosts:
            with self.connect(host) as conn, conn.cursor() as cur:
                cur.execute("SELECT MASTER_GTID_WAIT(%s, %s)",
                            (target, max(0.0, deadline - time.monotonic())))
                if cur.fetchone()[0] != 0:
                    raise LocalClusterError(f"reader {host} did not apply the cluster's setup "
                                            "in time")

    def streaming_readers(self, writer_host: str) -> set[str]:
        """Ids of the readers that replicate from the writer: registered with it, both
        replication threads running, and everything the writer had logged received."""
        with self.connect(writer_host) as conn, conn.cursor() as cur:
            cur.execute("SELECT @@gtid_binlog_pos")
            target = _gtid_seq(_one(cur))
            cur.execute("SHOW SLAVE HOSTS")
            registered = [(str(r[0]), str(r[1])) for r in cur.fetchall()]
        return {server_id for server_id, host in registered
                if self._replicates_from(host, writer_host, target)}

    def _replicates_from(self, host: str, writer_host: str, target: int) -> bool:
        try:
            with self.connect(host, timeout=1, read_timeout=2) as conn:
                status = _slave_status(conn)
        except pymysql.err.OperationalError:
            return False
        return (status is not None and status["Master_Host"] == writer_host
                and status["Slave_IO_Running"] == "Yes" and status["Slave_SQL_Running"] == "Yes"
                and _gtid_seq(status["Gtid_IO_Pos"]) >= target)

    def replica_lags(self, writer_host: str) -> dict[str, float]:
        """``aurora_local.replica_host_status`` on the writer: instance id -> replica lag in
        ms, for the writer and the readers connected to it."""
        with self.connect(writer_host) as conn, conn.cursor() as cur:
            cur.execute("SHOW SLAVE HOSTS")
            connected = {str(r[0]) for r in cur.fetchall()}
            cur.execute("SELECT SERVER_ID, SESSION_ID, REPLICA_LAG_IN_MILLISECONDS "
                        "FROM aurora_local.replica_host_status")
            rows = cur.fetchall()
        return {r[0]: float(r[2]) for r in rows
                if r[1] == "MASTER_SESSION_ID" or r[0] in connected}

    def receive_position(self, host: str) -> int | None:
        """The sequence number of the newest transaction a reader has received or applied;
        None if unreachable."""
        try:
            with self.connect(host, timeout=1, read_timeout=1) as conn:
                status = _slave_status(conn)
                with conn.cursor() as cur:
                    cur.execute("SELECT @@gtid_slave_pos")
                    applied = _one(cur)
        except pymysql.err.OperationalError:
            return None
        received = status["Gtid_IO_Pos"] if status is not None else ""
        return max(_gtid_seq(received), _gtid_seq(applied))

    def promote(self, host: str, deadline: float) -> None:
        """Apply everything the reader received (at once, whatever its delay), stop
        replicating and accept writes. The change is kept in ``my.cnf`` for a restart."""
        with self.connect(host) as conn, conn.cursor() as cur:
            cur.execute("STOP SLAVE IO_THREAD")
            status = _slave_status(conn)
            if status is not None:
                self._apply_received(conn, status, deadline)
            cur.execute("STOP SLAVE")
            cur.execute("RESET SLAVE ALL")
            cur.execute("SET GLOBAL read_only = OFF")
            cur.execute("SELECT @@datadir")
            home = Path(_one(cur)).parent
        self._set_read_only(home, False)
        self._write_replication(home, None, self._read_replication(home)[1])

    def _apply_received(self, conn: pymysql.connections.Connection[Any],
                        status: dict[str, Any], deadline: float) -> None:
        """Wait until the SQL thread has applied every transaction received. ``Gtid_IO_Pos``
        counts whole transactions only (measured: it stays put while a 50 MB transaction
        streams in), so one the crashed writer sent in part is not waited for: no reader
        acknowledged it, and it is rolled back."""
        with conn.cursor() as cur:
            if int(status["SQL_Delay"] or 0) > 0:
                # CHANGE MASTER keeps the relay log when told where the SQL thread stands
                cur.execute("STOP SLAVE")
                status = _slave_status(conn) or status
                cur.execute("CHANGE MASTER TO MASTER_DELAY = 0, RELAY_LOG_FILE = %s, "
                            f"RELAY_LOG_POS = {int(status['Relay_Log_Pos'])}",
                            (status["Relay_Log_File"],))
                cur.execute("START SLAVE SQL_THREAD")
            received = _gtid_seq(status["Gtid_IO_Pos"])
            while True:
                cur.execute("SELECT @@gtid_slave_pos")
                if _gtid_seq(_one(cur)) >= received:
                    return
                now = _slave_status(conn)
                if now is None or now["Slave_SQL_Running"] != "Yes":
                    error = now and now["Last_SQL_Error"]
                    raise LocalClusterError(f"{conn.host} stopped applying what it received "
                                            f"from the writer: {error}")
                if time.monotonic() > deadline:
                    raise LocalClusterError(f"{conn.host} did not apply its relay log in time")
                time.sleep(0.002)

    def probe_write(self, host: str) -> None:
        """Commit a write that a reader acknowledged (when a reader is connected), so the
        moment this returns the writer accepts writes as durable as Aurora's. A new writer
        commits asynchronously until a reader has caught up with it (semi-sync is off until
        then): the write is repeated until one is acknowledged."""
        deadline = time.monotonic() + SEMI_SYNC_TIMEOUT_MS / 1000
        with self.connect(host) as conn, conn.cursor() as cur:
            while True:
                acknowledged = _semi_sync_status(cur)["Rpl_semi_sync_master_yes_tx"]
                cur.execute("INSERT INTO aurora_local.heartbeat VALUES (1, now(6)) "
                            "ON DUPLICATE KEY UPDATE written_at = now(6)")
                status = _semi_sync_status(cur)
                if (status["Rpl_semi_sync_master_yes_tx"] > acknowledged
                        or status["Rpl_semi_sync_master_clients"] == 0
                        or time.monotonic() > deadline):
                    return
                time.sleep(0.002)

    def follow(self, home: Path, host: str, instance_id: str, writer_host: str) -> None:
        """Point a running reader at a new writer and return once it is connected: it asks
        the new writer for what follows its applied GTID position (the relay log of the old
        writer is dropped)."""
        delay_s = self._read_replication(home)[1]
        self._write_replication(home, writer_host, delay_s)
        deadline = time.monotonic() + SEMI_SYNC_TIMEOUT_MS / 1000
        with self.connect(host) as conn:
            self._change_master(conn, writer_host, delay_s)
            while (status := _slave_status(conn)) is not None and \
                    status["Slave_IO_Running"] != "Yes" and time.monotonic() < deadline:
                time.sleep(0.002)

    def copy_for_reader(self, home: Path, writer_host: str) -> None:
        """A new reader's data: the template, which replays the writer's whole binary log
        once it follows the writer (as a rejoining old writer does; see ``rewind``)."""
        self.user.run(["cp", "-a", self.template(), home / "data"])

    def set_members(self, members: list[tuple[Path, str]], writer_host: str,
                    all_ids: list[str]) -> None:
        """Nothing to do: semi-synchronous replication takes any reader's acknowledgement."""

    def set_synchronous(self, homes: list[Path], writer_pid: int | None,
                        awake_ids: list[str]) -> None:
        """Nothing to do: semi-synchronous replication waits for connected replicas only, and
        an auto-paused reader's is disconnected (``pause_replication``)."""

    def pause_replication(self, host: str) -> None:
        """Disconnect a reader's replica before it is frozen. A frozen replica stays
        connected and never acknowledges: each commit would then wait
        ``SEMI_SYNC_TIMEOUT_MS`` (measured: 5.0 s) before the writer falls back to
        asynchronous replication. With no replica connected the writer
        (``rpl-semi-sync-master-wait-no-slave = OFF``) commits asynchronously at once."""
        with self.connect(host, read_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("STOP SLAVE IO_THREAD")

    def resume_replication(self, host: str) -> None:
        """Reconnect a continued reader's replica (semi-sync is back once it caught up)."""
        with self.connect(host, read_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("START SLAVE IO_THREAD")

    def rewind(self, home: Path, instance_id: str, writer_host: str) -> None:
        """Turn a stopped former writer into a reader of ``writer_host`` (not started).

        A crashed writer may have logged transactions that no reader received: its GTID
        history then diverges from the new writer's, which strict GTID mode rejects. So it
        is rebuilt from the template with an empty position and replays the new writer's
        whole binary log (every instance logs everything since the cluster started)."""
        template = self.template()
        shutil.rmtree(home / "data")
        self.user.run(["cp", "-a", template, home / "data"])
        self._set_read_only(home, True)
        self._write_replication(home, writer_host, self._read_replication(home)[1])

    def _set_read_only(self, home: Path, read_only: bool) -> None:
        conf = home / "my.cnf"
        conf.write_text(re.sub(r"^read-only = .*$", f"read-only = {'ON' if read_only else 'OFF'}",
                               conf.read_text(), flags=re.M))


def _one(cur: pymysql.cursors.Cursor) -> Any:
    row = cur.fetchone()
    return None if row is None else row[0]


def _slave_status(conn: pymysql.connections.Connection[Any]) -> dict[str, Any] | None:
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("SHOW SLAVE STATUS")
        row: dict[str, Any] | None = cur.fetchone()
    return row


def _semi_sync_status(cur: pymysql.cursors.Cursor) -> dict[str, int]:
    cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN "
                "('Rpl_semi_sync_master_yes_tx', 'Rpl_semi_sync_master_clients')")
    return {str(name): int(value) for name, value in cur.fetchall()}
