"""Chaos: orders placed by 8 threads (Database), or by 8 asyncio tasks (AsyncDatabase), while
the writer fails over 3 times (with a stale cluster endpoint) and a reader crashes and comes
back, on PostgreSQL and on MariaDB. Nothing acknowledged may be lost or doubled."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections import Counter

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from aurora_access import (
    AsyncDatabase,
    CommitOutcomeUnknown,
    Database,
    NoWriterAvailable,
    TransactionReplayRequired,
)
from aurora_access.demo.models import Order, OrderLine, Stock
from aurora_access.demo.shop import create_schema, place_order, seed
from aurora_access.local import LocalCluster, free_port

DOCUMENTED = (TransactionReplayRequired, CommitOutcomeUnknown, NoWriterAvailable)
SHOPPERS = 8


def check_orders(s: Session, initial_stock: int | None, returned: dict[str, int],
                 unknown: dict[str, int]) -> None:
    """Every acknowledged order present exactly once, none present that was neither
    acknowledged nor of unknown outcome, and the stock what was sold left of it."""
    ids = list(s.scalars(select(Order.id)))
    sold = s.scalar(select(func.coalesce(func.sum(OrderLine.quantity), 0)))
    stock = s.scalar(select(func.sum(Stock.quantity)))
    present = Counter(ids)
    doubled = [i for i, n in present.items() if n > 1]
    lost = [i for i in returned if i not in present]
    strangers = [i for i in present if i not in returned and i not in unknown]
    assert not doubled and not lost and not strangers, (doubled, lost, strangers)
    assert stock == (initial_stock or 0) - (sold or 0)
    assert sold == sum(returned.values()) + sum(q for i, q in unknown.items() if i in present)
    assert len(returned) > 100, "the workload barely ran"


class Orders:
    """What the shoppers were told, by order id (and its quantity)."""

    def __init__(self) -> None:
        self.returned: dict[str, int] = {}  # acknowledged to the caller
        self.unknown: dict[str, int] = {}  # CommitOutcomeUnknown: may or may not be there
        self.not_placed: Counter[str] = Counter()  # documented errors before any commit
        self.escaped: list[BaseException] = []
        self.lock = threading.Lock()

    def record(self, order_id: str, quantity: int, error: BaseException | None) -> None:
        with self.lock:
            if error is None:
                self.returned[order_id] = quantity
            elif isinstance(error, CommitOutcomeUnknown):
                self.unknown[order_id] = quantity
            elif isinstance(error, DOCUMENTED):
                self.not_placed[type(error).__name__] += 1
            else:
                self.escaped.append(error)


def faults(cluster: LocalCluster) -> list[object]:
    """3 failovers 1 s apart, a reader crashed and restarted after the second; blocking."""
    reports: list[object] = []
    for round_ in range(3):
        time.sleep(1.0)
        reports.append(cluster.failover())
        if round_ == 1:
            victim = cluster.readers[0].id
            cluster.crash(victim)
            time.sleep(0.5)
            cluster.restart(victim)
    time.sleep(1.0)
    return reports


def shop_with_threads(db: Database, cluster: LocalCluster, orders: Orders) -> list[object]:
    stop = threading.Event()

    def shopper(n: int) -> None:
        rng = random.Random(n)
        while not stop.is_set():
            order_id = str(uuid.uuid4())
            items = {rng.randint(1, 20): rng.randint(1, 3)}
            try:
                db.run_transaction(
                    lambda s, items=items, order_id=order_id: place_order(
                        s, customer_id=n + 1, items=items, order_id=order_id),
                    max_attempts=10)
            except BaseException as exc:
                orders.record(order_id, sum(items.values()), exc)
            else:
                orders.record(order_id, sum(items.values()), None)

    threads = [threading.Thread(target=shopper, args=(n,)) for n in range(SHOPPERS)]
    for thread in threads:
        thread.start()
    try:
        return faults(cluster)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)


def shop_with_tasks(env: dict[str, str], cluster: LocalCluster, orders: Orders) -> list[object]:
    """The same shoppers as asyncio tasks of one AsyncDatabase; the faults in a thread."""

    async def main() -> list[object]:
        db = AsyncDatabase.from_env(env)
        stop = asyncio.Event()

        async def shopper(n: int) -> None:
            rng = random.Random(n)
            while not stop.is_set():
                order_id = str(uuid.uuid4())
                items = {rng.randint(1, 20): rng.randint(1, 3)}

                async def order(s: AsyncSession, items: dict[int, int] = items,
                                order_id: str = order_id) -> str:
                    return await s.run_sync(place_order, n + 1, items, order_id)

                try:
                    await db.run_transaction(order, max_attempts=10)
                except BaseException as exc:
                    orders.record(order_id, sum(items.values()), exc)
                else:
                    orders.record(order_id, sum(items.values()), None)

        tasks = [asyncio.create_task(shopper(n)) for n in range(SHOPPERS)]
        try:
            return await asyncio.to_thread(faults, cluster)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
            assert db.stats()["failovers"] >= 3
            await db.close()

    return asyncio.run(main())


@pytest.mark.parametrize("api", ["threads", "asyncio"])
@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
def test_no_order_is_lost_or_doubled_through_three_failovers(engine: str, api: str) -> None:
    with LocalCluster(engine=engine, readers=2, endpoint_delay_s=5.0,
                      port=free_port()) as cluster:
        env = {**cluster.env(), "AURORA_TOPOLOGY_REFRESH_S": "0.5"}
        db = Database.from_env(env)
        create_schema(db.engine("writer"))
        with db.writer() as s:
            seed(s, products=20, customers=SHOPPERS, stock_each=100_000)
        with db.writer() as s:
            initial_stock = s.scalar(select(func.sum(Stock.quantity)))

        orders = Orders()
        began = time.monotonic()
        if api == "threads":
            reports = shop_with_threads(db, cluster, orders)
        else:
            reports = shop_with_tasks(env, cluster, orders)
        elapsed = time.monotonic() - began

        assert not orders.escaped, orders.escaped[:3]
        with db.writer() as s:
            check_orders(s, initial_stock, orders.returned, orders.unknown)
        stats = db.stats()
        if api == "threads":
            assert stats["failovers"] >= 3
        db.close()
        print(f"\n{engine} chaos ({api}) in {elapsed:.1f} s: {len(orders.returned)} orders "
              f"acknowledged and present once each; {len(orders.unknown)} with unknown "
              f"outcome; not placed: {dict(orders.not_placed)}; failovers: "
              + "; ".join(str(r) for r in reports) + f"; stats {stats}")
