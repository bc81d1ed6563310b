"""What every local MariaDB instance is made from: the server configuration shared by the
template and the instances, Aurora MySQL's topology table as a view
(``aurora_local.replica_host_status``), and the cached template datadir they copy."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from pathlib import Path

import pymysql

from ..errors import LocalClusterError
from .processes import ServerUser, wait_connect

SUPERUSER = "root"

# Past this a commit stops waiting for a reader's acknowledgement and the writer replicates
# asynchronously until a reader has caught up again (then semi-sync switches back on).
SEMI_SYNC_TIMEOUT_MS = 5000

# Shared by the template server and every instance (InnoDB's files must match).
SERVER_CNF = f"""
# aurora-access local cluster (test data only: durability comes from semi-synchronous replication;
# a crash of the process, which is all we emulate, loses nothing the OS has been handed)
skip-name-resolve
performance-schema = OFF
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
max-connections = 300
table-open-cache = 400
innodb-buffer-pool-size = 32M
innodb-log-file-size = 16M
innodb-flush-method = fsync
innodb-use-native-aio = 0
innodb-flush-log-at-trx-commit = 2
sync-binlog = 0
binlog-format = ROW
log-slave-updates = ON
gtid-strict-mode = ON
slave-net-timeout = 10
rpl-semi-sync-master-enabled = ON
rpl-semi-sync-slave-enabled = ON
rpl-semi-sync-master-wait-point = AFTER_SYNC
rpl-semi-sync-master-wait-no-slave = OFF
rpl-semi-sync-master-timeout = {SEMI_SYNC_TIMEOUT_MS}
"""

# Made in the template with the binary log off, so every instance starts with it and an empty
# GTID history. The view has Aurora MySQL's column names.
METADATA_SQL = """
CREATE USER 'root'@'127.%';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.%' WITH GRANT OPTION;
CREATE DATABASE aurora_local;
CREATE TABLE aurora_local.instances (
  server_id varchar(64) PRIMARY KEY,
  session_id varchar(100) NOT NULL,
  replica_lag_in_milliseconds double NOT NULL
);
CREATE TABLE aurora_local.heartbeat (id int PRIMARY KEY, written_at datetime(6) NOT NULL);
CREATE SQL SECURITY DEFINER VIEW aurora_local.replica_host_status AS
  SELECT server_id AS SERVER_ID, session_id AS SESSION_ID, 0 AS IOPS, 0 AS READ_IOS,
         0 AS PENDING_READ_IOS, 0.0 AS CPU, NULL AS DURABLE_LSN, 0 AS LAST_TRANSPORT_ERROR,
         NULL AS LAST_ERROR_TIMESTAMP, utc_timestamp(6) AS LAST_UPDATE_TIMESTAMP,
         replica_lag_in_milliseconds * 1000 AS MASTER_SLAVE_LATENCY_IN_MICROSECONDS,
         replica_lag_in_milliseconds AS REPLICA_LAG_IN_MILLISECONDS, 1 AS IS_CURRENT
  FROM aurora_local.instances
"""

INSTALL_ARGS = ("--no-defaults", "--auth-root-authentication-method=normal", "--skip-test-db",
                 "--innodb-log-file-size=16M")

# The template's identity: a change here or in the server's version makes a new template.
TEMPLATE_KEY = hashlib.sha256(
    (SERVER_CNF + METADATA_SQL + " ".join(INSTALL_ARGS)).encode()).hexdigest()[:12]

BINARIES = ("mariadbd", "mariadb-install-db")


def find_binaries() -> dict[str, Path]:
    """MariaDB's server binaries by name, or an error saying how to install them."""
    override = os.environ.get("AURORA_LOCAL_MARIADB_BINDIR")
    dirs = [Path(override)] if override else [Path("/usr/sbin"), Path("/usr/bin")]
    found: dict[str, Path] = {}
    for name in BINARIES:
        on_path = None if override else shutil.which(name)
        candidates = [Path(on_path)] if on_path else [d / name for d in dirs]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is not None:
            found[name] = hit
    missing = [name for name in BINARIES if name not in found]
    if missing:
        where = override or "PATH, /usr/sbin and /usr/bin"
        raise LocalClusterError(
            f"MariaDB server binaries ({', '.join(missing)}) not found in {where}. Install "
            "them (Debian/Ubuntu: apt-get install mariadb-server; Fedora: dnf install "
            "mariadb-server) or point AURORA_LOCAL_MARIADB_BINDIR at their directory.")
    return found


def build_template(work: Path, binaries: dict[str, Path], user: ServerUser) -> None:
    """Make the template datadir in ``work``: an installed datadir, its accounts tidied, the
    metadata made (with the binary log off, so instances start with an empty GTID history)."""
    data, sock = work / "data", work / "sock"
    user.run([binaries["mariadb-install-db"], *INSTALL_ARGS, f"--datadir={data}"])
    conf = work / "my.cnf"
    conf.write_text(f"[mariadbd]\n{SERVER_CNF}\ndatadir = {data}\nsocket = {sock}\n"
                    f"pid-file = {work / 'mariadbd.pid'}\nskip-networking\nskip-log-bin\n")
    server = user.popen([binaries["mariadbd"], f"--defaults-file={conf}"],
                        work / "template.log", detach=True)
    try:
        conn = wait_connect(
            lambda: pymysql.connect(unix_socket=str(sock), user=SUPERUSER, autocommit=True),
            pymysql.err.OperationalError, time.monotonic() + 30, "the template server",
            work / "template.log")
        with conn, conn.cursor() as cur:
            # the install's other root accounts (by host name, ::1) are not ours to keep
            cur.execute("SELECT host FROM mysql.user WHERE user = 'root' "
                        "AND host <> 'localhost'")
            for (host,) in cur.fetchall():
                cur.execute("DROP USER 'root'@%s", (host,))
            for statement in METADATA_SQL.split(";"):
                if statement.strip():
                    cur.execute(statement)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
