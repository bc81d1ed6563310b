"""Aurora Serverless v2 that scales to zero (issue 14): an idle application lets instances
pause (AURORA_IDLE_PAUSE_S: the monitor sleeps, pooled connections close), and the first
request after a pause waits for the resume (AURORA_RESUME_TIMEOUT_S) instead of failing or
starting a failover search. Paused instances are emulated by the local cluster
(``LocalCluster(auto_pause_s=..., resume_s=...)``)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text, update

from aurora_access import AsyncDatabase, Database
from aurora_access.demo.models import Customer
from aurora_access.local import LocalCluster, free_port
from engines import async_where, where, with_demo_data

APP_CONNECTIONS = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
    "mysql": "SELECT count(*) FROM information_schema.PROCESSLIST WHERE USER = 'app'",
}


def app_connections(cluster: LocalCluster) -> dict[str, int]:
    """The application role's connections on each instance (asked as the superuser)."""
    counts = {}
    for instance in cluster.instances:
        engine = create_engine(cluster.admin_url(instance.id))
        try:
            with engine.connect() as conn:
                counts[instance.id] = int(conn.execute(
                    text(APP_CONNECTIONS[cluster.engine])).scalar() or 0)
        finally:
            engine.dispose()
    return counts


@pytest.mark.parametrize("engine", ["postgresql"])  # the next test pauses both engines
def test_an_idle_application_closes_its_connections_and_its_monitor_sleeps(
        engine: str) -> None:
    with LocalCluster(engine=engine, port=free_port(), readers=2) as cluster:
        with_demo_data(cluster)
        db = Database.from_env({**cluster.env(), "AURORA_IDLE_PAUSE_S": "1",
                                "AURORA_TOPOLOGY_REFRESH_S": "0.2"})
        try:
            with db.session() as s:
                s.execute(update(Customer).where(Customer.id == 2).values(name="awake"))
            with db.session() as s:
                assert s.scalar(select(Customer.name).where(Customer.id == 2)) == "awake"
            assert sum(app_connections(cluster).values()) > 0
            time.sleep(2.0)
            stats = db.stats()
            assert stats["idle_sleeps"] == 1
            assert app_connections(cluster) == {i.id: 0 for i in cluster.instances}
            time.sleep(1.0)  # asleep: the monitor asks nothing
            assert db.stats()["topology_refreshes"] == stats["topology_refreshes"]
            assert app_connections(cluster) == {i.id: 0 for i in cluster.instances}
            with db.session() as s:  # the next request wakes it
                assert s.scalar(select(Customer.name).where(Customer.id == 2)) == "awake"
            time.sleep(0.6)
            assert db.stats()["topology_refreshes"] > stats["topology_refreshes"]
        finally:
            db.close()


def _paused(cluster: LocalCluster) -> bool:
    return all(cluster.state(i.id) == "auto-paused" for i in cluster.instances)


@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
def test_the_first_request_after_a_pause_waits_for_the_resume(
        engine: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every instance pauses once the application is idle; the first request then takes about
    resume_s (longer than AURORA_CONNECT_TIMEOUT, which alone would fail it) and starts no
    failover search."""
    resume_s = 2.0
    with LocalCluster(engine=engine, port=free_port(), readers=2, auto_pause_s=1.0,
                      resume_s=resume_s) as cluster:
        with_demo_data(cluster)
        db = Database.from_env({**cluster.env(), "AURORA_IDLE_PAUSE_S": "1",
                                "AURORA_TOPOLOGY_REFRESH_S": "0.2",
                                "AURORA_CONNECT_TIMEOUT": "1", "AURORA_HUNG_TIMEOUT_S": "1",
                                "AURORA_RESUME_TIMEOUT_S": "10"})
        caplog.set_level(logging.INFO, logger="aurora_access")
        try:
            with db.session() as s:
                assert where(s)[0]  # on a reader
            deadline = time.monotonic() + 10
            while not _paused(cluster):
                assert time.monotonic() < deadline, cluster.describe()
                time.sleep(0.1)
            began = time.monotonic()
            with db.session() as s:
                s.execute(update(Customer).where(Customer.id == 3).values(name="resumed"))
            first_write_s = time.monotonic() - began
            with db.session() as s:
                assert s.scalar(select(Customer.name).where(Customer.id == 3)) == "resumed"
            first_request_s = time.monotonic() - began
            stats = db.stats()
            assert stats["failovers"] == 0 and stats["writer_heartbeat_failures"] == 0
            assert "looking for the writer" not in caplog.text
            assert resume_s * 0.8 <= first_write_s < resume_s + 3
            # the readers resumed with the writer (woken together), not after it
            assert first_request_s < 2 * resume_s
            with capsys.disabled():
                print(f"\n{engine}: all paused; first write after {first_write_s:.2f} s, "
                      f"write + read after {first_request_s:.2f} s (resume_s {resume_s})")
        finally:
            db.close()


def test_async_first_request_after_a_pause(capsys: pytest.CaptureFixture[str]) -> None:
    resume_s = 1.5
    with LocalCluster(port=free_port(), readers=1, auto_pause_s=1.0,
                      resume_s=resume_s) as cluster:
        with_demo_data(cluster)

        async def work() -> float:
            db: AsyncDatabase[Any] = AsyncDatabase.from_env({
                **cluster.env(), "AURORA_IDLE_PAUSE_S": "1", "AURORA_CONNECT_TIMEOUT": "1",
                "AURORA_TOPOLOGY_REFRESH_S": "0.2"})
            try:
                async with db.session() as s:
                    await async_where(s, "postgresql")
                while not _paused(cluster):
                    await asyncio.sleep(0.1)
                began = time.monotonic()
                async with db.session() as s:
                    assert (await async_where(s, "postgresql"))[0]
                assert db.stats()["failovers"] == 0
                return time.monotonic() - began
            finally:
                await db.close()

        took = asyncio.run(asyncio.wait_for(work(), 30))
        assert resume_s * 0.8 <= took < resume_s + 3
        with capsys.disabled():
            print(f"\nasync: first read after a pause {took:.2f} s (resume_s {resume_s})")


def test_control_without_a_resume_budget_a_resume_starts_a_failover_search(
        caplog: pytest.LogCaptureFixture) -> None:
    """The same pause with AURORA_RESUME_TIMEOUT_S below the resume time: the first
    connection fails at AURORA_CONNECT_TIMEOUT, the writer is taken for failed and looked for
    (what the budget above prevents)."""
    with LocalCluster(port=free_port(), readers=1, auto_pause_s=1.0, resume_s=3.0) as cluster:
        db = Database.from_env({**cluster.env(), "AURORA_IDLE_PAUSE_S": "1",
                                "AURORA_TOPOLOGY_REFRESH_S": "0.2",
                                "AURORA_CONNECT_TIMEOUT": "1", "AURORA_RESUME_TIMEOUT_S": "0.5"})
        caplog.set_level(logging.INFO, logger="aurora_access")
        try:
            with db.writer() as s:
                s.execute(text("SELECT 1"))
            deadline = time.monotonic() + 10
            while not _paused(cluster):
                assert time.monotonic() < deadline, cluster.describe()
                time.sleep(0.1)
            with db.writer() as s:
                s.execute(text("SELECT 1"))
            assert "looking for the writer" in caplog.text
        finally:
            db.close()
