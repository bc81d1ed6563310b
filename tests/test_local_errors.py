"""Clear errors from the local cluster: missing binaries, addresses in use, stale directories."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aurora_access import LocalClusterError
from aurora_access.local import LocalCluster, free_port
from aurora_access.local.layout import address_prefix
from aurora_access.local.processes import descendants, is_alive, signal_all


def test_missing_postgresql_binaries_say_how_to_install_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AURORA_LOCAL_PG_BINDIR", str(tmp_path))
    with pytest.raises(LocalClusterError, match="apt-get install postgresql") as caught:
        LocalCluster(readers=1)
    assert str(tmp_path) in str(caught.value)


def test_missing_mariadb_binaries_say_how_to_install_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AURORA_LOCAL_MARIADB_BINDIR", str(tmp_path))
    with pytest.raises(LocalClusterError, match="apt-get install mariadb-server") as caught:
        LocalCluster(engine="mysql", readers=1)
    assert str(tmp_path) in str(caught.value) and "mariadbd" in str(caught.value)


def test_an_address_in_use_is_named(shm_dir: Path) -> None:
    port = free_port(1)
    taken = f"{address_prefix(port)}.12"
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((taken, port))
        squatter.listen()
        with pytest.raises(LocalClusterError, match=rf"{taken}:{port} \(in use\)"):
            LocalCluster(readers=1, port=port, dir=shm_dir).start()
    assert not any((shm_dir / i).exists() for i in ("11", "12"))


def test_a_directory_in_use_by_a_running_cluster_is_refused(shm_dir: Path) -> None:
    with LocalCluster(readers=0, port=free_port(0), dir=shm_dir) as running:
        with pytest.raises(LocalClusterError, match="already running") as caught:
            LocalCluster(readers=0, port=free_port(0, first=running.port + 1),
                         dir=shm_dir).start()
        assert "local down --dir" in str(caught.value)
        assert running.state(running.writer.id) == "running"


@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
def test_a_stale_directory_from_a_crashed_run_is_recovered(shm_dir: Path, engine: str) -> None:
    port = free_port(1)
    crashed = LocalCluster(engine=engine, readers=1, port=port, dir=shm_dir).start()
    crashed.detach()
    # the controlling process "dies": everything it started is killed, its files stay behind
    state = json.loads((shm_dir / "state.json").read_text())
    pids = [state["forwarder_pid"]] + [n["pid"] for n in state["nodes"]]
    # a short-lived child (a walsender, an autovacuum worker) may be gone already
    signal_all(pids + [d for p in pids for d in descendants(p)], signal.SIGKILL)
    for pid in pids:
        os.waitpid(pid, 0)
    with LocalCluster(engine=engine, readers=1, port=port, dir=shm_dir) as fresh:
        assert any("crashed run" in line for line in fresh.recovered_stale)
        assert fresh.state(fresh.writer.id) == "running"


def test_bad_arguments_are_named() -> None:
    with pytest.raises(LocalClusterError, match="readers"):
        LocalCluster(readers=16)
    with pytest.raises(LocalClusterError, match="port"):
        LocalCluster(port=80)
    with pytest.raises(LocalClusterError, match="engine 'oracle'"):
        LocalCluster(engine="oracle")


@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
def test_a_killed_owner_takes_its_cluster_along(engine: str) -> None:
    """A test run killed outright runs no atexit: the endpoint forwarder notices its starter
    gone and stops the servers, so nothing is left running that nobody would stop."""
    script = (
        "import json, os, signal\n"
        "from aurora_access.local import LocalCluster, free_port\n"
        f"c = LocalCluster(engine={engine!r}, readers=1, port=free_port(1)).start()\n"
        "print(json.dumps({'dir': str(c.dir), 'forwarder': c._forwarder_pid,\n"
        "                  'pids': [n.pid for n in c._nodes]}), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    started = json.loads(done.stdout)
    pids = [started["forwarder"], *started["pids"]]
    deadline = time.monotonic() + 10
    while any(is_alive(p) for p in pids) or Path(started["dir"]).exists():
        assert time.monotonic() < deadline, [p for p in pids if is_alive(p)]
        time.sleep(0.05)
