"""What engine-neutral tests need to ask an instance, per engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import TextClause, create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from aurora_access import AsyncDatabase, Database, RoutingSession
from aurora_access.demo.shop import create_schema, seed
from aurora_access.local import LocalCluster

T = TypeVar("T")

# (is this instance a reader, its instance id)
_WHERE = {
    "postgresql": "SELECT pg_is_in_recovery(), aurora_db_instance_identifier()",
    "mysql": "SELECT @@read_only = 1, CAST(@@server_id AS CHAR)",
}
# stop and restart applying the writer's log on a reader (what it receives is still
# acknowledged: synchronous commits go on)
_REPLAY = {
    "postgresql": ("SELECT pg_wal_replay_pause()", "SELECT pg_wal_replay_resume()"),
    "mysql": ("STOP SLAVE SQL_THREAD", "START SLAVE SQL_THREAD"),
}
# whether this connection runs over TLS
TLS_IN_USE = {
    "postgresql": "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    "mysql": "SELECT VARIABLE_VALUE <> '' FROM information_schema.SESSION_STATUS "
             "WHERE VARIABLE_NAME = 'Ssl_cipher'",
}


def where_sql(engine: str) -> TextClause:
    return text(_WHERE[engine])


def where(session: RoutingSession | Session, engine: str | None = None) -> tuple[bool, str]:
    """Whether the statement ran on a reader, and on which instance."""
    if engine is None:
        assert isinstance(session, RoutingSession)
        engine = session.router.dialect.name
    in_recovery, instance_id = session.execute(where_sql(engine)).one()
    return bool(in_recovery), str(instance_id)


async def async_where(session: AsyncSession, engine: str) -> tuple[bool, str]:
    """``where`` for an AsyncSession."""
    on_reader, instance = (await session.execute(where_sql(engine))).one()
    return bool(on_reader), str(instance)


def with_async_db(cluster: LocalCluster, work: Callable[[AsyncDatabase[Any]], Awaitable[T]],
                  **env: str) -> T:
    """``work(db)`` on a new event loop with a new AsyncDatabase on the cluster (its engines
    belong to that loop), closed after."""

    async def main() -> T:
        db: AsyncDatabase[Any] = AsyncDatabase.from_env({**cluster.env(), **env})
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(main())


def with_demo_data(cluster: LocalCluster) -> LocalCluster:
    """The cluster with the demo schema and rows (made if missing) on every reader."""
    db = Database.from_env(cluster.env())
    try:
        create_schema(db.engine("writer"))
        with db.writer() as s:
            seed(s)
    finally:
        db.close()
    cluster.wait_replayed()
    return cluster


def settle(db: Database, timeout: float = 10.0) -> None:
    """Wait until every reader has replayed all the writer has now (data a fixture just
    wrote, which a test in another context then reads on a reader)."""
    target = db._monitor.writer_position()
    assert target is not None
    deadline = time.monotonic() + timeout
    for reader in db.topology().readers:
        while (db._monitor.replica_position(reader) or -1) < target:
            assert time.monotonic() < deadline, f"reader {reader.id} did not catch up"
            time.sleep(0.01)


@contextmanager
def replay_held(cluster: LocalCluster) -> Iterator[None]:
    """Every reader stops applying the writer's log while inside: no reader has a commit made
    inside (a lag that no timing can beat), until it ends."""
    pause, resume = _REPLAY[cluster.engine]
    engines = [create_engine(cluster.admin_url(r.id), isolation_level="AUTOCOMMIT")
               for r in cluster.readers]
    try:
        for engine in engines:
            with engine.connect() as conn:
                conn.execute(text(pause))
        yield
    finally:
        for engine in engines:
            with engine.connect() as conn:
                conn.execute(text(resume))
            engine.dispose()
