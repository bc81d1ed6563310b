"""AsyncDatabase against advanced-alchemy's routing async session, side by side in one run.

Run: .venv/bin/python benchmarks/async_peer.py [--tasks 50] [--seconds 5] [--trials 3]
                                                [--rounds 500] [--lag-ms 50] [--quick]

One local PostgreSQL cluster (1 writer, 2 readers lagging ``--lag-ms``) with a
``bench_items`` table; one event loop (psycopg's async driver for everyone).

advanced-alchemy (``advanced_alchemy.routing``, set up as its docs show:
``SQLAlchemyAsyncConfig(routing_config=RoutingConfig(primary_connection_string=writer,
read_replicas=[readers]))``, ``create_session_maker()``; engine and session options its
defaults) routes by statement in ``RoutingSyncSession.get_bind``: INSERT/UPDATE/DELETE, a
flush and FOR UPDATE to the primary, other reads round-robin over the replicas. Its
read-your-writes is ``sticky_after_write``: a write sets a ContextVar that sends the context's
later reads to the primary, and ``reset_stickiness_on_commit`` (default True) clears it at the
commit. It has no replica positions, no lag awareness, no tokens to carry a commit to another
request, and no failover handling (its engines are fixed URLs).

(a) Throughput of a read-heavy mix, ``--tasks`` concurrent clients, each request a fresh task
(as an ASGI server runs them): 90% read one row by primary key, 10% update one row and commit;
aurora-access (``db.session()``) vs advanced-alchemy vs plain (``create_async_engine`` on the
writer only), alternating in a shuffled order for ``--trials`` trials of ``--seconds``.

(b) Stale reads when a request writes and the next request reads it (each request a fresh task
and a new session, the next one sent as soon as the first returned), ``--rounds`` rounds each:

- aurora-access, the next request carries the commit token (``await db.commit_token()`` after
  the first; ``db.session(after=token)`` in the second, as ``CommitTokenMiddleware`` does with
  its cookie); and without it (a control: shows the flow does meet the lag);
- aurora-access, the read in a new session of the same request (the context's own commit);
- advanced-alchemy as configured by default, and with ``reset_stickiness_on_commit=False``,
  across requests and within one request (a new session after the commit, same task).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, TypeVar

from advanced_alchemy.config import SQLAlchemyAsyncConfig
from advanced_alchemy.config.routing import RoutingConfig
from advanced_alchemy.routing import (
    RoutingAsyncSession,
    RoutingAsyncSessionMaker,
    RoutingSyncSession,
    dispose_session_maker_async,
)
from advanced_alchemy.routing.session import _SyncEngineSelectorWrapper
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from async_workload import Item, async_url, item_cluster, percentile, plain_async_engine
from aurora_access import AsyncDatabase
from aurora_access.local import LocalCluster

ROWS = 1000
READ_SHARE = 0.9
T = TypeVar("T")

Maker = Callable[[], AsyncSession]


@dataclass
class Mix:
    """A variant's tally in the read-heavy mix."""

    reads: list[float] = field(default_factory=list)
    writes: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0


class CompatRoutingAsyncSession(RoutingAsyncSession):
    """advanced-alchemy 1.12.0's ``RoutingAsyncSession`` with its constructor's steps in an
    order SQLAlchemy 2.1 accepts, nothing else changed: its own ``__init__`` sets
    ``self.bind = None`` before ``AsyncSession.__init__``, and 2.1's ``AsyncSession.bind`` is a
    property whose setter needs ``self.sync_session``, so on SQLAlchemy 2.1 every session it
    makes raises AttributeError ('RoutingAsyncSession' object has no attribute
    'sync_session'). Routing (``RoutingSyncSession.get_bind``) is advanced-alchemy's own."""

    def __init__(self, routing_config: RoutingConfig, selectors: dict[str, Any],
                 default_engine: AsyncEngine, **kwargs: Any) -> None:
        kwargs.pop("bind", None)
        kwargs.pop("binds", None)
        AsyncSession.__init__(
            self, sync_session_class=RoutingSyncSession, routing_config=routing_config,
            selectors={name: _SyncEngineSelectorWrapper(selector)
                       for name, selector in selectors.items()},
            default_engine=default_engine.sync_engine, **kwargs)
        self._default_engine = default_engine
        self._selectors = selectors
        self._routing_config = routing_config


class CompatRoutingAsyncSessionMaker(RoutingAsyncSessionMaker):
    """advanced-alchemy's maker, making ``CompatRoutingAsyncSession``s."""

    __slots__ = ()

    def __call__(self) -> RoutingAsyncSession:
        session_config = self._session_config.copy()
        session_config.pop("bind", None)
        return CompatRoutingAsyncSession(
            routing_config=self._routing_config, selectors=self._selectors,
            default_engine=self._default_engine, **session_config)


def advanced_alchemy_works() -> bool:
    """Whether advanced-alchemy's own RoutingAsyncSession can be made here (it cannot on
    SQLAlchemy 2.1, see CompatRoutingAsyncSession)."""
    maker = RoutingAsyncSessionMaker(RoutingConfig(
        primary_connection_string="postgresql+psycopg_async://nobody@127.0.0.1:1/none"))
    try:
        maker()
    except AttributeError:
        return False
    return True


def advanced_alchemy_maker(cluster: LocalCluster, writer: str, readers: list[str],
                           reset_on_commit: bool = True) -> Maker:
    """advanced-alchemy's routing session maker, configured as its documentation shows
    (``SQLAlchemyAsyncConfig(routing_config=...)``: its engine and session options, which
    ``create_session_maker()`` passes to ``RoutingAsyncSessionMaker``), made with the
    constructor fix of ``CompatRoutingAsyncSession`` when its own sessions cannot be made."""
    routing = RoutingConfig(
        primary_connection_string=async_url(cluster, writer),
        read_replicas=[async_url(cluster, host) for host in readers],
        sticky_after_write=True, reset_stickiness_on_commit=reset_on_commit)
    config = SQLAlchemyAsyncConfig(routing_config=routing)
    if advanced_alchemy_works():
        return config.create_session_maker()
    return CompatRoutingAsyncSessionMaker(
        routing_config=routing, engine_config=config.engine_config_dict,
        session_config=config.session_config_dict)


async def request(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``work()`` as a request of its own: a fresh task (a copy of a clean context)."""
    return await asyncio.create_task(work())


async def read_heavy(cluster: LocalCluster, db: AsyncDatabase[Any], peer: Maker,
                     tasks: int, seconds: float, trials: int) -> None:
    plain_engine = plain_async_engine(cluster, cluster.writer.host)
    plain: Maker = async_sessionmaker(plain_engine)

    def by_pk() -> Any:
        return select(Item).where(Item.id == random.randint(1, ROWS))

    def bump() -> Any:
        return update(Item).where(Item.id == random.randint(1, ROWS)).values(
            n=Item.n + 1)

    async def routed(read: bool) -> None:
        async with db.session() as s:
            if read:
                (await s.execute(by_pk())).scalar_one()
            else:
                await s.execute(bump())

    def with_maker(maker: Maker) -> Callable[[bool], Coroutine[Any, Any, None]]:
        async def op(read: bool) -> None:
            async with maker() as s:
                if read:
                    (await s.execute(by_pk())).scalar_one()
                else:
                    await s.execute(bump())
                    await s.commit()

        return op

    variants: dict[str, Callable[[bool], Coroutine[Any, Any, None]]] = {
        "aurora-access AsyncDatabase": routed,
        "advanced-alchemy routing session": with_maker(peer),
        "plain async SQLAlchemy, writer only": with_maker(plain),
    }

    async def run(op: Callable[[bool], Coroutine[Any, Any, None]], tally: Mix) -> None:
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                read = random.random() < READ_SHARE
                began = time.perf_counter()
                try:
                    await asyncio.create_task(op(read))  # a request: a fresh task
                except Exception:
                    tally.errors += 1
                    continue
                (tally.reads if read else tally.writes).append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(tasks)))
        tally.seconds += time.perf_counter() - began

    for op in variants.values():  # warm up: pools filled, statements cached
        await run(op, Mix())
    mixes = {name: Mix() for name in variants}
    for _ in range(trials):
        order = list(variants)
        random.shuffle(order)
        for name in order:
            await run(variants[name], mixes[name])
    await plain_engine.dispose()

    base = mixes["plain async SQLAlchemy, writer only"]
    base_rate = (len(base.reads) + len(base.writes)) / base.seconds
    print(f"(a) read-heavy mix: {tasks} clients, each request a fresh task, "
          f"{READ_SHARE:.0%} reads by pk / {1 - READ_SHARE:.0%} updates + commit; readers "
          f"lagging {cluster.replica_lag_ms} ms; {trials} trials x {seconds:g} s per variant")
    print("| variant | requests/s | x plain | read p50 / p99 ms | write p50 / p99 ms | "
          "errors |")
    print("|---|---|---|---|---|---|")
    for name, mix in mixes.items():
        rate = (len(mix.reads) + len(mix.writes)) / mix.seconds
        print(f"| {name} | {rate:.0f} | {rate / base_rate:.2f} | "
              f"{percentile(mix.reads, 50) * 1e3:.1f} / {percentile(mix.reads, 99) * 1e3:.1f} | "
              f"{percentile(mix.writes, 50) * 1e3:.1f} / "
              f"{percentile(mix.writes, 99) * 1e3:.1f} | {mix.errors} |")
    print()


async def next_request_reads(db: AsyncDatabase[Any], peer: Maker, peer_sticky: Maker,
                             rounds: int, gap_s: float) -> None:
    values = itertools.count(1)

    async def write_routed(row: int, n: int) -> str | None:
        async with db.session() as s:
            await s.execute(update(Item).where(Item.id == row).values(n=n))
        return await db.commit_token()

    async def read_routed(row: int, token: str | None = None) -> int | None:
        async with db.session(after=token) as s:
            n: int | None = await s.scalar(select(Item.n).where(Item.id == row))
            return n

    async def write_with(maker: Maker, row: int, n: int) -> None:
        async with maker() as s:
            await s.execute(update(Item).where(Item.id == row).values(n=n))
            await s.commit()

    async def read_with(maker: Maker, row: int) -> int | None:
        async with maker() as s:
            n: int | None = await s.scalar(select(Item.n).where(Item.id == row))
            return n

    async def token_flow(row: int, n: int) -> int | None:
        token = await request(lambda: write_routed(row, n))
        await asyncio.sleep(gap_s)
        return await request(lambda: read_routed(row, token))

    async def no_token_flow(row: int, n: int) -> int | None:
        await request(lambda: write_routed(row, n))
        await asyncio.sleep(gap_s)
        return await request(lambda: read_routed(row))

    async def routed_one_request(row: int, n: int) -> int | None:
        async def both() -> int | None:
            await write_routed(row, n)
            return await read_routed(row)

        return await request(both)

    def peer_flow(maker: Maker) -> Callable[[int, int], Awaitable[int | None]]:
        async def flow(row: int, n: int) -> int | None:
            await request(lambda: write_with(maker, row, n))
            await asyncio.sleep(gap_s)
            return await request(lambda: read_with(maker, row))

        return flow

    def peer_one_request(maker: Maker) -> Callable[[int, int], Awaitable[int | None]]:
        async def flow(row: int, n: int) -> int | None:
            async def both() -> int | None:
                await write_with(maker, row, n)
                return await read_with(maker, row)

            return await request(both)

        return flow

    flows: dict[str, Callable[[int, int], Awaitable[int | None]]] = {
        "aurora-access: next request with the commit token (db.session(after=token))":
            token_flow,
        "aurora-access: next request without a token (control)": no_token_flow,
        "aurora-access: same request, a new session after the commit": routed_one_request,
        "advanced-alchemy (defaults: sticky_after_write, reset_stickiness_on_commit): "
        "next request": peer_flow(peer),
        "advanced-alchemy (defaults): same request, a new session after the commit":
            peer_one_request(peer),
        "advanced-alchemy, reset_stickiness_on_commit=False: next request":
            peer_flow(peer_sticky),
        "advanced-alchemy, reset_stickiness_on_commit=False: same request, a new session "
        "after the commit": peer_one_request(peer_sticky),
    }
    print(f"(b) a write, then a read of it in the next request (a new task and session; "
          f"{gap_s * 1e3:g} ms between them), {rounds} rounds per flow")
    print("| flow | stale reads | rounds | round p50 / p99 ms |")
    print("|---|---|---|---|")
    for name, flow in flows.items():
        stale, times = 0, []
        for i in range(rounds):
            row, n = i % ROWS + 1, next(values)
            began = time.perf_counter()
            if await flow(row, n) != n:
                stale += 1
            times.append(time.perf_counter() - began)
        print(f"| {name} | {stale} | {rounds} | {percentile(times, 50) * 1e3:.1f} / "
              f"{percentile(times, 99) * 1e3:.1f} |")


async def main_async(cluster: LocalCluster, args: argparse.Namespace) -> dict[str, int]:
    if not advanced_alchemy_works():
        print(f"note: advanced-alchemy {version('advanced-alchemy')}'s RoutingAsyncSession "
              f"cannot be made on SQLAlchemy {version('SQLAlchemy')} (AttributeError: no "
              "attribute 'sync_session': it sets self.bind before AsyncSession.__init__); "
              "measured with that constructor reordered, its routing unchanged "
              "(CompatRoutingAsyncSession)\n")
    db: AsyncDatabase[Any] = AsyncDatabase.from_env(cluster.env())
    try:
        topology = await db.wait_ready()
        writer, readers = topology.writer.host, [r.host for r in topology.readers]
        peer = advanced_alchemy_maker(cluster, writer, readers)
        peer_sticky = advanced_alchemy_maker(cluster, writer, readers, reset_on_commit=False)
        try:
            await read_heavy(cluster, db, peer, args.tasks, args.seconds, args.trials)
            await next_request_reads(db, peer, peer_sticky, args.rounds, args.gap_ms / 1000)
        finally:
            await dispose_session_maker_async(peer)
            await dispose_session_maker_async(peer_sticky)
        return db.stats()
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--lag-ms", type=int, default=50)
    parser.add_argument("--gap-ms", type=float, default=0.0,
                        help="time between the writing request and the reading one")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.trials, args.rounds = 1.0, 1, 30
    began = time.monotonic()
    with item_cluster("postgresql", readers=2, replica_lag_ms=args.lag_ms,
                      rows=ROWS) as cluster:
        stats = asyncio.run(main_async(cluster, args))
    print(f"\nstats: {stats}\nelapsed: {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
