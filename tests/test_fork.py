"""A Database made and used in a parent that then forks (issue 12): multiprocessing's fork start
method here; gunicorn --preload in test_web_servers.py. Children get connections, threads and
commit marks of their own; the parent's connections keep working."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest
from sqlalchemy import select, text

from aurora_access import Database
from aurora_access.demo.models import Customer
from aurora_access.demo.shop import create_schema, seed
from aurora_access.local import LocalCluster
from engines import settle, where_sql

# the Database the children inherit (set by the fixture before the pool forks them)
SHARED: dict[str, Database] = {}
# what a child found when it started (its initializer runs before any task)
AT_START: dict[str, object] = {}


def child_started() -> None:
    db = SHARED["db"]
    AT_START.update(marks=db._router.commits.current(), writes=db.stats()["writes"],
                    threads=[t.name for t in threading.enumerate()])


@pytest.fixture(scope="module")
def db(engine_cluster: LocalCluster) -> Iterator[Database]:
    database = Database.from_env(engine_cluster.env())
    create_schema(database.engine("writer"))
    with database.writer() as s:
        seed(s)
    settle(database)
    SHARED["db"] = database
    yield database
    SHARED.clear()
    database.close()


def child_work(n: int) -> dict[str, object]:
    """In a forked child: the inherited Database's state, then a write and its read-back."""
    db = SHARED["db"]
    name = f"child {os.getpid()} {n}"
    db.run_transaction(lambda s: setattr(s.get(Customer, 10 + n % 5, with_for_update=True),
                                         "name", name))
    with db.session() as s:  # read-your-writes in the child, by its own marks
        seen = s.scalar(select(Customer.name).where(Customer.id == 10 + n % 5))
        on_reader = bool(s.execute(where_sql(db.dialect.name)).one()[0])
    return {"pid": os.getpid(), "no_marks_at_start": AT_START["marks"] is None,
            "writes_at_start": AT_START["writes"], "threads_at_start": AT_START["threads"],
            "seen": seen == name,
            "monitor": any(t.name == "aurora-access-topology" for t in threading.enumerate()),
            "on_reader": on_reader}


def test_forked_children_get_their_own_connections_threads_and_marks(db: Database) -> None:
    # the parent uses it first: pooled connections to every instance, threads, a commit mark
    db.run_transaction(lambda s: setattr(s.get(Customer, 9, with_for_update=True), "name",
                                         "parent before"))
    with db.session() as s:
        assert s.get(Customer, 9).name == "parent before"  # type: ignore[union-attr]
        s.execute(text("SELECT 1"))
    assert db._router.commits.current() is not None
    parent_writer_pool = db._pools.engine(db.topology().writer).pool
    before = parent_writer_pool.checkedin()
    assert before > 0

    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=3, mp_context=context,
                             initializer=child_started) as children:
        results = list(children.map(child_work, range(12)))
    assert len({r["pid"] for r in results}) > 1
    assert all(r["no_marks_at_start"] for r in results), "a child had the parent's marks"
    assert all(r["writes_at_start"] == 0 for r in results), "a child had the parent's stats"
    assert all(r["threads_at_start"] == ["MainThread"] for r in results)
    assert all(r["seen"] for r in results), "a child read stale after its own write"
    assert all(r["monitor"] for r in results), "a child ran without a monitor"

    # the parent's own pooled connections still work: no child used or closed them
    assert db._pools.engine(db.topology().writer).pool is parent_writer_pool
    assert parent_writer_pool.checkedin() == before
    db.run_transaction(lambda s: setattr(s.get(Customer, 9, with_for_update=True), "name",
                                         "parent after"))
    with db.session() as s:
        assert s.get(Customer, 9).name == "parent after"  # type: ignore[union-attr]
