"""The unmodified aws-advanced-python-wrapper discovers the local cluster and follows a failover.

This is what makes side-by-side benchmarks against the peer honest: it runs against the same
emulation, through its Aurora PostgreSQL dialect, with no patch.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from aurora_access.local import LocalCluster, free_port

wrapper = pytest.importorskip("aws_advanced_python_wrapper")
from aws_advanced_python_wrapper.errors import (  # noqa: E402
    FailoverSuccessError,
)
from aws_advanced_python_wrapper.hostinfo import HostRole  # noqa: E402


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(readers=2, port=free_port()) as c:
        yield c
    wrapper.release_resources()


@pytest.mark.parametrize("plugin", ["failover", "failover_v2"])
def test_wrapper_discovers_topology_and_follows_failover(cluster: LocalCluster,
                                                         plugin: str) -> None:
    conninfo, properties = cluster.peer_wrapper_args()
    properties["cluster_id"] = f"local-{cluster.port}-{plugin}"  # a fresh topology cache
    conn = wrapper.AwsWrapperConnection.connect(
        psycopg.Connection.connect,
        conninfo,
        plugins=plugin,
        **properties,
        connect_timeout=2, failover_timeout_sec=30,
        topology_refresh_ms=1000, cluster_topology_high_refresh_rate_ms=100,
        autocommit=True,
    )

    def who() -> str:
        with conn.cursor() as cur:
            cur.execute("SELECT aurora_db_instance_identifier()")
            return str(cur.fetchone()[0])

    try:
        service = conn._plugin_service
        service.force_refresh_host_list()
        hosts = {(h.host, h.role) for h in service.all_hosts}
        expected = {(i.host, HostRole.WRITER if i.role == "writer" else HostRole.READER)
                    for i in cluster.instances}
        assert hosts == expected
        assert who() == cluster.writer.id

        report = cluster.failover()
        with pytest.raises(FailoverSuccessError):
            who()
        assert who() == report.new_writer
        assert service.current_host_info.host == cluster.writer.host
        with conn.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery()")
            assert cur.fetchone()[0] is False
    finally:
        conn.close()
