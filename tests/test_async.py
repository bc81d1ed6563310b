"""AsyncDatabase on the shared clusters (issue 13), both engines, readers lagging: routing,
read-your-writes (1000 write-then-read rounds, task-local marks), session classes, commit tokens
and units of work, run_transaction. Each test runs its own event loop (asyncio.run): engines
belong to the loop that made them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from aurora_access import AsyncDatabase, ReadOnlySessionError
from aurora_access.demo.models import Customer, Product
from aurora_access.local import LocalCluster
from engines import async_where, replay_held, with_async_db, with_demo_data


@pytest.fixture(scope="module")
def cluster(engine_cluster: LocalCluster) -> LocalCluster:
    """The shared cluster with the demo schema and rows on every reader."""
    return with_demo_data(engine_cluster)


def test_reads_on_readers_writes_on_the_writer(cluster: LocalCluster) -> None:
    async def work(db: AsyncDatabase[Any]) -> None:
        async with db.session() as s:
            assert (await async_where(s, cluster.engine))[0]
            assert await s.get(Product, 1) is not None
            customer = await s.get(Customer, 2)
            assert customer is not None
            customer.name = "Renamed async"
            await s.flush()
            assert not (await async_where(s, cluster.engine))[0]  # the transaction stays there
        async with db.writer() as s:
            assert not (await async_where(s, cluster.engine))[0]
            assert (await s.get(Customer, 2)).name == "Renamed async"  # type: ignore[union-attr]
        stats = db.stats()
        assert stats["reads_on_readers"] >= 2 and stats["writes"] >= 1

    with_async_db(cluster, work)


def test_a_write_in_read_only_is_refused(cluster: LocalCluster) -> None:
    async def work(db: AsyncDatabase[Any]) -> None:
        with pytest.raises(ReadOnlySessionError):
            async with db.read_only() as s:
                await s.execute(text("UPDATE stock SET quantity = quantity - 1"))
        async with db.read_only(snapshot=True) as s:
            first = await async_where(s, cluster.engine)
            assert first[0] and await async_where(s, cluster.engine) == first  # one reader

    with_async_db(cluster, work)


def test_a_thousand_writes_each_read_back_at_once(cluster: LocalCluster) -> None:
    """1000 write-then-read rounds in one task, readers lagging: never stale."""

    async def work(db: AsyncDatabase[Any]) -> int:
        stale = 0
        for i in range(1000):
            async with db.session() as s:
                await s.execute(update(Customer).where(Customer.id == 3).values(name=f"a{i}"))
            async with db.session() as s:
                if await s.scalar(select(Customer.name).where(Customer.id == 3)) != f"a{i}":
                    stale += 1
        return stale

    assert with_async_db(cluster, work, AURORA_RYW_WAIT_MS="0") == 0


def test_reads_after_a_write_wait_for_a_reader(cluster: LocalCluster) -> None:
    if cluster.engine == "mysql":
        pytest.skip("MariaDB's readers lag a whole second")

    async def work(db: AsyncDatabase[Any]) -> dict[str, int]:
        for i in range(20):
            async with db.session() as s:
                await s.execute(update(Customer).where(Customer.id == 4).values(name=f"w{i}"))
            async with db.session() as s:
                assert await s.scalar(select(Customer.name).where(Customer.id == 4)) == f"w{i}"
        return db.stats()

    stats = with_async_db(cluster, work, AURORA_RYW_WAIT_MS="2000")
    assert stats["reads_on_writer"] == 0 and stats["ryw_fallbacks"] == 0
    assert stats["ryw_waits"] >= 15


def test_read_your_writes_is_task_local(cluster: LocalCluster) -> None:
    """A task's commit constrains its own later reads and the tasks it creates afterwards,
    not unrelated tasks (with no wait and no reader applying the log, what a constrained read
    does is read on the writer)."""

    async def work(db: AsyncDatabase[Any]) -> dict[str, bool]:
        committed = asyncio.Event()
        places: dict[str, bool] = {}

        async def bystander() -> None:  # created before the commit, unrelated to it
            await committed.wait()
            async with db.session() as s:
                places["bystander"] = (await async_where(s, cluster.engine))[0]

        async def committer() -> None:
            async with db.session() as s:
                await s.execute(update(Customer).where(Customer.id == 6).values(name="tl"))
            committed.set()
            async with db.session() as s:
                places["itself"] = (await async_where(s, cluster.engine))[0]

            async def child() -> None:
                async with db.session() as s:
                    places["child"] = (await async_where(s, cluster.engine))[0]

            await asyncio.create_task(child())

        await asyncio.gather(bystander(), committer())
        return places

    with replay_held(cluster):
        places = with_async_db(cluster, work, AURORA_RYW_WAIT_MS="0")
        process = with_async_db(cluster, work, AURORA_RYW_WAIT_MS="0",
                                AURORA_RYW_SCOPE="process")
    assert places == {"itself": False, "child": False, "bystander": True}
    assert process == {"itself": False, "child": False, "bystander": False}


def test_tokens_and_units_of_work(cluster: LocalCluster) -> None:
    async def work(db: AsyncDatabase[Any]) -> None:
        async with db.unit_of_work() as unit:
            async def write() -> None:
                async with db.session() as s:
                    await s.execute(update(Customer).where(Customer.id == 8).values(name="u"))

            await asyncio.create_task(write())  # a task of the unit: its commit is the unit's
            assert unit.committed
            async with db.session() as s:
                assert await s.scalar(select(Customer.name).where(Customer.id == 8)) == "u"
        token = await unit.token()
        assert token is not None and await db.commit_token() is None
        async with db.session(after=token) as s:
            assert await s.scalar(select(Customer.name).where(Customer.id == 8)) == "u"

    with_async_db(cluster, work)


def test_run_transaction_and_sessionmaker(cluster: LocalCluster) -> None:
    async def work(db: AsyncDatabase[Any]) -> None:
        async def rename(s: AsyncSession) -> str:
            customer = await s.get(Customer, 9, with_for_update=True)
            assert customer is not None
            customer.name = "by run_transaction"
            return (await async_where(s, cluster.engine))[1]

        assert await db.run_transaction(rename) == db.topology().writer.id
        async with db.sessionmaker() as s:  # read-your-writes for plain sessionmaker use too
            assert await s.scalar(select(Customer.name).where(Customer.id == 9)) == \
                "by run_transaction"
        with pytest.raises(ValueError, match="max_attempts"):
            await db.run_transaction(rename, max_attempts=0)

    with_async_db(cluster, work)


def test_an_application_async_session_class(cluster: LocalCluster) -> None:
    """SQLModel's AsyncSession, with its exec(): its sync session routes."""
    from sqlmodel import select as sqlmodel_select  # noqa: PLC0415
    from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession  # noqa: PLC0415

    async def main() -> None:
        db = AsyncDatabase.from_env(cluster.env(), session_class=SQLModelAsyncSession)
        try:
            async with db.session() as s:
                assert isinstance(s, SQLModelAsyncSession)
                rows = (await s.exec(sqlmodel_select(Customer).where(Customer.id == 1))).all()
                assert [c.id for c in rows] == [1]
                assert db.stats()["reads_on_readers"] == 1
        finally:
            await db.close()
        with pytest.raises(TypeError, match="AsyncSession"):
            AsyncDatabase.from_env(cluster.env(), session_class=dict)  # type: ignore[arg-type]

    asyncio.run(main())


def test_the_loop_runs_while_the_library_waits(cluster: LocalCluster) -> None:
    """Logins (an IAM token signed or a secret read: here a login that takes 200 ms) and
    read-your-writes waits run off the event loop: a ticker task keeps ticking through them."""
    if cluster.engine == "mysql":
        pytest.skip("MariaDB's readers lag a whole second: reads after a write do not wait")

    async def work(db: AsyncDatabase[Any]) -> tuple[int, float, dict[str, int]]:
        login = db.credentials.login
        logins: list[str] = []

        def slow_login(host: str, port: int) -> tuple[str | None, str | None]:
            logins.append(host)
            time.sleep(0.2)  # as boto3 signing its first token, or Secrets Manager answering
            return login(host, port)

        db.credentials.login = slow_login  # type: ignore[method-assign]
        db.credentials.cached = lambda host, port: None  # type: ignore[method-assign]
        ticks = 0
        longest = 0.0

        async def ticker() -> None:
            nonlocal ticks, longest
            while True:
                began = time.monotonic()
                await asyncio.sleep(0.005)
                longest = max(longest, time.monotonic() - began - 0.005)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        began = time.monotonic()
        for i in range(5):  # new connections to the writer and readers, each a slow login
            async with db.session() as s:
                await s.execute(update(Customer).where(Customer.id == 7).values(name=f"t{i}"))
            async with db.session() as s:  # waits for a reader to replay the commit
                assert await s.scalar(select(Customer.name).where(Customer.id == 7)) == f"t{i}"
        elapsed = time.monotonic() - began
        ticking.cancel()
        assert len(logins) >= 3  # the writer, and readers: the slow logins did happen
        return ticks, longest, {"elapsed_ms": int(elapsed * 1000), **db.stats()}

    ticks, longest, stats = with_async_db(cluster, work, AURORA_RYW_WAIT_MS="2000")
    assert stats["ryw_waits"] >= 1 and stats["reads_on_readers"] >= 5
    # a held loop would leave the ticker still for 200 ms at each login
    assert longest < 0.15, (longest, stats)
    assert ticks >= stats["elapsed_ms"] / 20, (ticks, stats)


def test_tasks_waiting_for_a_connection_are_served_in_turn(cluster: LocalCluster) -> None:
    """8 tasks sharing a writer pool of 3, each running one short transaction after another:
    every task gets connections while the others keep asking. SQLAlchemy's asyncio pool lets
    a task that returns its connection and asks again at once take it back before a woken
    waiter runs: 5 of the 8 tasks then ran nothing until the other 3 stopped (3 s, measured),
    or until the pool timeout (PoolExhausted)."""

    async def work(db: AsyncDatabase[Any]) -> dict[int, int]:
        stop = asyncio.Event()
        done = dict.fromkeys(range(8), 0)

        async def task(n: int) -> None:
            while not stop.is_set():
                async with db.writer() as s:
                    await s.execute(text("SELECT 1"))
                if not stop.is_set():
                    done[n] += 1

        tasks = [asyncio.create_task(task(n)) for n in range(8)]
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)
        return done

    done = with_async_db(cluster, work, AURORA_POOL_SIZE="3", AURORA_MAX_OVERFLOW="0")
    assert all(count >= 5 for count in done.values()), done
