"""Times the local cluster: start from a warm template, and each step of a failover.

Run: .venv/bin/python benchmarks/local_cluster.py [--runs 5]
Prints a Markdown table of medians (and min/max) for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

from aurora_access.local import LocalCluster, free_port


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--readers", type=int, default=2)
    args = parser.parse_args()
    LocalCluster(readers=0, port=free_port(0))._servers.template()  # warm the template once
    samples: dict[str, list[float]] = {
        f"up: 1 writer + {args.readers} readers streaming": [],
        "failover: crash -> reader promoted": [],
        "failover: crash -> new writer commits a write": [],
        "failover: crash -> old writer streaming as a reader": [],
        "down: every process stopped": [],
    }
    keys = list(samples)
    for _ in range(args.runs):
        cluster = LocalCluster(readers=args.readers, port=free_port(args.readers)).start()
        try:
            assert cluster.started_in_s is not None
            samples[keys[0]].append(cluster.started_in_s)
            report = cluster.failover()
            samples[keys[1]].append(report.promoted_s)
            samples[keys[2]].append(report.writable_s)
            assert report.old_writer_back_s is not None
            samples[keys[3]].append(report.old_writer_back_s)
        finally:
            began = time.monotonic()
            cluster.close()
            samples[keys[4]].append(time.monotonic() - began)
    print(f"| step ({args.runs} runs) | median | min | max |")
    print("|---|---|---|---|")
    for name, values in samples.items():
        print(f"| {name} | {statistics.median(values):.3f} s | {min(values):.3f} s | "
              f"{max(values):.3f} s |")


if __name__ == "__main__":
    main()
