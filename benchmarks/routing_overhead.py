"""Routed sessions against plain SQLAlchemy and the peer wrapper, side by side in one run.

Run: .venv/bin/python benchmarks/routing_overhead.py [--ops 200] [--rounds 15]
                                                      [--engine postgresql|mysql]

Starts its own local cluster (1 writer, 1 reader, so that every routed read lands on the same
reader as the plain engine). Each case runs ``--ops`` operations per round, in a fresh thread (a
fresh context: no read-your-writes carry-over between cases); cases are interleaved round by
round in a shuffled order; the median per-operation time over the rounds is reported, with ratios
to a raw psycopg autocommit read of the same row on the same reader.

Cases:
- read, raw psycopg: one autocommit connection, ``SELECT ... WHERE id = %s`` (the baseline);
- read, plain SQLAlchemy: ``Session(reader_engine)`` + ``session.get(Product, id)``;
- read, plain SQLAlchemy on an AUTOCOMMIT engine: the best a plain Session can do (shows what
  of the routed read's cost is routing and what is SQLAlchemy's ORM);
- read, routed: ``db.session()`` + ``session.get(Product, id)``;
- read, peer wrapper: aws-advanced-python-wrapper on psycopg (read_write_splitting,
  failover_v2), ``read_only = True``, a read transaction (SELECT + COMMIT) per operation;
- write, plain SQLAlchemy: ``Session(writer_engine)``, get a customer FOR UPDATE, rename, commit;
- write, peer wrapper: the same as raw SQL on a wrapper connection left on the writer
  (read_write_splitting, failover_v2): SELECT ... FOR UPDATE, UPDATE, COMMIT;
- write, routed: the same in ``db.session()``, read-your-writes bookkeeping included;
- write, run_transaction: the same through ``db.run_transaction`` (its commit marker, which lets
  a COMMIT cut off by a failover be resolved, included);
- write then read, routed: the write above followed by a read of the same row in a new session
  of the same context (what read-your-writes costs a read that follows a write).

With ``--engine mysql`` (MariaDB, PyMySQL) the baseline is a raw PyMySQL autocommit connection
and the peer wrapper is left out: it does not support PyMySQL.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pymysql
from aws_advanced_python_wrapper import AwsWrapperConnection
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from aurora_access.demo.models import Customer, Product
from aurora_access.local import LocalCluster
from workload import in_fresh_thread, rename_customer, shop

Op = Callable[[int], object]


def timed(op: Op, ops: int) -> tuple[float, float]:
    """Wall-clock and client-CPU seconds per operation, in a new thread (a new context)."""

    def run() -> tuple[float, float]:
        began, cpu = time.perf_counter(), time.thread_time()
        for i in range(ops):
            op(i)
        return (time.perf_counter() - began) / ops, (time.thread_time() - cpu) / ops

    return in_fresh_thread(run)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--engine", choices=["postgresql", "mysql"], default="postgresql")
    args = parser.parse_args()
    mysql = args.engine == "mysql"

    with shop(products=100, customers=100, engine=args.engine) as (cluster, db):
        time.sleep(0.2)
        reader = cluster.readers[0]
        reader_engine = create_engine(cluster.app_url(reader.host))
        autocommit_engine = create_engine(cluster.app_url(reader.host),
                                          isolation_level="AUTOCOMMIT")
        writer_engine = create_engine(cluster.app_url(cluster.writer.host))
        raw: Any = pymysql.connect(
            host=reader.host, port=cluster.port, user=cluster.user, password=cluster.password,
            database=cluster.database, autocommit=True) if mysql else psycopg.connect(
            host=reader.host, port=cluster.port, user=cluster.user, password=cluster.password,
            dbname=cluster.database, autocommit=True)
        peer = None if mysql else _peer_wrapper(cluster)
        peer_writer = None if mysql else _peer_wrapper(cluster, read_only=False)

        def raw_read(i: int) -> object:
            cur = raw.cursor()
            cur.execute("SELECT id, sku, name, price_cents FROM products WHERE id = %s",
                        (i % 100 + 1,))
            return cur.fetchone()

        def plain_read(i: int) -> object:
            with Session(reader_engine) as s:
                return s.get(Product, i % 100 + 1)

        def autocommit_read(i: int) -> object:
            with Session(autocommit_engine) as s:
                return s.get(Product, i % 100 + 1)

        def routed_read(i: int) -> object:
            with db.session() as s:
                return s.get(Product, i % 100 + 1)

        def peer_read(i: int) -> object:
            assert peer is not None
            with peer.cursor() as cur:
                cur.execute("SELECT id, sku, name, price_cents FROM products WHERE id = %s",
                            (i % 100 + 1,))
                row = cur.fetchone()
            peer.commit()
            return row

        def peer_write(i: int) -> None:
            assert peer_writer is not None
            with peer_writer.cursor() as cur:
                cur.execute("SELECT id, email, name FROM customers WHERE id = %s FOR UPDATE",
                            (i % 100 + 1,))
                cur.fetchone()
                cur.execute("UPDATE customers SET name = %s WHERE id = %s",
                            (f"peer {i}", i % 100 + 1))
            peer_writer.commit()

        def plain_write(i: int) -> None:
            with Session(writer_engine) as s:
                rename_customer(s, i % 100 + 1, f"plain {i}")
                s.commit()

        def routed_write(i: int) -> None:
            with db.session() as s:
                rename_customer(s, i % 100 + 1, f"routed {i}")

        def marked_write(i: int) -> None:
            db.run_transaction(lambda s: rename_customer(s, i % 100 + 1, f"marked {i}"))

        def routed_write_then_read(i: int) -> object:
            routed_write(i)
            with db.session() as s:
                name = s.scalar(select(Customer.name).where(Customer.id == i % 100 + 1))
            assert name == f"routed {i}", "stale read"
            return name

        driver = "PyMySQL" if mysql else "psycopg"
        cases: dict[str, Op] = {
            f"read, raw {driver} autocommit (baseline)": raw_read,
            "read, plain SQLAlchemy Session.get": plain_read,
            "read, plain SQLAlchemy Session.get, AUTOCOMMIT engine": autocommit_read,
            "read, routed db.session() + get": routed_read,
            **({} if mysql else {"read, peer wrapper read transaction": peer_read}),
            "write, plain SQLAlchemy get FOR UPDATE + mutate + commit": plain_write,
            **({} if mysql else {"write, peer wrapper write transaction (raw SQL)": peer_write}),
            "write, routed db.session(), same": routed_write,
            "write, run_transaction, same (commit marker included)": marked_write,
            "write then read, routed (read-your-writes)": routed_write_then_read,
        }
        for op in cases.values():  # warm up: connections, prepared statements, caches
            timed(op, 50)
        timings: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        order = list(cases)
        for _ in range(args.rounds):
            random.shuffle(order)  # no case always runs right after another
            for name in order:
                wall, used = timed(cases[name], args.ops)
                timings[name].append(wall)
                cpu[name].append(used)
        stats = db.stats()
        raw.close()
        for conn in (peer, peer_writer):
            if conn is not None:
                conn.close()

    median = {name: statistics.median(values) for name, values in timings.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    base = median[f"read, raw {driver} autocommit (baseline)"]
    print(f"{args.rounds} rounds x {args.ops} operations, median per operation")
    print("| case | wall us/op | x raw read | client CPU us/op |")
    print("|---|---|---|---|")
    for name, value in median.items():
        print(f"| {name} | {value * 1e6:.0f} | {value / base:.2f} | "
              f"{median_cpu[name] * 1e6:.0f} |")
    plain = median["read, plain SQLAlchemy Session.get"]
    auto = median["read, plain SQLAlchemy Session.get, AUTOCOMMIT engine"]
    routed = median["read, routed db.session() + get"]
    plain_w = median["write, plain SQLAlchemy get FOR UPDATE + mutate + commit"]
    routed_w = median["write, routed db.session(), same"]
    marked_w = median["write, run_transaction, same (commit marker included)"]
    print()
    print(f"routed read / plain read: {routed / plain:.2f} (target <= 0.6)")
    print(f"routed read / plain read on an AUTOCOMMIT engine: {routed / auto:.2f}")
    if not mysql:
        print(f"routed read / peer wrapper read: "
              f"{routed / median['read, peer wrapper read transaction']:.2f} (target <= 1)")
        print(f"routed write / peer wrapper write: "
              f"{routed_w / median['write, peer wrapper write transaction (raw SQL)']:.2f}")
    print(f"routed write / plain write: {routed_w / plain_w:.2f} (target <= 1.05)")
    print(f"run_transaction write / routed write: {marked_w / routed_w:.2f} "
          "(what resolving commit outcomes costs)")
    print(f"stats: {stats}")


def _peer_wrapper(cluster: LocalCluster, read_only: bool = True) -> Any:
    conninfo, properties = cluster.peer_wrapper_args()
    conn = AwsWrapperConnection.connect(
        psycopg.Connection.connect, conninfo, plugins="read_write_splitting,failover_v2",
        **properties, autocommit=False)
    conn.read_only = read_only  # True moves the connection to a reader
    with conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        assert cur.fetchone()[0] is read_only, "the peer wrapper is not where it was sent"
    conn.commit()
    return conn


if __name__ == "__main__":
    main()
