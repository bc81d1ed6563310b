"""What the benchmarks share: a seeded shop on a local cluster, the write they time, and a
fresh thread to time it in (a fresh context: no read-your-writes carried over)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy.orm import Session

from aurora_access import Database
from aurora_access.demo.models import Customer
from aurora_access.demo.shop import create_schema, seed
from aurora_access.local import LocalCluster, free_port

T = TypeVar("T")


@contextmanager
def shop(readers: int = 1, products: int = 50, customers: int = 50,
         engine: str = "postgresql") -> Iterator[tuple[LocalCluster, Database]]:
    """A local cluster with the demo schema seeded, and a Database on it (closed after)."""
    with LocalCluster(engine=engine, readers=readers, port=free_port(readers)) as cluster:
        db = Database.from_env(cluster.env())
        try:
            create_schema(db.engine("writer"))
            with db.writer() as s:
                seed(s, products=products, customers=customers)
            yield cluster, db
        finally:
            db.close()


def rename_customer(session: Session, customer_id: int, name: str) -> None:
    """The write the benchmarks time: get a customer FOR UPDATE and rename it."""
    customer = session.get(Customer, customer_id, with_for_update=True)
    assert customer is not None
    customer.name = name


def in_fresh_thread(work: Callable[[], T]) -> T:
    """``work()`` run in a new thread; its result, or its exception raised here."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
