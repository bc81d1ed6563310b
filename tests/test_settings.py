"""Settings: environment parsing, defaults, validation and redaction (no database needed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from aurora_access.errors import ConfigError
from aurora_access.settings import (
    Settings,
    derive_instance_host_pattern,
    env_variable,
    instance_host,
)

WRITER = "mydb.cluster-c9akciq32.us-east-1.rds.amazonaws.com"
PASSWORD = "Sup3r-s3cret pa55"  # distinctive, with a space: it must never show up anywhere
ARN = "arn:aws:secretsmanager:eu-west-2:123456789012:secret:prod/app-AbCdEf"

REQUIRED: dict[str, object] = {"cluster_endpoint": WRITER, "database": "shop", "user": "app"}
MINIMAL = {
    "AURORA_CLUSTER_ENDPOINT": WRITER,
    "AURORA_DATABASE": "shop",
    "AURORA_USER": "app",
}


def from_env(**variables: str) -> Settings:
    """Settings from MINIMAL plus ``variables`` (given without the AURORA_ prefix)."""
    environ = dict(MINIMAL)
    environ.update({f"AURORA_{name}": value for name, value in variables.items()})
    return Settings.from_env(environ)


def config_error(environ: Mapping[str, str], prefix: str = "AURORA_") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ, prefix=prefix)
    return caught.value


# --- defaults -------------------------------------------------------------------------------


def test_a_minimal_environment_gives_the_documented_defaults() -> None:
    s = Settings.from_env(MINIMAL)
    assert s.engine == "postgresql"
    assert s.cluster_endpoint == WRITER
    assert s.reader_endpoint == WRITER
    assert s.port == 5432
    assert s.database == "shop"
    assert s.user == "app"
    assert s.password is None
    assert s.iam_auth is False
    assert s.region is None
    assert s.secret_id is None
    assert s.sslmode == "prefer"
    assert s.sslrootcert is None
    assert s.instance_host_pattern == "?.c9akciq32.us-east-1.rds.amazonaws.com"
    assert (s.pool_size, s.max_overflow, s.pool_timeout, s.pool_recycle) == (5, 10, 30.0, 1800.0)
    assert s.reader_selection == "round_robin"
    assert s.read_your_writes is True
    assert s.ryw_scope == "context"
    assert s.max_replica_lag_ms == 1000.0
    assert s.ryw_wait_ms == 50.0
    assert s.connect_timeout == 5.0
    assert s.failover_timeout == 30.0
    assert s.topology_refresh_s == 1.0


def test_mysql_defaults_to_port_3306() -> None:
    assert from_env(ENGINE="mysql").port == 3306
    assert from_env(ENGINE="MySQL", PORT="3310").port == 3310


def test_empty_values_count_as_unset() -> None:
    s = from_env(PORT="", PASSWORD="", READER_ENDPOINT="  ", POOL_SIZE="", IAM_AUTH="")
    assert s.port == 5432
    assert s.password is None
    assert s.reader_endpoint == WRITER
    assert s.pool_size == 5
    assert s.iam_auth is False


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in MINIMAL.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AURORA_POOL_SIZE", "9")
    monkeypatch.delenv("AURORA_PASSWORD", raising=False)
    assert Settings.from_env().pool_size == 9


# --- every variable -------------------------------------------------------------------------


def test_every_variable_is_parsed(tmp_path: Path) -> None:
    ca = tmp_path / "rds-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    s = Settings.from_env({
        "AURORA_ENGINE": "mysql",
        "AURORA_CLUSTER_ENDPOINT": "10.0.0.5",
        "AURORA_READER_ENDPOINT": "10.0.0.6",
        "AURORA_PORT": "3307",
        "AURORA_DATABASE": "orders",
        "AURORA_USER": "svc",
        "AURORA_PASSWORD": PASSWORD,
        "AURORA_IAM_AUTH": "false",
        "AURORA_REGION": "eu-central-1",
        "AURORA_SSLMODE": "verify-ca",
        "AURORA_SSLROOTCERT": str(ca),
        "AURORA_INSTANCE_HOST_PATTERN": "db-?.internal",
        "AURORA_POOL_SIZE": "7",
        "AURORA_MAX_OVERFLOW": "0",
        "AURORA_POOL_TIMEOUT": "2.5",
        "AURORA_POOL_RECYCLE": "0",
        "AURORA_READER_SELECTION": "least_connections",
        "AURORA_READ_YOUR_WRITES": "off",
        "AURORA_RYW_SCOPE": "Process",
        "AURORA_MAX_REPLICA_LAG_MS": "250",
        "AURORA_RYW_WAIT_MS": "0",
        "AURORA_CONNECT_TIMEOUT": "1.5",
        "AURORA_FAILOVER_TIMEOUT": "60",
        "AURORA_TOPOLOGY_REFRESH_S": "0.25",
    })
    assert s.engine == "mysql"
    assert s.cluster_endpoint == "10.0.0.5"
    assert s.reader_endpoint == "10.0.0.6"
    assert s.port == 3307
    assert s.database == "orders"
    assert s.user == "svc"
    assert s.password == PASSWORD
    assert s.iam_auth is False
    assert s.region == "eu-central-1"
    assert s.sslmode == "verify-ca"
    assert s.sslrootcert == str(ca)
    assert s.instance_host_pattern == "db-?.internal"
    assert s.pool_size == 7
    assert s.max_overflow == 0
    assert s.pool_timeout == 2.5
    assert s.pool_recycle == 0.0
    assert s.reader_selection == "least_connections"
    assert s.read_your_writes is False
    assert s.ryw_scope == "process"
    assert s.max_replica_lag_ms == 250.0
    assert s.ryw_wait_ms == 0.0
    assert s.connect_timeout == 1.5
    assert s.failover_timeout == 60.0
    assert s.topology_refresh_s == 0.25
    assert isinstance(s.port, int)
    assert isinstance(s.pool_size, int)
    assert isinstance(s.failover_timeout, float)


def test_secret_id_and_iam_auth_are_parsed() -> None:
    with_secret = Settings.from_env({**MINIMAL, "AURORA_SECRET_ID": ARN})
    assert with_secret.secret_id == ARN
    with_iam = from_env(IAM_AUTH="true", REGION="us-east-1")
    assert with_iam.iam_auth is True


def test_surrounding_whitespace_is_ignored_except_in_the_password() -> None:
    s = from_env(PORT=" 6432 ", ENGINE=" PostgreSQL ", READER_SELECTION=" Random\n",
                 PASSWORD="  spaced  ")
    assert s.port == 6432
    assert s.engine == "postgresql"
    assert s.reader_selection == "random"
    assert s.password == "  spaced  "


def test_unknown_variables_with_the_prefix_are_ignored() -> None:
    s = Settings.from_env({**MINIMAL, "AURORA_LOCAL_DIR": "/tmp/x", "AURORA_SNAPSHOT": "yes"})
    assert s == Settings.from_env(MINIMAL)


@pytest.mark.parametrize(("spelling", "expected"), [
    ("true", True), ("TRUE", True), ("True", True), ("1", True), ("yes", True), ("YES", True),
    ("on", True), ("On", True),
    ("false", False), ("FALSE", False), ("0", False), ("no", False), ("No", False),
    ("off", False), ("OFF", False),
])
def test_boolean_spellings(spelling: str, expected: bool) -> None:
    assert from_env(READ_YOUR_WRITES=spelling).read_your_writes is expected
    iam = from_env(IAM_AUTH=spelling, REGION="us-east-1")
    assert iam.iam_auth is expected


# --- malformed, out of range, missing -------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "accepts"), [
    ("ENGINE", "oracle", "must be one of postgresql, mysql"),
    ("CLUSTER_ENDPOINT", "postgresql://h:5432/db", "must be a host name or IP address"),
    ("CLUSTER_ENDPOINT", "db.example.com:5432", "must be a host name or IP address"),
    ("READER_ENDPOINT", "reader host", "must be a host name or IP address"),
    ("PORT", "abc", "must be an integer between 1 and 65535"),
    ("PORT", "0", "must be an integer between 1 and 65535"),
    ("PORT", "65536", "must be an integer between 1 and 65535"),
    ("PORT", "5432.0", "must be an integer between 1 and 65535"),
    ("IAM_AUTH", "maybe", "must be true or false"),
    ("REGION", "us-east1", "must be an AWS region name"),
    ("REGION", "US-EAST-1", "must be an AWS region name"),
    ("SECRET_ID", "arn:aws:s3:::bucket", "must be a secret name or a Secrets Manager secret ARN"),
    ("SSLMODE", "allow", "must be one of disable, prefer, require, verify-ca, verify-full"),
    ("SSLROOTCERT", "/nonexistent/ca.pem", "must be an existing CA bundle file"),
    ("INSTANCE_HOST_PATTERN", "db.internal", "exactly one '?'"),
    ("INSTANCE_HOST_PATTERN", "?-?.internal", "exactly one '?'"),
    ("INSTANCE_HOST_PATTERN", "https://?.internal", "exactly one '?'"),
    ("POOL_SIZE", "0", "must be an integer >= 1"),
    ("POOL_SIZE", "five", "must be an integer >= 1"),
    ("POOL_SIZE", "2.5", "must be an integer >= 1"),
    ("MAX_OVERFLOW", "-1", "must be an integer >= 0"),
    ("POOL_TIMEOUT", "0", "must be a number of seconds > 0"),
    ("POOL_TIMEOUT", "30s", "must be a number of seconds > 0"),
    ("POOL_RECYCLE", "-1", "must be a number of seconds >= 0"),
    ("READER_SELECTION", "round-robin",
     "must be one of round_robin, random, least_connections, lowest_lag"),
    ("READ_YOUR_WRITES", "2", "must be true or false"),
    ("RYW_SCOPE", "thread", "must be one of context, process"),
    ("MAX_REPLICA_LAG_MS", "-5", "must be a number of milliseconds >= 0"),
    ("MAX_REPLICA_LAG_MS", "nan", "must be a number of milliseconds >= 0"),
    ("RYW_WAIT_MS", "-0.5", "must be a number of milliseconds >= 0"),
    ("CONNECT_TIMEOUT", "0", "must be a number of seconds > 0"),
    ("CONNECT_TIMEOUT", "inf", "must be a number of seconds > 0"),
    ("FAILOVER_TIMEOUT", "-3", "must be a number of seconds > 0"),
    ("TOPOLOGY_REFRESH_S", "0", "must be a number of seconds > 0"),
])
def test_a_malformed_value_names_its_variable_and_what_it_accepts(
        name: str, value: str, accepts: str) -> None:
    error = config_error({**MINIMAL, f"AURORA_{name}": value})
    assert error.variable == f"AURORA_{name}"
    message = str(error)
    assert message.startswith(f"AURORA_{name}: ")
    assert accepts in message
    assert "got " in message
    assert value.strip() in message or value.strip().lower() in message


@pytest.mark.parametrize("name", ["CLUSTER_ENDPOINT", "DATABASE", "USER"])
@pytest.mark.parametrize("unset", [None, "", "   "])
def test_a_missing_required_value_is_named(name: str, unset: str | None) -> None:
    environ = dict(MINIMAL)
    del environ[f"AURORA_{name}"]
    if unset is not None:
        environ[f"AURORA_{name}"] = unset
    error = config_error(environ)
    assert error.variable == f"AURORA_{name}"
    assert "is required" in str(error)


@pytest.mark.parametrize("value", ["9" * 500, "x" * 500])
def test_a_long_bad_value_is_shortened_in_the_message(value: str) -> None:
    error = config_error({**MINIMAL, "AURORA_PORT": value})
    assert error.variable == "AURORA_PORT"
    assert len(str(error)) < 200
    assert str(error).endswith("...")


# --- prefix ---------------------------------------------------------------------------------


def test_the_prefix_selects_the_variables() -> None:
    environ = {
        "APP_DB_CLUSTER_ENDPOINT": "10.1.2.3",
        "APP_DB_DATABASE": "billing",
        "APP_DB_USER": "biller",
        "APP_DB_POOL_SIZE": "3",
        # Variables with the default prefix are not read when another prefix is asked for.
        "AURORA_CLUSTER_ENDPOINT": WRITER,
        "AURORA_POOL_SIZE": "not a number",
    }
    s = Settings.from_env(environ, prefix="APP_DB_")
    assert (s.cluster_endpoint, s.database, s.user, s.pool_size) == (
        "10.1.2.3", "billing", "biller", 3)
    assert s.instance_host_pattern is None


def test_errors_name_the_variables_of_the_prefix_in_use() -> None:
    base = {"APP_DB_CLUSTER_ENDPOINT": "10.1.2.3", "APP_DB_DATABASE": "d", "APP_DB_USER": "u"}
    malformed = config_error({**base, "APP_DB_PORT": "abc"}, prefix="APP_DB_")
    assert str(malformed) == "APP_DB_PORT: must be an integer between 1 and 65535, got 'abc'"
    out_of_range = config_error({**base, "APP_DB_POOL_SIZE": "0"}, prefix="APP_DB_")
    assert out_of_range.variable == "APP_DB_POOL_SIZE"
    missing = config_error({"APP_DB_CLUSTER_ENDPOINT": "h", "APP_DB_USER": "u"}, prefix="APP_DB_")
    assert missing.variable == "APP_DB_DATABASE"
    conflict = config_error({**base, "APP_DB_IAM_AUTH": "1", "APP_DB_PASSWORD": PASSWORD,
                             "APP_DB_REGION": "us-east-1"}, prefix="APP_DB_")
    assert conflict.variable == "APP_DB_PASSWORD"
    assert "APP_DB_IAM_AUTH=true" in str(conflict)
    assert "AURORA_" not in str(conflict)


# --- region ---------------------------------------------------------------------------------


def test_region_falls_back_to_aws_region_then_aws_default_region() -> None:
    both = {**MINIMAL, "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "ap-south-1"}
    assert Settings.from_env(both).region == "eu-west-1"
    assert Settings.from_env({**both, "AURORA_REGION": "us-west-2"}).region == "us-west-2"
    assert Settings.from_env({**both, "AWS_REGION": ""}).region == "ap-south-1"
    assert Settings.from_env({**MINIMAL, "AWS_DEFAULT_REGION": "ca-central-1"}).region == (
        "ca-central-1")


def test_a_malformed_fallback_region_names_the_aws_variable() -> None:
    error = config_error({**MINIMAL, "AWS_REGION": "Frankfurt"})
    assert error.variable == "AWS_REGION"
    assert "'Frankfurt'" in str(error)


def test_region_is_required_with_iam_auth() -> None:
    error = config_error({**MINIMAL, "AURORA_IAM_AUTH": "true"})
    assert error.variable == "AURORA_REGION"
    assert "AURORA_IAM_AUTH=true" in str(error)
    with_fallback = Settings.from_env({**MINIMAL, "AURORA_IAM_AUTH": "true",
                                       "AWS_DEFAULT_REGION": "us-gov-west-1"})
    assert with_fallback.region == "us-gov-west-1"


def test_a_secret_arn_gives_the_region_and_makes_user_optional() -> None:
    environ = {"AURORA_CLUSTER_ENDPOINT": WRITER, "AURORA_DATABASE": "shop",
               "AURORA_SECRET_ID": ARN}
    s = Settings.from_env(environ)
    assert s.user is None
    assert s.region == "eu-west-2"
    assert s.secret_region == "eu-west-2"


def test_an_explicit_region_wins_but_secrets_manager_is_asked_in_the_arn_region() -> None:
    s = Settings.from_env({**MINIMAL, "AURORA_SECRET_ID": ARN, "AURORA_REGION": "us-east-1"})
    assert s.region == "us-east-1"
    assert s.secret_region == "eu-west-2"


def test_china_and_govcloud_secret_arns_give_their_region() -> None:
    cn = "arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:app-AbCdEf"
    gov = "arn:aws-us-gov:secretsmanager:us-gov-east-1:123456789012:secret:app-AbCdEf"
    assert from_env(SECRET_ID=cn).region == "cn-north-1"
    assert from_env(SECRET_ID=gov).region == "us-gov-east-1"


def test_a_secret_given_by_name_needs_a_region() -> None:
    error = config_error({**MINIMAL, "AURORA_SECRET_ID": "prod/app"})
    assert error.variable == "AURORA_REGION"
    assert "AURORA_SECRET_ID" in str(error)
    s = Settings.from_env({**MINIMAL, "AURORA_SECRET_ID": "prod/app", "AWS_REGION": "us-east-2"})
    assert (s.region, s.secret_region) == ("us-east-2", "us-east-2")


# --- credentials ----------------------------------------------------------------------------


def test_iam_auth_with_a_password_is_rejected() -> None:
    error = config_error({**MINIMAL, "AURORA_IAM_AUTH": "true", "AURORA_REGION": "us-east-1",
                          "AURORA_PASSWORD": PASSWORD})
    assert error.variable == "AURORA_PASSWORD"
    assert "AURORA_IAM_AUTH=true" in str(error)


def test_iam_auth_with_a_secret_is_rejected() -> None:
    error = config_error({**MINIMAL, "AURORA_IAM_AUTH": "yes", "AURORA_SECRET_ID": ARN})
    assert error.variable == "AURORA_SECRET_ID"


def test_a_password_with_a_secret_is_rejected() -> None:
    error = config_error({**MINIMAL, "AURORA_SECRET_ID": ARN, "AURORA_PASSWORD": PASSWORD})
    assert error.variable == "AURORA_PASSWORD"
    assert "AURORA_SECRET_ID" in str(error)


def test_sslmode_defaults_to_verify_full_with_iam_and_prefer_without() -> None:
    assert from_env().sslmode == "prefer"
    assert from_env(IAM_AUTH="true", REGION="us-east-1").sslmode == "verify-full"
    # An explicit mode wins, also with IAM (the local cluster has no TLS).
    assert from_env(IAM_AUTH="true", REGION="us-east-1", SSLMODE="disable").sslmode == "disable"
    assert from_env(SSLMODE="Require").sslmode == "require"


def test_iam_tokens_never_travel_in_clear_by_accident() -> None:
    error = config_error({**MINIMAL, "AURORA_IAM_AUTH": "true", "AURORA_REGION": "us-east-1",
                          "AURORA_SSLMODE": "prefer"})
    assert error.variable == "AURORA_SSLMODE"
    assert "require, verify-ca or verify-full with IAM" in str(error)
    for mode in ("require", "verify-ca", "verify-full", "disable"):
        assert from_env(IAM_AUTH="true", REGION="us-east-1", SSLMODE=mode).sslmode == mode


def test_sslrootcert_accepts_system() -> None:
    assert from_env(SSLROOTCERT="system").sslrootcert == "system"


# --- instance host pattern ------------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "pattern"), [
    ("mydb.cluster-c9akciq32.us-east-1.rds.amazonaws.com",
     "?.c9akciq32.us-east-1.rds.amazonaws.com"),
    ("mydb.cluster-ro-c9akciq32.us-east-1.rds.amazonaws.com",
     "?.c9akciq32.us-east-1.rds.amazonaws.com"),
    ("reporting.cluster-custom-xyz789abc.eu-west-1.rds.amazonaws.com",
     "?.xyz789abc.eu-west-1.rds.amazonaws.com"),
    ("orders-prod.cluster-c1a2b3c4d5e6.ap-southeast-2.rds.amazonaws.com.",
     "?.c1a2b3c4d5e6.ap-southeast-2.rds.amazonaws.com"),
    ("mydb.cluster-c9akciq32.rds.cn-northwest-1.amazonaws.com.cn",
     "?.c9akciq32.rds.cn-northwest-1.amazonaws.com.cn"),
    ("mydb.cluster-ro-c9akciq32.cn-north-1.rds.amazonaws.com.cn",
     "?.c9akciq32.cn-north-1.rds.amazonaws.com.cn"),
    ("mydb.cluster-c9akciq32.us-gov-west-1.rds.amazonaws.com",
     "?.c9akciq32.us-gov-west-1.rds.amazonaws.com"),
    ("mydb.cluster-c9akciq32.rds.us-gov-east-1.amazonaws.com",
     "?.c9akciq32.rds.us-gov-east-1.amazonaws.com"),
    ("mydb-instance-1.c9akciq32.us-east-1.rds.amazonaws.com",
     "?.c9akciq32.us-east-1.rds.amazonaws.com"),
])
def test_the_pattern_is_derived_from_an_aurora_endpoint(endpoint: str, pattern: str) -> None:
    assert derive_instance_host_pattern(endpoint) == pattern
    assert from_env(CLUSTER_ENDPOINT=endpoint).instance_host_pattern == pattern


@pytest.mark.parametrize("endpoint", [
    "10.0.0.5", "127.60.72.2", "::1", "localhost", "db.internal.example.com",
    "mydb.proxy-c9akciq32.us-east-1.rds.amazonaws.com",
    "mydb.cluster-c9akciq32.us-east-1.rds.example.com",
    "mydb.cluster-c9akciq32.us-east-1.rds.amazonaws.com.evil.example",
])
def test_no_pattern_for_other_hosts(endpoint: str) -> None:
    assert derive_instance_host_pattern(endpoint) is None
    assert from_env(CLUSTER_ENDPOINT=endpoint).instance_host_pattern is None


def test_an_explicit_pattern_wins_over_the_derived_one() -> None:
    assert from_env(INSTANCE_HOST_PATTERN="127.60.72.?").instance_host_pattern == "127.60.72.?"


def test_the_pattern_is_derived_from_the_cluster_endpoint_not_the_reader_endpoint() -> None:
    s = from_env(CLUSTER_ENDPOINT="10.0.0.5",
                 READER_ENDPOINT="mydb.cluster-ro-c9akciq32.us-east-1.rds.amazonaws.com")
    assert s.instance_host_pattern is None


def test_instance_host_replaces_the_question_mark() -> None:
    assert instance_host("?.c9akciq32.us-east-1.rds.amazonaws.com", "mydb-2") == (
        "mydb-2.c9akciq32.us-east-1.rds.amazonaws.com")
    assert instance_host("127.60.72.?", "11") == "127.60.72.11"


@pytest.mark.parametrize(("pattern", "instance_id"), [
    ("no-placeholder.internal", "db1"),
    ("?.?.internal", "db1"),
    ("?.internal", ""),
    ("?.internal", "db1.evil.example"),
    ("?.internal", "db 1"),
])
def test_instance_host_rejects_bad_patterns_and_ids(pattern: str, instance_id: str) -> None:
    with pytest.raises(ValueError, match="instance"):
        instance_host(pattern, instance_id)


# --- secrecy --------------------------------------------------------------------------------


def test_repr_str_and_redacted_hide_the_password() -> None:
    s = from_env(PASSWORD=PASSWORD)
    assert PASSWORD not in repr(s)
    assert PASSWORD not in str(s)
    assert "password='***'" in repr(s)
    assert "password='***'" in str(s)
    assert "user='app'" in repr(s)
    shown = s.redacted()
    assert shown["password"] == "***"
    assert PASSWORD not in repr(shown)
    assert set(shown) == {f.name for f in dataclasses.fields(Settings)}
    assert shown["pool_size"] == 5
    assert s.password == PASSWORD  # the value itself is still there for the driver


def test_an_unset_password_shows_as_none() -> None:
    s = from_env()
    assert "password=None" in repr(s)
    assert s.redacted()["password"] is None


@pytest.mark.parametrize("bad", [
    {"AURORA_PORT": "abc"},
    {"AURORA_POOL_SIZE": "0"},
    {"AURORA_IAM_AUTH": "perhaps"},
    {"AURORA_ENGINE": "oracle"},
    {"AURORA_DATABASE": ""},
    {"AURORA_IAM_AUTH": "true", "AURORA_REGION": "us-east-1"},
    {"AURORA_IAM_AUTH": "true"},
    {"AURORA_SECRET_ID": ARN},
    # The password pasted into another variable: that value is not echoed either.
    {"AURORA_PORT": PASSWORD},
    {"AURORA_CLUSTER_ENDPOINT": f"user:{PASSWORD}@host"},
    {"AURORA_REGION": PASSWORD},
])
def test_no_config_error_contains_the_password(bad: dict[str, str]) -> None:
    error = config_error({**MINIMAL, "AURORA_PASSWORD": PASSWORD, **bad})
    assert PASSWORD not in str(error)
    assert PASSWORD not in repr(error)
    assert all(PASSWORD not in str(arg) for arg in error.args)
    assert PASSWORD not in error.variable


def test_a_bad_value_next_to_a_password_is_still_echoed() -> None:
    error = config_error({**MINIMAL, "AURORA_PASSWORD": PASSWORD, "AURORA_PORT": "abc"})
    assert str(error) == "AURORA_PORT: must be an integer between 1 and 65535, got 'abc'"


def test_a_wrongly_typed_password_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(cluster_endpoint=WRITER, database="shop", user="app",
                 password=123456789)  # type: ignore[arg-type]
    assert caught.value.variable == "AURORA_PASSWORD"
    assert "123456789" not in str(caught.value)


# --- keyword construction -------------------------------------------------------------------


def test_keyword_construction_resolves_the_same_defaults_as_from_env() -> None:
    built = Settings(cluster_endpoint=WRITER, database="shop", user="app")
    assert built == Settings.from_env(MINIMAL)
    mysql = Settings(cluster_endpoint="10.0.0.5", database="shop", user="app", engine="mysql",
                     iam_auth=True, region="us-east-1")
    assert (mysql.port, mysql.sslmode, mysql.reader_endpoint) == (3306, "verify-full", "10.0.0.5")
    assert mysql.instance_host_pattern is None
    by_arn = Settings(cluster_endpoint=WRITER, database="shop", secret_id=ARN)
    assert by_arn.region == "eu-west-2"


@pytest.mark.parametrize(("field", "keyword_value", "env_value"), [
    ("engine", "oracle", "oracle"),
    ("cluster_endpoint", "h:5432", "h:5432"),
    ("port", 0, "0"),
    ("port", 70000, "70000"),
    ("region", "us-east1", "us-east1"),
    ("sslmode", "allow", "allow"),
    ("sslrootcert", "/nonexistent/ca.pem", "/nonexistent/ca.pem"),
    ("instance_host_pattern", "db.internal", "db.internal"),
    ("pool_size", 0, "0"),
    ("max_overflow", -1, "-1"),
    ("pool_timeout", 0, "0"),
    ("pool_recycle", -1, "-1"),
    ("reader_selection", "fastest", "fastest"),
    ("max_replica_lag_ms", -1, "-1"),
    ("ryw_wait_ms", -1, "-1"),
    ("connect_timeout", 0, "0"),
    ("failover_timeout", 0, "0"),
    ("topology_refresh_s", 0, "0"),
    ("topology_refresh_s", float("inf"), "inf"),
])
def test_keyword_construction_validates_like_from_env(
        field: str, keyword_value: object, env_value: str) -> None:
    with pytest.raises(ConfigError) as by_keyword:
        Settings(**{**REQUIRED, field: keyword_value})  # type: ignore[arg-type]
    by_env = config_error({**MINIMAL, env_variable(field): env_value})
    assert by_keyword.value.variable == by_env.variable == env_variable(field)

    def accepts(error: ConfigError) -> str:
        return str(error).split(", got ")[0].replace(" (also 1/0, yes/no, on/off)", "")

    assert accepts(by_keyword.value) == accepts(by_env)


@pytest.mark.parametrize(("field", "value"), [
    ("port", "5432"),
    ("port", 5432.0),
    ("port", True),
    ("pool_size", False),
    ("pool_timeout", "30"),
    ("iam_auth", "false"),
    ("read_your_writes", 1),
    ("database", 42),
    ("user", b"app"),
])
def test_keyword_construction_rejects_wrong_types(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(**{**REQUIRED, field: value})  # type: ignore[arg-type]
    assert caught.value.variable == env_variable(field)


@pytest.mark.parametrize(("kwargs", "variable"), [
    ({"cluster_endpoint": "", "database": "shop", "user": "app"}, "AURORA_CLUSTER_ENDPOINT"),
    ({"cluster_endpoint": WRITER, "database": "", "user": "app"}, "AURORA_DATABASE"),
    ({"cluster_endpoint": WRITER, "database": "shop"}, "AURORA_USER"),
    ({"cluster_endpoint": WRITER, "database": "shop", "user": "app", "iam_auth": True},
     "AURORA_REGION"),
    ({"cluster_endpoint": WRITER, "database": "shop", "user": "app", "iam_auth": True,
      "region": "us-east-1", "password": PASSWORD}, "AURORA_PASSWORD"),
    ({"cluster_endpoint": WRITER, "database": "shop", "secret_id": "prod/app"},
     "AURORA_REGION"),
])
def test_keyword_construction_checks_required_values_and_combinations(
        kwargs: dict[str, object], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(**kwargs)  # type: ignore[arg-type]
    assert caught.value.variable == variable
    assert PASSWORD not in str(caught.value)


def test_settings_are_frozen() -> None:
    s = from_env()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


def test_replace_keeps_the_password_and_validates_again() -> None:
    s = from_env(PASSWORD=PASSWORD)
    smaller = dataclasses.replace(s, pool_size=2)
    assert smaller.pool_size == 2
    assert smaller.password == PASSWORD
    assert smaller.instance_host_pattern == s.instance_host_pattern
    with pytest.raises(ConfigError) as caught:
        dataclasses.replace(s, pool_size=0)
    assert caught.value.variable == "AURORA_POOL_SIZE"
    with pytest.raises(ConfigError):
        dataclasses.replace(s, iam_auth=True, region="us-east-1")  # a password is still set


def test_replace_with_none_derives_a_default_again() -> None:
    s = from_env()
    assert dataclasses.replace(s, engine="mysql").port == 5432  # resolved values are kept
    # None is outside the fields' types (so mypy objects to it), but __init__ takes it.
    derive_port: dict[str, Any] = {"port": None}
    mysql = dataclasses.replace(s, engine="mysql", **derive_port)
    assert mysql.port == 3306
    derive_hosts: dict[str, Any] = {"reader_endpoint": None, "instance_host_pattern": None}
    moved = dataclasses.replace(s, cluster_endpoint="10.0.0.9", **derive_hosts)
    assert (moved.reader_endpoint, moved.instance_host_pattern) == ("10.0.0.9", None)


def test_env_variable_names_the_variable_of_a_field() -> None:
    assert env_variable("port") == "AURORA_PORT"
    assert env_variable("ryw_wait_ms") == "AURORA_RYW_WAIT_MS"
    assert env_variable("topology_refresh_s", prefix="APP_") == "APP_TOPOLOGY_REFRESH_S"
    with pytest.raises(ValueError, match="snapshot_reads"):
        env_variable("snapshot_reads")
