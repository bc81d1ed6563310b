"""What OpenTelemetry metrics cost a routed read (issue 15; target: within 3 %).

Two Databases on one local cluster, one with a MeterProvider (the SDK, an in-memory reader
collected at the end, as a periodic exporter would between exports), one without; routed reads
(`db.session()` + select by primary key, on readers) in interleaved, shuffled rounds; p50 of
each read. Also what the write path pays.

    .venv/bin/python benchmarks/metrics_overhead.py [--engine mysql] [--rounds 20] [--ops 200]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import select, update

from aurora_access import Database
from aurora_access.demo.models import Customer
from aurora_access.demo.shop import create_schema, seed
from aurora_access.local import LocalCluster, free_port


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["postgresql", "mysql"], default="postgresql")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--ops", type=int, default=200)
    args = parser.parse_args()
    with LocalCluster(engine=args.engine, port=free_port(), readers=2) as cluster:
        plain = Database.from_env(cluster.env())
        create_schema(plain.engine("writer"))
        with plain.writer() as s:
            seed(s)
        cluster.wait_replayed()
        reader = InMemoryMetricReader()
        metered = Database.from_env(cluster.env(),
                                    meter_provider=MeterProvider(metric_readers=[reader]))
        variants = {"without metrics": plain, "with OpenTelemetry metrics": metered}
        reads: dict[str, list[float]] = {name: [] for name in variants}
        writes: dict[str, list[float]] = {name: [] for name in variants}

        def read(db: Database) -> None:
            with db.session() as s:
                s.scalar(select(Customer.name).where(Customer.id == 5))

        def write(db: Database) -> None:
            with db.session() as s:
                s.execute(update(Customer).where(Customer.id == 6).values(name="x"))

        def timed(fn: Callable[[Database], None], db: Database, into: list[float]) -> None:
            for _ in range(args.ops):
                began = time.perf_counter()
                fn(db)
                into.append(time.perf_counter() - began)

        for db in variants.values():  # warm up: connections, prepared statements
            timed(read, db, [])
            timed(write, db, [])
        for _ in range(args.rounds):
            order = list(variants.items())
            random.shuffle(order)
            for name, db in order:
                db.forget_commits()  # plain reads: no commit of this thread to wait for
                timed(read, db, reads[name])
            for name, db in order:
                timed(write, db, writes[name])
        collected = reader.get_metrics_data()
        names = sorted({m.name for r in collected.resource_metrics for sc in r.scope_metrics
                        for m in sc.metrics}) if collected else []
        plain.close()
        metered.close()

    def p50(values: list[float]) -> float:
        return statistics.median(values) * 1e6

    print(f"(a) {args.engine}: {args.rounds} interleaved rounds x {args.ops} operations per "
          "variant; p50 per operation")
    print("| variant | routed read p50 us | routed write p50 us |")
    print("|---|---|---|")
    for name in variants:
        print(f"| {name} | {p50(reads[name]):.0f} | {p50(writes[name]):.0f} |")
    base, on = "without metrics", "with OpenTelemetry metrics"
    print(f"| with / without | {p50(reads[on]) / p50(reads[base]):.3f} | "
          f"{p50(writes[on]) / p50(writes[base]):.3f} |")
    print(f"metrics recorded: {', '.join(names)}")


if __name__ == "__main__":
    main()
