"""The MySQL dialect without a server: PyMySQL errors, GTID positions, TLS arguments."""

from __future__ import annotations

import ssl

import pymysql
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.exc import OperationalError as SAOperationalError

from aurora_access import ConfigError
from aurora_access.dialects import for_engine
from aurora_access.dialects.mysql import MySqlDialect
from aurora_access.failover import ErrorKind

dialect = MySqlDialect()
err = pymysql.err


@pytest.mark.parametrize(("error", "kind"), [
    (err.OperationalError(2003, "Can't connect to MySQL server on '127.0.0.1'"),
     ErrorKind.CONNECTION_LOST),
    (err.OperationalError(2006, "MySQL server has gone away"), ErrorKind.CONNECTION_LOST),
    (err.OperationalError(2013, "Lost connection to MySQL server during query"),
     ErrorKind.CONNECTION_LOST),
    (err.OperationalError(1927, "Connection was killed"), ErrorKind.CONNECTION_LOST),
    (err.InterfaceError(0, ""), ErrorKind.CONNECTION_LOST),
    (err.OperationalError(1053, "Server shutdown in progress"), ErrorKind.ADMIN_SHUTDOWN),
    (err.OperationalError(1290, "The MariaDB server is running with the --read-only option"),
     ErrorKind.READ_ONLY),
    (err.InternalError(1836, "Running in read-only mode"), ErrorKind.READ_ONLY),
    (err.OperationalError(1213, "Deadlock found when trying to get lock"), ErrorKind.DEADLOCK),
    (err.OperationalError(1205, "Lock wait timeout exceeded"), ErrorKind.LOCK_TIMEOUT),
    (err.IntegrityError(1062, "Duplicate entry '1' for key 'PRIMARY'"), ErrorKind.OTHER),
    (err.ProgrammingError(1146, "Table 'app.nope' doesn't exist"), ErrorKind.OTHER),
    (err.OperationalError(1045, "Access denied for user 'app'"), ErrorKind.OTHER),
    (ValueError("not a database error"), ErrorKind.OTHER),
])
def test_pymysql_errors_are_classified(error: BaseException, kind: ErrorKind) -> None:
    assert dialect.classify(error) is kind
    assert dialect.classify(SAOperationalError("SELECT 1", {}, error)) is kind


def test_retry_and_failover_follow_from_the_kinds() -> None:
    assert ErrorKind.LOCK_TIMEOUT.retryable_transaction
    assert not ErrorKind.LOCK_TIMEOUT.instance_failed


def test_a_refused_login_is_an_auth_failure_and_nothing_else_is() -> None:
    assert dialect.is_auth_failure(err.OperationalError(1045, "Access denied for user 'app'"))
    assert not dialect.is_auth_failure(err.OperationalError(2003, "Can't connect"))
    assert not dialect.is_auth_failure(ValueError("Access denied"))


@pytest.mark.parametrize(("text", "position"), [
    ("0-11-42", 42),
    (b"0-12-7", 7),
    ("", 0),
    ("0-11-9,1-12-3", 9),
    (None, None),
])
def test_gtid_positions(text: object, position: int | None) -> None:
    assert dialect.parse_position(text) == position


@given(st.integers(min_value=0, max_value=2**40), st.integers(min_value=1, max_value=2**31))
def test_newer_gtids_compare_greater_across_a_change_of_writer(seq: int, server: int) -> None:
    # a promoted writer keeps the domain's sequence and only its server id changes
    assert dialect.parse_position(f"0-{server}-{seq + 1}") > dialect.parse_position(  # type: ignore[operator]
        f"0-11-{seq}")


@pytest.mark.parametrize("text", ["16/B374D848", "0-11", "x-y-z"])
def test_malformed_positions_are_named(text: str) -> None:
    with pytest.raises(ValueError, match="GTID"):
        dialect.parse_position(text)


def test_tls_arguments_follow_the_sslmode(tmp_path: object) -> None:
    assert dialect.connect_args("disable", None, 5)["ssl_disabled"] is True
    assert "ssl" not in dialect.connect_args("prefer", None, 5)  # PyMySQL's own preferred mode
    required = dialect.connect_args("require", None, 5)["ssl"]
    assert isinstance(required, ssl.SSLContext)
    assert required.verify_mode == ssl.CERT_NONE and not required.check_hostname
    full = dialect.connect_args("verify-full", "system", 5)["ssl"]
    assert full.verify_mode == ssl.CERT_REQUIRED and full.check_hostname
    verify_ca = dialect.connect_args("verify-ca", "system", 5)["ssl"]
    assert verify_ca.verify_mode == ssl.CERT_REQUIRED and not verify_ca.check_hostname
    # built once: a pool's every connection shares it (building one costs 22 ms)
    assert dialect.connect_args("verify-full", "system", 5)["ssl"] is full


def test_commit_marker_is_inserted_before_the_drivers_commit() -> None:
    assert dialect.commit_with_marker_statements("00ab12") == [
        "INSERT INTO aurora_access_commit_markers (id) VALUES ('00ab12')"]
    with pytest.raises(ValueError, match="hex"):
        dialect.commit_with_marker_statements("x'); DROP TABLE t; --")


def test_engines_by_name() -> None:
    assert for_engine("mysql").drivername == "mysql+pymysql"
    with pytest.raises(ConfigError, match="AURORA_ENGINE"):
        for_engine("oracle")
