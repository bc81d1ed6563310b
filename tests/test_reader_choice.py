"""Reader choice and lag-based read-your-writes (Aurora's fallback), without a database."""

from __future__ import annotations

import contextvars
import threading
import time
from collections import Counter
from typing import Any

import pytest

from aurora_access import InvalidCommitToken
from aurora_access.consistency import (
    CommitMark,
    CommitTracker,
    WriterPositions,
    decode_token,
    encode_token,
)
from aurora_access.dialects.postgresql import PostgresDialect
from aurora_access.monitor import ClusterMonitor
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

    def retain(self, hosts: set[str]) -> None:
        pass


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


def positions_router(readers: list[Instance], writer_at: int | None = 100,
                     replayed: dict[str, int] | None = None, **settings: Any) -> Router:
    """A router in position mode whose writer is at ``writer_at`` and whose readers have
    replayed ``replayed`` (asked through the callables the monitor gives it, counted)."""
    r = router(readers, **settings)
    r.asked = Counter()  # type: ignore[attr-defined]

    def observe() -> int | None:
        r.asked["writer"] += 1  # type: ignore[attr-defined]
        return writer_at

    def replica(reader: Instance) -> int | None:
        r.asked[reader.id] += 1  # type: ignore[attr-defined]
        return (replayed or {}).get(reader.id)

    r.writer_positions = WriterPositions(observe)
    r.replica_position = replica
    return r


def test_a_sessions_own_commit_goes_to_the_writer_unless_a_reader_is_known_to_have_it() -> None:
    r = positions_router([reader("a"), reader("b")], ryw_wait_ms=1000)
    own = r.committed()
    assert own is not None
    r.commits.forget()  # only the session holds it now
    began = time.monotonic()
    assert r._choose_reader(r.topology, None, own) is None  # type: ignore[arg-type]
    assert time.monotonic() - began < 0.1  # no waiting, no question to anyone
    assert r.asked == {}  # type: ignore[attr-defined]
    assert r.stats.snapshot()["ryw_own_on_writer"] == 1
    r.writer_positions.record(time.monotonic_ns(), 100)  # the monitor saw the writer at 100
    r.replica_positions.update("b", 120)  # ... and reader b past it
    assert {r._choose_reader(r.topology, None, own).id  # type: ignore[arg-type, union-attr]
            for _ in range(4)} == {"b"}


def test_a_token_beyond_the_writer_is_ignored_after_one_question() -> None:
    r = positions_router([reader("a")], writer_at=100, replayed={"a": 90}, ryw_wait_ms=1000)
    forged = decode_token("postgresql", f"aurora1:postgresql:{10**9:x}:1")
    began = time.monotonic()
    assert choose(r, forged).id == "a"  # type: ignore[union-attr]
    assert time.monotonic() - began < 0.1
    assert r.asked == {"writer": 1}  # type: ignore[attr-defined]
    assert r.stats.snapshot()["ryw_tokens_ignored"] == 1
    assert choose(r, forged).id == "a"  # type: ignore[union-attr]
    assert r.asked == {"writer": 1}  # type: ignore[attr-defined]  # checked once


def test_a_plausible_token_waits_for_a_reader_that_has_it() -> None:
    r = positions_router([reader("a"), reader("b")], writer_at=100,
                         replayed={"a": 40, "b": 95}, ryw_wait_ms=0)
    token = decode_token("postgresql", "aurora1:postgresql:5a:1")  # position 90
    assert choose(r, token).id == "b"  # type: ignore[union-attr]
    assert r.stats.snapshot()["ryw_tokens_ignored"] == 0


def test_process_scope_sees_commits_of_every_thread() -> None:
    r = positions_router([reader("a")], writer_at=100, replayed={"a": 50}, ryw_wait_ms=0,
                         ryw_scope="process")
    other = threading.Thread(target=r.committed)
    other.start()
    other.join()
    assert choose(r) is None  # the reader is behind the other thread's commit
    assert r.stats.snapshot()["ryw_fallbacks"] == 1
    per_context = positions_router([reader("a")], writer_at=100, replayed={"a": 50})
    other = threading.Thread(target=per_context.committed)
    other.start()
    other.join()
    assert choose(per_context).id == "a"  # type: ignore[union-attr]


def test_a_unit_of_work_is_shared_by_context_copies_and_forgotten_after() -> None:
    tracker = CommitTracker()
    with tracker.unit_of_work(None, lambda mark, ask: "t") as unit:
        worker = threading.Thread(target=contextvars.copy_context().run,
                                  args=(tracker.committed,))
        worker.start()
        worker.join()
        assert unit.committed and tracker.marks() == [unit.latest]
        with tracker.unit_of_work(None, lambda mark, ask: "t") as inner:
            inner_mark = tracker.committed()
            assert inner.latest is inner_mark
            assert tracker.marks() == [inner_mark, inner_mark]  # the inner and outer unit's
        assert unit.latest is inner_mark  # an inner unit's commits count for the outer one
    assert tracker.marks() == [] and tracker.current() is None


def test_a_reader_that_joins_gets_reads_once_it_has_answered() -> None:
    """An old writer rejoining (a MariaDB one is rebuilt and refuses the application's login
    until it has replayed the account) is listed before it is ready."""
    r = router([reader("a")])
    monitor = ClusterMonitor(r.settings, r.dialect, r.pools, r, r.stats)  # type: ignore[arg-type]
    old = r.topology
    assert old is not None
    monitor._apply(old, Topology(WRITER, [reader("a"), reader("w2")]))
    assert {choose(r).id for _ in range(6)} == {"a"}  # type: ignore[union-attr]
    r.unhealthy = set()  # the monitor's next round: it answered
    assert {choose(r).id for _ in range(6)} == {"a", "w2"}  # type: ignore[union-attr]
