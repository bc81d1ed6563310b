"""The cluster, reader and custom endpoints of a local cluster: TCP forwarders in a process of
their own.

Aurora's cluster endpoint is a DNS name that follows the writer, and its reader endpoint spreads
new connections over the readers. Here each is a TCP listener on its own loopback address (same
port as the instances) forwarding every new connection to an instance. After a failover the
cluster endpoint keeps forwarding to the old writer for ``writer_delay_s``, as Aurora's DNS does.

Run as ``python -m aurora_access.local.endpoints CONFIG.json``; steered through a Linux abstract
Unix socket with one JSON object a line (``EndpointControl``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LocalClusterError
from . import processes


@dataclass
class Routes:
    """Where new connections go. ``pending_writer`` takes over at ``pending_at``."""

    writer: str
    readers: list[str]
    pending_writer: str | None = None
    pending_at: float = 0.0
    next_reader: int = 0
    connections: dict[str, int] = field(default_factory=dict)

    def writer_target(self) -> str:
        if self.pending_writer is not None and time.monotonic() >= self.pending_at:
            self.writer, self.pending_writer = self.pending_writer, None
        return self.writer

    def reader_target(self) -> str:
        # With no reader, Aurora's reader endpoint resolves to the writer.
        if not self.readers:
            return self.writer_target()
        self.next_reader = (self.next_reader + 1) % len(self.readers)
        return self.readers[self.next_reader]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _forward(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                   target: str, port: int) -> None:
    try:
        server_r, server_w = await asyncio.open_connection(target, port)
    except OSError:
        client_w.close()  # as a client of a dead host sees it: the connection drops
        return
    await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))


def _custom_endpoint(members: list[str], port: int) -> Any:
    """A custom endpoint: new connections spread over its (static) members round-robin."""
    turn = [0]

    async def on_custom(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        turn[0] = (turn[0] + 1) % len(members)
        await _forward(r, w, members[turn[0]], port)

    return on_custom


async def serve(config: dict[str, Any]) -> None:
    port = int(config["port"])
    routes = Routes(writer=config["writer"], readers=list(config["readers"]))

    async def on_cluster(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _forward(r, w, routes.writer_target(), port)

    async def on_reader(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _forward(r, w, routes.reader_target(), port)

    owner: list[int | None] = [config.get("owner_pid")]

    async def on_control(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while line := await r.readline():
            request = json.loads(line)
            if request.get("op") == "detach":  # ``local up``: the cluster outlives its starter
                owner[0] = None
            elif request.get("op") == "route":
                delay = float(request.get("writer_delay_s", 0.0))
                target = request["writer"]
                if target == routes.writer_target():
                    routes.pending_writer = None
                elif delay <= 0:
                    routes.writer, routes.pending_writer = target, None
                elif target != routes.pending_writer:  # a repeat must not restart the delay
                    routes.pending_writer = target
                    routes.pending_at = time.monotonic() + delay
                routes.readers = list(request["readers"])
            reply = {"ok": True, "writer": routes.writer, "pending_writer": routes.pending_writer,
                     "readers": routes.readers}
            w.write(json.dumps(reply).encode() + b"\n")
            await w.drain()
        w.close()

    servers = [
        await asyncio.start_server(on_cluster, config["cluster_host"], port, reuse_address=True),
        await asyncio.start_server(on_reader, config["reader_host"], port, reuse_address=True),
        await asyncio.start_unix_server(on_control, "\0" + config["control"]),
    ]
    for host, members in config.get("custom", {}).items():
        servers.append(await asyncio.start_server(
            _custom_endpoint(members, port), host, port, reuse_address=True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch = asyncio.create_task(_outlive_owner(owner, config.get("state_file"), stop))
    await stop.wait()
    watch.cancel()
    for server in servers:
        server.close()


async def _outlive_owner(owner: list[int | None], state_file: str | None,
                         stop: asyncio.Event) -> None:
    """When the process that started the cluster dies without closing it (killed: no atexit
    ran), stop its servers too, so that nothing is left running that nobody will stop. A
    cluster started by ``local up`` is detached and left alone."""
    while True:
        await asyncio.sleep(0.5)
        pid = owner[0]
        if pid is None or processes.is_alive(pid):
            continue
        if state_file is not None:
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(Path(state_file).read_text())
                pids = [int(n["pid"]) for n in state.get("nodes", []) if n.get("pid")]
                for pid in pids:
                    processes.signal_tree(pid, signal.SIGKILL)
                for pid in pids:
                    processes.wait_exit(pid, 5)
                if state.get("owns_dir"):  # the data was the dead process's to remove
                    shutil.rmtree(Path(state_file).parent, ignore_errors=True)
        stop.set()
        return


class EndpointControl:
    """The client side of the forwarder's control socket."""

    def __init__(self, name: str) -> None:
        self.name = name

    def request(self, payload: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect("\0" + self.name)
                sock.sendall(json.dumps(payload).encode() + b"\n")
                reply = sock.makefile("rb").readline()
            except OSError as exc:
                raise LocalClusterError(f"the endpoint forwarder does not answer: {exc}") from exc
        result: dict[str, Any] = json.loads(reply)
        return result

    def ping(self) -> bool:
        try:
            self.request({"op": "ping"}, timeout=1.0)
        except (LocalClusterError, ValueError):
            return False
        return True

    def route(self, writer: str, readers: list[str], writer_delay_s: float = 0.0) -> None:
        self.request({"op": "route", "writer": writer, "readers": readers,
                      "writer_delay_s": writer_delay_s})


def main() -> None:
    with open(sys.argv[1]) as f:
        config = json.load(f)
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
