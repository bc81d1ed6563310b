"""AsyncDatabase's routed sessions against plain asyncio SQLAlchemy, side by side in one run.

Run: .venv/bin/python benchmarks/async_routing.py [--engine postgresql|mysql] [--ops 200]
                                                   [--rounds 15] [--seconds 3] [--trials 3]
                                                   [--quick]

Starts its own local cluster (1 writer, 1 reader, no replica lag: every routed read lands on
the reader the plain engine reads from) with a ``bench_items`` table, and one event loop in
which everything runs (psycopg's async driver on PostgreSQL, aiomysql on MariaDB).

(a) Per-operation latency, one task at a time. Each case runs ``--ops`` operations per round
in a fresh task (a fresh context: no read-your-writes carried over between cases); cases are
interleaved round by round in a shuffled order; p50 and p99 over every operation of every
round, and the p50 ratios:

- floor: ``SELECT 1`` on a raw async driver connection in autocommit, on the reader (one
  round trip: what no read can beat);
- read, raw driver: the row by primary key on that connection;
- read, plain: ``async_sessionmaker(create_async_engine(reader))``, ``await s.execute(select
  by pk)`` (SQLAlchemy's defaults: a transaction per session), and the same on an AUTOCOMMIT
  engine (the best a plain session can do);
- read, routed: the same in ``async with db.session()``;
- write, plain: insert a row and commit, on ``create_async_engine(writer)``;
- write, routed: the same in ``async with db.session()`` (commit on leaving it), and through
  ``await db.run_transaction`` (its commit marker included);
- write then read, routed: the routed write followed by a read of that row in a new session of
  the same task (read-your-writes included; a stale read fails the run).

(b) Throughput of a read-after-write loop (update the task's own row, commit; read it back in a
new session) with 1, 50 and 200 concurrent tasks for ``--seconds`` each, routed vs plain (one
engine on the writer: what an application that must read its writes does without
aurora-access), alternating in a shuffled order for ``--trials`` trials; ops/s is loops per
second, summed over the trials; stale reads are counted.

``--quick``: a few operations and one short trial (for trying the command, not for figures).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from async_workload import (
    Item,
    RawConnection,
    item_cluster,
    median,
    percentile,
    plain_async_engine,
)
from aurora_access import AsyncDatabase
from aurora_access.local import LocalCluster

Op = Callable[[int], Awaitable[object]]
ROWS = 1000
CONCURRENCY = (1, 50, 200)


async def timed(op: Op, ops: int) -> tuple[list[float], float]:
    """Each operation's seconds, and the process CPU seconds per operation (the library's
    threads included), in a fresh task (a fresh context)."""

    async def run() -> tuple[list[float], float]:
        times: list[float] = []
        cpu = time.process_time()
        for i in range(ops):
            began = time.perf_counter()
            await op(i)
            times.append(time.perf_counter() - began)
        return times, (time.process_time() - cpu) / ops

    return await asyncio.create_task(run())


@dataclass
class Loops:
    """A read-after-write variant's tally over its trials."""

    loops: int = 0
    seconds: float = 0.0
    stale: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


async def latency(cluster: LocalCluster, db: AsyncDatabase[Any], ops: int,
                  rounds: int) -> None:
    reader, writer = cluster.readers[0], cluster.writer
    raw = await RawConnection.connect(cluster, reader.host)
    reader_engine = plain_async_engine(cluster, reader.host)
    autocommit_engine = plain_async_engine(cluster, reader.host, isolation_level="AUTOCOMMIT")
    writer_engine = plain_async_engine(cluster, writer.host)
    plain_reads = async_sessionmaker(reader_engine)
    autocommit_reads = async_sessionmaker(autocommit_engine)
    plain_writes = async_sessionmaker(writer_engine)
    new_ids = itertools.count(10 * ROWS)

    def by_pk(i: int) -> Any:
        return select(Item).where(Item.id == i % ROWS + 1)

    async def floor(i: int) -> object:
        return await raw.one("SELECT 1")

    async def raw_read(i: int) -> object:
        return await raw.one("SELECT id, n, note FROM bench_items WHERE id = %s",
                             (i % ROWS + 1,))

    async def plain_read(i: int) -> object:
        async with plain_reads() as s:
            return (await s.execute(by_pk(i))).scalar_one()

    async def autocommit_read(i: int) -> object:
        async with autocommit_reads() as s:
            return (await s.execute(by_pk(i))).scalar_one()

    async def routed_read(i: int) -> object:
        async with db.session() as s:
            return (await s.execute(by_pk(i))).scalar_one()

    async def plain_write(i: int) -> None:
        async with plain_writes() as s:
            s.add(Item(id=next(new_ids), n=i, note="plain"))
            await s.commit()

    async def routed_write(i: int) -> int:
        new_id = next(new_ids)
        async with db.session() as s:
            s.add(Item(id=new_id, n=i, note="routed"))
        return new_id

    async def marked_write(i: int) -> None:
        async def add(s: AsyncSession) -> None:
            s.add(Item(id=next(new_ids), n=i, note="marked"))

        await db.run_transaction(add)

    async def routed_write_then_read(i: int) -> object:
        new_id = await routed_write(i)
        async with db.session() as s:
            n = await s.scalar(select(Item.n).where(Item.id == new_id))
        assert n == i, "stale read"
        return n

    driver = "aiomysql" if cluster.engine == "mysql" else "psycopg async"
    floor_name = f"floor: SELECT 1, raw {driver} autocommit"
    cases: dict[str, Op] = {
        floor_name: floor,
        f"read, raw {driver} autocommit": raw_read,
        "read, plain async session + execute(select by pk)": plain_read,
        "read, plain async session, AUTOCOMMIT engine": autocommit_read,
        "read, routed db.session() + execute(select by pk)": routed_read,
        "write, plain async session: insert + commit": plain_write,
        "write, routed db.session(): insert (commit on exit)": routed_write,
        "write, await db.run_transaction: insert (commit marker included)": marked_write,
        "write then read, routed (read-your-writes)": routed_write_then_read,
    }
    for op in cases.values():  # warm up: connections, prepared statements, caches
        await timed(op, 30)
    times: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases)
    for _ in range(rounds):
        random.shuffle(order)  # no case always runs right after another
        for name in order:
            each, used = await timed(cases[name], ops)
            times[name].extend(each)
            cpu[name].append(used)
    await raw.close()
    for engine in (reader_engine, autocommit_engine, writer_engine):
        await engine.dispose()

    p50 = {name: percentile(values, 50) for name, values in times.items()}
    base = p50[floor_name]
    print(f"(a) {cluster.engine}: {rounds} rounds x {ops} operations per case, one task; "
          "latency over every operation")
    print("| case | p50 us | p99 us | x floor (p50) | process CPU us/op |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {p50[name] * 1e6:.0f} | {percentile(values, 99) * 1e6:.0f} | "
              f"{p50[name] / base:.2f} | {median(cpu[name]) * 1e6:.0f} |")
    routed, plain = (p50["read, routed db.session() + execute(select by pk)"],
                     p50["read, plain async session + execute(select by pk)"])
    auto = p50["read, plain async session, AUTOCOMMIT engine"]
    routed_w, plain_w = (p50["write, routed db.session(): insert (commit on exit)"],
                         p50["write, plain async session: insert + commit"])
    marked_w = p50["write, await db.run_transaction: insert (commit marker included)"]
    print()
    print("| ratio of p50s | value | target |")
    print("|---|---|---|")
    print(f"| routed read / SELECT 1 floor | {routed / base:.2f} | the one-round-trip floor |")
    print(f"| routed read / plain read | {routed / plain:.2f} | |")
    print(f"| routed read / plain read on an AUTOCOMMIT engine | {routed / auto:.2f} | |")
    print(f"| routed write / plain write | {routed_w / plain_w:.2f} | <= 1.05 |")
    print(f"| run_transaction write / routed write | {marked_w / routed_w:.2f} | "
          "(what resolving commit outcomes costs) |")
    print()


async def throughput(cluster: LocalCluster, db: AsyncDatabase[Any], seconds: float,
                     trials: int) -> None:
    writer_engine = plain_async_engine(cluster, cluster.writer.host)
    plain = async_sessionmaker(writer_engine)
    values = itertools.count(1)

    async def routed_loop(row: int, tally: Loops) -> None:
        n = next(values)
        async with db.session() as s:
            await s.execute(update(Item).where(Item.id == row).values(n=n))
        async with db.session() as s:
            if await s.scalar(select(Item.n).where(Item.id == row)) != n:
                tally.stale += 1

    async def plain_loop(row: int, tally: Loops) -> None:
        n = next(values)
        async with plain() as s:
            await s.execute(update(Item).where(Item.id == row).values(n=n))
            await s.commit()
        async with plain() as s:
            if await s.scalar(select(Item.n).where(Item.id == row)) != n:
                tally.stale += 1

    variants: dict[str, Callable[[int, Loops], Awaitable[None]]] = {
        "routed": routed_loop, "plain (writer only)": plain_loop}

    async def run(loop: Callable[[int, Loops], Awaitable[None]], tasks: int,
                  tally: Loops) -> None:
        deadline = time.perf_counter() + seconds

        async def worker(row: int) -> None:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    await loop(row, tally)
                except Exception:
                    tally.errors += 1
                    continue
                tally.latencies.append(time.perf_counter() - began)
                tally.loops += 1

        began = time.perf_counter()
        # each worker a fresh task: its own read-your-writes context, as a request's
        await asyncio.gather(*(asyncio.create_task(worker(row)) for row in range(1, tasks + 1)))
        tally.seconds += time.perf_counter() - began

    for variant in variants.values():  # warm up both, so that neither pays for connecting
        await run(variant, 20, Loops())
    results = {(tasks, name): Loops() for tasks in CONCURRENCY for name in variants}
    for tasks in CONCURRENCY:
        for _ in range(trials):
            order = list(variants)
            random.shuffle(order)
            for name in order:
                await run(variants[name], tasks, results[(tasks, name)])
    await writer_engine.dispose()

    print(f"(b) {cluster.engine}: read-after-write loop (update own row + commit; read it "
          f"back in a new session), {trials} trials x {seconds:g} s per variant")
    print("| tasks | variant | loops/s | x plain | loop p50 ms | loop p99 ms | stale reads | "
          "errors |")
    print("|---|---|---|---|---|---|---|---|")
    for tasks in CONCURRENCY:
        plain_rate = results[(tasks, "plain (writer only)")]
        base = plain_rate.loops / plain_rate.seconds
        for name in variants:
            r = results[(tasks, name)]
            rate = r.loops / r.seconds
            print(f"| {tasks} | {name} | {rate:.0f} | {rate / base:.2f} | "
                  f"{percentile(r.latencies, 50) * 1e3:.1f} | "
                  f"{percentile(r.latencies, 99) * 1e3:.1f} | {r.stale} | {r.errors} |")


async def run(cluster: LocalCluster, args: argparse.Namespace) -> dict[str, int]:
    db: AsyncDatabase[Any] = AsyncDatabase.from_env(cluster.env())
    try:
        await db.wait_ready()
        await latency(cluster, db, args.ops, args.rounds)
        await throughput(cluster, db, args.seconds, args.trials)
        return db.stats()
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["postgresql", "mysql"], default="postgresql")
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.ops, args.rounds, args.seconds, args.trials = 30, 2, 1.0, 1
    began = time.monotonic()
    with item_cluster(args.engine, readers=1, rows=ROWS) as cluster:
        stats = asyncio.run(run(cluster, args))
    print(f"\nstats: {stats}\nelapsed: {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
