import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


import shutil
import tempfile
from collections.abc import Iterator

import pytest

from aurora_access.local import LocalCluster, free_port


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A directory the unprivileged server user can reach (pytest's tmp_path is private)."""
    root = "/dev/shm" if Path("/dev/shm").is_dir() else None
    path = Path(tempfile.mkdtemp(prefix="aurora-test-", dir=root))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module", params=["postgresql", "mysql"])
def engine_cluster(request: pytest.FixtureRequest) -> LocalCluster:
    """The session's PostgreSQL cluster, then its MariaDB one: a module using this runs its
    tests against both engines."""
    name = "aurora_cluster" if request.param == "postgresql" else "aurora_mysql_cluster"
    cluster: LocalCluster = request.getfixturevalue(name)
    return cluster


@pytest.fixture(scope="session", params=["postgresql", "mysql"])
def failover_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A cluster the failover tests fail over, crash and pause (not the shared ones, whose
    readers lag): 2 readers, the cluster endpoint 5 s behind a failover as Aurora's DNS.
    Shared by the sync and async failover tests, one engine at a time."""
    with LocalCluster(engine=request.param, readers=2, endpoint_delay_s=5.0,
                      port=free_port()) as cluster:
        yield cluster
