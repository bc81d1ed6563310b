"""The accounts service's own test fixtures, as an application sets them up with aurora-access.

The pytest plugin's session-scoped clusters (``aurora_cluster``: PostgreSQL, readers 50 ms
behind; ``aurora_mysql_cluster``: MariaDB, 1 s behind) stand in for Aurora; the schema comes
from the service's Alembic migrations. ``AURORA_RYW_SCOPE=process``: the tests read what their
requests wrote (and requests read what the tests wrote) from other threads, which
per-context read-your-writes would not promise. The lag stays on, so a read that could be stale
in production is stale here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlmodel import Session

from aurora_access import Database
from aurora_access.local import LocalCluster

ALEMBIC_INI = Path(__file__).parent / "alembic.ini"
# MariaDB's readers lag a whole second: read on the writer at once rather than wait for them
_CLUSTERS = {"postgresql": ("aurora_cluster", "2000"), "mysql": ("aurora_mysql_cluster", "0")}


def migrate(db: Database[Session], revision: str = "head") -> None:
    """``alembic upgrade`` through the service's migrations/env.py, on ``db``'s writer."""
    config = Config(str(ALEMBIC_INI))
    config.attributes["db"] = db
    command.upgrade(config, revision)


@pytest.fixture(scope="module", params=list(_CLUSTERS))
def accounts_cluster(request: pytest.FixtureRequest) -> LocalCluster:
    cluster: LocalCluster = request.getfixturevalue(_CLUSTERS[request.param][0])
    return cluster


@pytest.fixture(scope="module")
def accounts_db(accounts_cluster: LocalCluster) -> Iterator[Database[Session]]:
    env = {**accounts_cluster.env(), "AURORA_RYW_SCOPE": "process",
           "AURORA_RYW_WAIT_MS": _CLUSTERS[accounts_cluster.engine][1]}
    db = Database.from_env(env, session_class=Session)
    migrate(db)
    yield db
    db.close()
