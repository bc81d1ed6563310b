"""The asyncio MySQL driver for AsyncDatabase: aiomysql against asyncmy, side by side in one run.

Run: .venv/bin/python benchmarks/mysql_async_drivers.py [--rounds 9] [--ops 300] [--seconds 3]

Starts a local MariaDB cluster (a writer, no reader) and, through SQLAlchemy's asyncio engines
(``mysql+aiomysql``, ``mysql+asyncmy``) on the writer:

- latency: ``--ops`` primary-key reads in one task per round, the drivers interleaved round by
  round in a shuffled order; the median over the rounds of the per-read time;
- throughput: reads per second of 50 concurrent tasks for ``--seconds``, each driver in turn.

It also prints what decides the choice beyond speed: whether the driver raises PyMySQL's own
exception classes (the library classifies MySQL errors by those, and aiomysql's login code,
TLS and ``mysql_clear_password`` handling are PyMySQL's). Both drivers speak
``mysql_clear_password``, which Aurora MySQL's IAM authentication needs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import pymysql
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from aurora_access.local import LocalCluster, free_port

DRIVERS = ("aiomysql", "asyncmy")
READ = text("SELECT id FROM probe WHERE id = :id")


async def latency(engine: AsyncEngine, ops: int) -> float:
    async with engine.connect() as conn:
        began = time.perf_counter()
        for i in range(ops):
            await conn.execute(READ, {"id": i % 100 + 1})
        return (time.perf_counter() - began) / ops


async def throughput(engine: AsyncEngine, seconds: float, tasks: int = 50) -> float:
    done = 0
    stop = time.monotonic() + seconds

    async def reader(n: int) -> None:
        nonlocal done
        async with engine.connect() as conn:
            while time.monotonic() < stop:
                await conn.execute(READ, {"id": (n + done) % 100 + 1})
                done += 1

    await asyncio.gather(*(reader(n) for n in range(tasks)))
    return done / seconds


def raises_pymysql_errors(driver: str) -> bool:
    module = __import__(driver)
    return issubclass(module.OperationalError, pymysql.err.OperationalError)


async def main(args: argparse.Namespace) -> None:
    with LocalCluster(engine="mysql", readers=0, port=free_port(0)) as cluster:
        url = cluster.app_url().replace("mysql+pymysql", "mysql+{}")
        engines = {d: create_async_engine(url.format(d), pool_size=60, max_overflow=0)
                   for d in DRIVERS}
        async with engines["aiomysql"].begin() as conn:
            await conn.execute(text("CREATE TABLE probe (id int PRIMARY KEY, v varchar(40))"))
            await conn.execute(text("INSERT INTO probe VALUES " + ", ".join(
                f"({i}, 'value {i}')" for i in range(1, 101))))
        for engine in engines.values():  # warm: connections made, statements cached
            await latency(engine, 50)
        samples: dict[str, list[float]] = {d: [] for d in DRIVERS}
        for _ in range(args.rounds):
            for driver in random.sample(DRIVERS, len(DRIVERS)):
                samples[driver].append(await latency(engines[driver], args.ops))
        rates = {d: await throughput(engines[d], args.seconds) for d in DRIVERS}
        for engine in engines.values():
            await engine.dispose()
    base = statistics.median(samples["aiomysql"])
    print(f"MariaDB, {args.rounds} rounds x {args.ops} reads; 50 tasks for {args.seconds} s\n")
    print("| driver | read p50 of rounds (µs) | vs aiomysql | reads/s, 50 tasks | vs aiomysql "
          "| PyMySQL's exceptions |")
    print("|---|---|---|---|---|---|")
    for driver in DRIVERS:
        median = statistics.median(samples[driver])
        print(f"| {driver} | {median * 1e6:.0f} | {median / base:.2f} | {rates[driver]:.0f} | "
              f"{rates[driver] / rates['aiomysql']:.2f} | "
              f"{'yes' if raises_pymysql_errors(driver) else 'no (its own classes)'} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.rounds, arguments.ops, arguments.seconds = 3, 50, 1.0
    asyncio.run(main(arguments))
