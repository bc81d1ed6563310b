"""The local cluster's emulation of Aurora Serverless v2's auto-pause: an instance with no
client connection for ``auto_pause_s`` is frozen, and a connection to it is held ``resume_s``
until it resumes. Both engines; every test has a cluster of its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from aurora_access.local import LocalCluster, free_port

AUTO_PAUSE_S = 1.0
RESUME_S = 1.5
SLACK_S = 1.0  # a loaded 2-core machine: the checker ticks every 0.15 s, if it gets the CPU

ENGINES = pytest.mark.parametrize("engine", ["postgresql", "mysql"])
# pausing and resuming themselves are engine-neutral (processes, the TCP table), and
# tests/test_serverless.py pauses and resumes both engines: these run on one, for time
ONE_ENGINE = pytest.mark.parametrize("engine", ["postgresql"])


@pytest.fixture
def cluster(engine: str) -> Iterator[LocalCluster]:
    with LocalCluster(engine=engine, port=free_port(), readers=2, auto_pause_s=AUTO_PAUSE_S,
                      resume_s=RESUME_S) as c:
        yield c


def app_engine(cluster: LocalCluster, host: str) -> Engine:
    """The application's SQLAlchemy engine on one instance, no pool: each connect is a new
    TCP connection, held while the instance is paused (the timeouts bound the handshake)."""
    timeouts = {"connect_timeout": 10, **({"read_timeout": 10} if cluster.engine == "mysql"
                                           else {})}
    return create_engine(cluster.app_url(host), poolclass=NullPool, connect_args=timeouts)


def wait_state(cluster: LocalCluster, ids: list[str], state: str, timeout: float) -> float:
    """Seconds until every instance of ``ids`` is in ``state``; fails past ``timeout``."""
    began = time.monotonic()
    while not all(cluster.state(i) == state for i in ids):
        assert time.monotonic() - began < timeout, f"not all {state}: {cluster.describe()}"
        time.sleep(0.01)
    return time.monotonic() - began


def all_ids(cluster: LocalCluster) -> list[str]:
    return [i.id for i in cluster.instances]


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n{line}")


@ONE_ENGINE
def test_an_idle_cluster_pauses_every_instance(
        cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    began = time.monotonic()
    paused_at = {}
    while len(paused_at) < len(cluster.instances):
        for instance_id in all_ids(cluster):
            if instance_id not in paused_at and cluster.state(instance_id) == "auto-paused":
                paused_at[instance_id] = time.monotonic() - began
        assert time.monotonic() - began < AUTO_PAUSE_S + SLACK_S, cluster.describe()
        time.sleep(0.01)
    assert min(paused_at.values()) >= AUTO_PAUSE_S * 0.9
    report(capsys, f"{cluster.engine}: idle instances auto-paused after " + ", ".join(
        f"{i} {s:.2f} s" for i, s in sorted(paused_at.items())) + f" (auto_pause_s "
        f"{AUTO_PAUSE_S})")


@ONE_ENGINE
def test_a_connection_to_a_paused_instance_waits_for_its_resume(
        cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    wait_state(cluster, all_ids(cluster), "auto-paused", AUTO_PAUSE_S + SLACK_S)
    reader = cluster.readers[0]
    engine = app_engine(cluster, reader.host)
    began = time.monotonic()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
        took = time.monotonic() - began
        assert cluster.state(reader.id) == "running"
    assert RESUME_S * 0.8 <= took <= RESUME_S + 2
    # the writer resumed with it (the reader replicates from it), the other reader did not
    assert cluster.state(cluster.writer.id) == "running"
    assert cluster.state(cluster.readers[1].id) == "auto-paused"
    report(capsys, f"{cluster.engine}: first query on a paused reader after {took:.2f} s "
                   f"(resume_s {RESUME_S})")


@ONE_ENGINE
def test_an_open_connection_keeps_an_instance_awake(
        cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    held, idle = cluster.readers
    opened = time.monotonic()
    with app_engine(cluster, held.host).connect() as conn:
        conn.execute(text("SELECT 1"))
        wait_state(cluster, [idle.id], "auto-paused", AUTO_PAUSE_S + SLACK_S)
        time.sleep(AUTO_PAUSE_S * 0.5)  # well past auto_pause_s since the connection opened
        assert cluster.state(held.id) == "running"
        held_s = time.monotonic() - opened
    paused_s = wait_state(cluster, [held.id], "auto-paused", AUTO_PAUSE_S + SLACK_S)
    assert paused_s >= AUTO_PAUSE_S * 0.8
    report(capsys, f"{cluster.engine}: awake while a connection was open ({held_s:.2f} s), "
                   f"auto-paused {paused_s:.2f} s after it closed")


@ENGINES
def test_a_write_commits_while_every_reader_is_paused(
        cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    """PostgreSQL would wait for ever for a synchronous standby, MariaDB 5 s for a
    semi-synchronous acknowledgement, if paused readers were still waited for."""
    writer = app_engine(cluster, cluster.writer.host)
    with writer.connect() as awake:  # the writer stays awake, the readers pause
        awake.execute(text("CREATE TABLE paused_readers (id int PRIMARY KEY)"))
        awake.commit()
        wait_state(cluster, [r.id for r in cluster.readers], "auto-paused",
                   AUTO_PAUSE_S + SLACK_S)

        def write() -> float:
            began = time.monotonic()
            with writer.begin() as conn:
                conn.execute(text("INSERT INTO paused_readers VALUES (1)"))
            return time.monotonic() - began

        pool = ThreadPoolExecutor(1)
        try:
            commit_s = pool.submit(write).result(timeout=10)
        finally:
            pool.shutdown(wait=False)
        assert commit_s < 1.0
        assert cluster.state(cluster.writer.id) == "running"
    reader = cluster.readers[0]
    began = time.monotonic()
    with app_engine(cluster, reader.host).connect() as conn:
        resumed_s = time.monotonic() - began
        while conn.execute(text("SELECT count(*) FROM paused_readers")).scalar() != 1:
            assert time.monotonic() - began < RESUME_S + 5, "the write did not reach the reader"
            time.sleep(0.01)
            conn.rollback()  # a new snapshot (MariaDB's repeatable read keeps the first)
    report(capsys, f"{cluster.engine}: commit with every reader paused took {commit_s:.3f} s; "
                   f"on a reader after its resume ({resumed_s:.2f} s) within "
                   f"{time.monotonic() - began:.2f} s")


@ENGINES
def test_failover_and_faults_while_instances_are_paused(
        cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    """Each operation wakes the instances it needs at once (Aurora's control plane does not
    wait for a resume); they pause again once idle."""
    wait_state(cluster, all_ids(cluster), "auto-paused", AUTO_PAUSE_S + SLACK_S)
    old = cluster.writer
    began = time.monotonic()
    failover = cluster.failover()
    took = time.monotonic() - began
    new = cluster.writer
    assert failover.new_writer == new.id != old.id
    assert old.id in {r.id for r in cluster.readers}
    with app_engine(cluster, cluster.cluster_host).begin() as conn:
        conn.execute(text("CREATE TABLE after_failover (id int)"))
        conn.execute(text("INSERT INTO after_failover VALUES (1)"))
    # the instances pause again once idle, the new writer included
    wait_state(cluster, all_ids(cluster), "auto-paused", AUTO_PAUSE_S + SLACK_S + 1)
    crashed, removed = cluster.readers
    cluster.crash(crashed.id)
    assert cluster.state(crashed.id) == "crashed"
    cluster.restart(crashed.id)
    assert cluster.state(crashed.id) == "running"
    cluster.remove_reader(removed.id)
    assert sorted(all_ids(cluster)) == sorted([crashed.id, new.id])
    # a user's pause takes over an auto-pause, and the checker leaves it alone
    wait_state(cluster, [new.id], "auto-paused", AUTO_PAUSE_S + SLACK_S)
    cluster.pause(new.id)
    time.sleep(0.3)
    assert cluster.state(new.id) == "paused"
    cluster.resume(new.id)
    assert cluster.state(new.id) == "running"
    report(capsys, f"{cluster.engine}: failover of a paused cluster in {took:.2f} s ({failover})")
