"""Failover handling of AsyncDatabase on real clusters, PostgreSQL and MariaDB (issue 13): the
proofs of test_failover.py, through asyncio sessions. The cluster is failover_cluster, shared
with test_failover.py; the cluster's own faults (failover, crash, pause) block, so tasks that
must keep running meanwhile call them in a thread."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from aurora_access import AsyncDatabase, TransactionReplayRequired
from aurora_access.demo.models import Customer, Order
from aurora_access.demo.shop import place_order
from aurora_access.local import LocalCluster
from engines import async_where, with_async_db, with_demo_data

FAST = {"AURORA_TOPOLOGY_REFRESH_S": "0.5"}
SLOW = {"AURORA_TOPOLOGY_REFRESH_S": "60"}  # the monitor does not notice a failover first


@pytest.fixture
def cluster(failover_cluster: LocalCluster) -> LocalCluster:
    """The failover cluster with the demo schema and rows on every reader."""
    return with_demo_data(failover_cluster)


def test_a_read_on_a_crashed_reader_is_retried_elsewhere(cluster: LocalCluster) -> None:
    async def work(db: AsyncDatabase[Any]) -> int:
        async with db.session() as s:  # connections to both readers in their pools
            for _ in range(4):
                await async_where(s, cluster.engine)
        victim = cluster.readers[0]
        cluster.crash(victim.id)
        try:
            for _ in range(10):
                async with db.session() as s:
                    on_reader, instance = await async_where(s, cluster.engine)
                    assert on_reader and instance != victim.id
                    assert await s.get(Customer, 1) is not None
        finally:
            cluster.restart(victim.id)
        return db.stats()["retries"]

    assert with_async_db(cluster, work, **FAST) >= 1


def test_a_write_transaction_cut_by_a_failover_must_be_replayed(cluster: LocalCluster) -> None:
    async def work(db: AsyncDatabase[Any]) -> None:
        old = cluster.writer
        with pytest.raises(TransactionReplayRequired) as caught:
            async with db.session() as s:
                customer = await s.get(Customer, 1, with_for_update=True)
                assert customer is not None
                customer.name = "lost in failover"
                await s.flush()
                cluster.failover()
                await s.execute(text("SELECT 1"))
        assert caught.value.instance == old.id
        assert db.topology().writer.id == cluster.writer.id != old.id
        async with db.session() as s:
            customer = await s.get(Customer, 1)
            assert customer is not None and customer.name != "lost in failover"
            customer.name = "after failover"
        async with db.writer() as s:
            assert await async_where(s, cluster.engine) == (False, cluster.writer.id)
            assert (await s.get(Customer, 1)).name == "after failover"  # type: ignore[union-attr]
        assert db.stats()["failovers"] == 1

    with_async_db(cluster, work, **FAST)


@pytest.mark.parametrize("how", ["core insert", "orm flush", "run_transaction"])
def test_the_first_write_after_a_failover_just_runs(cluster: LocalCluster, how: str) -> None:
    """The first statement of a write transaction meets the crashed writer before the library
    noticed: nothing ran, so it runs on the new writer, unseen by the caller."""

    async def work(db: AsyncDatabase[Any]) -> None:
        for trial in range(3):
            async with db.session() as s:  # a pooled connection to the writer
                (await s.get(Customer, 1, with_for_update=True)).name = f"b{trial}"  # type: ignore[union-attr]
            old = cluster.writer
            cluster.failover(wait_for_old_writer=False)
            new_id = 9500 + 10 * ["core insert", "orm flush", "run_transaction"].index(how) + trial
            row = {"id": new_id, "email": f"async-{new_id}@example.com", "name": how}
            if how == "core insert":
                async with db.session() as s:
                    await s.execute(insert(Customer).values(**row))
            elif how == "orm flush":
                async with db.session() as s:
                    s.add(Customer(**row))
            else:
                async def add(s: AsyncSession, r: dict[str, Any] = row) -> None:
                    s.add(Customer(**r))

                await db.run_transaction(add, max_attempts=1)
            async with db.writer() as s:
                assert (await s.get(Customer, new_id)).name == how  # type: ignore[union-attr]
                assert (await async_where(s, cluster.engine))[1] == cluster.writer.id != old.id
            cluster.rejoin(old.id)

    with_async_db(cluster, work, **SLOW)


def test_reads_on_the_writer_never_reach_the_old_writer_back_as_a_reader(
        cluster: LocalCluster) -> None:
    async def work(db: AsyncDatabase[Any]) -> None:
        async with db.writer() as s:
            assert await async_where(s, cluster.engine) == (False, cluster.writer.id)
        old = cluster.writer
        await asyncio.to_thread(cluster.failover)
        async with db.writer() as s:
            assert await async_where(s, cluster.engine) == (False, cluster.writer.id)
        assert db.topology().writer.id == cluster.writer.id != old.id

    with_async_db(cluster, work, **SLOW)


def test_a_flush_after_a_statement_ran_must_be_replayed(cluster: LocalCluster) -> None:
    async def work(db: AsyncDatabase[Any]) -> None:
        old = cluster.writer
        try:
            with pytest.raises(TransactionReplayRequired) as caught:
                async with db.session() as s:
                    (await s.get(Customer, 1, with_for_update=True)).name = "locked"  # type: ignore[union-attr]
                    s.add(Customer(id=9601, email="async-flush@example.com", name="cut"))
                    cluster.failover(wait_for_old_writer=False)
                    await s.flush()
            assert caught.value.instance == old.id
            async with db.session() as s:
                s.add(Customer(id=9601, email="async-flush@example.com", name="replayed"))
            async with db.writer() as s:
                assert (await s.get(Customer, 9601)).name == "replayed"  # type: ignore[union-attr]
        finally:
            cluster.rejoin(old.id)

    with_async_db(cluster, work, **SLOW)


def test_a_commit_cut_off_is_resolved_and_replayed(cluster: LocalCluster,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer goes away right before INSERT marker + COMMIT is sent: run_transaction asks
    the new writer whether the commit happened (no), and runs the function again there."""

    async def work(db: AsyncDatabase[Any]) -> tuple[str, list[str], list[str]]:
        runs: list[str] = []
        commit_statements = db.dialect.commit_with_marker_statements

        def fail_over_first(marker: str) -> list[str]:
            if len(runs) == 1:
                cluster.failover(wait_for_old_writer=False)
            return commit_statements(marker)

        async def order(s: AsyncSession) -> str:
            runs.append((await async_where(s, cluster.engine))[1])
            return await s.run_sync(place_order, customer_id=5, items={5: 1},
                                    order_id=f"async-cut-{len(runs)}")

        monkeypatch.setattr(db.dialect, "commit_with_marker_statements", fail_over_first)
        order_id = await db.run_transaction(order)
        async with db.writer() as s:
            placed = list(await s.scalars(select(Order.id).where(Order.id.like("async-cut-%"))))
        return order_id, runs, placed

    crashed_writer = cluster.writer.id
    order_id, runs, placed = with_async_db(cluster, work, **FAST)
    try:
        assert order_id == "async-cut-2" and placed == ["async-cut-2"]
        assert runs[0] == crashed_writer != runs[1]
    finally:
        cluster.rejoin(crashed_writer)


def test_commit_outcomes_are_read_on_the_new_writer(cluster: LocalCluster) -> None:
    async def work(db: AsyncDatabase[Any]) -> None:
        async def touch(s: AsyncSession) -> None:  # makes the marker table
            await s.get(Customer, 2)

        await db.run_transaction(touch)
        sql = "INSERT INTO aurora_access_commit_markers (id) VALUES (:id)"
        async with db.writer() as s:
            await s.execute(text(sql), {"id": "async-committed"})
        async with db.sessionmaker(mode="writer") as s:
            await s.execute(text(sql), {"id": "async-aborted"})
            await s.rollback()
        await asyncio.to_thread(cluster.failover)
        assert await db.resolve_commit_outcome("async-committed") == "committed"
        assert await db.resolve_commit_outcome("async-aborted") == "aborted"

    with_async_db(cluster, work, **FAST)


def test_a_paused_writer_is_noticed_within_the_bound(cluster: LocalCluster) -> None:
    """A hung writer (SIGSTOP) never answers: the monitor thread's heartbeat notices it while
    the event loop runs on, and a task blocked on it gets an answer within the bound."""
    env = {"AURORA_HUNG_TIMEOUT_S": "1.5", "AURORA_TOPOLOGY_REFRESH_S": "0.5",
           "AURORA_FAILOVER_TIMEOUT": "2", "AURORA_CONNECT_TIMEOUT": "1"}

    async def work(db: AsyncDatabase[Any]) -> tuple[float, float, int]:
        async def busy_writer() -> float:
            while True:
                try:
                    async with db.writer() as s:
                        await s.execute(text("SELECT 1"))
                except Exception:
                    return time.monotonic()
                await asyncio.sleep(0.01)

        ticks = 0

        async def ticker() -> None:  # the loop goes on while a task waits on the hung host
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        caller = asyncio.create_task(busy_writer())
        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0.3)
        writer = cluster.writer
        cluster.pause(writer.id)
        paused_at = time.monotonic()
        try:
            while db.stats()["writer_heartbeat_failures"] == 0:
                assert time.monotonic() < paused_at + 10, "the hung writer was never noticed"
                await asyncio.sleep(0.05)
            noticed_after = time.monotonic() - paused_at
            failed_after = await asyncio.wait_for(caller, 15) - paused_at
            ticked = ticks
        finally:
            ticking.cancel()
            cluster.resume(writer.id)
        async with db.writer() as s:  # the same writer, found again once it answers
            assert await async_where(s, cluster.engine) == (False, writer.id)
        return noticed_after, failed_after, ticked

    noticed_after, failed_after, ticks = with_async_db(cluster, work, **env)
    assert noticed_after <= 1.5 + 0.5 + 0.5  # hung timeout + one refresh + slack
    assert failed_after <= noticed_after + 2 + 1 + 2.5  # as in test_failover.py
    assert ticks >= 50 * noticed_after, "the event loop was held while the writer hung"
    print(f"\nasync: paused writer noticed after {noticed_after:.2f} s; the blocked task got "
          f"its error after {failed_after:.2f} s; the loop ticked {ticks} times meanwhile")


def test_a_writer_lost_while_its_position_is_asked_is_looked_for_off_the_loop(
        cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read after a commit asks the writer's log position; when that query finds the
    writer gone, the search for the writer runs in a thread: on the event loop it held every
    task for as long as the search took (10 s seen through a failover)."""

    async def work(db: AsyncDatabase[Any]) -> list[bool]:
        monitor = db._monitor
        loop_thread = threading.current_thread()
        position, recover = monitor._position, monitor.recover_writer
        searched_on_loop: list[bool] = []
        assert monitor.positions is not None
        writer_sql = monitor.positions.writer_sql

        def writer_gone_once(host: str, sql: str) -> int | None:
            if sql == writer_sql and not searched_on_loop:
                raise DBAPIError.instance(sql, None, db.dialect.lost_connection_error(
                    "server closed the connection unexpectedly"), Exception)
            return position(host, sql)

        def searching(failed: Any, kind: Any) -> Any:
            searched_on_loop.append(threading.current_thread() is loop_thread)
            return recover(failed, kind)  # the writer answers: found again where it was

        async with db.session() as s:  # connected, the monitor's first observations made
            await s.scalar(select(Customer.name).where(Customer.id == 7))
        monkeypatch.setattr(monitor, "_position", writer_gone_once)
        monkeypatch.setattr(monitor, "recover_writer", searching)
        async with db.session() as s:
            customer = await s.get(Customer, 7)
            assert customer is not None
            customer.name = "asked off the loop"
            await s.commit()
        async with db.session() as s:  # must see the commit: asks the writer's position
            assert await s.scalar(select(Customer.name).where(Customer.id == 7)) == \
                "asked off the loop"
        return searched_on_loop

    assert with_async_db(cluster, work, **SLOW) == [False]
