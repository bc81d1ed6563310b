"""Times the local cluster: start from a warm template, and each step of a failover.

Run: .venv/bin/python benchmarks/local_cluster.py [--engine postgresql|mysql] [--runs 5]
     [--history N]
Prints a Markdown table of medians (and min/max) for benchmarks/RESULTS.md. ``--history N``
commits N transactions before each failover: the old writer's way back as a reader may depend
on the history (MariaDB rebuilds it and replays the new writer's whole binary log).
"""

from __future__ import annotations

import argparse
import statistics
import time

import sqlalchemy as sa

from aurora_access.local import LocalCluster, free_port


def commit_history(cluster: LocalCluster, transactions: int) -> None:
    """``transactions`` single-row commits on the writer (as the application user)."""
    engine = sa.create_engine(cluster.app_url(cluster.writer.host))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE history (id int PRIMARY KEY, pad varchar(200))"))
        with engine.connect() as conn:
            for i in range(transactions):
                conn.execute(sa.text("INSERT INTO history VALUES (:id, :pad)"),
                             {"id": i, "pad": "x" * 200})
                conn.commit()
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["postgresql", "mysql"], default="postgresql")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--history", type=int, default=0, metavar="N",
                        help="transactions committed before each failover")
    args = parser.parse_args()
    # warm the template once
    LocalCluster(engine=args.engine, readers=0, port=free_port(0))._servers.template()
    history = f" ({args.history} transactions before)" if args.history else ""
    samples: dict[str, list[float]] = {
        f"up: 1 writer + {args.readers} readers streaming": [],
        f"failover{history}: crash -> reader promoted": [],
        f"failover{history}: crash -> new writer commits a write": [],
        f"failover{history}: crash -> old writer streaming as a reader": [],
        "down: every process stopped": [],
    }
    keys = list(samples)
    for _ in range(args.runs):
        cluster = LocalCluster(engine=args.engine, readers=args.readers,
                               port=free_port(args.readers)).start()
        try:
            assert cluster.started_in_s is not None
            samples[keys[0]].append(cluster.started_in_s)
            if args.history:
                commit_history(cluster, args.history)
            report = cluster.failover()
            samples[keys[1]].append(report.promoted_s)
            samples[keys[2]].append(report.writable_s)
            assert report.old_writer_back_s is not None
            samples[keys[3]].append(report.old_writer_back_s)
        finally:
            began = time.monotonic()
            cluster.close()
            samples[keys[4]].append(time.monotonic() - began)
    print(f"| {args.engine} step ({args.runs} runs) | median | min | max |")
    print("|---|---|---|---|")
    for name, values in samples.items():
        print(f"| {name} | {statistics.median(values):.3f} s | {min(values):.3f} s | "
              f"{max(values):.3f} s |")


if __name__ == "__main__":
    main()
