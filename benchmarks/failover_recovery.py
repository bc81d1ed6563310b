"""Failover recovery, side by side: crash to the first write committed on the new writer.

Run: .venv/bin/python benchmarks/failover_recovery.py [--trials 5] [--endpoint-delay 5] [--hang]
                                                       [--engine postgresql|mysql]

One local cluster (1 writer, 2 readers, the cluster endpoint's DNS lagging ``--endpoint-delay``
seconds behind a failover, as on Aurora). Three clients write at the same time, each in its own
thread, each committing ``UPDATE ... RETURNING aurora_db_instance_identifier()`` in a loop:

- aurora-access: ``db.run_transaction`` (finds the new writer by probing instances);
- aws-advanced-python-wrapper 3.x on psycopg, plugins failover_v2 + host_monitoring_v2 with
  aggressive settings (failure detection 1 s / 0.5 s interval / 2 probes, topology refresh 1 s,
  fast topology refresh 100 ms, connect timeout 2 s), re-running the statement after its
  FailoverSuccessError / TransactionResolutionUnknownError;
- plain SQLAlchemy through the cluster endpoint (``pool_pre_ping=True``), reconnecting (pool
  disposed) and retrying every 10 ms after any error: without the dispose, a pooled connection
  to the demoted writer answers pings and fails every write read-only, for good;
- aurora-access's ``AsyncDatabase``: an event loop in its own thread, ``--async-tasks`` tasks
  (default 4) each committing the same statement on a row of its own through ``await
  db.run_transaction`` (continuous async traffic); its first commit on the new writer, by any
  task, is its recovery (``--no-async`` leaves it out).

Each trial crashes the writer (``LocalCluster.failover``) and measures, per client, the time from
the crash to its first commit that reports the new writer's id. Medians over the trials. With
``--hang`` the old writer is frozen instead of crashed (a host that stops answering without
closing connections), and crashed and rejoined after the trial.

With ``--engine mysql`` (a local MariaDB cluster, PyMySQL) the peer wrapper is left out: it does
not support PyMySQL, and its Aurora MySQL dialect needs ``information_schema.replica_host_status``,
which MariaDB cannot serve. Its clients commit ``UPDATE`` then read ``@@server_id`` (MariaDB has
no UPDATE ... RETURNING).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from aws_advanced_python_wrapper import AwsWrapperConnection, release_resources
from aws_advanced_python_wrapper.errors import (
    FailoverSuccessError,
    TransactionResolutionUnknownError,
)
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession

from aurora_access import AsyncDatabase, Database
from aurora_access.local import LocalCluster, free_port

UPDATE = ("UPDATE bench_counter SET n = n + 1 WHERE client = %s "
          "RETURNING aurora_db_instance_identifier()")
MYSQL_UPDATE = "UPDATE bench_counter SET n = n + 1 WHERE client = '{}'"


class Client:
    """A writing loop that records (commit time, instance id) of every commit."""

    def __init__(self, name: str, write: Callable[[], str], short: str | None = None) -> None:
        self.name = name
        self.short = short or name.split(" ", maxsplit=1)[0]  # in the trial lines
        self.write = write
        self.commits: list[tuple[float, str]] = []
        self.errors = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                instance = self.write()
            except Exception:
                self.errors += 1
                time.sleep(0.01)
                continue
            self.commits.append((time.monotonic(), instance))

    def recovered_after(self, crashed_at: float, new_writer: str) -> float | None:
        for at, instance in list(self.commits):
            if at > crashed_at and instance == new_writer:
                return at - crashed_at
        return None


class AsyncClient(Client):
    """A Client whose thread runs an event loop: an AsyncDatabase made on it and ``tasks``
    tasks, each committing ``write_and_tell`` on a row of its own through ``await
    db.run_transaction`` in a loop; every task's commits are recorded."""

    def __init__(self, name: str, env: dict[str, str], tasks: int,
                 write_and_tell: Callable[[AsyncSession, str], Awaitable[str]]) -> None:
        super().__init__(name, lambda: "", short="AsyncDatabase")
        self.env = env
        self.tasks = tasks
        self.write_and_tell = write_and_tell
        self.stats: dict[str, int] = {}
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), name=name,
                                       daemon=True)

    async def _main(self) -> None:
        db: AsyncDatabase[AsyncSession] = AsyncDatabase.from_env(self.env)
        try:
            await asyncio.gather(*(self._task(db, f"async{i}") for i in range(self.tasks)))
        finally:
            self.stats = db.stats()
            await db.close()

    async def _task(self, db: AsyncDatabase[AsyncSession], row: str) -> None:
        async def write(s: AsyncSession) -> str:
            return await self.write_and_tell(s, row)

        while not self.stop.is_set():
            try:
                instance = await db.run_transaction(write, max_attempts=10)
            except Exception:
                self.errors += 1
                await asyncio.sleep(0.01)
                continue
            self.commits.append((time.monotonic(), instance))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--endpoint-delay", type=float, default=5.0)
    parser.add_argument("--hang", action="store_true",
                        help="freeze the old writer instead of crashing it")
    parser.add_argument("--engine", choices=["postgresql", "mysql"], default="postgresql")
    parser.add_argument("--async-tasks", type=int, default=4,
                        help="tasks committing through AsyncDatabase.run_transaction")
    parser.add_argument("--no-async", action="store_true", help="leave AsyncDatabase out")
    args = parser.parse_args()
    mysql = args.engine == "mysql"

    with LocalCluster(engine=args.engine, readers=2, endpoint_delay_s=args.endpoint_delay,
                      port=free_port()) as cluster:
        setup = create_engine(cluster.app_url(), isolation_level="AUTOCOMMIT")
        with setup.connect() as c:
            c.execute(text("CREATE TABLE bench_counter (client varchar(20) PRIMARY KEY, "
                           "n int NOT NULL)"))
            c.execute(text("INSERT INTO bench_counter VALUES ('aurora', 0), ('peer', 0), "
                           "('plain', 0)"))
            for i in range(args.async_tasks):
                c.execute(text(f"INSERT INTO bench_counter VALUES ('async{i}', 0)"))
        setup.dispose()
        db = Database.from_env(cluster.env())
        peer = None if mysql else _peer_connection(cluster)
        plain = create_engine(cluster.app_url(), pool_pre_ping=True,
                              connect_args={"connect_timeout": 2})

        def write_and_tell(conn: Any, client: str) -> str:
            """Commit-to-be: the counter's update, answering the instance id."""
            if mysql:
                conn.execute(text(MYSQL_UPDATE.format(client)))
                return str(conn.execute(text("SELECT @@server_id")).scalar())
            return str(conn.execute(text(UPDATE.replace("%s", f"'{client}'"))).scalar())

        async def async_write_and_tell(s: AsyncSession, client: str) -> str:
            """``write_and_tell`` on an AsyncSession."""
            if mysql:
                await s.execute(text(MYSQL_UPDATE.format(client)))
                return str((await s.execute(text("SELECT @@server_id"))).scalar())
            return str((await s.execute(text(UPDATE.replace("%s", f"'{client}'")))).scalar())

        def aurora_write() -> str:
            return db.run_transaction(lambda s: write_and_tell(s, "aurora"), max_attempts=10)

        def peer_write() -> str:
            assert peer is not None
            try:
                with peer.cursor() as cur:
                    cur.execute(UPDATE, ("peer",))
                    row = cur.fetchone()
                peer.commit()
            except (FailoverSuccessError, TransactionResolutionUnknownError):
                raise  # counted as an error; the next loop re-runs on the new connection
            assert row is not None
            return str(row[0])

        def plain_write() -> str:
            try:
                with plain.begin() as conn:
                    return write_and_tell(conn, "plain")
            except Exception:
                # reconnect: a pooled connection to the demoted writer would stay read-only
                plain.dispose()
                raise

        clients = [Client(f"aurora-access ({args.engine})", aurora_write),
                   *([] if mysql else [Client(
                       "aws-advanced-python-wrapper (failover_v2, aggressive)", peer_write)]),
                   Client(f"plain SQLAlchemy via the cluster endpoint "
                          f"(DNS lag {args.endpoint_delay:g} s)", plain_write),
                   *([] if args.no_async else [AsyncClient(
                       f"aurora-access AsyncDatabase ({args.engine}, {args.async_tasks} tasks "
                       "committing through await db.run_transaction)", cluster.env(),
                       args.async_tasks, async_write_and_tell)])]
        for client in clients:
            client.thread.start()
        results: dict[str, list[float | None]] = {c.name: [] for c in clients}
        for trial in range(args.trials):
            time.sleep(2.0)  # steady state, every client committing
            crashed_at = time.monotonic()
            report = cluster.failover(hang_old_writer=args.hang)
            deadline = crashed_at + args.endpoint_delay + 20
            while time.monotonic() < deadline and any(
                    c.recovered_after(crashed_at, report.new_writer) is None for c in clients):
                time.sleep(0.05)
            for client in clients:
                results[client.name].append(
                    client.recovered_after(crashed_at, report.new_writer))
            print(f"trial {trial + 1}: {report}; " + "; ".join(
                f"{c.short} {_fmt(results[c.name][-1])}" for c in clients), flush=True)
            if args.hang:  # the frozen old writer comes back as a reader for the next trial
                cluster.crash(report.old_writer)
                cluster.rejoin(report.old_writer)
        for client in clients:
            client.stop.set()
        for client in clients:
            client.thread.join(10)
        stats = db.stats()
        db.close()
        if peer is not None:
            peer.close()
            release_resources()

    print()
    print(f"| client | median recovery ({args.trials} failovers) | each | errors seen |")
    print("|---|---|---|---|")
    for client in clients:
        values = results[client.name]
        done = [v for v in values if v is not None]
        median = _fmt(statistics.median(done)) if len(done) == len(values) else "not recovered"
        print(f"| {client.name} | {median} | {', '.join(_fmt(v) for v in values)} | "
              f"{client.errors} |")
    print(f"\naurora-access stats: {stats}")
    for client in clients:
        if isinstance(client, AsyncClient):
            print(f"AsyncDatabase stats: {client.stats}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _peer_connection(cluster: LocalCluster) -> Any:
    conninfo, properties = cluster.peer_wrapper_args()
    return AwsWrapperConnection.connect(
        psycopg.Connection.connect,
        conninfo,
        plugins="failover_v2,host_monitoring_v2",
        **properties,
        connect_timeout=2,
        failover_timeout_sec=30,
        topology_refresh_ms=1000,
        cluster_topology_high_refresh_rate_ms=100,
        failure_detection_time_ms=1000,
        failure_detection_interval_ms=500,
        failure_detection_count=2,
        autocommit=False,
    )


if __name__ == "__main__":
    main()
