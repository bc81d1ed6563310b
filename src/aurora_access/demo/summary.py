"""The demo's summary: every acknowledged order looked for on the writer (lost, doubled,
unknown), stock against orders, each failover's recovery, latencies and the library's counters;
printed as a table or kept for JSON."""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from typing import Any, TextIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..database import Database
from .metrics import metric_lines
from .models import Order, OrderLine, Stock
from .workload import Tally


def stock_and_sold(session: Session) -> tuple[int, int]:
    stock = session.scalar(select(func.coalesce(func.sum(Stock.quantity), 0))) or 0
    sold = session.scalar(select(func.coalesce(func.sum(OrderLine.quantity), 0))) or 0
    return int(stock), int(sold)


def recoveries(tally: Tally, failed_at: list[float]) -> list[float | None]:
    """Per failover: from its start to the end of the first checkout that began after it."""
    with tally.lock:
        checkouts = sorted(tally.checkouts)
    recoveries: list[float | None] = []
    for at in failed_at:
        done = [end for start, end in checkouts if start >= at]
        recoveries.append(round(min(done) - at, 3) if done else None)
    return recoveries


def summarize(db: Database, stats: dict[str, int], tally: Tally, elapsed: float,
             failed_at: list[float], args: argparse.Namespace,
             before: tuple[int, int]) -> dict[str, Any]:
    attempted = sorted(tally.attempted)
    with db.writer() as s:
        present: Counter[str] = Counter()
        for first in range(0, len(attempted), 1000):
            present.update(s.scalars(select(Order.id).where(
                Order.id.in_(attempted[first:first + 1000]))))
        stock, sold = stock_and_sold(s)
    acknowledged, unknown = dict(tally.acknowledged), dict(tally.unknown)
    lost = [o for o in acknowledged if o not in present]
    # twice, or there without having been acknowledged (a failed attempt that wrote anyway)
    doubled = [o for o, n in present.items()
               if n > 1 or (o not in acknowledged and o not in unknown)]
    kinds = Counter(kind for _, _, kind in tally.latencies)
    return {
        "duration_s": round(elapsed, 1),
        "threads": args.threads,
        "orders_placed": len(acknowledged),
        "orders_lost": len(lost),
        "orders_doubled": len(doubled),
        "orders_outcome_unknown": len(unknown),
        "orders_outcome_unknown_present": sum(o in present for o in unknown),
        "stale_reads": tally.stale_reads,
        "stock_consistent": before[0] - stock == sold - before[1],
        "failovers": len(failed_at),
        "recovery_s": recoveries(tally, failed_at),
        "operations": dict(kinds),
        "operations_per_s": round(sum(kinds.values()) / elapsed, 1),
        "latency_ms": percentiles([d for _, d, _ in tally.latencies]),
        "checkout_latency_ms": percentiles(
            [d for _, d, kind in tally.latencies if kind == "checkout"]),
        "reads_on_readers": stats["reads_on_readers"],
        "reads_on_writer": stats["reads_on_writer"],
        "ryw_fallbacks": stats["ryw_fallbacks"],
        "retries": stats["retries"],
        "abandoned_rounds": dict(tally.failed),
    }


def percentiles(values: list[float]) -> dict[str, float | None]:
    if len(values) < 2:
        return {"p50": None, "p99": None}
    cuts = statistics.quantiles(values, n=100)
    return {"p50": round(cuts[49] * 1000, 2), "p99": round(cuts[98] * 1000, 2)}


def print_summary(summary: dict[str, Any], out: TextIO) -> None:
    recoveries = ", ".join("not recovered" if r is None else f"{r:.2f} s"
                           for r in summary["recovery_s"]) or "-"
    rows = [
        ("duration", f"{summary['duration_s']} s, {summary['threads']} shoppers"),
        ("orders placed", summary["orders_placed"]),
        ("orders lost (must be 0)", summary["orders_lost"]),
        ("orders doubled (must be 0)", summary["orders_doubled"]),
        ("stale reads (must be 0)", summary["stale_reads"]),
        ("orders with unknown outcome", f"{summary['orders_outcome_unknown']} "
                                        f"({summary['orders_outcome_unknown_present']} present)"),
        ("stock consistent with orders", summary["stock_consistent"]),
        ("failovers", summary["failovers"]),
        ("recovery per failover", recoveries),
        ("throughput", f"{summary['operations_per_s']} operations/s"),
        ("latency p50 / p99", f"{summary['latency_ms']['p50']} / "
                              f"{summary['latency_ms']['p99']} ms"),
        ("checkout p50 / p99", f"{summary['checkout_latency_ms']['p50']} / "
                               f"{summary['checkout_latency_ms']['p99']} ms"),
        ("reads on readers / writer", f"{summary['reads_on_readers']} / "
                                      f"{summary['reads_on_writer']}"),
        ("read-your-writes fallbacks", summary["ryw_fallbacks"]),
        ("transparent retries", summary["retries"]),
        ("rounds abandoned (documented errors)", summary["abandoned_rounds"] or 0),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}", file=out)
    if "metrics" in summary:
        print("\nOpenTelemetry metrics (in-memory reader): name [series, total] attributes",
              file=out)
        for line in metric_lines(summary["metrics"]):
            print(f"  {line}", file=out)
