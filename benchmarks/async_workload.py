"""What the asyncio benchmarks share: a local cluster with a table of rows on every reader,
plain asyncio engines on one of its instances, raw asyncio driver connections, percentiles.

The table (``bench_items``: id, n, note) is the one the async benchmarks read and write; its
rows are made through a sync engine on the writer before any event loop starts, and the
readers have applied them before the cluster is handed out. Engines of asyncio belong to the
loop that made them: make them, and the AsyncDatabase, inside one ``asyncio.run``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiomysql
import psycopg
from sqlalchemy import BigInteger, String, create_engine, insert, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aurora_access.local import LocalCluster, free_port

ASYNC_DRIVERS = {"postgresql": "postgresql+psycopg_async", "mysql": "mysql+aiomysql"}


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_items"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    n: Mapped[int]
    note: Mapped[str] = mapped_column(String(64))


@contextmanager
def item_cluster(engine: str = "postgresql", readers: int = 2, replica_lag_ms: int = 0,
                 rows: int = 1000) -> Iterator[LocalCluster]:
    """A local cluster whose ``bench_items`` holds rows 1..``rows`` (n = 0) on every
    instance; stopped after."""
    with LocalCluster(engine=engine, readers=readers, replica_lag_ms=replica_lag_ms,
                      port=free_port(readers)) as cluster:
        setup = create_engine(cluster.app_url(cluster.writer.host))
        try:
            Base.metadata.create_all(setup)
            with setup.begin() as conn:
                conn.execute(insert(Item), [{"id": i, "n": 0, "note": f"row {i}"}
                                            for i in range(1, rows + 1)])
        finally:
            setup.dispose()
        cluster.wait_replayed()
        yield cluster


def async_url(cluster: LocalCluster, host: str) -> str:
    """The application's asyncio SQLAlchemy URL for one instance (password included)."""
    url = make_url(cluster.app_url(host)).set(drivername=ASYNC_DRIVERS[cluster.engine])
    return url.render_as_string(hide_password=False)


def plain_async_engine(cluster: LocalCluster, host: str, **options: Any) -> AsyncEngine:
    """What an application has without aurora-access: ``create_async_engine`` on one
    instance, SQLAlchemy's defaults (pool of 5 + 10 overflow, as aurora-access per instance)."""
    return create_async_engine(async_url(cluster, host), **options)


class RawConnection:
    """A raw asyncio driver connection in autocommit (psycopg's AsyncConnection, aiomysql's
    Connection) and one cursor on it, kept: the least a statement can cost from asyncio."""

    def __init__(self, conn: Any, cursor: Any) -> None:
        self.conn = conn
        self.cursor = cursor

    @classmethod
    async def connect(cls, cluster: LocalCluster, host: str) -> RawConnection:
        if cluster.engine == "mysql":
            conn: Any = await aiomysql.connect(
                host=host, port=cluster.port, user=cluster.user, password=cluster.password,
                db=cluster.database, autocommit=True)
            return cls(conn, await conn.cursor())
        conn = await psycopg.AsyncConnection.connect(
            host=host, port=cluster.port, user=cluster.user, password=cluster.password,
            dbname=cluster.database, autocommit=True)
        return cls(conn, conn.cursor())

    async def one(self, sql: str, params: tuple[Any, ...] | None = None) -> Any:
        """One statement (``%s`` placeholders, both drivers); its first row."""
        await self.cursor.execute(sql, params)
        return await self.cursor.fetchone()

    async def close(self) -> None:
        await self.cursor.close()
        closed = self.conn.close()  # psycopg's is a coroutine, aiomysql's is not
        if closed is not None:
            await closed


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values``, nearest rank; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
