"""The README's walkthrough, run as a newcomer runs it: ``eval "$(aurora-access local up
--replica-lag-ms 20)"`` in a shell, the README's Python block as ``walkthrough.py``, then
``aurora-access local down``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from aurora_access.local import free_port

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"


def readme_block(marker: str) -> str:
    text = README.read_text()
    section = text.split(f"<!-- {marker}: begin", 1)[1].split(f"<!-- {marker}: end", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, f"no python block between the {marker} markers"
    return match.group(1)


def test_the_walkthrough_runs_as_written(shm_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "walkthrough.py"
    script.write_text(readme_block("walkthrough"))
    bin_dir = Path(sys.executable).parent
    shell = (f'set -e\neval "$(aurora-access local up --replica-lag-ms 20 --dir {shm_dir} '
             f'--port {free_port()})"\n'
             f"python {script} || status=$?\n"
             f"aurora-access local down --dir {shm_dir} >/dev/null\n"
             "exit ${status:-0}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURORA_")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    done = subprocess.run(["bash", "-c", shell], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"wrote product \d+", lines[0])
    assert lines[1] == "read 1 lamp(s) on the reader"
    assert lines[2] == "price: 2500"
    assert "'reads_on_readers'" in lines[3] and "'writes'" in lines[3]


def test_the_readme_stands_alone() -> None:
    """A clone of the project has no ../shared: the README carries its own reference."""
    text = README.read_text()
    assert "../shared" not in text
    assert (ROOT / "docs" / "reference.md").is_file()
