"""What resolving commit outcomes costs a write: run_transaction with and without its marker.

Run: .venv/bin/python benchmarks/commit_marker_cost.py [--rounds 6] [--ops 200]
                                                        [--engine postgresql|mysql]

One local cluster (1 writer, 1 reader). Three cases, interleaved round by round, each a write
(get a customer FOR UPDATE, rename it, commit); medians over the rounds of client CPU and wall
time per write: ``db.run_transaction`` (its marker INSERT sent with the COMMIT on PostgreSQL, just
before it on MySQL), the same without the marker, and a ``db.session()`` block.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from aurora_access import RoutingSession
from workload import in_fresh_thread, rename_customer, shop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--engine", choices=["postgresql", "mysql"], default="postgresql")
    args = parser.parse_args()
    with shop(engine=args.engine) as (_, db):
        with_marker = db.dialect.commit_with_marker_statements

        def rename(i: int) -> Callable[[RoutingSession], None]:
            return lambda s: rename_customer(s, i % 50 + 1, f"n{i}")

        def marked(i: int) -> None:
            db.run_transaction(rename(i))

        def unmarked(i: int) -> None:
            db.dialect.commit_with_marker_statements = (  # type: ignore[method-assign]
                lambda marker: [])
            try:
                db.run_transaction(rename(i))
            finally:
                db.dialect.commit_with_marker_statements = with_marker  # type: ignore[method-assign]

        def session_block(i: int) -> None:
            with db.session() as s:
                rename(i)(s)

        cases: dict[str, Callable[[int], None]] = {
            "run_transaction (with its commit marker)": marked,
            "run_transaction without the marker": unmarked,
            "db.session() block": session_block,
        }
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}

        def run() -> None:  # one thread: a context of its own, as a request would have
            for case in cases.values():
                for i in range(50):
                    case(i)
            for _ in range(args.rounds):
                for name, case in cases.items():
                    cpu, wall = time.thread_time(), time.perf_counter()
                    for i in range(args.ops):
                        case(i)
                    samples[name].append(((time.thread_time() - cpu) / args.ops,
                                          (time.perf_counter() - wall) / args.ops))

        in_fresh_thread(run)
    print("| case | client CPU us/write | wall us/write |")
    print("|---|---|---|")
    for name, values in samples.items():
        print(f"| {name} | {statistics.median(v[0] for v in values) * 1e6:.0f} | "
              f"{statistics.median(v[1] for v in values) * 1e6:.0f} |")


if __name__ == "__main__":
    main()
