"""``aurora-access demo``: shop traffic through the library while the writer fails over.

Without configuration it starts a local cluster (the engine of ``--engine``, 2 readers, the
cluster endpoint lagging 5 s behind a failover as Aurora's DNS does), loads the catalogue and
runs ``--threads`` shoppers (threads on a ``Database``; with ``--async``, asyncio tasks on an
``AsyncDatabase`` in one event loop) for ``--duration`` seconds, failing the writer over every
``--failover-every`` seconds. With ``AURORA_CLUSTER_ENDPOINT`` set it runs against that cluster
instead and fails it over only when ``--failover-every`` is given, through RDS's
``failover_db_cluster``.

At the end every acknowledged order is looked for on the writer: the summary counts orders lost
(acknowledged, absent), doubled (present twice, or present without having been acknowledged),
stale reads (an order history, read right after its checkout, that missed it) and each
failover's recovery time (from the failover's start to the end of the first checkout that began
after it and succeeded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy import func, select

from ..async_database import AsyncDatabase
from ..base import BaseDatabase
from ..database import Database
from ..local import LocalCluster, free_port
from ..settings import Settings
from .metrics import in_memory_meter, summarize_metrics
from .models import Product
from .shop import create_schema
from .summary import percentiles, print_summary, recoveries, stock_and_sold, summarize
from .view import EventHandler, Screen, Snapshot
from .workload import AsyncShopper, Shopper, Tally, load_catalog

CUSTOMERS = 1000
STOCK_EACH = 10_000_000  # never sold out: an order refused for stock would be noise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=60.0, metavar="S")
    parser.add_argument("--failover-every", type=float, default=None, metavar="S",
                        help="seconds between writer failovers (local default 15; against "
                             "AWS only when given)")
    parser.add_argument("--threads", type=int, default=8, help="shoppers (threads, or tasks "
                        "with --async)")
    parser.add_argument("--async", dest="use_async", action="store_true",
                        help="run the shoppers as asyncio tasks of one event loop, through "
                             "AsyncDatabase")
    parser.add_argument("--products", type=int, default=20_000,
                        help="catalogue size (the case study has 500,000; 20,000 loads in "
                             "about a second)")
    parser.add_argument("--engine", choices=["postgresql", "mysql"], default="postgresql",
                        help="engine of the local cluster")
    parser.add_argument("--readers", type=int, default=2, help="readers of the local cluster")
    parser.add_argument("--cluster-id", default=None,
                        help="RDS cluster identifier for failovers against AWS (default: the "
                             "first label of AURORA_CLUSTER_ENDPOINT)")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object (the live view goes to "
                             "stderr)")
    parser.add_argument("--metrics", action="store_true",
                        help="record the library's OpenTelemetry metrics in an in-memory "
                             "reader and print each one, its series and attributes, at the "
                             "end (needs opentelemetry-sdk)")


@dataclass
class Failovers:
    """How the demo fails the writer over: the local cluster, or RDS."""

    fail: Callable[[], str]  # starts a failover, returns what it did
    name: str


def local_failovers(cluster: LocalCluster) -> Failovers:
    return Failovers(lambda: str(cluster.failover()), "local cluster")


def aws_failovers(settings: Settings, cluster_id: str | None,
                  client: Any = None) -> Failovers:
    """RDS ``failover_db_cluster`` on the cluster behind the endpoint. The cluster id is the
    endpoint's first label (``shop.cluster-abc123.eu-west-1.rds.amazonaws.com`` -> ``shop``)
    unless given."""
    identifier = cluster_id or settings.cluster_endpoint.split(".", 1)[0]
    if client is None:
        import boto3  # noqa: PLC0415 - only needed against AWS

        client = boto3.client("rds", region_name=settings.secret_region)

    def fail() -> str:
        client.failover_db_cluster(DBClusterIdentifier=identifier)
        return f"failover_db_cluster({identifier}) requested"

    return Failovers(fail, f"RDS cluster {identifier}")


def run(args: argparse.Namespace, environ: dict[str, str] | None = None,
        out: TextIO = sys.stdout, live: TextIO = sys.stderr, rds_client: Any = None) -> int:
    """Run the demo; 0 if nothing was lost, doubled or read stale, else 1. ``rds_client``
    replaces boto3's RDS client (tests)."""
    environ = dict(os.environ if environ is None else environ)
    provider, reader = in_memory_meter() if args.metrics else (None, None)
    with ExitStack() as stack:
        screen = stack.enter_context(Screen(live))
        stack.enter_context(_library_log(screen))
        if environ.get("AURORA_CLUSTER_ENDPOINT"):
            settings = Settings.from_env(environ)
            every = args.failover_every
            failovers = aws_failovers(settings, args.cluster_id, rds_client) if every else None
            where = f"{settings.engine} cluster at {settings.cluster_endpoint}"
        else:
            with screen.status(f"starting a local {args.engine} cluster ({args.readers} "
                               "readers)..."):
                cluster = stack.enter_context(LocalCluster(
                    engine=args.engine, readers=args.readers, endpoint_delay_s=5.0,
                    port=free_port(args.readers)))
            settings = Settings.from_env(cluster.env())
            every = 15.0 if args.failover_every is None else args.failover_every
            failovers = local_failovers(cluster) if every else None
            where = (f"local {args.engine} cluster, {args.readers} readers, up in "
                     f"{cluster.started_in_s:.2f} s")
        screen.note(where)
        db = Database(settings, meter_provider=provider)
        stack.callback(db.close)
        _prepare_catalog(db, args, screen)
        # pools and lag are read while the Databases are open, totals at the very end
        during: dict[str, Any] = {}
        summary = _traffic(db, args, failovers, every, screen, lambda: during.update(
            summarize_metrics(reader) if reader is not None else {}))
    if reader is not None:
        summary["metrics"] = dict(sorted({**during, **summarize_metrics(reader)}.items()))
    if args.json:
        print(json.dumps(summary), file=out)
    else:
        print_summary(summary, out)
    bad = summary["orders_lost"] or summary["orders_doubled"] or summary["stale_reads"]
    return 1 if bad else 0


def _prepare_catalog(db: Database, args: argparse.Namespace, screen: Screen) -> None:
    """The schema and the catalogue (reused if a run before left one; ``args.products``
    becomes its size), with a spinner while it loads: a second or more of silence else."""
    began = time.monotonic()
    create_schema(db.engine("writer"))
    with db.writer() as s:
        existing = s.scalar(select(func.count()).select_from(Product)) or 0
    if existing:  # a cluster the demo ran on before: its catalogue is reused
        args.products = existing
        screen.note(f"reusing the {existing:,} products already there")
    else:
        with screen.status(f"loading {args.products:,} products and {CUSTOMERS:,} "
                           "customers..."):
            load_catalog(db.engine("writer"), args.products, CUSTOMERS, STOCK_EACH)
        screen.note(f"{args.products:,} products and {CUSTOMERS:,} customers loaded in "
                    f"{time.monotonic() - began:.2f} s")
    db.forget_commits()


def _traffic(db: Database, args: argparse.Namespace, failovers: Failovers | None,
             every: float | None, screen: Screen,
             traffic_over: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """The shoppers' run and its summary; ``traffic_over`` is called when the shoppers
    stopped, their Database still open."""
    tally = Tally()
    with db.writer() as s:
        before = stock_and_sold(s)
    per_shopper = CUSTOMERS // args.threads
    customers = [list(range(n * per_shopper + 1, (n + 1) * per_shopper + 1))
                 for n in range(args.threads)]
    if not args.use_async:
        stats, elapsed, failed_at = _run_threads(db, tally, customers, args, failovers, every,
                                                 screen)
        traffic_over()
        return summarize(db, stats, tally, elapsed, failed_at, args, before)
    db.close()  # one library instance watching the cluster, as in an async service
    stats, elapsed, failed_at = _run_tasks(db.settings, tally, customers, args, failovers,
                                           every, screen, db.meter_provider, traffic_over)
    with Database(db.settings, meter_provider=db.meter_provider) as checking:
        return summarize(checking, stats, tally, elapsed, failed_at, args, before)


def _run_threads(db: Database, tally: Tally, customers: list[list[int]],
                 args: argparse.Namespace, failovers: Failovers | None, every: float | None,
                 screen: Screen) -> tuple[dict[str, int], float, list[float]]:
    """One thread per shopper, all on ``db``: (its stats, seconds run, failover times)."""
    stop = threading.Event()
    threads = [threading.Thread(target=Shopper(db, tally, args.products, mine, seed=n).run,
                                args=(stop,), name=f"shopper-{n}", daemon=True)
               for n, mine in enumerate(customers)]
    for thread in threads:
        thread.start()
    try:
        elapsed, failed_at = _fail_over_meanwhile(db, tally, args, failovers, every, screen)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    return db.stats(), elapsed, failed_at


def _run_tasks(settings: Settings, tally: Tally, customers: list[list[int]],
               args: argparse.Namespace, failovers: Failovers | None, every: float | None,
               screen: Screen, meter_provider: Any = None,
               traffic_over: Callable[[], None] = lambda: None,
               ) -> tuple[dict[str, int], float, list[float]]:
    """``--async``: one asyncio task per shopper on an AsyncDatabase of the same settings,
    one event loop; failovers and the live view from a thread."""

    async def main() -> tuple[dict[str, int], float, list[float]]:
        async with AsyncDatabase(settings, meter_provider=meter_provider) as adb:
            await adb.wait_ready()
            stop = asyncio.Event()
            tasks = [asyncio.create_task(AsyncShopper(adb, tally, args.products, mine,
                                                      seed=n).run(stop))
                     for n, mine in enumerate(customers)]
            try:
                elapsed, failed_at = await asyncio.to_thread(
                    _fail_over_meanwhile, adb, tally, args, failovers, every, screen)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 60)
            traffic_over()
            return adb.stats(), elapsed, failed_at

    return asyncio.run(main())


def _fail_over_meanwhile(db: BaseDatabase, tally: Tally, args: argparse.Namespace,
                         failovers: Failovers | None, every: float | None,
                         screen: Screen) -> tuple[float, list[float]]:
    """While the shoppers run: fail over every ``every`` seconds and show the live view, for
    ``--duration`` seconds; (seconds run, when each failover began)."""
    failed_at: list[float] = []
    started = time.monotonic()
    with screen.board(_snapshots(db, tally, started, args.duration, failed_at)):
        next_failover = started + every if failovers and every else float("inf")
        while (now := time.monotonic()) < started + args.duration:
            if now >= next_failover and failovers is not None and every is not None:
                screen.note(f"failing the writer over ({failovers.name})")
                failed_at.append(time.monotonic())
                report = failovers.fail()  # returns when it is over: the library spoke meanwhile
                screen.note(report)
                next_failover += every
            time.sleep(0.05)
    return time.monotonic() - started, failed_at


def _snapshots(db: BaseDatabase, tally: Tally, started: float, duration: float,
               failed_at: list[float]) -> Callable[[float], Snapshot]:
    """What the live view asks every refresh: the traffic now, operations/s and latency over
    the last ``window`` seconds."""

    def snapshot(window: float) -> Snapshot:
        now = time.monotonic()
        with tally.lock:
            recent = _since(tally.latencies, now - window)
            orders, stale = len(tally.acknowledged), tally.stale_reads
        stats = db.stats()
        pct = percentiles(recent)
        last = recoveries(tally, failed_at[-1:])
        return Snapshot(
            elapsed_s=now - started, duration_s=duration, ops_per_s=len(recent) / window,
            orders=orders, stale_reads=stale, reads_on_readers=stats["reads_on_readers"],
            reads_on_writer=stats["reads_on_writer"], p50_ms=pct["p50"], p99_ms=pct["p99"],
            failovers=len(failed_at), last_recovery_s=last[0] if last else None)

    return snapshot


def _since(latencies: list[tuple[float, float, str]], since: float) -> list[float]:
    """The durations of the operations that finished after ``since``, read from the end:
    the list grows in finishing order, and scanning all of it every second holds the
    shoppers' lock longer and longer as the run goes on."""
    recent: list[float] = []
    for finished, took, _ in reversed(latencies):
        if finished <= since:
            break
        recent.append(took)
    return recent


@contextmanager
def _library_log(screen: Screen) -> Iterator[None]:
    """The library's warnings (a writer lost, found again) on the screen, each burst once
    (every shopper that loses the writer says so); psycopg's notes about pipelines on lost
    connections are noise here."""
    handler = EventHandler(screen.events)
    library, driver = logging.getLogger("aurora_access"), logging.getLogger("psycopg")
    levels = library.level, driver.level
    library.addHandler(handler)
    library.setLevel(logging.WARNING)
    driver.setLevel(logging.ERROR)
    try:
        yield
    finally:
        library.removeHandler(handler)
        library.setLevel(levels[0])
        driver.setLevel(levels[1])
