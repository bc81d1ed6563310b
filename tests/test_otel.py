"""OpenTelemetry metrics (issue 15, point 1): what an operator's dashboard reads, recorded in
the SDK's in-memory reader while a Database serves reads, writes, read-your-writes waits and a
writer failover on a real local cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import select, update

from aurora_access import Database
from aurora_access.demo.models import Customer
from aurora_access.local import LocalCluster
from engines import with_demo_data


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
    assert {p.attributes["aurora.instance.id"] for p in found["aurora.replica.lag"]} == \
        {r.id for r in failover_cluster.readers}
    assert sum(p.value for p in found["aurora.writes"]) >= 5
    assert sum(p.count for p in found["aurora.ryw.wait.duration"]) >= 1


def test_a_failover_is_measured(db: Database, failover_cluster: LocalCluster,
                                reader: InMemoryMetricReader) -> None:
    with db.session() as s:
        s.scalar(select(Customer.name).where(Customer.id == 12))
    failover_cluster.failover()
    db.run_transaction(lambda s: s.execute(
        update(Customer).where(Customer.id == 12).values(name="after")))
    found = points(reader)
    assert sum(p.value for p in found["aurora.failovers"]) == 1
    searches = found["aurora.writer_discovery.duration"]
    assert sum(p.count for p in searches) >= 1
    assert all(p.attributes["aurora.writer_found"] for p in searches)


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
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={"ENV": json.dumps(failover_cluster.env()), "PATH": "/usr/bin"},
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
