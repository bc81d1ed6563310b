"""Fixtures for the example services' tests: a Database on each of the plugin's local clusters
(``aurora_cluster``: PostgreSQL, readers 50 ms behind; ``aurora_mysql_cluster``: MariaDB, 1 s
behind), with the demo data on every reader."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, select
from sqlalchemy.exc import ProgrammingError

import shop_core
from aurora_access import Database
from aurora_access.demo.models import Customer, Stock
from aurora_access.local import LocalCluster

# How long a read carrying a token may wait for a reader to apply its commit. PostgreSQL's
# readers lag 50 ms: wait for them, so the tests can check that such reads ran on a reader.
# MariaDB's lag a whole second: waiting would make every request slow, so read on the writer
# at once (counted in ryw_fallbacks).
_ENGINES = {"postgresql": ("aurora_cluster", "2000"), "mysql": ("aurora_mysql_cluster", "0")}
@pytest.fixture(scope="module", params=list(_ENGINES))
def shop_cluster(request: pytest.FixtureRequest) -> LocalCluster:
    cluster: LocalCluster = request.getfixturevalue(_ENGINES[request.param][0])
    return cluster


@pytest.fixture(scope="module")
def shop_env(shop_cluster: LocalCluster) -> dict[str, str]:
    """The cluster's ``AURORA_*`` variables, with the read-your-writes wait for its engine (for
    a Database, or an AsyncDatabase, of the tests' own)."""
    return {**shop_cluster.env(), "AURORA_RYW_WAIT_MS": _ENGINES[shop_cluster.engine][1]}


@pytest.fixture(scope="module")
def shop_db(shop_env: dict[str, str]) -> Iterator[Database]:
    db = Database.from_env(shop_env)
    try:
        shop_core.create_demo_data(db)
        wait_for_readers(db)
        yield db
    finally:
        db.close()


def wait_for_readers(db: Database, timeout: float = 10.0) -> None:
    """Until every reader has the demo tables and data: requests that carry no token read
    them there. (One transaction wrote all the rows, so its last ones stand for the whole.)"""
    deadline = time.monotonic() + timeout
    for reader in db.topology().readers:
        with db.engine(reader.id).connect() as conn:
            while not _has_demo_data(conn):
                assert time.monotonic() < deadline, f"reader {reader.id} lacks the demo data"
                time.sleep(0.02)


def _has_demo_data(conn: Connection) -> bool:
    try:
        return conn.execute(select(Customer.id).where(Customer.id == 50)).first() is not None \
            and conn.execute(select(Stock.quantity).where(Stock.product_id == 50)).first() \
            is not None
    except ProgrammingError:  # the tables themselves have not arrived yet
        return False
    finally:
        conn.rollback()  # a new snapshot for the next look
