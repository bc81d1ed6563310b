"""Python function calls per operation, routed against plain SQLAlchemy: a deterministic
measure of what routing adds, free of the timing noise of a shared machine.

Run: .venv/bin/python benchmarks/routing_calls.py [--ops 300]

Counts (cProfile) the calls of a read (``Session.get``) and of a write (get FOR UPDATE, rename,
commit) done through a plain ``Session`` and through ``db.session()``, on one local cluster.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
from collections.abc import Callable

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from aurora_access.demo.models import Product
from workload import in_fresh_thread, rename_customer, shop


def calls_per_op(op: Callable[[int], object], ops: int) -> float:
    for i in range(50):  # warm up: pools, caches, prepared statements
        op(i)
    profile = cProfile.Profile()
    profile.enable()
    for i in range(ops):
        op(i)
    profile.disable()
    return pstats.Stats(profile).total_calls / ops  # type: ignore[attr-defined, no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=300)
    args = parser.parse_args()
    with shop() as (cluster, db):
        reader = create_engine(cluster.app_url(cluster.readers[0].host))
        writer = create_engine(cluster.app_url(cluster.writer.host))

        def plain_read(i: int) -> object:
            with Session(reader) as s:
                return s.get(Product, i % 50 + 1)

        def routed_read(i: int) -> object:
            with db.session() as s:
                return s.get(Product, i % 50 + 1)

        def plain_write(i: int) -> None:
            with Session(writer) as s:
                rename_customer(s, i % 50 + 1, f"p{i}")
                s.commit()

        def routed_write(i: int) -> None:
            with db.session() as s:
                rename_customer(s, i % 50 + 1, f"r{i}")

        ops = [("read, plain", plain_read), ("read, routed", routed_read),
               ("write, plain", plain_write), ("write, routed", routed_write)]
        counts = in_fresh_thread(lambda: {name: calls_per_op(op, args.ops) for name, op in ops})
    print("| operation | Python calls, plain | Python calls, routed | routed / plain |")
    print("|---|---|---|---|")
    for kind in ("read", "write"):
        plain, routed = counts[f"{kind}, plain"], counts[f"{kind}, routed"]
        print(f"| {kind} | {plain:.0f} | {routed:.0f} | {routed / plain:.3f} |")


if __name__ == "__main__":
    main()
