"""`aurora-access check`, run in-process against real local clusters, and the dialects'
``tls_in_use`` under it. Every run asserts that no password reaches stdout or stderr."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pymysql
import pytest
from moto import mock_aws

from aurora_access.check import Report
from aurora_access.cli import main
from aurora_access.dialects import for_engine
from aurora_access.local import LocalCluster, free_port
from helpers import mysql_app

WRONG_PASSWORD = "not-the-Passw0rd-4711"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AURORA_* setting of the machine or of another test leaks into a check (the local
    cluster's own AURORA_LOCAL_* stay: they only say where its templates are cached)."""
    for name in list(os.environ):
        if name.startswith("AURORA_") and not name.startswith("AURORA_LOCAL_"):
            monkeypatch.delenv(name)
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module", params=["postgresql", "mysql"])
def tls_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    with LocalCluster(engine=request.param, readers=1, port=free_port(1), tls=True) as cluster:
        yield cluster


def run_check(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
              env: dict[str, str], *args: str, hidden: tuple[str, ...] = ()) -> tuple[int, str]:
    """``aurora-access check`` with exactly ``env``: its exit code and stdout. Fails the test
    if the configured password (or any of ``hidden``) shows on stdout or stderr."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["check", *args])
    out, err = capsys.readouterr()
    for secret in [*hidden, env.get("AURORA_PASSWORD", "")]:
        assert not secret or (secret not in out and secret not in err), "a secret was printed"
    assert "Traceback" not in out + err
    assert (err == "") == (code == 0), err
    return code, out


def line(out: str, name: str) -> tuple[str, str]:
    """(status, detail) of the check called ``name``."""
    for text in out.splitlines():
        match = re.fullmatch(rf"  (ok|warn|FAIL|skip) +(?:[\d.]+ ms)? +{re.escape(name)} +(.*)",
                             text)
        if match:
            return match[1], match[2]
    raise AssertionError(f"no check {name!r} in:\n{out}")


def test_all_good_lists_the_writer_and_readers(
        engine_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_check(monkeypatch, capsys, engine_cluster.env())
    assert code == 0
    writer, readers = engine_cluster.writer, engine_cluster.readers
    source = {"postgresql": "aurora_replica_status()", "mysql": "gtid"}[engine_cluster.engine]
    assert line(out, "topology") == ("ok", f"writer {writer.id}, readers "
                                     f"{', '.join(r.id for r in readers)}; read-your-writes "
                                     f"by log position ({source})")
    status, detail = line(out, f"instance {writer.id}")
    assert status == "ok" and detail.startswith(f"writer  {writer.host}:{writer.port}, ")
    assert detail.endswith(", TLS off (sslmode prefer), takes writes")
    for reader in readers:
        status, detail = line(out, f"instance {reader.id}")
        assert status == "ok" and detail.startswith(f"reader  {reader.host}:{reader.port}, lag ")
        assert detail.endswith(", TLS off (sslmode prefer), read-only")
    assert line(out, "auth") == ("ok", f"password for user {engine_cluster.user!r}")
    assert line(out, "cluster endpoint")[0] == line(out, "reader endpoint")[0] == "ok"
    assert re.search(r"^  AURORA_PASSWORD +\*\*\*$", out, re.M)
    assert out.endswith("result: ok (11 ok)\n")  # 8 checks and a budget per instance


def test_the_connection_budget_for_several_workers(
        engine_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Per process: the writer 2 x (5 + 10) + 2 x 5 = 40, a reader 5 + 10 + 5 = 20 (defaults);
    against the instances' max_connections, read from them."""
    limit = _max_connections(engine_cluster)
    fits = max(1, limit // 40)  # as many workers as the writer's budget allows
    code, out = run_check(monkeypatch, capsys, engine_cluster.env(), "--workers", str(fits))
    writer = engine_cluster.writer
    assert code == 0
    assert line(out, f"budget {writer.id}") == (
        "ok", f"writer: {fits} process(es) x 40 = {40 * fits} of {limit} accepted "
        "(max_connections less reserved)")
    too_many = fits + 1
    code, out = run_check(monkeypatch, capsys, engine_cluster.env(), "--workers", str(too_many))
    assert code == 0  # a warning, not a failure
    status, detail = line(out, f"budget {writer.id}")
    assert status == "warn" and f"{too_many} process(es) x 40 = {40 * too_many}" in detail
    assert "lower AURORA_POOL_SIZE/AURORA_MAX_OVERFLOW or the workers" in detail
    reader = engine_cluster.readers[0]
    assert line(out, f"budget {reader.id}")[1].startswith(
        f"reader: {too_many} process(es) x 20 = {20 * too_many} of {limit}")
    code, out = run_check(monkeypatch, capsys, engine_cluster.env(), "--json", "--workers", "3")
    budgets = [c for c in json.loads(out)["checks"] if c["name"].startswith("budget ")]
    assert {(c["role"], c["per_process"], c["total"], c["accepted"]) for c in budgets} == {
        ("writer", 40, 120, limit), ("reader", 20, 60, limit)}
    # an AsyncDatabase process has one more of the library's pools (5) per instance
    code, out = run_check(monkeypatch, capsys, engine_cluster.env(), "--json", "--workers", "3",
                          "--async")
    budgets = [c for c in json.loads(out)["checks"] if c["name"].startswith("budget ")]
    assert {(c["role"], c["per_process"], c["total"]) for c in budgets} == {
        ("writer", 50, 150), ("reader", 25, 75)}


def _max_connections(cluster: LocalCluster) -> int:
    """What an instance accepts from unprivileged clients, asked as the check does."""
    from sqlalchemy import create_engine, text  # noqa: PLC0415

    sql = {"postgresql": "SELECT current_setting('max_connections')::int - "
                         "current_setting('superuser_reserved_connections')::int",
           "mysql": "SELECT @@max_connections"}[cluster.engine]
    engine = create_engine(cluster.admin_url(cluster.writer.id))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def test_json_report(aurora_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_check(monkeypatch, capsys, aurora_cluster.env(), "--json")
    report = json.loads(out)
    assert code == 0 and report["result"] == "ok"
    assert report["configuration"]["AURORA_PASSWORD"] == "***"
    instances = [c for c in report["checks"] if c["name"].startswith("instance ")]
    assert [(c["id"], c["role"], c["status"], c["tls"], c["takes_writes"]) for c in instances] \
        == [(i.id, i.role, "ok", None, i.role == "writer")
            for i in [aurora_cluster.writer, *aurora_cluster.readers]]
    assert all(c["connect_ms"] > 0 for c in instances)


def test_tls_in_use_and_verified(tls_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_check(monkeypatch, capsys, tls_cluster.env())
    assert code == 0
    for instance in tls_cluster.instances:
        status, detail = line(out, f"instance {instance.id}")
        assert status == "ok"
        # MySQL names the protocol and cipher; psycopg tells only that TLS is on
        assert re.search(r", TLS on: (TLSv1\.[23] \S+|TLS), verify-full, ", detail), detail


def _tls_and_clear(cluster: LocalCluster) -> tuple[Any, Any]:
    """Two live driver connections to the writer: one over verified TLS, one in clear."""
    host = cluster.writer.host
    if cluster.engine == "mysql":
        return mysql_app(cluster, host, ssl_ca=str(cluster.ca_cert)), mysql_app(cluster, host)

    def postgresql(sslmode: str) -> psycopg.Connection[Any]:
        return psycopg.connect(host=host, port=cluster.port, user=cluster.user,
                               password=cluster.password, dbname=cluster.database,
                               sslmode=sslmode, sslrootcert=str(cluster.ca_cert))

    return postgresql("verify-full"), postgresql("disable")


def test_dialects_read_tls_from_the_driver(tls_cluster: LocalCluster) -> None:
    dialect = for_engine(tls_cluster.engine)
    on, off = _tls_and_clear(tls_cluster)
    try:
        seen, clear = dialect.tls_in_use(on), dialect.tls_in_use(off)
    finally:
        on.close()
        off.close()
    expected = r"TLSv1\.[23] [A-Z0-9_-]+" if tls_cluster.engine == "mysql" else "TLS"
    assert seen is not None and re.fullmatch(expected, seen), seen
    assert clear is None


def test_tls_in_use_without_a_socket_is_none() -> None:
    assert for_engine("mysql").tls_in_use(pymysql.connections.Connection(defer_connect=True)) \
        is None


def test_missing_variable_is_named(aurora_cluster: LocalCluster,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    env = {k: v for k, v in aurora_cluster.env().items() if k != "AURORA_DATABASE"}
    code, out = run_check(monkeypatch, capsys, env)
    assert code == 1
    status, detail = line(out, "config")
    assert status == "FAIL" and detail.startswith("AURORA_DATABASE: is required")
    assert "configuration" not in out and out.endswith("result: FAIL (1 FAIL): config\n")


def test_unresolvable_cluster_endpoint_stops_the_check(
        aurora_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    env = {**aurora_cluster.env(), "AURORA_CLUSTER_ENDPOINT": "no-such-host.invalid"}
    code, out = run_check(monkeypatch, capsys, env)
    assert code == 1
    status, detail = line(out, "cluster endpoint")
    assert status == "FAIL"
    assert detail.startswith("no-such-host.invalid (AURORA_CLUSTER_ENDPOINT) does not resolve")
    assert line(out, "topology") == ("skip", "the cluster endpoint does not resolve")


def test_unresolvable_reader_endpoint_fails_but_instances_are_checked(
        aurora_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    env = {**aurora_cluster.env(), "AURORA_READER_ENDPOINT": "no-such-reader.invalid"}
    code, out = run_check(monkeypatch, capsys, env)
    assert code == 1
    assert line(out, "reader endpoint")[0] == "FAIL"
    assert {line(out, f"instance {i.id}")[0] for i in aurora_cluster.instances} == {"ok"}
    assert out.endswith("): reader endpoint\n")


def test_wrong_password_names_the_user_not_the_password(
        engine_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    env = {**engine_cluster.env(), "AURORA_PASSWORD": WRONG_PASSWORD}
    code, out = run_check(monkeypatch, capsys, env, hidden=(engine_cluster.password,))
    assert code == 1
    status, detail = line(out, "topology")
    assert status == "FAIL"
    assert f"refused the login of user {engine_cluster.user!r} with a password" in detail
    assert line(out, "auth") == ("FAIL", f"password for user {engine_cluster.user!r}: the "
                                 "login was refused")
    assert line(out, "instances")[0] == "skip"


def test_crashed_reader_fails_alone(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """On MariaDB, whose emulated topology table keeps a crashed reader listed as Aurora's
    does (the local PostgreSQL cluster reads its topology from live replication connections,
    so a crashed reader leaves it at once)."""
    with LocalCluster(engine="mysql", readers=2, port=free_port()) as cluster:
        crashed = cluster.readers[-1]
        cluster.crash(crashed.id)
        code, out = run_check(monkeypatch, capsys, cluster.env())
        alive = [cluster.writer, *cluster.readers[:-1]]
    assert code == 1
    status, detail = line(out, f"instance {crashed.id}")
    assert status == "FAIL" and "unreachable (connection lost)" in detail
    assert {line(out, f"instance {i.id}")[0] for i in alive} == {"ok"}
    # budgets too: the crashed one's limit unknown
    assert out.endswith(f"result: FAIL (10 ok, 1 FAIL): instance {crashed.id}\n")


def test_refused_iam_login_prints_no_token(aurora_cluster: LocalCluster,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-key-not-real-000000000000")
    env = {k: v for k, v in aurora_cluster.env().items() if k != "AURORA_PASSWORD"}
    env.update(AURORA_IAM_AUTH="true", AURORA_REGION="eu-west-3", AURORA_SSLMODE="disable")
    code, out = run_check(monkeypatch, capsys, env, hidden=(aurora_cluster.password,
                                                            "X-Amz", "example-secret-key"))
    assert code == 1
    assert "refused the login of user 'app' with an IAM auth token" in line(out, "topology")[1]
    assert line(out, "auth") == ("FAIL", "IAM auth tokens for user 'app' in eu-west-3: the "
                                 "login was refused")


def test_login_from_a_secret(aurora_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    env = {k: v for k, v in aurora_cluster.env().items()
           if k not in ("AURORA_PASSWORD", "AURORA_USER")}
    env.update(AURORA_SECRET_ID="local/app", AURORA_REGION="us-east-1")
    with mock_aws():
        boto3.client("secretsmanager", region_name="us-east-1").create_secret(
            Name="local/app", SecretString=json.dumps(
                {"username": aurora_cluster.user, "password": aurora_cluster.password}))
        code, out = run_check(monkeypatch, capsys, env, hidden=(aurora_cluster.password,))
    assert code == 0
    assert line(out, "auth") == ("ok", "Secrets Manager secret 'local/app' in us-east-1, "
                                 f"user {aurora_cluster.user!r}")


def test_the_report_hides_every_password_and_token_it_knows() -> None:
    token = ("db.example.com:5432/?Action=connect&DBUser=app&X-Amz-Algorithm=AWS4-HMAC-SHA256"
             "&X-Amz-Credential=AKIA%2F20261126&X-Amz-Signature=0123abcd")
    report = Report(secrets={"s3cr3t-value"})
    report.add("FAIL", "instance 12", f"refused: password 's3cr3t-value' or token {token} said",
               1.0, {"error": [f"again {token}", "s3cr3t-value"]})
    for text in (report.text(), report.as_json()):
        assert "s3cr3t" not in text and "X-Amz" not in text and "AKIA" not in text
    assert "refused: password '***' or token *** said" in report.text()
