"""Readers that come and go, as Aurora Auto Scaling adds and deletes replicas (issue 14):
``LocalCluster.add_reader()`` / ``remove_reader(id)``, and the library sending reads to a new
reader within a topology refresh and never failing a read on a removed one."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from aurora_access import Database
from aurora_access.errors import LocalClusterError
from aurora_access.local import LocalCluster, free_port
from aurora_access.local.layout import tcp_sockets
from engines import where

CYCLES = 8  # benchmarks/readers_come_and_go.py runs 20 (figures in RESULTS.md)
THREADS = 8


@pytest.fixture(scope="module", params=["postgresql", "mysql"])
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    with LocalCluster(engine=request.param, port=free_port(readers=3), readers=1) as c:
        yield c


def established_to(hosts: set[str]) -> list[str]:
    """Open TCP connections of this machine to any of ``hosts``."""
    return [remote for state, _, remote in tcp_sockets()
            if state == "01" and remote.split(":")[0] in hosts]


def test_an_added_reader_streams_and_a_removed_one_is_gone(cluster: LocalCluster) -> None:
    before = {i.id for i in cluster.instances}
    added = cluster.add_reader()
    assert added.id not in before and added.role == "reader"
    assert added.id in {r.id for r in cluster.readers}
    assert cluster.state(added.id) == "running"
    engine = create_engine(cluster.app_url(added.host))
    try:
        with engine.connect() as conn:  # the application's login has replicated to it
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
    assert added.id in cluster.replica_lags()  # the writer's metadata names it
    cluster.remove_reader(added.id)
    assert added.id not in {i.id for i in cluster.instances}
    assert f"{added.host}:{cluster.port}" not in cluster.listening_addresses()
    assert not (cluster.dir / added.id).exists()
    with pytest.raises(LocalClusterError, match="is the writer"):
        cluster.remove_reader(cluster.writer.id)
    again = cluster.add_reader()  # a new address, not the removed one's
    assert again.id != added.id
    cluster.remove_reader(again.id)


def test_reads_follow_readers_added_and_removed(cluster: LocalCluster) -> None:
    """8 threads read while a reader is added and removed 8 times: no read fails, each new
    reader serves reads within a topology refresh or so of being added, and nothing is left
    connected to a removed one."""
    db = Database.from_env({**cluster.env(), "AURORA_TOPOLOGY_REFRESH_S": "0.25"})
    served: list[tuple[float, str]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                with db.session() as s:
                    served.append((time.monotonic(), where(s)[1]))
            except Exception as exc:
                errors.append(exc)
            time.sleep(0.002)

    threads = [threading.Thread(target=read) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    first_read_s: list[float] = []
    removed: set[str] = set()
    try:
        for _ in range(CYCLES):
            added = cluster.add_reader()
            ready = time.monotonic()
            deadline = ready + 10
            while not any(t >= ready and i == added.id for t, i in served[-2000:]):
                assert time.monotonic() < deadline, f"reader {added.id} got no read in 10 s"
                time.sleep(0.005)
            first = min(t for t, i in served[-2000:] if t >= ready and i == added.id)
            first_read_s.append(first - ready)
            time.sleep(0.1)  # reads in flight on it when it goes
            cluster.remove_reader(added.id)
            removed.add(added.host)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    try:
        assert errors == []
        time.sleep(1.0)  # a topology refresh after the last removal
        pooled = {host for host, _port, _kind in db._pools._engines}
        assert not pooled & removed
        assert established_to(removed) == []
        print(json.dumps({  # the figures of the note
            "engine": cluster.engine, "cycles": CYCLES, "reads": len(served),
            "errors": len(errors), "retries": db.stats()["retries"],
            "first_read_after_add_s": {
                "median": round(statistics.median(first_read_s), 3),
                "max": round(max(first_read_s), 3)},
        }))
    finally:
        db.close()
