"""Error classification and writer discovery, without a database."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from sqlalchemy.exc import OperationalError as SAOperationalError

from aurora_access import NoWriterAvailable
from aurora_access.dialects.postgresql import PostgresDialect
from aurora_access.failover import ErrorKind, Watchdog, WriterDiscovery

classify = PostgresDialect().classify


def server_error(cls: type[psycopg.Error]) -> psycopg.Error:
    return cls("from the server")


@pytest.mark.parametrize(("error", "kind"), [
    (server_error(psycopg.errors.AdminShutdown), ErrorKind.ADMIN_SHUTDOWN),
    (server_error(psycopg.errors.CrashShutdown), ErrorKind.ADMIN_SHUTDOWN),
    (server_error(psycopg.errors.CannotConnectNow), ErrorKind.ADMIN_SHUTDOWN),
    (server_error(psycopg.errors.ReadOnlySqlTransaction), ErrorKind.READ_ONLY),
    (server_error(psycopg.errors.SerializationFailure), ErrorKind.SERIALIZATION),
    (server_error(psycopg.errors.DeadlockDetected), ErrorKind.DEADLOCK),
    (server_error(psycopg.errors.ConnectionFailure), ErrorKind.CONNECTION_LOST),
    (psycopg.OperationalError("server closed the connection unexpectedly"),
     ErrorKind.CONNECTION_LOST),
    (psycopg.OperationalError("connection refused"), ErrorKind.CONNECTION_LOST),
    (server_error(psycopg.errors.UniqueViolation), ErrorKind.OTHER),
    (server_error(psycopg.errors.UndefinedTable), ErrorKind.OTHER),
    (server_error(psycopg.errors.QueryCanceled), ErrorKind.OTHER),
    (ValueError("not a database error"), ErrorKind.OTHER),
])
def test_psycopg_errors_are_classified(error: BaseException, kind: ErrorKind) -> None:
    assert classify(error) is kind
    wrapped = SAOperationalError("SELECT 1", {}, error)  # as SQLAlchemy raises it
    assert classify(wrapped) is kind


def test_what_each_kind_means() -> None:
    assert {k for k in ErrorKind if k.instance_failed} == {
        ErrorKind.CONNECTION_LOST, ErrorKind.ADMIN_SHUTDOWN, ErrorKind.READ_ONLY}
    assert not ErrorKind.OTHER.retryable_transaction
    assert ErrorKind.DEADLOCK.retryable_transaction


def test_discovery_returns_the_first_writer_and_ignores_dead_hosts() -> None:
    def probe(host: str) -> bool:
        if host == "dead":
            raise ConnectionRefusedError(host)
        if host == "hung":
            time.sleep(2)
        return host == "new-writer"

    discovery = WriterDiscovery(probe, timeout=5)
    began = time.monotonic()
    assert discovery.find(lambda: ["dead", "hung", "reader", "new-writer"]) == "new-writer"
    assert time.monotonic() - began < 1  # a hung host does not hold the answer up


def test_discovery_keeps_probing_until_a_reader_is_promoted() -> None:
    promoted_at = time.monotonic() + 0.3
    discovery = WriterDiscovery(lambda host: host == "b" and time.monotonic() > promoted_at,
                                timeout=5, retry_interval=0.01)
    assert discovery.find(lambda: ["a", "b"]) == "b"


def test_a_hung_host_does_not_slow_the_rounds_of_the_others() -> None:
    """The writer is promoted 0.3 s in, while one host's probes hang 3 s each (a host starting
    up or frozen): it is found at the next round after its promotion, not after the hung
    probe ends (which took a whole connect timeout per round before)."""
    promoted_at = time.monotonic() + 0.3

    def probe(host: str) -> bool:
        if host == "hung":
            time.sleep(3)
            raise TimeoutError("connection timeout expired")
        return host == "b" and time.monotonic() > promoted_at

    began = time.monotonic()
    found = WriterDiscovery(probe, timeout=10, retry_interval=0.01).find(
        lambda: ["hung", "a", "b"])
    assert found == "b"
    assert time.monotonic() - began < 1


def test_discovery_gives_up_after_the_timeout_naming_what_it_saw() -> None:
    def probe(host: str) -> bool:
        if host == "a":
            raise ConnectionRefusedError("refused")
        return False

    with pytest.raises(NoWriterAvailable, match=r"within 0.2 s .*a: ConnectionRefusedError"):
        WriterDiscovery(probe, timeout=0.2, retry_interval=0.01).find(lambda: ["a", "b"])


def test_concurrent_callers_share_one_search() -> None:
    probes: list[str] = []

    def probe(host: str) -> bool:
        probes.append(host)
        time.sleep(0.1)
        return True

    discovery = WriterDiscovery(probe, timeout=5)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(discovery.find(lambda: ["w"])))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["w"] * 8
    assert probes == ["w"]


def test_watchdog_fires_late_actions_only_and_stops() -> None:
    watchdog = Watchdog()
    fired: list[str] = []
    watchdog.arm(0.05, lambda: fired.append("late"))
    quick = watchdog.arm(0.05, lambda: fired.append("disarmed"))
    watchdog.disarm(quick)
    watchdog.arm(10, lambda: fired.append("never"))
    time.sleep(0.2)
    assert fired == ["late"]
    thread = watchdog._thread  # its own thread (other tests' Databases have theirs)
    assert thread is not None and thread.is_alive()
    watchdog.close()
    assert not thread.is_alive()
