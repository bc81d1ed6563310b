import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A directory the unprivileged server user can reach (pytest's tmp_path is private)."""
    root = "/dev/shm" if Path("/dev/shm").is_dir() else None
    path = Path(tempfile.mkdtemp(prefix="aurora-test-", dir=root))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
