"""OpenTelemetry metrics and spans (issue 15, points 1 and 2): what an operator's dashboard
reads, recorded in the SDK's in-memory reader and exporter while a Database serves reads,
writes, read-your-writes waits and a writer failover on a real local cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select, update

from aurora_access import Database, PoolExhausted
from aurora_access.demo.models import Customer
from aurora_access.local import LocalCluster
from engines import replay_held, with_demo_data


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Metric name -> its data points, from one collection."""
    found: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


@pytest.fixture
def db(failover_cluster: LocalCluster, reader: InMemoryMetricReader) -> Iterator[Database]:
    with_demo_data(failover_cluster)
    database = Database.from_env({**failover_cluster.env(), "AURORA_RYW_WAIT_MS": "500"},
                                 meter_provider=MeterProvider(metric_readers=[reader]))
    yield database
    database.close()


def test_statements_pools_and_lag_are_measured(
        db: Database, failover_cluster: LocalCluster, reader: InMemoryMetricReader) -> None:
    for i in range(5):
        with db.session() as s:
            s.execute(update(Customer).where(Customer.id == 11).values(name=f"m{i}"))
        with db.session() as s:  # after its write: waits for a reader, or the writer
            assert s.scalar(select(Customer.name).where(Customer.id == 11)) == f"m{i}"
    db.forget_commits()
    with db.session() as s:
        s.scalar(select(Customer.name).where(Customer.id == 12))
    with db.writer() as s:
        s.scalar(select(Customer.name).where(Customer.id == 12))

    found = points(reader)
    durations = found["db.client.operation.duration"]
    routes = {p.attributes["aurora.route"] for p in durations}
    assert {"write", "pinned"} <= routes and routes & {"read", "ryw_fallback"}
    writer = failover_cluster.writer
    write = next(p for p in durations if p.attributes["aurora.route"] == "write")
    assert write.attributes == {
        "db.system.name": failover_cluster.engine, "server.address": writer.host,
        "server.port": writer.port, "aurora.instance.id": writer.id,
        "aurora.instance.role": "writer", "aurora.route": "write"}
    assert sum(p.count for p in durations) >= 12 and all(p.sum > 0 for p in durations)
    states = {(p.attributes["db.client.connection.pool.name"],
               p.attributes["db.client.connection.state"]) for p in
              found["db.client.connection.count"]}
    assert (writer.id, "idle") in states and (writer.id, "used") in states
    assert {p.attributes["db.client.connection.pool.name"]
            for p in found["db.client.connection.max"]} >= {writer.id}
    assert sum(p.count for p in found["db.client.connection.create_time"]) >= 2
    waits = {p.attributes["db.client.connection.pool.name"]: p.count
             for p in found["db.client.connection.wait_time"]}
    assert waits[writer.id] >= 5  # each write asked the writer's pool
    assert {p.attributes["db.client.connection.pool.name"]: p.value
            for p in found["db.client.connection.pending_requests"]}[writer.id] == 0
    assert {p.attributes["db.client.connection.pool.name"]: p.value  # a series from the start
            for p in found["db.client.connection.timeouts"]}[writer.id] == 0
    assert {p.attributes["aurora.instance.id"] for p in found["aurora.replica.lag"]} == \
        {r.id for r in failover_cluster.readers}
    assert sum(p.value for p in found["aurora.writes"]) >= 5
    assert sum(p.count for p in found["aurora.ryw.wait.duration"]) >= 1


def test_requests_waiting_for_a_connection_are_counted(
        failover_cluster: LocalCluster, reader: InMemoryMetricReader) -> None:
    """With the writer's one connection taken, a second session's request waits: it is
    pending until the first is returned, and its wait covers that time."""
    with_demo_data(failover_cluster)
    db = Database.from_env({**failover_cluster.env(), "AURORA_POOL_SIZE": "1",
                            "AURORA_MAX_OVERFLOW": "0", "AURORA_POOL_TIMEOUT": "20"},
                           meter_provider=MeterProvider(metric_readers=[reader]))
    writer = failover_cluster.writer.id

    def pending() -> float:
        return sum(p.value for p in points(reader)["db.client.connection.pending_requests"]
                   if p.attributes["db.client.connection.pool.name"] == writer)

    try:
        with db.writer() as holder:
            holder.scalar(select(Customer.name).where(Customer.id == 1))
            waiter = threading.Thread(target=lambda: db.run_transaction(lambda s: s.execute(
                update(Customer).where(Customer.id == 2).values(name="waited"))))
            waiter.start()
            deadline = time.monotonic() + 10
            while pending() < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert pending() >= 1
            held_from = time.monotonic()
            time.sleep(0.2)
            held = time.monotonic() - held_from
        waiter.join(20)
        assert not waiter.is_alive()
        assert pending() == 0
        longest = max(p.max for p in points(reader)["db.client.connection.wait_time"]
                      if p.attributes["db.client.connection.pool.name"] == writer)
        assert longest >= held
    finally:
        db.close()


def test_a_pool_timeout_is_counted(failover_cluster: LocalCluster,
                                   reader: InMemoryMetricReader) -> None:
    with_demo_data(failover_cluster)
    db = Database.from_env({**failover_cluster.env(), "AURORA_POOL_SIZE": "1",
                            "AURORA_MAX_OVERFLOW": "0", "AURORA_POOL_TIMEOUT": "0.3"},
                           meter_provider=MeterProvider(metric_readers=[reader]))
    try:
        with db.writer() as holder:
            holder.scalar(select(Customer.name).where(Customer.id == 1))
            failed: list[BaseException] = []

            def second() -> None:
                try:
                    with db.writer() as s:
                        s.scalar(select(Customer.name).where(Customer.id == 1))
                except PoolExhausted as error:
                    failed.append(error)

            thread = threading.Thread(target=second)
            thread.start()
            thread.join(10)
        assert len(failed) == 1
        timeouts = {p.attributes["db.client.connection.pool.name"]: p.value
                    for p in points(reader)["db.client.connection.timeouts"]}
        assert timeouts[failover_cluster.writer.id] == 1
    finally:
        db.close()


def test_databases_sharing_a_provider_are_all_reported(
        failover_cluster: LocalCluster, reader: InMemoryMetricReader) -> None:
    """Two Databases recording into one provider (a worker's and the web app's, or one made
    again after close) are both counted, and what a closed one counted stays counted."""
    with_demo_data(failover_cluster)
    provider = MeterProvider(metric_readers=[reader])
    first = Database.from_env(failover_cluster.env(), meter_provider=provider)
    second = Database.from_env(failover_cluster.env(), meter_provider=provider)

    def writes() -> dict[str, float]:
        return {p.attributes["aurora.cluster"]: p.value
                for p in points(reader)["aurora.writes"]}

    def used() -> float:
        return sum(p.value for p in points(reader)["db.client.connection.count"]
                   if p.attributes["db.client.connection.state"] == "used")

    try:
        for n, database in ((2, first), (3, second)):
            for i in range(n):
                database.run_transaction(lambda s, i=i: s.execute(
                    update(Customer).where(Customer.id == 14).values(name=f"w{i}")))
        endpoint = failover_cluster.env()["AURORA_CLUSTER_ENDPOINT"]
        both = first.stats()["writes"] + second.stats()["writes"]
        assert both >= 5 and writes() == {endpoint: both}
        with first.writer() as a, second.writer() as b:
            a.scalar(select(Customer.name).where(Customer.id == 14))
            b.scalar(select(Customer.name).where(Customer.id == 14))
            assert used() >= 2
        first_writes = first.stats()["writes"]
        first.close()
        second.run_transaction(lambda s: s.execute(
            update(Customer).where(Customer.id == 14).values(name="after")))
        assert writes() == {endpoint: first_writes + second.stats()["writes"]}
    finally:
        first.close()
        second.close()


def test_a_forked_child_reports_its_own_pools(failover_cluster: LocalCluster) -> None:
    """A child forked from a process whose Database is in use (gunicorn --preload) reports
    its own pools, not the copy of its parent's it was born with."""
    script = (
        "import json, os, sys\n"
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "from opentelemetry.sdk.metrics.export import InMemoryMetricReader\n"
        "from aurora_access import Database\n"
        "reader = InMemoryMetricReader()\n"
        "db = Database.from_env(json.loads(os.environ['ENV']),\n"
        "                       meter_provider=MeterProvider(metric_readers=[reader]))\n"
        "def used():\n"
        "    data = reader.get_metrics_data()\n"
        "    return sum(p.value for r in data.resource_metrics for s in r.scope_metrics\n"
        "               for m in s.metrics if m.name == 'db.client.connection.count'\n"
        "               for p in m.data.data_points\n"
        "               if p.attributes['db.client.connection.state'] == 'used')\n"
        "with db.writer() as s:\n"
        "    s.connection()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        print('child', used(), flush=True)\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "    print('parent', used(), flush=True)\n"
        "db.close()\n")
    assert sorted(run_script(script, failover_cluster).split("\n")) == \
        ["", "child 0", "parent 1"]


def test_a_failover_is_measured(db: Database, failover_cluster: LocalCluster,
                                reader: InMemoryMetricReader) -> None:
    with db.session() as s:
        s.scalar(select(Customer.name).where(Customer.id == 12))
    old_writer = failover_cluster.writer.id
    failover_cluster.failover()
    new_id = 900_000 + uuid.uuid4().int % 100_000
    with db.session() as s:  # an ORM write alone: the flush is what runs on the new writer
        s.add(Customer(id=new_id, email=f"{new_id}@example.com", name="after"))
        s.commit()
    found = points(reader)
    writes = [p for p in found["db.client.operation.duration"]
              if p.attributes["aurora.route"] == "write"]
    assert {p.attributes["aurora.instance.id"] for p in writes} == {failover_cluster.writer.id}
    assert sum(p.value for p in found["aurora.failovers"]) == 1
    searches = found["aurora.writer_discovery.duration"]
    assert sum(p.count for p in searches) >= 1
    assert all(p.attributes["aurora.writer_found"] for p in searches)
    recovery, = found["aurora.failover.duration"]  # one failover, one recovery
    assert recovery.count == 1 and recovery.sum > 0
    assert (recovery.attributes["aurora.failed_instance.id"],
            recovery.attributes["aurora.instance.id"]) == (old_writer, failover_cluster.writer.id)


def test_without_a_meter_provider_nothing_is_observed(failover_cluster: LocalCluster) -> None:
    plain = Database.from_env(failover_cluster.env())
    try:
        assert plain._router.observer.enabled is False
        assert "opentelemetry" not in type(plain._router.observer).__module__
    finally:
        plain.close()


def test_without_metrics_opentelemetry_is_not_imported(failover_cluster: LocalCluster) -> None:
    """A Database without a meter provider, used, imports nothing of OpenTelemetry (the extra
    may be missing altogether)."""
    script = (
        "import json, os, sys\n"
        "from aurora_access import Database\n"
        "db = Database.from_env(json.loads(os.environ['ENV']))\n"
        "db.topology()\n"
        "db.close()\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    assert run_script(script, failover_cluster).strip() == "[]"


def run_script(script: str, cluster: LocalCluster) -> str:
    """What ``script`` prints, run in a new interpreter with the cluster's settings as JSON in
    ``ENV``; it must succeed."""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={"ENV": json.dumps(cluster.env()), "PATH": "/usr/bin"},
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = SQLAlchemyInstrumentor()
    # it declares SQLAlchemy < 2.1 and refuses 2.1 unless told to skip that check
    instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)
    yield provider, exporter
    instrumentor.uninstrument()


def span_tree(finished: list[Any]) -> list[str]:
    """``name [attributes]`` lines, indented under their parents (for the issue's note)."""
    by_parent: dict[int | None, list[Any]] = {}
    ids = {s.context.span_id for s in finished}
    for s in finished:
        parent = s.parent.span_id if s.parent is not None and s.parent.span_id in ids else None
        by_parent.setdefault(parent, []).append(s)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for s in sorted(by_parent.get(parent, []), key=lambda s: s.start_time):
            keep = {k: v for k, v in s.attributes.items() if k.startswith(
                ("aurora.", "server.", "net.peer"))}
            lines.append(f"{'  ' * depth}{s.name} {keep}")
            walk(s.context.span_id, depth + 1)

    walk(None, 0)
    return lines


def test_the_library_s_own_queries_make_no_spans_without_a_provider(
        failover_cluster: LocalCluster,
        spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    """SQLAlchemy instrumented, a Database given no provider: its monitor's queries still
    make no spans (they would be about ten a second), the application's statements do."""
    _, exporter = spans
    with_demo_data(failover_cluster)
    db = Database.from_env(failover_cluster.env())
    try:
        db.topology()
        exporter.clear()
        db.refresh_topology()  # the monitor's queries, in this thread
        assert exporter.get_finished_spans() == ()
        with db.read_only() as s:
            s.scalar(select(Customer.name).where(Customer.id == 1))
        assert exporter.get_finished_spans()
    finally:
        db.close()


def test_spans_name_the_instance_and_the_library_s_own_work(
        failover_cluster: LocalCluster, spans: tuple[TracerProvider, InMemorySpanExporter],
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """With the SQLAlchemy instrumentation on, statements' spans name the instance that ran
    them (the library's per-instance engines are instrumented); a read that waits for its
    commit to be replayed has a span of its own, and so have a search for the writer and the
    resolution of a COMMIT the failover cut off."""
    provider, exporter = spans
    with_demo_data(failover_cluster)
    db = Database.from_env({**failover_cluster.env(), "AURORA_RYW_WAIT_MS": "100"},
                           tracer_provider=provider)
    tracer = provider.get_tracer("test")
    try:
        with db.session() as s:  # the first use: connections and discovery, not measured
            s.scalar(select(Customer.name).where(Customer.id == 13))
        exporter.clear()
        with replay_held(failover_cluster), tracer.start_as_current_span("POST /customers/13"):
            with db.session() as s:
                s.execute(update(Customer).where(Customer.id == 13).values(name="traced"))
            with db.session() as s:
                assert s.scalar(select(Customer.name).where(Customer.id == 13)) == "traced"
        tree = span_tree(exporter.get_finished_spans())
        with capsys.disabled():
            print("\n" + "\n".join(tree))
        finished = exporter.get_finished_spans()
        wait = next(s for s in finished if s.name == "aurora.ryw_wait")
        assert wait.attributes["aurora.ryw.outcome"] == "writer"  # no reader replays: held
        assert wait.parent is not None
        hosts = {s.attributes.get("server.address") or s.attributes.get("net.peer.name")
                 for s in finished if s.name not in ("aurora.ryw_wait", "POST /customers/13")}
        assert failover_cluster.writer.host in hosts
        exporter.clear()
        # the writer fails while a transaction's COMMIT is in flight: the library asks the
        # new writer what became of it (commit_outcome) after finding it (writer_discovery)
        commit_statements = db.dialect.commit_with_marker_statements
        runs: list[int] = []

        def fail_over_first(marker: str) -> list[str]:
            if not runs:
                failover_cluster.failover(wait_for_old_writer=False)
            runs.append(1)
            return commit_statements(marker)

        monkeypatch.setattr(db.dialect, "commit_with_marker_statements", fail_over_first)
        old_writer = failover_cluster.writer.id
        try:
            with tracer.start_as_current_span("POST /orders"):
                db.run_transaction(lambda s: s.execute(
                    update(Customer).where(Customer.id == 13).values(name="after")))
        finally:
            if runs:
                failover_cluster.rejoin(old_writer)
        assert len(runs) == 2  # aborted with the old writer, run again on the new one
        finished = exporter.get_finished_spans()
        with capsys.disabled():
            print("\n" + "\n".join(span_tree(finished)))
        search = next(s for s in finished if s.name == "aurora.writer_discovery")
        assert search.attributes["aurora.writer.host"] == failover_cluster.writer.host
        outcome = next(s for s in finished if s.name == "aurora.commit_outcome")
        assert outcome.attributes["aurora.failed_instance.id"] == old_writer
        assert outcome.attributes["aurora.commit.outcome"] == "aborted"
        assert outcome.parent is not None  # in the request's trace
        with db.read_only() as s:  # a read on a reader: its span names that reader
            s.scalar(select(Customer.name).where(Customer.id == 1))
        readers = {r.host for r in failover_cluster.readers}
        assert any((s.attributes.get("server.address") or s.attributes.get("net.peer.name"))
                   in readers for s in exporter.get_finished_spans())
    finally:
        db.close()


def test_a_failover_s_recovery_ends_when_the_writer_served_or_changed(
        monkeypatch: pytest.MonkeyPatch, reader: InMemoryMetricReader) -> None:
    """A statement that waited through the failover ends the recovery when it ends; one that
    began after the new writer was known (a quiet service's next request) ends it at the
    change, not at its own time."""
    from types import SimpleNamespace  # noqa: PLC0415

    from aurora_access import otel  # noqa: PLC0415
    from aurora_access.stats import Stats  # noqa: PLC0415
    from aurora_access.topology import Instance  # noqa: PLC0415

    now = [100.0]
    monkeypatch.setattr(otel.time, "perf_counter", lambda: now[0])
    observer = otel.OtelObserver(
        MeterProvider(metric_readers=[reader]), "postgresql", "cluster", router=cast(
            Any, SimpleNamespace(topology=None)),
        pools=cast(Any, SimpleNamespace(pool_sizes=list)), stats=Stats())
    old, new = (Instance(id=i, host=f"h{i}", port=5432, role="writer") for i in ("1", "2"))

    def recoveries() -> list[float]:
        observer.flush()
        return [p.sum for p in points(reader).get("aurora.failover.duration", [])]

    observer.writer_failed(old)
    now[0] = 100.2
    observer.writer_changed(new)
    now[0] = 100.5  # a statement that began at 100.1 (it waited) ends at 100.5
    observer.statement(new, "write", 0.4)
    assert recoveries() == [pytest.approx(0.5)]
    observer.writer_failed(new)  # at 100.5
    now[0] = 100.6
    observer.writer_changed(old)
    now[0] = 130.0  # the next statement began long after the change: recovered at 100.6
    observer.statement(old, "write", 0.001)
    assert sorted(recoveries()) == [pytest.approx(0.1), pytest.approx(0.5)]
    observer.close()
