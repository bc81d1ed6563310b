"""Readers added and removed under read load (issue 14): how soon a new reader serves reads, and
what removing one costs the readers' callers.

8 threads read in a loop (each read: a routed session, one statement) while a reader is added
(``LocalCluster.add_reader``) and, once it has served a read, removed again, ``--cycles`` times.
Reported: add and remove durations, the time from ``add_reader()`` returning to the first read
served by the new reader, read errors (target 0) and retries, and the read latency around the
changes.

    .venv/bin/python benchmarks/readers_come_and_go.py [--engine mysql] [--cycles 20]
        [--refresh 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from sqlalchemy import text

from aurora_access import Database
from aurora_access.local import LocalCluster, free_port

WHERE = {"postgresql": "SELECT aurora_db_instance_identifier()",
         "mysql": "SELECT CAST(@@server_id AS CHAR)"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["postgresql", "mysql"], default="postgresql")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--refresh", type=float, default=1.0,
                        help="AURORA_TOPOLOGY_REFRESH_S (default: the library's default)")
    args = parser.parse_args()
    with LocalCluster(engine=args.engine, port=free_port(readers=3), readers=1) as cluster:
        db = Database.from_env({**cluster.env(),
                                "AURORA_TOPOLOGY_REFRESH_S": str(args.refresh)})
        served: list[tuple[float, str, float]] = []  # (when, instance, latency)
        errors: list[str] = []
        stop = threading.Event()
        sql = text(WHERE[args.engine])

        def read() -> None:
            while not stop.is_set():
                began = time.monotonic()
                try:
                    with db.session() as s:
                        instance = str(s.execute(sql).scalar())
                    served.append((began, instance, time.monotonic() - began))
                except Exception as exc:
                    errors.append(type(exc).__name__)
                time.sleep(0.002)

        threads = [threading.Thread(target=read) for _ in range(args.threads)]
        for thread in threads:
            thread.start()
        adds, removes, first_reads = [], [], []
        try:
            time.sleep(1.0)
            for _ in range(args.cycles):
                began = time.monotonic()
                added = cluster.add_reader()
                ready = time.monotonic()
                adds.append(ready - began)
                while not any(i == added.id and t >= ready for t, i, _ in served[-3000:]):
                    time.sleep(0.002)
                first_reads.append(min(t for t, i, _ in served[-3000:]
                                       if i == added.id and t >= ready) - ready)
                time.sleep(0.2)
                removes.append(cluster.remove_reader(added.id))
                time.sleep(0.2)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        latencies = sorted(latency for _, _, latency in served)
        stats = db.stats()
        db.close()

    def ms(values: list[float]) -> str:
        return (f"median {statistics.median(values) * 1000:.0f} ms, "
                f"max {max(values) * 1000:.0f} ms")

    print(f"(a) {args.engine}: {args.threads} threads reading, {args.cycles} readers added and "
          f"removed, AURORA_TOPOLOGY_REFRESH_S={args.refresh}")
    print("| measure | value |")
    print("|---|---|")
    print(f"| add_reader() | {ms(adds)} |")
    print(f"| remove_reader() | {ms(removes)} |")
    print(f"| first read served by the new reader after add_reader() returned | "
          f"{ms(first_reads)} |")
    print(f"| reads, errors, retried | {len(served)}, {len(errors)} "
          f"{sorted(set(errors)) or ''}, {stats['retries']} |")
    print(f"| read latency p50 / p99 / max | {latencies[len(latencies) // 2] * 1000:.2f} / "
          f"{latencies[int(len(latencies) * 0.99)] * 1000:.2f} / {latencies[-1] * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
