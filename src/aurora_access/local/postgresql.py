"""PostgreSQL servers for the local cluster: template, replication, promotion, Aurora metadata.

Every piece of PostgreSQL-specific SQL and server handling of the local cluster lives here
(what instances are made from: ``postgresql_template.py``);
``cluster.py`` orchestrates through the ``ServerEngine`` interface only.

How an instance is laid out (``<cluster dir>/<instance id>/``):

- ``data/``: PGDATA, a copy of a cached template made once by ``initdb`` (about 1 s), so a new
  instance costs a file copy instead of an ``initdb``;
- ``instance.conf``: what differs per instance (address, identity, primary, lag), included
  from ``postgresql.conf``; it lives outside PGDATA so ``pg_rewind`` does not overwrite it;
- ``server.log``.

Aurora's metadata is emulated by functions made in the template (``postgresql_template.py``),
so every instance has them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg

from ..errors import LocalClusterError
from .postgresql_template import (
    ADMIN_DB,
    APP_SQL,
    HBA_CONF,
    METADATA_SQL,
    SERVER_CONF,
    SUPERUSER,
    TEMPLATE_KEY,
)
from .processes import ServerUser, cached_template, signal_all, wait_connect
from .tls import TlsFiles

DEFAULT_PORT = 15432

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def find_bindir() -> Path:
    """The directory of PostgreSQL's server binaries, or an error saying how to install them."""
    override = os.environ.get("AURORA_LOCAL_PG_BINDIR")
    candidates: list[Path] = []
    if override:
        candidates.append(Path(override))
    else:
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)
        versioned = sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True,
        )
        candidates.extend(versioned)
    needed = ("initdb", "postgres", "pg_rewind")
    for bindir in candidates:
        if all((bindir / name).is_file() for name in needed):
            return bindir
    where = override or "PATH and /usr/lib/postgresql/*/bin"
    raise LocalClusterError(
        f"PostgreSQL server binaries ({', '.join(needed)}) not found in {where}. Install them "
        "(Debian/Ubuntu: apt-get install postgresql; Fedora: dnf install postgresql-server "
        "postgresql-contrib) or point AURORA_LOCAL_PG_BINDIR at their directory."
    )


def check_identifier(kind: str, value: str) -> str:
    if not _IDENT.match(value):
        raise LocalClusterError(
            f"{kind} {value!r} is not a plain lower-case SQL identifier (letters, digits, _)"
        )
    return value


def _lsn(value: Any) -> int | None:
    if value is None:
        return None
    high, low = str(value).split("/")
    return (int(high, 16) << 32) | int(low, 16)


class PostgresServers:
    """Makes, starts, promotes and rewinds local PostgreSQL instances of one cluster."""

    engine = "postgresql"
    crash_signal = signal.SIGQUIT  # SIGKILL would orphan backends and break pg_rewind
    stop_signal = signal.SIGINT  # "fast" shutdown
    default_port = DEFAULT_PORT
    url_scheme = "postgresql+psycopg"
    # the process of a reader whose connection to the writer is replication, not a client's
    replication_process = "walreceiver"

    def __init__(self, user: ServerUser, port: int, cache_dir: Path) -> None:
        self.user = user
        self.port = port
        self.bindir = find_bindir()
        self.cache_dir = cache_dir

    # -- template -----------------------------------------------------------------------

    def server_version(self) -> str:
        out = subprocess.run([str(self.bindir / "postgres"), "--version"], capture_output=True,
                             text=True, check=True).stdout
        return out.strip().split()[-1]

    def template(self) -> Path:
        """The cached template PGDATA, made on first use (about 1-2 s)."""
        return cached_template(self.cache_dir, f"pg-{self.server_version()}-{TEMPLATE_KEY}",
                               self.user, "PG_VERSION", self._build_template)

    def _build_template(self, work: Path) -> None:
        data = work / "data"
        self.user.run([self.bindir / "initdb", "-D", data, "-U", SUPERUSER, "-A", "trust",
                       "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(SERVER_CONF)
        (data / "pg_hba.conf").write_text(HBA_CONF.format(superuser=SUPERUSER))
        self.user.chown(data / "pg_hba.conf")
        sock = work / "sock"
        sock.mkdir()
        self.user.chown(sock)
        # The first start also settles max_connections & co. in pg_control, which readers
        # started from copies must match.
        server = self.user.popen(
            [self.bindir / "postgres", "-D", data, "-c", "listen_addresses=",
             "-c", f"unix_socket_directories={sock}", "-c", "port=5999"],
            work / "template.log", detach=True,
        )
        try:
            conninfo = f"host={sock} port=5999 user={SUPERUSER}"
            self._wait_connect(conninfo + f" dbname={ADMIN_DB}", time.monotonic() + 30,
                               what="the template server", log=work / "template.log")
            for db in ("template1", ADMIN_DB):
                with psycopg.connect(f"{conninfo} dbname={db}", autocommit=True) as conn:
                    conn.execute(METADATA_SQL.encode())
            with psycopg.connect(f"{conninfo} dbname={ADMIN_DB}", autocommit=True) as conn:
                for statement in APP_SQL.format(user="app", database="app").strip().splitlines():
                    conn.execute(statement.encode())
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(30)

    # -- instances ----------------------------------------------------------------------

    def configure(self, home: Path, instance_id: str, host: str, all_ids: list[str],
                  writer_host: str, replica_lag_ms: int, reader: bool,
                  tls: TlsFiles | None = None) -> None:
        """Write the instance's own settings; a reader gets standby.signal."""
        sync = self._sync_standbys(all_ids)
        lines = [
            f"listen_addresses = '{host}'",
            f"port = {self.port}",
            f"cluster_name = '{instance_id}'",
            "unix_socket_directories = ''",
            f"synchronous_standby_names = '{sync}'",
            f"recovery_min_apply_delay = '{replica_lag_ms}ms'",
            f"primary_conninfo = '{self._primary_conninfo(writer_host, instance_id)}'",
        ]
        if tls is not None:
            lines += ["ssl = on", f"ssl_cert_file = '{tls.server_cert}'",
                      f"ssl_key_file = '{tls.server_key}'"]
        conf = home / "instance.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.user.chown(conf)
        signal_file = home / "data" / "standby.signal"
        if reader:
            signal_file.touch()
            self.user.chown(signal_file)
        else:
            signal_file.unlink(missing_ok=True)

    def _primary_conninfo(self, writer_host: str, instance_id: str) -> str:
        return (f"host={writer_host} port={self.port} user={SUPERUSER} "
                f"application_name={instance_id} connect_timeout=2")

    def start(self, home: Path) -> subprocess.Popen[bytes]:
        return self.user.popen([self.bindir / "postgres", "-D", home / "data"], home / "server.log",
                               detach=True)

    def conninfo(self, host: str, dbname: str = ADMIN_DB, timeout: int = 2) -> str:
        return (f"host={host} port={self.port} user={SUPERUSER} dbname={dbname} "
                f"connect_timeout={timeout}")

    def admin_url(self, host: str, dbname: str) -> str:
        return f"{self.url_scheme}://{SUPERUSER}@{host}:{self.port}/{dbname}"

    def _wait_connect(self, conninfo: str, deadline: float, what: str, log: Path) -> None:
        wait_connect(lambda: psycopg.connect(conninfo), psycopg.OperationalError, deadline,
                     what, log).close()

    def wait_ready(self, home: Path, host: str, deadline: float) -> None:
        """Wait until the instance accepts connections (a reader: in hot standby)."""
        self._wait_connect(self.conninfo(host), deadline, f"instance at {host}:{self.port}",
                           home / "server.log")

    def streaming_readers(self, writer_host: str) -> set[str]:
        """Ids of the readers streaming from the writer."""
        with psycopg.connect(self.conninfo(writer_host), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
            ).fetchall()
        return {r[0] for r in rows}

    def wait_replayed(self, writer_host: str, reader_hosts: list[str], deadline: float) -> None:
        """Until every reader has replayed all the writer has now (its setup: the application
        role's password, which a lagging reader applies ``replica_lag_ms`` later)."""
        with psycopg.connect(self.conninfo(writer_host), autocommit=True) as conn:
            target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        assert target is not None
        for host in reader_hosts:
            with psycopg.connect(self.conninfo(host), autocommit=True) as conn:
                while conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                   (target[0],)).fetchone() != (True,):
                    if time.monotonic() > deadline:
                        raise LocalClusterError(f"reader {host} did not replay the cluster's "
                                                "setup in time")
                    time.sleep(0.005)

    def configure_app(self, writer_host: str, database: str, user: str, password: str) -> None:
        """Give the application role its password; make the database and role if not the
        template's ones. Runs on the writer; replication carries it to the readers."""
        with psycopg.connect(self.conninfo(writer_host), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
            if not exists:
                conn.execute(f"CREATE ROLE {user} LOGIN".encode())
            conn.execute(
                psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    psycopg.sql.Identifier(user), psycopg.sql.Literal(password)
                )
            )
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                (database,)).fetchone():
                conn.execute(f"CREATE DATABASE {database} OWNER {user}".encode())

    def record_topology(self, writer_host: str, writer_id: str, instance_ids: list[str],
                        replica_lag_ms: int) -> None:
        """Nothing to record: ``aurora_replica_status()`` computes the topology live from
        ``pg_stat_replication`` on the writer."""

    def replica_lags(self, writer_host: str) -> dict[str, float]:
        """``aurora_replica_status()`` on the writer: instance id -> replica lag in ms."""
        with psycopg.connect(self.conninfo(writer_host), autocommit=True) as conn:
            rows = conn.execute("SELECT server_id, replica_lag_in_msec "
                                "FROM aurora_replica_status()").fetchall()
        return {r[0]: float(r[1]) for r in rows}

    def receive_position(self, host: str) -> int | None:
        """How far a reader has durably received the writer's WAL; None if unreachable."""
        try:
            with psycopg.connect(self.conninfo(host, timeout=1), autocommit=True) as conn:
                row = conn.execute("SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()"
                                   ).fetchone()
        except psycopg.OperationalError:
            return None
        if row is None:
            return None
        return max((p for p in (_lsn(row[0]), _lsn(row[1])) if p is not None), default=0)

    def promote(self, host: str, deadline: float) -> None:
        """Promote a reader and return once it accepts writes."""
        with psycopg.connect(self.conninfo(host), autocommit=True) as conn:
            conn.execute("SELECT pg_promote(wait => false)")
            while True:
                in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if in_recovery is not None and not in_recovery[0]:
                    return
                if time.monotonic() > deadline:
                    raise LocalClusterError(f"{host} was not promoted in time")
                time.sleep(0.003)

    def probe_write(self, host: str) -> None:
        """Commit a transaction that has a transaction id, so the commit waits for a
        synchronous reader: the moment this returns, the writer accepts writes."""
        with psycopg.connect(self.conninfo(host), autocommit=False) as conn:
            conn.execute("SELECT pg_current_xact_id()")
            conn.commit()

    def follow(self, home: Path, host: str, instance_id: str, writer_host: str) -> None:
        """Point a running reader at a new writer; it follows the new timeline without a
        restart (30-50 ms)."""
        self._set_primary(home, instance_id, writer_host)
        with psycopg.connect(self.conninfo(host), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")

    def _set_primary(self, home: Path, instance_id: str, writer_host: str) -> None:
        conf = home / "instance.conf"
        text = re.sub(r"^primary_conninfo = .*$",
                      f"primary_conninfo = '{self._primary_conninfo(writer_host, instance_id)}'",
                      conf.read_text(), flags=re.M)
        conf.write_text(text)

    def copy_for_reader(self, home: Path, writer_host: str) -> None:
        """A new reader's data: a base backup of the running writer (not started)."""
        self.user.run([self.bindir / "pg_basebackup", "--pgdata", home / "data",
                       "--dbname", self.conninfo(writer_host), "--wal-method", "stream",
                       "--checkpoint", "fast", "--no-sync"])
        # the writer's ALTER SYSTEM settings are not a reader's; ours live outside PGDATA
        auto = home / "data" / "postgresql.auto.conf"
        auto.write_text("")
        self.user.chown(auto)

    def set_members(self, members: list[tuple[Path, str]], writer_host: str,
                    all_ids: list[str]) -> None:
        """The instances changed: every instance's synchronous standby list names them all
        (whichever becomes the writer), and the writer applies it now."""
        self._write_synchronous([home for home, _host in members], all_ids)
        with psycopg.connect(self.conninfo(writer_host), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")

    def set_synchronous(self, homes: list[Path], writer_pid: int | None,
                        awake_ids: list[str]) -> None:
        """Auto-pause: commits wait for any one of ``awake_ids`` only (the writer's own id
        included, as in ``set_members``), so that no commit waits for a frozen reader. With
        no reader awake the list is empty and commits are local: acknowledged before any
        reader has them, where Aurora's shared storage would have them durable. Applied with
        SIGHUP to the writer's postmaster rather than SQL, which a frozen writer could not
        answer: it applies the signal once continued."""
        self._write_synchronous(homes, awake_ids)
        if writer_pid is not None:
            signal_all([writer_pid], signal.SIGHUP)

    def _write_synchronous(self, homes: list[Path], ids: list[str]) -> None:
        line = f"synchronous_standby_names = '{self._sync_standbys(ids)}'"
        for home in homes:
            conf = home / "instance.conf"
            conf.write_text(re.sub(r"^synchronous_standby_names = .*$", line, conf.read_text(),
                                   flags=re.M))

    def pause_replication(self, host: str) -> None:
        """Nothing to do before a reader is frozen: ``set_synchronous`` leaves it out of the
        writer's synchronous list, and its WAL connection may stay open (a walsender waits
        on it ``wal_sender_timeout``, then the walreceiver reconnects once continued)."""

    def resume_replication(self, host: str) -> None:
        """Nothing to do once a reader is continued: its walreceiver carries on by itself."""

    @staticmethod
    def _sync_standbys(all_ids: list[str]) -> str:
        """Commits wait for any one reader (``all_ids`` includes the writer's own, which the
        writer ignores: after a failover the same list serves the new writer)."""
        peers = ", ".join(f'"{i}"' for i in all_ids if i)
        return f"ANY 1 ({peers})" if len(all_ids) > 1 else ""

    def rewind(self, home: Path, instance_id: str, writer_host: str) -> None:
        """Turn a stopped former writer into a reader of ``writer_host`` (not started)."""
        with psycopg.connect(self.conninfo(writer_host), autocommit=True) as conn:
            # pg_rewind reads the new timeline from the source's control file
            conn.execute("CHECKPOINT")
        self.user.run([self.bindir / "pg_rewind", "--target-pgdata", home / "data",
                       "--source-server", self.conninfo(writer_host), "--no-sync"])
        # pg_rewind copied the source's configuration; ours lives outside PGDATA
        auto = home / "data" / "postgresql.auto.conf"
        auto.write_text("")
        self.user.chown(auto)
        signal_file = home / "data" / "standby.signal"
        signal_file.touch()
        self.user.chown(signal_file)
        self._set_primary(home, instance_id, writer_host)

    def make_reader(self, home: Path, instance_id: str, writer_host: str) -> None:
        """Configure a stopped instance as a reader of ``writer_host`` without a rewind."""
        signal_file = home / "data" / "standby.signal"
        signal_file.touch()
        self.user.chown(signal_file)
        self._set_primary(home, instance_id, writer_host)
