"""CPU cost of the routing itself, apart from the noise of whole database operations.

Run: .venv/bin/python benchmarks/routing_cpu.py [--calls 50000]

Times, in one thread's CPU time: ``RoutingSession.get_bind`` for a ``Session.get``-style
statement, and opening + closing an empty ``db.session()`` against a plain ``Session``.
"""

from __future__ import annotations

import argparse
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from aurora_access.demo.models import Product
from workload import in_fresh_thread, shop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=50000)
    args = parser.parse_args()
    with shop() as (_, db):
        reader_engine = db.engine("reader")

        def run() -> None:
            n = args.calls
            session = db.sessionmaker()
            statement = select(Product).where(Product.id == 1)
            began = time.thread_time()
            for _ in range(n):
                session.get_bind(clause=statement)
            print(f"get_bind: {(time.thread_time() - began) / n * 1e6:.1f} us")
            session.close()
            began = time.thread_time()
            for _ in range(n // 10):
                with db.session():
                    pass
            routed = (time.thread_time() - began) / (n // 10) * 1e6
            began = time.thread_time()
            for _ in range(n // 10):
                with Session(reader_engine):
                    pass
            plain = (time.thread_time() - began) / (n // 10) * 1e6
            print(f"open + close: db.session() {routed:.1f} us, plain Session {plain:.1f} us")

        in_fresh_thread(run)  # a fresh context, as a request would have


if __name__ == "__main__":
    main()
