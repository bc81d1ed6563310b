"""`aurora-access watch`: its JSON snapshot and its connection counts on the shared clusters
(never failed over here), the events on a cluster of its own, the live view at several terminal
widths, and Ctrl-C. No password reaches any output."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from rich.console import Console

from aurora_access import Database
from aurora_access.cli import main
from aurora_access.local import LocalCluster, free_port
from aurora_access.watch import Event, InstanceState, Snapshot, Watcher, changes, render

HELD_ON_WRITER = 3
HELD_ON_READER = 2


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AURORA_* setting of the machine or of another test leaks in (the local cluster's
    own AURORA_LOCAL_* stay)."""
    for name in list(os.environ):
        if name.startswith("AURORA_") and not name.startswith("AURORA_LOCAL_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[LocalCluster]:
    """A cluster to fail over, grow and shrink (the shared ones stay as they are)."""
    with LocalCluster(port=free_port(), readers=2) as cluster:
        yield cluster


_SLEEP = {"postgresql": "SELECT pg_sleep(2)", "mysql": "SELECT SLEEP(2)"}


def watch_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
               env: dict[str, str]) -> dict[str, object]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["watch", "--once", "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert env["AURORA_PASSWORD"] not in out
    document: dict[str, object] = json.loads(out)
    return document


def test_once_json_lists_roles_and_the_connections_of_an_open_database(
        engine_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    env = engine_cluster.env()
    writer, reader = engine_cluster.writer, engine_cluster.readers[0]
    with Database.from_env(env) as db:
        held = [db.engine("writer").connect() for _ in range(HELD_ON_WRITER)]
        held += [db.engine(reader.id).connect() for _ in range(HELD_ON_READER)]
        # one of them runs a statement while the watch looks: active, unlike the others
        busy = threading.Thread(target=held[0].exec_driver_sql,
                                args=(_SLEEP[engine_cluster.engine],))
        busy.start()
        time.sleep(0.3)
        try:
            document = watch_json(monkeypatch, capsys, env)
        finally:
            busy.join(10)
            for connection in held:
                connection.close()
    assert document["writer"] == writer.id
    instances = {i["id"]: i for i in document["instances"]}  # type: ignore[attr-defined]
    assert {i: s["role"] for i, s in instances.items()} == {
        writer.id: "writer", **{r.id: "reader" for r in engine_cluster.readers}}
    for state in instances.values():
        assert set(state) >= {"id", "host", "port", "role", "lag_ms", "connections", "active",
                              "answering"}
        assert state["answering"] is True
    assert instances[writer.id]["active"] >= 1  # the sleeping one (the watch's is not counted)
    # the held connections, idle, plus at least the watch's query
    assert instances[writer.id]["connections"] >= HELD_ON_WRITER + 1
    assert instances[reader.id]["connections"] >= HELD_ON_READER + 1
    assert instances[writer.id]["lag_ms"] is None
    assert document["events"] == []
    assert document["stats"]["topology_refreshes"] >= 1  # type: ignore[index]


def watch_until(watcher: Watcher, snapshot: Snapshot, done: Callable[[Snapshot], bool],
                events: list[Event], timeout: float = 20.0) -> Snapshot:
    """Refresh as the live view does (every 0.2 s), collecting events, until ``done``."""
    deadline = time.monotonic() + timeout
    while not done(snapshot):
        assert time.monotonic() < deadline, f"not seen in {timeout} s: {snapshot}"
        time.sleep(0.2)
        latest = watcher.snapshot()
        events += changes(snapshot, latest)
        snapshot = latest
    return snapshot


def answering(snapshot: Snapshot, instance_id: str) -> bool | None:
    state = snapshot.instance(instance_id)
    return None if state is None else state.answering


def test_events_failover_reader_added_removed_not_answering(own_cluster: LocalCluster) -> None:
    env = {**own_cluster.env(), "AURORA_TOPOLOGY_REFRESH_S": "0.2"}
    with Watcher(Database.from_env(env)) as watcher:
        events: list[Event] = []
        snapshot = watcher.snapshot()
        old = snapshot.writer
        own_cluster.failover()
        snapshot = watch_until(watcher, snapshot, lambda s: s.writer != old, events)
        new = snapshot.writer
        assert [e.text for e in events if e.kind == "failover"] == [
            f"failover: writer {old} -> {new}"]
        # the new writer was a reader: a failover, not a reader removed (the old writer may
        # leave the topology and come back as a reader while it rejoins)
        assert not [e for e in events if e.instance == new and e.kind != "failover"]

        added = own_cluster.add_reader().id
        snapshot = watch_until(watcher, snapshot, lambda s: s.instance(added) is not None,
                               events)
        assert f"reader {added} added" in [e.text for e in events]

        quiet = next(i.id for i in snapshot.instances if i.role == "reader" and i.id != added)
        own_cluster.pause(quiet)  # hung: it stays in the topology, its queries are cut off
        snapshot = watch_until(watcher, snapshot, lambda s: answering(s, quiet) is False,
                               events)
        own_cluster.resume(quiet)
        snapshot = watch_until(watcher, snapshot, lambda s: answering(s, quiet) is True,
                               events)

        own_cluster.remove_reader(added)
        watch_until(watcher, snapshot, lambda s: s.instance(added) is None, events)
    texts = [e.text for e in events]
    assert f"reader {quiet} not answering" in texts
    assert f"reader {quiet} answering again" in texts
    assert texts[-1] == f"reader {added} removed"
    assert all(e.line().endswith(e.text) and e.line()[2] == ":" for e in events)


def state(instance_id: str, role: str, error: str | None = None) -> InstanceState:
    return InstanceState(instance_id, f"10.0.0.{instance_id}", 5432, role,  # type: ignore[arg-type]
                         None if role == "writer" else 3.5, None if error else 4,
                         None if error else 1, error)


def test_changes_between_two_snapshots() -> None:
    before = Snapshot(0.0, "11", (state("11", "writer"), state("12", "reader"),
                                  state("13", "reader")), {})
    after = Snapshot(1.0, "12", (state("12", "writer"), state("11", "reader", "refused"),
                                 state("14", "reader")), {})
    assert changes(None, before) == []
    assert changes(before, before) == []
    assert [(e.kind, e.text) for e in changes(before, after)] == [
        ("failover", "failover: writer 11 -> 12"),
        ("not answering", "reader 11 not answering"),
        ("added", "reader 14 added"),
        ("removed", "reader 13 removed")]
    back = Snapshot(2.0, "12", (state("12", "writer"), state("11", "reader"),
                                state("14", "reader")), {})
    assert [e.text for e in changes(after, back)] == ["reader 11 answering again"]


def rendered(snapshot: Snapshot, events: list[Event], width: int) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(render(snapshot, events, "postgresql app@cluster:5432/app", "every 1 s"))
    return console.export_text().splitlines()


def test_the_view_fits_80_and_160_columns(aurora_cluster: LocalCluster) -> None:
    with Watcher(Database.from_env(aurora_cluster.env())) as watcher:
        real = watcher.snapshot()
    # Aurora-long host names and a long failure message must wrap, not overflow
    host = "app-cluster-instance-{}.c9akciq32xyz.eu-west-1.rds.amazonaws.com"
    long = Snapshot(real.at, "app-cluster-instance-1", (
        InstanceState("app-cluster-instance-1", host.format(1), 5432, "writer", None, 120, 7),
        InstanceState("app-cluster-instance-2", host.format(2), 5432, "reader", 12.25,
                      error="unreachable (connection_lost): connection timeout expired " * 3)),
        {})
    events = [Event(real.at, "failover", "12", "failover: writer 11 -> 12"),
              Event(real.at, "added", "14", "reader 14 added")]
    for width in (40, 80, 160):
        for snapshot in (real, long):
            lines = rendered(snapshot, events, width)
            assert all(len(line) <= width for line in lines), (width, lines)
            assert aurora_cluster.password not in "\n".join(lines)
    for width in (80, 160):  # wide enough for one line per instance and per event
        lines = rendered(real, events, width)
        for instance in real.instances:
            row = next(line for line in lines if line.startswith(f"{instance.id} "))
            assert f"{instance.host}:{instance.port}" in row and instance.role in row
            assert row.rstrip().endswith("yes") and "active)" in row
        assert sum(line.endswith(("failover: writer 11 -> 12", "reader 14 added"))
                   for line in lines) == 2
        lines = rendered(long, events, width)
        assert any(line.startswith("app-cluster-instance-2 not answering: unreachable")
                   for line in lines)
        assert any(line.rstrip().endswith("no") for line in lines)


def test_ctrl_c_ends_the_live_view_with_exit_0(aurora_cluster: LocalCluster) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURORA_")
           or k.startswith("AURORA_LOCAL_")}
    # a terminal as rich sees it, so that frames are drawn while it runs
    env |= {**aurora_cluster.env(), "TTY_COMPATIBLE": "1", "COLUMNS": "100"}
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from aurora_access.cli import main; "
         "sys.exit(main(['watch', '--interval', '0.2']))"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = b""
        deadline = time.monotonic() + 20
        while b"Ctrl-C" not in seen and time.monotonic() < deadline:  # the first frame
            assert process.stdout is not None
            if select.select([process.stdout], [], [], 0.2)[0]:
                seen += os.read(process.stdout.fileno(), 65536)
        assert b"Ctrl-C" in seen, seen
        time.sleep(1.0)  # a few refreshes
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    out = (seen + rest).decode()
    assert process.returncode == 0, err.decode()
    assert b"Traceback" not in err
    assert aurora_cluster.writer.id in out and "writer" in out and "reader" in out
    assert aurora_cluster.password not in out + err.decode()


@pytest.mark.parametrize(("args", "message"), [
    (["--json"], "--json prints one snapshot: use it with --once"),
    (["--interval", "0"], "--interval must be above 0, not 0")])
def test_bad_options_are_one_line(args: list[str], message: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watch", *args]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"aurora-access: error: {message}\n")


def test_unreachable_cluster_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in {"AURORA_CLUSTER_ENDPOINT": "127.0.0.1", "AURORA_PORT": str(free_port()),
                        "AURORA_DATABASE": "app", "AURORA_USER": "app",
                        "AURORA_PASSWORD": "s3cret-Pw-4711"}.items():
        monkeypatch.setenv(name, value)
    assert main(["watch", "--once"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("aurora-access: error: ") and err.count("\n") == 1
    assert "s3cret-Pw-4711" not in err
