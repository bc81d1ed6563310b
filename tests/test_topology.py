"""Discovery's rules without a database (issue 12): an endpoint is never the writer when
instances are known; when metadata does not settle who writes, the instances are asked; writer
discovery asks every instance ever seen and those the metadata it reads names."""

from __future__ import annotations

from typing import Any

import pytest

from aurora_access.dialects.postgresql import PostgresDialect
from aurora_access.monitor import ClusterMonitor
from aurora_access.router import Router
from aurora_access.settings import Settings
from aurora_access.stats import Stats
from aurora_access.topology import Instance, Topology, discover

DIALECT = PostgresDialect()
PATTERN = "10.0.0.?"
METADATA = DIALECT.topology_queries[0]


class Refused(Exception):
    """Stands in for a connection refused (classified as the instance failing)."""

    sqlstate = "08001"


def fake_query(answers: dict[tuple[str, str], Any]) -> Any:
    def query(host: str, sql: str) -> list[tuple[Any, ...]]:
        answer = answers.get((host, sql), Refused(host))
        if isinstance(answer, Exception):
            raise answer
        return list(answer)
    return query


def test_the_instances_are_asked_when_their_metadata_names_no_writer() -> None:
    """Mid-failover: the reader that lost its writer knows only itself; the promoted one is
    not in anyone's list yet, but says it takes writes."""
    query = fake_query({
        ("10.0.0.13", METADATA): [("13", False, 0.0), ("12", False, 0.0)],
        ("10.0.0.12", DIALECT.is_writer_sql): [(True,)],
        ("10.0.0.13", DIALECT.is_writer_sql): [(False,)],
    })
    topology = discover(query, DIALECT, [METADATA], "10.0.0.2", "10.0.0.3", 5432, PATTERN,
                        ["10.0.0.11", "10.0.0.13", "10.0.0.2"])
    assert topology.writer.id == "12" and [r.id for r in topology.readers] == ["13"]


def test_an_endpoint_is_never_the_writer_when_instances_are_known() -> None:
    """The issue's log: 'writer changed: 12 -> 127.60.72.3' (the reader endpoint, which had
    forwarded to an instance that answered 'not in recovery')."""
    query = fake_query({
        ("10.0.0.13", METADATA): [("13", False, 0.0)],
        ("10.0.0.13", DIALECT.is_writer_sql): [(False,)],
        ("10.0.0.3", DIALECT.is_writer_sql): [(True,)],
        ("10.0.0.3", DIALECT.is_reader_sql): [(False,)],
        ("10.0.0.2", DIALECT.is_writer_sql): [(True,)],
    })
    with pytest.raises((LookupError, Refused)):  # no writer: the last topology is kept
        discover(query, DIALECT, [METADATA], "10.0.0.2", "10.0.0.3", 5432, PATTERN,
                 ["10.0.0.13", "10.0.0.2"])


def test_without_a_pattern_only_the_cluster_endpoint_can_be_the_writer() -> None:
    query = fake_query({
        ("db", DIALECT.is_writer_sql): [(False,)],  # stale DNS: the old writer, now a reader
        ("db-ro", DIALECT.is_writer_sql): [(True,)],
        ("db-ro", DIALECT.is_reader_sql): [(False,)],
    })
    with pytest.raises(LookupError, match="does not take writes"):
        discover(query, DIALECT, [METADATA], "db", "db-ro", 5432, None, ["db"])


def test_writer_discovery_asks_every_instance_ever_seen_and_those_it_learns_of() -> None:
    """The last topology read missed the rejoining 11; 12 failed; 13's metadata names 11."""
    settings = Settings(cluster_endpoint="10.0.0.2", database="app", user="app",
                        instance_host_pattern=PATTERN, failover_timeout=2)
    router = Router(settings, DIALECT, _Pools(), Stats())  # type: ignore[arg-type]
    monitor = ClusterMonitor(settings, DIALECT, _Pools(), router, Stats())  # type: ignore[arg-type]
    asked: list[str] = []
    answers = {
        ("10.0.0.13", DIALECT.is_writer_sql): [(False,)],
        ("10.0.0.13", METADATA): [("11", True, 0.0), ("13", False, 0.0)],
        ("10.0.0.11", DIALECT.is_writer_sql): [(True,)],
        ("10.0.0.11", METADATA): [("11", True, 0.0), ("13", False, 0.0)],
    }
    query = fake_query(answers)

    def recording(host: str, sql: str, timeout: float | None = None) -> list[tuple[Any, ...]]:
        asked.append(host)
        return query(host, sql)  # type: ignore[no-any-return]

    monitor.query = recording  # type: ignore[method-assign]
    writer12 = Instance("12", "10.0.0.12", 5432, "writer")
    monitor._apply(None, Topology(writer12, [Instance("13", "10.0.0.13", 5432, "reader")]))
    found = monitor.recover_writer(writer12, DIALECT.classify(Refused()))
    assert found.id == "11" and found.host == "10.0.0.11"
    assert router.topology is not None and router.topology.writer.id == "11"


class _Pools:
    on_disconnect: Any = None

    def retain(self, hosts: set[str]) -> None:
        pass

    def discard(self, host: str) -> None:
        pass
