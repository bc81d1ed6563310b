"""`aurora-access local up|env|status|failover|add-reader|remove-reader|down` as a user runs
it, in separate processes."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pymysql
import pytest

from aurora_access.local import free_port
from aurora_access.local.layout import address_prefix, listening
from aurora_access.local.processes import is_alive


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aurora_access.cli", *args],
                          capture_output=True, text=True, timeout=120, check=False,
                          env=None if env is None else {**os.environ, **env})


def _writes_through_cluster_endpoint(engine: str, exports: dict[str, str],
                                     host: str | None = None) -> bool:
    """Whether the cluster endpoint (or ``host``), reached over verified TLS, leads to a
    writer."""
    host, port = host or exports["AURORA_CLUSTER_ENDPOINT"], int(exports["AURORA_PORT"])
    if engine == "mysql":
        with pymysql.connect(host=host, port=port, user=exports["AURORA_USER"],
                             password=exports["AURORA_PASSWORD"],
                             database=exports["AURORA_DATABASE"],
                             ssl_ca=exports["AURORA_SSLROOTCERT"], ssl_verify_cert=True,
                             ssl_verify_identity=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT @@read_only")
            return cur.fetchone() == (0,)
    with psycopg.connect(host=host, port=port, user=exports["AURORA_USER"],
                         password=exports["AURORA_PASSWORD"], dbname=exports["AURORA_DATABASE"],
                         sslmode=exports["AURORA_SSLMODE"],
                         sslrootcert=exports["AURORA_SSLROOTCERT"]) as conn:
        return conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)


@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
def test_up_status_failover_down(shm_dir: Path, engine: str) -> None:
    port = free_port()
    up = cli("local", "up", "--dir", str(shm_dir), "--port", str(port), "--readers", "2",
             "--tls", "--engine", engine)
    assert up.returncode == 0, up.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines())
    assert exports["AURORA_PORT"] == str(port)
    assert exports["AURORA_ENGINE"] == engine
    # the cluster outlives the command that started it
    assert _writes_through_cluster_endpoint(engine, exports)
    assert exports["AURORA_SSLMODE"] == "verify-full"
    state = json.loads((shm_dir / "state.json").read_text())
    pids = [state["forwarder_pid"]] + [n["pid"] for n in state["nodes"]]

    again = cli("local", "env", "--dir", str(shm_dir))  # a second shell's export lines
    assert again.returncode == 0, again.stderr
    assert again.stdout == up.stdout

    # the exported AURORA_LOCAL_DIR: the shell's next commands need no --dir
    assert exports["AURORA_LOCAL_DIR"] == shlex.quote(str(shm_dir.resolve()))
    status = cli("local", "status", env={"AURORA_LOCAL_DIR": str(shm_dir)})
    assert status.returncode == 0, status.stderr
    assert "11 " in status.stdout and "writer" in status.stdout and "lag" in status.stdout

    failover = cli("local", "failover", "--dir", str(shm_dir))
    assert failover.returncode == 0, failover.stderr
    assert failover.stdout.startswith("failover 11 -> ")
    state = json.loads((shm_dir / "state.json").read_text())
    pids += [n["pid"] for n in state["nodes"]]
    assert [n["role"] for n in state["nodes"]].count("writer") == 1
    assert state["nodes"][0]["role"] == "reader"
    assert _writes_through_cluster_endpoint(engine, exports)

    add = cli("local", "add-reader", "--dir", str(shm_dir))
    assert add.returncode == 0, add.stderr
    added_id, added_host = add.stdout.split()[2], add.stdout.split()[4].split(":")[0]
    state = json.loads((shm_dir / "state.json").read_text())
    pids += [n["pid"] for n in state["nodes"]]
    assert added_id in {n["id"] for n in state["nodes"]}
    # a reader, whose address the cluster's certificate names (verify-full)
    assert not _writes_through_cluster_endpoint(engine, exports, added_host)
    remove = cli("local", "remove-reader", "--dir", str(shm_dir), added_id)
    assert remove.returncode == 0, remove.stderr
    state = json.loads((shm_dir / "state.json").read_text())
    assert added_id not in {n["id"] for n in state["nodes"]}
    assert f"{added_host}:{port}" not in listening()

    down = cli("local", "down", "--dir", str(shm_dir))
    assert down.returncode == 0, down.stderr
    assert not [p for p in pids if is_alive(p)]
    prefix = exports["AURORA_CLUSTER_ENDPOINT"].rsplit(".", 1)[0] + "."
    assert not [a for a in listening() if a.startswith(prefix)]
    assert not shm_dir.exists()  # down leaves nothing behind, the directory up made included


def test_commands_without_a_cluster_fail_clearly(shm_dir: Path) -> None:
    for action in ("env", "status", "failover", "down"):
        result = cli("local", action, "--dir", str(shm_dir))
        assert result.returncode == 1
        assert result.stderr.startswith("aurora-access: error: no local cluster in ")
        assert "Traceback" not in result.stderr


def test_up_on_an_address_in_use_fails_clearly(shm_dir: Path) -> None:
    port = free_port()
    reader_endpoint = f"{address_prefix(port)}.3"
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((reader_endpoint, port))
        squatter.listen()
        result = cli("local", "up", "--dir", str(shm_dir), "--port", str(port))
    assert result.returncode == 1
    assert f"{reader_endpoint}:{port} (in use)" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
