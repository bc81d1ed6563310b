"""pytest plugin: session-scoped local Aurora-like clusters as fixtures.

``aurora_cluster`` (PostgreSQL unless ``aurora_cluster_engine`` says ``mysql``) and
``aurora_mysql_cluster`` (MariaDB, for Aurora MySQL code).

Registered through the ``pytest11`` entry point, so installing aurora-access is enough. The
cluster starts once per test session (under a second from a warm template) on a free port and
stops when the session ends. Its shape comes from ini options (``pytest.ini`` / ``pyproject``)::

    [tool.pytest.ini_options]
    aurora_cluster_readers = "2"
    aurora_cluster_replica_lag_ms = "50"
    aurora_cluster_endpoint_delay_s = "0"
    aurora_mysql_cluster_replica_lag_ms = "0"   # whole seconds on MariaDB (rounded up)

Tests that fail the cluster over or crash instances change it for the tests after them: give
such tests a cluster of their own (``LocalCluster(...)`` in a ``with`` block).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .local import LocalCluster, free_port

_OPTIONS = {
    "aurora_cluster_engine": ("postgresql", "engine of the aurora_cluster fixture"),
    "aurora_cluster_readers": ("2", "readers of the aurora_cluster fixture"),
    "aurora_cluster_replica_lag_ms": ("0", "emulated replica lag of the aurora_cluster fixture"),
    "aurora_cluster_endpoint_delay_s": ("0", "cluster endpoint DNS lag after a failover"),
    "aurora_mysql_cluster_replica_lag_ms": ("0", "emulated replica lag of aurora_mysql_cluster"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    for name, (default, text) in _OPTIONS.items():
        parser.addini(name, text, default=default)


@pytest.fixture(scope="session")
def aurora_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A running local cluster (PostgreSQL by default), shared by the whole test session."""
    ini = request.config.getini
    yield from _cluster(request, ini("aurora_cluster_engine"),
                        int(ini("aurora_cluster_replica_lag_ms")))


@pytest.fixture(scope="session")
def aurora_mysql_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A running local MariaDB cluster shaped like Aurora MySQL, shared by the session."""
    yield from _cluster(request, "mysql",
                        int(request.config.getini("aurora_mysql_cluster_replica_lag_ms")))


def _cluster(request: pytest.FixtureRequest, engine: str,
             replica_lag_ms: int) -> Iterator[LocalCluster]:
    ini = request.config.getini
    readers = int(ini("aurora_cluster_readers"))
    with LocalCluster(
        engine=engine,
        readers=readers,
        replica_lag_ms=replica_lag_ms,
        endpoint_delay_s=float(ini("aurora_cluster_endpoint_delay_s")),
        port=free_port(readers),
    ) as cluster:
        yield cluster
