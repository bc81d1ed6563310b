"""Where a local cluster lives: its addresses (from its port), directories, state file and
processes; the shapes its instances and failovers are described by."""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LocalClusterError
from ..hosts import is_label
from ..topology import Role
from . import processes

STATE_FILE = "state.json"
CLUSTER_ENDPOINT_OCTET = 2
READER_ENDPOINT_OCTET = 3
CUSTOM_ENDPOINT_FIRST_OCTET = 4  # custom endpoints: .4 to .10
CUSTOM_ENDPOINTS_MAX = 7
FIRST_INSTANCE_OCTET = 11
MAX_READERS = 15
START_TIMEOUT_S = 60.0



def default_cache_dir() -> Path:
    """Where templates are kept between runs (``AURORA_LOCAL_CACHE_DIR`` overrides)."""
    override = os.environ.get("AURORA_LOCAL_CACHE_DIR")
    if override:
        return Path(override)
    if os.geteuid() == 0:
        # must be readable by the unprivileged server user, unlike /root
        return Path("/var/cache/aurora-access")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aurora-access"


def default_runtime_root() -> Path:
    """tmpfs when there is one: the data is throwaway and start-up is I/O-bound."""
    shm = Path("/dev/shm")  # noqa: S108 - mkdtemp makes a private directory inside it
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def address_prefix(port: int) -> str:
    return f"127.{(port >> 8) & 255}.{port & 255}"


@dataclass
class Node:
    id: str
    host: str
    role: Role
    pid: int | None = None
    state: str = "stopped"  # running | crashed | paused | auto-paused | stopped


@dataclass(frozen=True)
class FailoverReport:
    """What ``failover()`` did and how long each step took, in seconds from the crash."""

    old_writer: str
    new_writer: str
    promoted_s: float  # the new writer left recovery
    writable_s: float  # a write committed on the new writer (synchronously replicated)
    old_writer_back_s: float | None  # the old writer streams as a reader (None: not waited for)

    def __str__(self) -> str:
        back = "" if self.old_writer_back_s is None else (
            f", old writer {self.old_writer} back as a reader after {self.old_writer_back_s:.3f} s")
        return (f"failover {self.old_writer} -> {self.new_writer}: promoted after "
                f"{self.promoted_s:.3f} s, accepting writes after {self.writable_s:.3f} s{back}")


def tcp_sockets() -> Iterator[tuple[str, str, str]]:
    """IPv4 TCP sockets of this machine, from /proc/net/tcp: (state, local ``host:port``,
    remote ``host:port``); the state as the kernel writes it (``0A`` listening, ``01``
    established)."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            yield fields[3], _address(fields[1]), _address(fields[2])


def _address(field: str) -> str:
    hex_addr, hex_port = field.split(":")
    octets = [str(int(hex_addr[i:i + 2], 16)) for i in (6, 4, 2, 0)]
    return f"{'.'.join(octets)}:{int(hex_port, 16)}"


def listening() -> Iterator[str]:
    """Listening IPv4 TCP sockets of this machine (``host:port``)."""
    return (local for state, local, _ in tcp_sockets() if state == "0A")


def free_port(readers: int = 2, first: int = 25432, tries: int = 200) -> int:
    """A port in ``first`` .. ``first + tries - 1`` whose cluster addresses (endpoints and
    ``readers + 1`` instances) are all free. The search starts at a random place in the range,
    so that processes starting clusters at the same moment seldom pick the same port."""
    start = random.randrange(tries)  # noqa: S311 - spreading, not secrecy
    for port in (first + (start + k) % tries for k in range(tries)):
        prefix = address_prefix(port)
        octets = [CLUSTER_ENDPOINT_OCTET, READER_ENDPOINT_OCTET,
                  *range(FIRST_INSTANCE_OCTET, FIRST_INSTANCE_OCTET + readers + 1)]
        try:
            for octet in octets:
                processes.check_free(f"{prefix}.{octet}", port)
        except LocalClusterError:
            continue
        return port
    raise LocalClusterError(f"no free port for a local cluster in {first}-{first + tries - 1}")


def cluster_processes(state: dict[str, Any]) -> list[int]:
    """Pids recorded in a state file that are still alive."""
    pids = [state.get("forwarder_pid")] + [n.get("pid") for n in state.get("nodes", [])]
    return [p for p in pids if p and processes.is_alive(p)]


def check_custom_endpoints(given: Mapping[str, Sequence[str]],
                            readers: int) -> dict[str, tuple[str, ...]]:
    """Custom endpoints' names and member ids, checked: at most 7 (addresses .4 to .10), each
    naming instances the cluster starts with."""
    ids = {str(octet) for octet in range(FIRST_INSTANCE_OCTET, FIRST_INSTANCE_OCTET + readers + 1)}
    if len(given) > CUSTOM_ENDPOINTS_MAX:
        raise LocalClusterError(f"at most {CUSTOM_ENDPOINTS_MAX} custom endpoints, not "
                                f"{len(given)}")
    checked: dict[str, tuple[str, ...]] = {}
    for name, listed in given.items():
        members = (listed,) if isinstance(listed, str) else tuple(listed)
        if not is_label(name) or not members or not set(members) <= ids:
            raise LocalClusterError(
                f"custom endpoint {name!r}: a DNS label naming some of the instances "
                f"{', '.join(sorted(ids))}, got {list(members)}")
        checked[name] = members
    return checked
