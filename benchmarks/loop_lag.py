"""Event loop lag under AsyncDatabase: does anything the library does hold the loop?

Run: .venv/bin/python benchmarks/loop_lag.py [--engine postgresql|mysql] [--tasks 200]
                                              [--lag-ms 50] [--seconds 5] [--rounds 2]
                                              [--diagnose] [--quick]

A ticker task sleeps 1 ms in a loop and records the loop's scheduling delay (the time it woke
minus the time it asked to). Meanwhile ``--tasks`` tasks each update their own row (commit)
and read it back in a new session, over and over, on a local cluster (1 writer, 2 readers)
whose readers lag ``--lag-ms`` (default 50 ms on PostgreSQL; MariaDB delays in whole seconds,
so 1000 ms there: reads after a write wait up to AURORA_RYW_WAIT_MS for a reader, then read on
the writer). Every read-back that does not see the task's own write is a stale read.

Steady state, interleaved in ``--rounds`` rounds of ``--seconds`` in a shuffled order:

- idle: the ticker alone (the loop's own floor);
- plain: ``create_async_engine`` on the writer only, ``async_sessionmaker`` (what an
  application that must read its writes has without aurora-access);
- aurora-access: ``async with db.session()`` for the write and for the read;
- aurora-access, run_transaction: the write through ``await db.run_transaction``.

Then a writer failover (aurora-access only; writes through ``db.run_transaction``): the same
workload, ``cluster.failover()`` called in a thread after 3 s (it runs in this process, and
holds the GIL at times like any thread), and 5 s more after it returns.

Reported per run: ticker delay p50/p99/max, delays over 20 ms, the longest single callback
the loop ran (each callback's run time, measured by wrapping ``asyncio.events.Handle._run``,
with what it was and its CPU time), the longest garbage collection, the share of the time the
loop spent running callbacks and the share of it that was the loop thread's CPU (the rest:
waiting for the GIL or a core), operations, stale reads, errors; and the
library's added p99 (its p99 minus plain's; target <= 5 ms) and longest stall (target
<= 20 ms). ``--diagnose``: a sampler thread takes the loop thread's stack whenever one
callback has run for more than 10 ms, and the stacks of the longest callbacks are printed (what
held the loop).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import heapq
import itertools
import random
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.pool import Pool

from async_workload import Item, item_cluster, percentile, plain_async_engine
from aurora_access import AsyncDatabase
from aurora_access.local import LocalCluster

TICK_S = 0.001
STALL_S = 0.020
SAMPLE_AFTER_S = 0.010
SETTLE_S = 0.5  # a run's first half second (every worker's first step at once) is not timed


@dataclass
class Run:
    """What one run (a variant's rounds, or the failover phase) measured."""

    delays: list[float] = field(default_factory=list)
    ops: int = 0
    ops_timed: int = 0  # those completed while the run was timed (after settling)
    wall: float = 0.0
    stale: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0
    # the longest callbacks: (seconds, sequence number, what it was, sampled stacks)
    callbacks: list[tuple[float, int, str, list[str]]] = field(default_factory=list)
    busy_s: float = 0.0  # time spent in callbacks while timed
    busy_cpu_s: float = 0.0  # the loop thread's CPU time in them
    gc_max_s: float = 0.0
    gc_max_cpu_s: float = 0.0
    gc_max_info: str = ""
    # --diagnose: connections opened and closed while timed, by host
    connects: collections.Counter[str] = field(default_factory=collections.Counter)
    closes: collections.Counter[str] = field(default_factory=collections.Counter)
    gc_objects: list[int] = field(default_factory=list)  # tracked objects at each start
    # --diagnose: asyncio.to_thread calls made while timed, by function
    to_thread: collections.Counter[str] = field(default_factory=collections.Counter)
    note: str = ""


class LoopProbe:
    """Times every callback the event loop runs (``Handle._run`` wrapped) and every garbage
    collection; keeps the longest of each for the current ``Run``. With ``sample``, a thread
    takes the loop thread's stack whenever one callback has run longer than
    ``SAMPLE_AFTER_S``."""

    def __init__(self, sample: bool) -> None:
        self.run: Run | None = None
        self._original = asyncio.events.Handle._run
        self._current: tuple[int, float] | None = None  # (sequence, start) of the running one
        self._samples: dict[int, list[str]] = {}
        self._seq = itertools.count()
        self._gc_began = self._gc_cpu = 0.0
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._to_thread = asyncio.to_thread
        self._sampler = threading.Thread(target=self._sample, daemon=True) if sample else None

    def install(self) -> None:
        probe, original = self, self._original
        if self._sampler is not None:  # count the threads' work the loop hands out
            to_thread = asyncio.to_thread

            async def counted(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
                if probe.run is not None:
                    name = getattr(func, "__qualname__", None) or repr(func)
                    probe.run.to_thread[name] += 1
                return await to_thread(func, *args, **kwargs)

            self._to_thread = to_thread
            asyncio.to_thread = counted

        def timed_run(handle: asyncio.Handle) -> None:
            seq = next(probe._seq)
            run = probe.run  # the run this callback counts for: the one it started in
            began, cpu = time.perf_counter(), time.thread_time()
            probe._current = (seq, began)
            try:
                original(handle)
            finally:
                probe._current = None
                took, used = time.perf_counter() - began, time.thread_time() - cpu
                if run is not None and run is probe.run:
                    run.busy_s += took
                    run.busy_cpu_s += used
                if run is not None and run is probe.run and \
                        (len(run.callbacks) < 5 or took > run.callbacks[0][0]):
                    what = f"{_describe(handle)} ({used * 1e3:.1f} ms CPU)"
                    item = (took, seq, what, probe._samples.pop(seq, []))
                    if len(run.callbacks) < 5:
                        heapq.heappush(run.callbacks, item)
                    else:
                        heapq.heapreplace(run.callbacks, item)
                probe._samples.pop(seq, None)

        asyncio.events.Handle._run = timed_run  # type: ignore[method-assign,assignment]
        gc.callbacks.append(self._gc)
        if self._sampler is not None:
            event.listen(Pool, "connect", self._connected)
            event.listen(Pool, "close", self._closed)
            self._sampler.start()

    def uninstall(self) -> None:
        asyncio.events.Handle._run = self._original  # type: ignore[method-assign]
        if self._sampler is not None:
            asyncio.to_thread = self._to_thread
            event.remove(Pool, "connect", self._connected)
            event.remove(Pool, "close", self._closed)
        gc.callbacks.remove(self._gc)
        self._stop.set()

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_began, self._gc_cpu = time.perf_counter(), time.thread_time()
        elif self.run is not None and threading.get_ident() == self._loop_thread:
            took = time.perf_counter() - self._gc_began
            if took > self.run.gc_max_s:
                self.run.gc_max_s = took
                self.run.gc_max_cpu_s = time.thread_time() - self._gc_cpu
                self.run.gc_max_info = (f"generation {info.get('generation')}, "
                                        f"{info.get('collected')} collected")

    def _connected(self, dbapi_connection: Any, record: Any) -> None:
        if self.run is not None:
            self.run.connects[_host(dbapi_connection)] += 1

    def _closed(self, dbapi_connection: Any, record: Any) -> None:
        if self.run is not None:
            self.run.closes[_host(dbapi_connection)] += 1

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            current = self._current
            if current is None:
                continue
            seq, began = current
            if time.perf_counter() - began < SAMPLE_AFTER_S:
                continue
            frame = sys._current_frames().get(self._loop_thread)
            if frame is None or self._current != current:
                continue
            stack = traceback.format_stack(frame)[-14:]
            samples = self._samples.setdefault(seq, [])
            if len(samples) < 6:
                samples.append("".join(stack))


def _host(dbapi_connection: Any) -> str:
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    info = getattr(driver, "info", None)  # psycopg
    return str(getattr(info, "host", None) or getattr(driver, "host", "?"))


def _describe(handle: asyncio.Handle) -> str:
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        name = getattr(coro, "__qualname__", repr(coro))
        return f"a step of task {name}"
    name = getattr(callback, "__qualname__", None) or repr(callback)
    return f"callback {name}"


async def ticker(run: Run, stop: asyncio.Event, settle: float) -> None:
    """Records the loop's delay in waking it, from ``settle`` seconds on (not the burst of
    every worker's first step)."""
    start = time.perf_counter() + settle
    while not stop.is_set():
        began = time.perf_counter()
        await asyncio.sleep(TICK_S)
        if began >= start:
            run.delays.append(time.perf_counter() - began - TICK_S)


Work = Callable[[int, Run], Awaitable[None]]


async def measure(probe: LoopProbe, run: Run, tasks: int, work: Work | None,
                  until: Callable[[asyncio.Event], Awaitable[None]], rate: float = 0.0) -> None:
    """The ticker and ``tasks`` workers running ``work`` until ``until`` sets the event; with
    ``rate``, ``rate`` operations a second in all, else as fast as they go."""
    stop = asyncio.Event()

    async def worker(row: int) -> None:
        assert work is not None
        period = tasks / rate if rate else 0.0  # seconds between one worker's operations
        next_at = time.perf_counter() + random.uniform(0, period)
        while not stop.is_set():
            if period:  # paced: the rate asked for, whatever the latency
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                next_at += period
            try:
                await work(row, run)
            except Exception as error:
                run.errors[type(error).__name__] += 1
                await asyncio.sleep(0.01)
                continue
            run.ops += 1

    gc.collect()  # no run inherits another's garbage
    run.gc_objects.append(len(gc.get_objects()))
    began = time.perf_counter()
    ticking = asyncio.create_task(ticker(run, stop, SETTLE_S))
    workers = [asyncio.create_task(worker(row)) for row in range(1, tasks + 1)] \
        if work is not None else []
    await asyncio.sleep(SETTLE_S)
    probe.run = run  # callbacks and collections from here on
    ops = run.ops
    settled = time.perf_counter()
    await until(stop)
    probe.run = None
    run.ops_timed += run.ops - ops
    run.seconds += time.perf_counter() - settled
    await asyncio.gather(ticking, *workers)
    run.wall += time.perf_counter() - began


def for_seconds(seconds: float) -> Callable[[asyncio.Event], Awaitable[None]]:
    async def until(stop: asyncio.Event) -> None:
        await asyncio.sleep(seconds)
        stop.set()

    return until


async def main_async(cluster: LocalCluster, args: argparse.Namespace,
                     probe: LoopProbe) -> tuple[dict[str, Run], dict[str, int]]:
    pool = {"pool_size": args.pool_size, "max_overflow": args.max_overflow}
    db: AsyncDatabase[Any] = AsyncDatabase.from_env({
        **cluster.env(), "AURORA_POOL_SIZE": str(args.pool_size),
        "AURORA_MAX_OVERFLOW": str(args.max_overflow), **dict(args.env)})
    plain_engine = plain_async_engine(cluster, cluster.writer.host, **pool)
    plain = async_sessionmaker(plain_engine)
    values = itertools.count(1)
    try:
        await db.wait_ready()

        async def read_back(s: AsyncSession, row: int, n: int, run: Run) -> None:
            if await s.scalar(select(Item.n).where(Item.id == row)) != n:
                run.stale += 1

        async def plain_work(row: int, run: Run) -> None:
            n = next(values)
            async with plain() as s:
                await s.execute(update(Item).where(Item.id == row).values(n=n))
                await s.commit()
            async with plain() as s:
                await read_back(s, row, n, run)

        async def routed_work(row: int, run: Run) -> None:
            n = next(values)
            async with db.session() as s:
                await s.execute(update(Item).where(Item.id == row).values(n=n))
            async with db.session() as s:
                await read_back(s, row, n, run)

        async def transaction_work(row: int, run: Run) -> None:
            n = next(values)

            async def write(s: AsyncSession) -> None:
                await s.execute(update(Item).where(Item.id == row).values(n=n))

            await db.run_transaction(write)
            async with db.session() as s:
                await read_back(s, row, n, run)

        variants: dict[str, Work | None] = {
            "idle (the ticker alone)": None,
            "plain async SQLAlchemy, writer only": plain_work,
            "aurora-access, db.session()": routed_work,
            "aurora-access, run_transaction writes": transaction_work,
        }
        for work in variants.values():  # warm up: pools filled, statements cached
            if work is not None:
                await measure(probe, Run(), args.tasks, work, for_seconds(1.0))
        runs = {name: Run() for name in variants}
        for _ in range(args.rounds):
            order = list(variants)
            random.shuffle(order)
            for name in order:
                await measure(probe, runs[name], args.tasks, variants[name],
                              for_seconds(args.seconds), args.rate)

        failover = Run()

        async def through_failover(stop: asyncio.Event) -> None:
            await asyncio.sleep(args.before)
            report = await asyncio.to_thread(cluster.failover)
            failover.note = str(report)
            await asyncio.sleep(args.after)
            stop.set()

        await measure(probe, failover, args.tasks, transaction_work, through_failover,
                      args.rate)
        runs["aurora-access, run_transaction writes, through a writer failover"] = failover
        return runs, db.stats()
    finally:
        await plain_engine.dispose()
        await db.close()


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def report(args: argparse.Namespace, runs: dict[str, Run], stats: dict[str, int]) -> None:
    pace = f"{args.rate:g} operations/s in all" if args.rate else "as fast as they go"
    print(f"(a) {args.engine}: event loop delay (a 1 ms ticker), {args.tasks} tasks each "
          f"writing its row and reading it back ({pace}), readers lagging {args.lag_ms} ms, "
          f"pools {args.pool_size} + {args.max_overflow} per engine"
          f"{''.join(f', {k}={v}' for k, v in args.env)}"
          f"{'' if args.switch_interval is None else f', switch interval {args.switch_interval}'}"
          f"; {args.rounds} rounds x {args.seconds:g} s per variant")
    print("| run | delay p50 ms | p99 ms | max ms | delays > 20 ms | longest callback ms | "
          "longest GC ms | loop in callbacks % (CPU %) | ops/s | stale reads | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, run in runs.items():
        longest = max(run.callbacks)[0] if run.callbacks else 0.0
        errors = ", ".join(f"{k} {v}" for k, v in run.errors.most_common()) or "0"
        print(f"| {name} | {_ms(percentile(run.delays, 50))} | "
              f"{_ms(percentile(run.delays, 99))} | {_ms(max(run.delays, default=0.0))} | "
              f"{sum(d > STALL_S for d in run.delays)} of {len(run.delays)} | {_ms(longest)} | "
              f"{_ms(run.gc_max_s)} | {run.busy_s / run.seconds:.0%} "
              f"({run.busy_cpu_s / run.seconds:.0%}) | {run.ops_timed / run.seconds:.0f} | "
              f"{run.stale} of {run.ops} | {errors} |")
    plain = runs["plain async SQLAlchemy, writer only"]
    print()
    print("| aurora-access vs plain | value | target |")
    print("|---|---|---|")
    for name, run in runs.items():
        if not name.startswith("aurora-access"):
            continue
        added = percentile(run.delays, 99) - percentile(plain.delays, 99)
        print(f"| {name}: added p99 delay | {_ms(added)} ms | <= 5 ms |")
        print(f"| {name}: longest stall (max delay) | {_ms(max(run.delays, default=0.0))} ms "
              "| <= 20 ms |")
        print(f"| {name}: stale reads | {run.stale} | 0 |")
    note = runs["aurora-access, run_transaction writes, through a writer failover"].note
    print(f"\n{note}\nstats: {stats}")
    print("\nlongest callbacks (ms, what):")
    for name, run in runs.items():
        top = sorted(run.callbacks, reverse=True)
        print(f"  {name}: " + "; ".join(f"{took * 1e3:.1f} {what}" for took, _, what, _ in top))
        if args.diagnose:
            calls = ", ".join(f"{k} {v / run.seconds:.0f}/s" for k, v in
                              run.to_thread.most_common(6)) or "none"
            print(f"    GC-tracked objects at each start: {run.gc_objects}; longest GC "
                  f"{_ms(run.gc_max_s)} ms wall, {_ms(run.gc_max_cpu_s)} ms CPU "
                  f"({run.gc_max_info}); asyncio.to_thread calls: {calls}")
            print("    connections opened (closed) by host: " + (", ".join(
                f"{host} {n / run.seconds:.1f}/s ({run.closes[host] / run.seconds:.1f}/s)"
                for host, n in sorted(run.connects.items())) or "none"))
        for took, _, what, stacks in top:
            for stack in stacks[:3] if args.diagnose else []:
                print(f"    -- {took * 1e3:.1f} ms, {what}, sampled while running:\n"
                      + "".join(f"    {line}\n" for line in stack.splitlines()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["postgresql", "mysql"], default="postgresql")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--lag-ms", type=int, default=None,
                        help="replica lag (default 50 ms; 1000 on MariaDB, whole seconds)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="operations a second in all, paced (default: as fast as they go, "
                             "which saturates the loop: its delay then measures CPU per "
                             "operation rather than blocking)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", type=float, default=3.0,
                        help="seconds of traffic before the failover")
    parser.add_argument("--after", type=float, default=5.0,
                        help="seconds of traffic after the failover returned")
    parser.add_argument("--pool-size", type=int, default=5,
                        help="per engine, both sides (SQLAlchemy's and aurora-access' default)")
    parser.add_argument("--max-overflow", type=int, default=10)
    parser.add_argument("--env", action="append", default=[], type=lambda v: v.split("=", 1),
                        metavar="AURORA_X=VALUE", help="a setting for the library (repeatable)")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval (seconds; Python's default 0.005)")
    parser.add_argument("--diagnose", action="store_true",
                        help="sample the loop thread's stack during long callbacks")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.lag_ms is None:
        args.lag_ms = 1000 if args.engine == "mysql" else 50
    if args.quick:
        args.seconds, args.rounds, args.before, args.after = 1.0, 1, 1.0, 1.0
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    began = time.monotonic()
    probe = LoopProbe(sample=args.diagnose)
    with item_cluster(args.engine, readers=2, replica_lag_ms=args.lag_ms,
                      rows=max(args.tasks, 1)) as cluster:
        probe.install()
        try:
            runs, stats = asyncio.run(main_async(cluster, args, probe))
        finally:
            probe.uninstall()
    report(args, runs, stats)
    print(f"elapsed: {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
