"""Reader choice and lag-based read-your-writes (Aurora's fallback), without a database."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from aurora_access import InvalidCommitToken
from aurora_access.consistency import CommitMark, decode_token, encode_token
from aurora_access.dialects.postgresql import PostgresDialect
from aurora_access.router import Router
from aurora_access.settings import Settings
from aurora_access.stats import Stats
from aurora_access.topology import Instance, Topology

WRITER = Instance("w", "10.0.0.1", 5432, "writer")


class FakePools:
    """Stands in for the pools: the choice logic never opens a connection in these tests."""

    def __init__(self, in_use: dict[str, int] | None = None) -> None:
        self.in_use = in_use or {}

    def checked_out(self, instance: Instance) -> int:
        return self.in_use.get(instance.id, 0)


def router(readers: list[Instance], **settings: Any) -> Router:
    s = Settings(cluster_endpoint="db.example.com", database="app", user="app", **settings)
    r = Router(s, PostgresDialect(), FakePools(), Stats())  # type: ignore[arg-type]
    r.topology = Topology(WRITER, readers)
    r.topology_at_ns = time.monotonic_ns()
    return r


def reader(name: str, lag_ms: float | None = 5.0) -> Instance:
    return Instance(name, f"{name}.example.com", 5432, "reader", lag_ms)


def choose(r: Router, after: CommitMark | None = None) -> Instance | None:
    assert r.topology is not None
    return r._choose_reader(r.topology, after)


def test_round_robin_alternates() -> None:
    r = router([reader("a"), reader("b")])
    assert Counter(choose(r).id for _ in range(10)) == {"a": 5, "b": 5}  # type: ignore[union-attr]


def test_least_connections_and_lowest_lag() -> None:
    r = router([reader("a", 20), reader("b", 3)], reader_selection="least_connections")
    r.pools = FakePools({"a": 1, "b": 4})  # type: ignore[assignment]
    assert {choose(r).id for _ in range(5)} == {"a"}  # type: ignore[union-attr]
    r = router([reader("a", 20), reader("b", 3)], reader_selection="lowest_lag")
    assert {choose(r).id for _ in range(5)} == {"b"}  # type: ignore[union-attr]


def test_random_uses_every_reader() -> None:
    r = router([reader("a"), reader("b"), reader("c")], reader_selection="random")
    assert {choose(r).id for _ in range(200)} == {"a", "b", "c"}  # type: ignore[union-attr]


def test_lagging_or_unhealthy_readers_get_no_reads() -> None:
    r = router([reader("a", 5000), reader("b", 10)], max_replica_lag_ms=1000)
    assert {choose(r).id for _ in range(5)} == {"b"}  # type: ignore[union-attr]
    r.unhealthy = {"b"}
    assert choose(r) is None  # the writer


def test_lag_mode_waits_until_a_report_covers_the_commit() -> None:
    r = router([reader("a", 30.0), reader("b", 80.0)], ryw_wait_ms=0)
    r.lag_mode = True
    committed = time.monotonic_ns()
    mark = CommitMark(committed)
    r.topology_at_ns = committed + 10_000_000  # reported 10 ms after the commit
    assert choose(r, mark) is None  # 30 ms of lag: not applied by then
    assert r.stats.snapshot()["ryw_fallbacks"] == 1
    r.topology_at_ns = committed + 50_000_000  # reported 50 ms after: "a" has it
    assert {choose(r, mark).id for _ in range(4)} == {"a"}  # type: ignore[union-attr]
    r.topology_at_ns = committed + 100_000_000
    assert {choose(r, mark).id for _ in range(4)} == {"a", "b"}  # type: ignore[union-attr]


def test_lag_mode_asks_for_a_fresh_report_while_it_waits() -> None:
    r = router([reader("a", 30.0)], ryw_wait_ms=20)
    r.lag_mode = True
    asked: list[bool] = []
    r.request_refresh = lambda: asked.append(True)
    began = time.monotonic()
    assert choose(r, CommitMark(time.monotonic_ns())) is None
    assert asked and time.monotonic() - began >= 0.02


@pytest.mark.parametrize("position", [None, 0, 0x16B374D848])
def test_tokens_round_trip(position: int | None) -> None:
    mark = CommitMark(time.monotonic_ns() - 5_000_000, position)
    back = decode_token("postgresql", encode_token("postgresql", mark))
    assert back.position == position
    assert abs(back.committed_ns - mark.committed_ns) < 5_000_000  # ms resolution + clocks


@pytest.mark.parametrize("token", ["", "aurora1:mysql:10:1", "aurora1:postgresql:zz:1",
                                   "aurora1:postgresql:10", "aurora1:postgresql:10:x"])
def test_foreign_or_broken_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidCommitToken, match="token") as caught:
        decode_token("postgresql", token)
    assert isinstance(caught.value, ValueError)  # what code written before it caught
