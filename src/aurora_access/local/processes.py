"""Operating-system plumbing for the local cluster: the server user, processes, sockets.

Database servers refuse to run as root, so when we are root every server command runs as an
unprivileged user (``postgres`` by default, ``AURORA_LOCAL_SERVER_USER`` to choose another).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..errors import LocalClusterError

T = TypeVar("T")


@dataclass(frozen=True)
class ServerUser:
    """The OS user that owns data directories and runs the servers."""

    name: str
    uid: int
    gid: int

    @classmethod
    def for_this_process(cls) -> ServerUser:
        """The current user, or an unprivileged one when we are root."""
        if os.geteuid() != 0:
            entry = pwd.getpwuid(os.geteuid())
            return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)
        name = os.environ.get("AURORA_LOCAL_SERVER_USER", "postgres")
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise LocalClusterError(
                f"running as root, the local cluster needs an unprivileged OS user {name!r} to run "
                "the database servers (they refuse to run as root), and there is none: create it "
                f"(useradd --system {name}) or name another with AURORA_LOCAL_SERVER_USER"
            ) from None
        if entry.pw_uid == 0:
            raise LocalClusterError(
                f"AURORA_LOCAL_SERVER_USER={name!r} is root; name an unprivileged user")
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)

    @property
    def is_other(self) -> bool:
        """True when commands must switch to this user."""
        return self.uid != os.geteuid()

    def popen(self, args: Sequence[str | Path], log: Path | None = None,
              detach: bool = False) -> subprocess.Popen[bytes]:
        """Start ``args`` as this user. ``detach`` puts it in its own session, so it can
        outlive us (``aurora-access local up``) and terminal signals (Ctrl-C on a test run)
        do not reach it."""
        other = self.is_other
        with open(log, "ab") if log else contextlib.nullcontext() as out:
            return subprocess.Popen(
                [str(a) for a in args],
                stdin=subprocess.DEVNULL,
                stdout=out if out else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=detach,
                user=self.uid if other else None,
                group=self.gid if other else None,
                extra_groups=[] if other else None,
            )

    def run(self, args: Sequence[str | Path], *, timeout: float = 120.0) -> str:
        """Run a command as this user; return its output or raise naming the command."""
        other = self.is_other
        proc = subprocess.run(
            [str(a) for a in args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            check=False,
            user=self.uid if other else None,
            group=self.gid if other else None,
            extra_groups=[] if other else None,
        )
        if proc.returncode != 0:
            raise LocalClusterError(
                f"{Path(str(args[0])).name} failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        return proc.stdout

    def can_enter(self, path: Path) -> bool:
        """Whether this user can reach files in ``path`` (every parent must let it through)."""
        if not self.is_other:
            return os.access(path, os.X_OK)
        try:
            self.run(["test", "-x", path])
        except LocalClusterError:
            return False
        return True

    def chown(self, path: Path) -> None:
        if self.is_other:
            os.chown(path, self.uid, self.gid)


def is_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def reap(pid: int) -> None:
    """Collect ``pid`` if it is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited; False if it is still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        reap(pid)
        if not is_alive(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)


def descendants(pid: int) -> list[int]:
    """``pid``'s children, grandchildren, ... from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_or_kill(pid: int, timeout: float = 10.0) -> None:
    """Wait for ``pid`` to exit; past ``timeout``, SIGKILL it and everything below it."""
    if not wait_exit(pid, timeout):
        signal_tree(pid, signal.SIGKILL)
        wait_exit(pid, 5)


def signal_tree(pid: int, sig: signal.Signals) -> None:
    """Signal ``pid`` and every process below it (a server and its backends)."""
    signal_all([pid, *descendants(pid)], sig)


def check_free(host: str, port: int) -> None:
    """Raise LocalClusterError if ``host:port`` cannot be listened on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as the servers do: connections in TIME_WAIT from an earlier run must not count
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            what = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise LocalClusterError(
                f"cannot listen on {host}:{port} ({what}); another local cluster or server holds "
                "it: stop it (aurora-access local down --dir ...) or choose another --port"
            ) from None


def is_listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def cached_template(cache_dir: Path, name: str, user: ServerUser, complete: str,
                    build: Callable[[Path], None]) -> Path:
    """``cache_dir/name``, made on first use: ``build(work)`` fills ``work/data``, which is then
    renamed into place (so a half-built template is never used); ``complete`` is a path
    inside the template that exists once it is whole. Concurrent builders may race: the
    first rename wins and the others use its result."""
    path = cache_dir / name
    if (path / complete).exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = cache_dir / f"building-{os.getpid()}-{time.monotonic_ns()}"
    work.mkdir(mode=0o755)
    user.chown(cache_dir)
    user.chown(work)
    try:
        build(work)
        try:
            (work / "data").rename(path)
        except OSError:
            if not (path / complete).exists():  # not merely a concurrent builder's win
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def wait_connect(connect: Callable[[], T], refused: type[Exception], deadline: float,
                 what: str, log: Path) -> T:
    """``connect()`` once a server accepts connections (``refused`` until then); past
    ``deadline``, LocalClusterError with the last refusal and the end of the server's log."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return connect()
        except refused as exc:
            last = exc
            time.sleep(0.01)
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise LocalClusterError(f"{what} did not accept connections in time ({last}); "
                            f"its log ends with:\n{tail}")
