"""Are asyncio tasks waiting for a pooled connection served in turn?

Run: .venv/bin/python benchmarks/pool_fairness.py [--engine postgresql|mysql] [--tasks 8]
                                                  [--pool 3] [--seconds 3]

``--tasks`` tasks share a writer pool of ``--pool`` connections (no overflow) and each runs one
short transaction after another (``SELECT 1`` and commit), as fast as it can, for
``--seconds``; then they stop. Reported per variant: each task's longest operation and how
many operations it finished while the others were still running. A task starved by the pool
finishes nothing until the others stop, its longest operation the whole run.

Variants, side by side in one run on one local cluster:
- plain: ``async_sessionmaker(create_async_engine(writer))``, SQLAlchemy's default pool;
- plain, AUTOCOMMIT engine (no reset on return, as the library's reader engines);
- aurora-access with SQLAlchemy's own asyncio pool (``AsyncAdaptedQueuePool``, what the
  library used before ``FairAsyncQueuePool``);
- aurora-access as it is (``FairAsyncQueuePool``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from aurora_access import AsyncDatabase, pool_waits, pools
from aurora_access.local import LocalCluster, free_port

Sessions = Callable[[], AbstractAsyncContextManager[Any]]


async def run(sessions: Sessions, tasks: int, seconds: float) -> tuple[list[float], list[int]]:
    """Each task's longest operation and operations finished before the stop."""
    stop = asyncio.Event()
    longest, done = [0.0] * tasks, [0] * tasks

    async def task(n: int) -> None:
        while not stop.is_set():
            began = time.perf_counter()
            async with sessions() as s:
                await s.execute(text("SELECT 1"))
                await s.commit()
            longest[n] = max(longest[n], time.perf_counter() - began)
            if not stop.is_set():
                done[n] += 1

    running = [asyncio.create_task(task(n)) for n in range(tasks)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*running)
    return longest, done


async def plain(url: Any, args: argparse.Namespace, autocommit: bool) -> tuple[list[float],
                                                                              list[int]]:
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT",
                               "pool_reset_on_return": None} if autocommit else {}
    engine = create_async_engine(url, pool_size=args.pool, max_overflow=0, pool_timeout=60,
                                 **options)
    try:
        return await run(async_sessionmaker(engine), args.tasks, args.seconds)
    finally:
        await engine.dispose()


async def aurora(env: dict[str, str], args: argparse.Namespace,
                 sqlalchemy_pool: bool) -> tuple[list[float], list[int]]:
    original = pools.pool_class
    if sqlalchemy_pool:  # the pool SQLAlchemy gives an asyncio engine by default
        pools.pool_class = lambda asynchronous, measured: (  # type: ignore[assignment]
            AsyncAdaptedQueuePool if asynchronous else original(asynchronous, measured))
    try:
        db: AsyncDatabase[Any] = AsyncDatabase.from_env({
            **env, "AURORA_POOL_SIZE": str(args.pool), "AURORA_MAX_OVERFLOW": "0",
            "AURORA_POOL_TIMEOUT": "60"})
        await db.wait_ready()

        def sessions() -> AbstractAsyncContextManager[Any]:
            return db.writer()

        try:
            return await run(sessions, args.tasks, args.seconds)
        finally:
            await db.close()
    finally:
        pools.pool_class = original  # type: ignore[assignment]


async def main(args: argparse.Namespace, cluster: LocalCluster) -> None:
    scheme = "postgresql+psycopg_async" if args.engine == "postgresql" else "mysql+aiomysql"
    url = make_url(cluster.app_url(cluster.writer.host)).set(drivername=scheme)
    variants: list[tuple[str, Callable[[], Any]]] = [
        ("plain AsyncSession, SQLAlchemy's pool", lambda: plain(url, args, False)),
        ("plain AsyncSession, AUTOCOMMIT engine", lambda: plain(url, args, True)),
        ("aurora-access, SQLAlchemy's AsyncAdaptedQueuePool",
         lambda: aurora(cluster.env(), args, True)),
        (f"aurora-access, {pool_waits.FairAsyncQueuePool.__name__}",
         lambda: aurora(cluster.env(), args, False)),
    ]
    print(f"{args.engine}: {args.tasks} tasks, a pool of {args.pool} (no overflow), "
          f"{args.seconds:g} s")
    print("| variant | longest operation per task, s | operations per task (while all ran) "
          "| tasks that finished none |")
    print("|---|---|---|---|")
    for name, variant in variants:
        longest, done = await variant()
        print(f"| {name} | {' '.join(f'{t:.2f}' for t in sorted(longest))} | "
              f"{' '.join(str(d) for d in sorted(done))} | {sum(d == 0 for d in done)} |")


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["postgresql", "mysql"], default="postgresql")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--pool", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with LocalCluster(engine=args.engine, readers=1, port=free_port()) as cluster:
        asyncio.run(main(args, cluster))


if __name__ == "__main__":
    cli()

