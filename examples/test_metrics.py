"""The FastAPI shop's ``/metrics`` page (issue 15, point 3): the library's OpenTelemetry
metrics through the Prometheus exporter, scraped after some shopping on each engine."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator

import pytest

import fastapi_shop.app
from aurora_access import Database
from aurora_access.local import LocalCluster

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


@pytest.fixture
def client(shop_env: dict[str, str], shop_db: Database) -> Iterator[TestClient]:
    provider, registry = fastapi_shop.app.prometheus_metrics()
    db = Database.from_env(shop_env, meter_provider=provider)
    app = fastapi_shop.app.create_app(db, close_db_on_shutdown=True, metrics=registry)
    with TestClient(app) as test_client:
        yield test_client


def test_metrics_page_after_shopping(client: TestClient, shop_cluster: LocalCluster) -> None:
    assert client.post("/customers/36/cart/items", json={"product_id": 31}).status_code == 200
    assert client.get("/products/31").status_code == 200
    assert client.post("/customers/36/checkout", json={}).status_code == 201
    assert client.get("/customers/36/orders").status_code == 200
    page = client.get("/metrics", follow_redirects=False)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    text = page.text
    writer = shop_cluster.writer
    durations = [line for line in text.splitlines()
                 if line.startswith("db_client_operation_duration_seconds_count{")]
    assert any(f'aurora_instance_id="{writer.id}"' in line and 'aurora_route="write"' in line
               and f'db_system_name="{shop_cluster.engine}"' in line for line in durations)
    assert any('aurora_route="read"' in line or 'aurora_route="ryw_fallback"' in line
               for line in durations)
    for name in ("db_client_connection_count", "db_client_connection_max",
                 "db_client_connection_pending_requests",
                 "db_client_connection_wait_time_seconds_count",
                 "aurora_writes_total", "aurora_failovers_total",
                 "aurora_replica_lag_milliseconds"):
        assert re.search(rf"^{name}\{{", text, re.M), name
