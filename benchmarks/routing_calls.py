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
import threading
from collections.abc import Callable

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from aurora_access import Database
from aurora_access.demo.models import Customer, Product
from aurora_access.demo.shop import create_schema, seed
from aurora_access.local import LocalCluster, free_port


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
    with LocalCluster(readers=1, port=free_port(1)) as cluster:
        db = Database.from_env(cluster.env())
        create_schema(db.engine("writer"))
        with db.writer() as s:
            seed(s)
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
                customer = s.get(Customer, i % 50 + 1, with_for_update=True)
                assert customer is not None
                customer.name = f"p{i}"
                s.commit()

        def routed_write(i: int) -> None:
            with db.session() as s:
                customer = s.get(Customer, i % 50 + 1, with_for_update=True)
                assert customer is not None
                customer.name = f"r{i}"

        counts: dict[str, float] = {}

        def run() -> None:  # a fresh context, as a request would have
            for name, op in [("read, plain", plain_read), ("read, routed", routed_read),
                             ("write, plain", plain_write), ("write, routed", routed_write)]:
                counts[name] = calls_per_op(op, args.ops)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        db.close()
    print("| operation | Python calls, plain | Python calls, routed | routed / plain |")
    print("|---|---|---|---|")
    for kind in ("read", "write"):
        plain, routed = counts[f"{kind}, plain"], counts[f"{kind}, routed"]
        print(f"| {kind} | {plain:.0f} | {routed:.0f} | {routed / plain:.3f} |")


if __name__ == "__main__":
    main()
