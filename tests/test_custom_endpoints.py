"""Aurora custom endpoints (issue 14): reads through ``read_only(endpoint=...)`` only on the
endpoint's members, exclusive endpoints' members kept out of general reads, membership from
AURORA_CUSTOM_ENDPOINTS or from RDS (botocore's Stubber), on a local cluster that has the
custom endpoint as a forwarder of its own."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from sqlalchemy import create_engine, select, text, update

from aurora_access import AsyncDatabase, ConfigError, Database, EndpointUnavailable, Settings
from aurora_access.demo.models import Customer
from aurora_access.endpoints import CustomEndpoints
from aurora_access.local import LocalCluster, free_port
from engines import async_where, where, with_demo_data

AURORA_ENDPOINT = "shop.cluster-c9akciq32.eu-west-1.rds.amazonaws.com"
BASE = {"AURORA_CLUSTER_ENDPOINT": AURORA_ENDPOINT, "AURORA_DATABASE": "shop",
        "AURORA_USER": "app", "AURORA_REGION": "eu-west-1"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(port=free_port(), readers=2, replica_lag_ms=50,
                      custom_endpoints={"analytics": ["13"]}) as c:
        yield with_demo_data(c)


# -- configuration and RDS ------------------------------------------------------------------

def test_members_from_the_environment() -> None:
    s = Settings.from_env({**BASE, "AURORA_CUSTOM_ENDPOINTS": "analytics=13, 14; batch=12",
                           "AURORA_EXCLUSIVE_ENDPOINTS": "analytics"})
    assert dict(s.custom_endpoints or {}) == {"analytics": ("13", "14"), "batch": ("12",)}
    assert s.exclusive_endpoints == ("analytics",)
    with pytest.raises(ConfigError, match="AURORA_EXCLUSIVE_ENDPOINTS: names custom endpoints "
                                          "that AURORA_CUSTOM_ENDPOINTS does not list"):
        Settings.from_env({**BASE, "AURORA_CUSTOM_ENDPOINTS": "analytics=13",
                           "AURORA_EXCLUSIVE_ENDPOINTS": "reports"})
    for bad in ("analytics", "analytics=", "a=13;a=14", "a b=13"):
        with pytest.raises(ConfigError, match="AURORA_CUSTOM_ENDPOINTS: must map"):
            Settings.from_env({**BASE, "AURORA_CUSTOM_ENDPOINTS": bad})


def stubbed_rds(*pages: list[dict[str, Any]]) -> tuple[Any, Stubber]:
    client = boto3.client("rds", region_name="eu-west-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    stubber = Stubber(client)
    for endpoints in pages:
        stubber.add_response(
            "describe_db_cluster_endpoints", {"DBClusterEndpoints": endpoints},
            {"DBClusterIdentifier": "shop",
             "Filters": [{"Name": "db-cluster-endpoint-type", "Values": ["custom"]}]})
    stubber.activate()
    return client, stubber


def rds_endpoint(name: str, static: list[str] | None = None,
                 excluded: list[str] | None = None) -> dict[str, Any]:
    return {"DBClusterEndpointIdentifier": name, "DBClusterIdentifier": "shop",
            "Endpoint": f"{name}.cluster-custom-c9akciq32.eu-west-1.rds.amazonaws.com",
            "EndpointType": "CUSTOM", "CustomEndpointType": "READER", "Status": "available",
            "StaticMembers": static or [], "ExcludedMembers": excluded or []}


def test_members_from_rds_static_and_excluded_are_refreshed_once_a_minute(
        monkeypatch: pytest.MonkeyPatch) -> None:
    client, stubber = stubbed_rds(
        [rds_endpoint("analytics", static=["13"]), rds_endpoint("rest", excluded=["13"])],
        [rds_endpoint("analytics", static=["13", "14"])])
    settings = Settings.from_env({**BASE, "AURORA_EXCLUSIVE_ENDPOINTS": "analytics"})
    endpoints = CustomEndpoints(settings, rds_client=lambda: client)
    assert endpoints.must_ask()
    endpoints.refresh(force=True)
    ids = ["11", "12", "13", "14"]
    assert endpoints.members("analytics", ids) == {"13"}
    assert endpoints.members("rest", ids) == {"11", "12", "14"}  # all but the excluded
    assert endpoints.excluded(ids) == {"13"}  # only the exclusive endpoint names it
    endpoints.refresh()  # within the minute: RDS is not asked (the stub would have answered)
    assert endpoints.members("analytics", ids) == {"13"}
    clock = [0.0]
    monkeypatch.setattr("aurora_access.endpoints.time.monotonic", lambda: clock[0] + 1e6)
    endpoints.refresh()
    assert endpoints.members("analytics", ids) == {"13", "14"}
    assert endpoints.excluded(ids) == {"13", "14"}
    stubber.assert_no_pending_responses()
    with pytest.raises(ValueError, match="no custom endpoint 'reports': RDS lists for cluster "
                                         "shop: analytics"):
        endpoints.members("reports", ids)


def test_rds_unreachable_keeps_what_was_known(caplog: pytest.LogCaptureFixture) -> None:
    client, stubber = stubbed_rds([rds_endpoint("analytics", static=["13"])])
    stubber.add_client_error("describe_db_cluster_endpoints", "Throttling", "Rate exceeded")
    endpoints = CustomEndpoints(Settings.from_env(BASE), rds_client=lambda: client)
    endpoints.refresh(force=True)
    endpoints.refresh(force=True)
    assert endpoints.members("analytics", ["11", "13"]) == {"13"}
    assert "could not read the custom endpoints from RDS (ClientError)" in caplog.text


# -- on the local cluster ---------------------------------------------------------------------

def places(db: Database, endpoint: str | None = None, reads: int = 60) -> Counter[str]:
    found: Counter[str] = Counter()
    for _ in range(reads):
        with db.read_only(endpoint=endpoint) as s:
            found[where(s)[1]] += 1
    return found


def test_the_local_custom_endpoint_forwards_to_its_members(cluster: LocalCluster) -> None:
    assert cluster.env()["AURORA_CUSTOM_ENDPOINTS"] == "analytics=13"
    engine = create_engine(cluster.app_url(cluster.custom_endpoint_host("analytics")))
    try:
        for _ in range(3):
            with engine.connect() as conn:
                assert conn.execute(text("SELECT aurora_db_instance_identifier()")).scalar() \
                    == "13"
    finally:
        engine.dispose()


def test_endpoint_reads_stay_on_members_and_exclusive_members_get_no_general_reads(
        cluster: LocalCluster) -> None:
    shared = Database.from_env(cluster.env())
    exclusive = Database.from_env({**cluster.env(), "AURORA_EXCLUSIVE_ENDPOINTS": "analytics"})
    try:
        assert places(shared, "analytics") == {"13": 60}
        assert places(shared) == {"12": 30, "13": 30}  # not exclusive: a reader like another
        assert places(exclusive) == {"12": 60}
        assert places(exclusive, "analytics") == {"13": 60}
        with pytest.raises(ValueError, match="no custom endpoint 'reports': "
                                             "AURORA_CUSTOM_ENDPOINTS lists: analytics"):
            places(exclusive, "reports", reads=1)
    finally:
        shared.close()
        exclusive.close()


def test_endpoint_reads_see_the_context_s_writes(cluster: LocalCluster) -> None:
    """Readers lag 50 ms: a read through the endpoint waits for its member to have the commit
    (it has no writer to fall back on), and is never stale."""
    db = Database.from_env(cluster.env())
    try:
        for i in range(20):
            with db.session() as s:
                s.execute(update(Customer).where(Customer.id == 9).values(name=f"e{i}"))
            with db.read_only(endpoint="analytics") as s:
                assert s.scalar(select(Customer.name).where(Customer.id == 9)) == f"e{i}"
                assert where(s)[1] == "13"
        assert db.stats()["ryw_fallbacks"] == 0
    finally:
        db.close()


def test_async_endpoint_reads(cluster: LocalCluster) -> None:
    async def work() -> list[str]:
        db: AsyncDatabase[Any] = AsyncDatabase.from_env(cluster.env())
        try:
            found = []
            for _ in range(10):
                async with db.read_only(endpoint="analytics") as s:
                    found.append((await async_where(s, "postgresql"))[1])
            return found
        finally:
            await db.close()

    assert set(asyncio.run(work())) == {"13"}


def test_members_from_rds_on_the_cluster(cluster: LocalCluster) -> None:
    """RDS (stubbed) names the members: the same routing as with the variable."""
    db = Database.from_env(cluster.env())
    client, stubber = stubbed_rds([rds_endpoint("analytics", static=["12"])])
    settings = dataclasses.replace(db.settings, cluster_endpoint=AURORA_ENDPOINT,
                                   instance_host_pattern=cluster.instance_host_pattern,
                                   custom_endpoints=None)
    db._router.endpoints = CustomEndpoints(settings, rds_client=lambda: client)
    try:
        assert places(db, "analytics") == {"12": 60}
        stubber.assert_no_pending_responses()
    finally:
        db.close()


def test_a_down_member_fails_the_read_instead_of_moving_it(cluster: LocalCluster) -> None:
    db = Database.from_env(cluster.env())
    try:
        assert places(db, "analytics", reads=2) == {"13": 2}
        cluster.crash("13")
        with pytest.raises(EndpointUnavailable, match="no member of custom endpoint 'analytics' "
                                                      "can serve this read: 13 is not answering"):
            places(db, "analytics", reads=1)
        assert set(places(db, reads=10)) == {"12"}  # general reads go on
    finally:
        db.close()
        cluster.restart("13")
