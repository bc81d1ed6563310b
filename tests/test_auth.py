"""Credentials: IAM token caching, Secrets Manager with rotation, and an IAM login end to end."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomysql
import boto3
import pymysql
import pytest
import time_machine
from moto import mock_aws
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession

from aurora_access import AsyncDatabase, AuroraAccessError, Database
from aurora_access.auth import IamTokens, SecretCredentials
from aurora_access.local import LocalCluster, free_port
from engines import TLS_IN_USE, where_sql
from helpers import set_app_password

FROZEN = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


class FakeRds:
    def __init__(self) -> None:
        self.calls: Counter[tuple[str, int]] = Counter()

    def generate_db_auth_token(self, DBHostname: str, Port: int, DBUsername: str,
                               Region: str) -> str:
        self.calls[(DBHostname, Port)] += 1
        return f"token-{DBHostname}-{sum(self.calls.values())}"


def test_one_token_per_host_per_refresh_period_across_threads() -> None:
    rds, now = FakeRds(), [1000.0]
    generated: list[int] = []
    tokens = IamTokens("app", "us-east-1", refresh_s=600, clock=lambda: now[0],
                       rds_client=lambda: rds, on_generate=lambda: generated.append(1))
    hosts = [("a.example.com", 5432), ("b.example.com", 5432), ("c.example.com", 5432)]

    def connect_many(n: int) -> None:
        for i in range(25):
            tokens.login(*hosts[(n + i) % 3])

    threads = [threading.Thread(target=connect_many, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(rds.calls.values()) == 3 and len(generated) == 3  # 200 logins, 3 instances
    first = tokens.token(*hosts[0])
    now[0] += 599
    assert tokens.token(*hosts[0]) == first
    now[0] += 2  # the refresh period is over: new connections get new tokens
    assert tokens.token(*hosts[0]) != first
    assert tokens.renew(*hosts[1]) is True  # refused: the next login signs a fresh one
    tokens.token(*hosts[1])
    assert rds.calls[hosts[1]] == 2
    assert "token" not in repr(tokens)


def test_real_boto3_tokens_are_local_and_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-key-not-real-000000000000")
    with time_machine.travel(FROZEN, tick=False):
        a = IamTokens("app", "eu-west-1").token("db.example.com", 5432)
        b = IamTokens("app", "eu-west-1").token("db.example.com", 5432)
    assert a == b and a.startswith("db.example.com:5432/?") and "DBUser=app" in a
    assert "example-secret-key" not in a


@pytest.fixture
def secrets() -> Iterator[object]:
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="us-east-1")
        client.create_secret(Name="shop/db", SecretString=json.dumps(
            {"username": "shop", "password": "first-password"}))
        yield client


def test_secret_is_read_once_and_again_after_a_refusal(
        secrets: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    reads: list[int] = []

    def client() -> object:
        reads.append(1)
        return boto3.client("secretsmanager", region_name="us-east-1")

    creds = SecretCredentials("shop/db", "us-east-1", secrets_client=client)
    assert creds.login("h", 5432) == ("shop", "first-password")
    assert creds.login("h", 5432) == ("shop", "first-password") and len(reads) == 1
    boto3.client("secretsmanager", region_name="us-east-1").put_secret_value(
        SecretId="shop/db", SecretString=json.dumps(
            {"username": "shop", "password": "rotated-password"}))
    assert creds.login("h", 5432)[1] == "first-password"  # cached until refused
    creds._read_at -= 5  # a refusal some time after the read
    assert creds.renew("h", 5432) is True
    assert creds.login("h", 5432) == ("shop", "rotated-password") and len(reads) == 2
    assert "password" not in repr(creds).replace("SecretCredentials", "")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "read database credentials from secret shop/db" in logged
    assert "first-password" not in logged and "rotated-password" not in logged


def test_secret_errors_name_the_secret_not_its_value(secrets: object) -> None:
    boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="broken", SecretString="not json: hunter2")
    with pytest.raises(AuroraAccessError, match="'broken' is not JSON") as caught:
        SecretCredentials("broken", "us-east-1").login("h", 5432)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(AuroraAccessError, match=r"'missing'.*ResourceNotFoundException"):
        SecretCredentials("missing", "us-east-1").login("h", 5432)


@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
def test_iam_login_end_to_end(engine: str, monkeypatch: pytest.MonkeyPatch,
                              caplog: pytest.LogCaptureFixture) -> None:
    """The role's password is the token for this clock: the server accepts exactly that token,
    as Aurora accepts a valid signature, and refuses any other."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-key-not-real-000000000000")
    with LocalCluster(engine=engine, readers=0, port=free_port(0)) as cluster, \
            time_machine.travel(FROZEN, tick=False) as clock:
        writer = cluster.writer

        def set_password_to_token_at_now() -> None:
            set_app_password(cluster, IamTokens(cluster.user, "us-east-1").token(
                writer.host, cluster.port))

        set_password_to_token_at_now()
        env = {k: v for k, v in cluster.env().items() if k != "AURORA_PASSWORD"}
        env.update(AURORA_CLUSTER_ENDPOINT=writer.host, AURORA_IAM_AUTH="true",
                   AURORA_REGION="us-east-1", AURORA_SSLMODE="disable")
        db = Database.from_env(env)
        try:
            with db.session() as s:
                s.execute(text("CREATE TABLE IF NOT EXISTS iam_probe (id int)"))
                s.execute(text("INSERT INTO iam_probe VALUES (1)"))
            with db.session() as s:
                assert s.execute(text("SELECT count(*) FROM iam_probe")).scalar() == 1
            assert db.stats()["iam_tokens_generated"] == 1
            # five minutes on, the role's password is the token of that moment; a pooled
            # reconnect first tries the cached token, is refused, and signs a fresh one
            clock.move_to(FROZEN + timedelta(minutes=5))
            set_password_to_token_at_now()
            db.engine("writer").dispose()
            with db.session() as s:  # a write: a new connection to the writer
                s.execute(text("INSERT INTO iam_probe VALUES (2)"))
            assert db.stats()["iam_tokens_generated"] == 2
        finally:
            db.close()
        for bad in ({"AURORA_REGION": "eu-west-3"}, {"AURORA_USER": "someone_else"}):
            with pytest.raises(AuroraAccessError, match=r"refused the login of user .* with an "
                               r"IAM auth token: check AURORA_USER, AURORA_REGION") as caught:
                Database.from_env({**env, **bad}).wait_ready(5)
            assert "X-Amz-Signature" not in str(caught.value)
            assert caught.value.__cause__ is None and caught.value.__suppress_context__
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "new IAM auth token" in logged and "refused; trying once more" in logged
    assert "X-Amz-Signature" not in logged and "example-secret-key" not in logged


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
def test_iam_over_verified_tls_to_every_instance_and_through_a_failover(
        engine: str, api: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Each instance accepts only the token signed for its own host (the role's password is
    set to it in turn), over verify-full TLS; nothing secret reaches the logs. ``Database``
    and ``AsyncDatabase`` (psycopg async, aiomysql) alike."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-key-not-real-000000000000")
    caplog.set_level(logging.DEBUG)
    tokens_seen: list[str] = []
    with LocalCluster(engine=engine, readers=2, port=free_port(), tls=True) as cluster, \
            time_machine.travel(FROZEN, tick=False):

        def accept_only_token_of(host: str) -> None:
            token = IamTokens(cluster.user, "us-east-1").token(host, cluster.port)
            tokens_seen.append(token)
            set_app_password(cluster, token)

        accept_only_token_of(cluster.writer.host)
        env = {k: v for k, v in cluster.env().items() if k != "AURORA_PASSWORD"}
        env.update(AURORA_CLUSTER_ENDPOINT=cluster.writer.host, AURORA_IAM_AUTH="true",
                   AURORA_REGION="us-east-1",  # sslmode: verify-full, as IAM defaults to
                   AURORA_TOPOLOGY_REFRESH_S="0.3")
        readers = [r.id for r in cluster.readers]
        iam_round = _sync_iam_round if api == "sync" else _async_iam_round
        seen, new_writer, tokens = iam_round(cluster, env, accept_only_token_of)
        assert seen == [(True, reader, True, 1) for reader in readers]
        assert new_writer == cluster.writer.id
        assert tokens >= 4  # writer, 2 readers, new writer
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "token" in logged.lower()  # the token's life is logged...
    for token in tokens_seen:  # ... never the token
        assert token not in logged and token.split("X-Amz-Signature=")[1] not in logged
    assert "X-Amz-Signature" not in logged and "example-secret-key" not in logged


IamRound = tuple[list[tuple[bool, str, bool, int]], str, int]


def _sync_iam_round(cluster: LocalCluster, env: dict[str, str],
                    accept_only_token_of: Any) -> IamRound:
    """Write over TLS on the writer, read on each reader (accepting only its token), fail
    over, write on the new writer: (each reader's answers, the new writer, tokens signed)."""
    engine = cluster.engine
    db = Database.from_env(env)
    try:
        with db.session() as s:
            s.execute(text("CREATE TABLE iam_tls (id int)"))
            s.execute(text("INSERT INTO iam_tls VALUES (1)"))
            assert s.execute(text(TLS_IN_USE[engine])).scalar()
        seen = []
        for reader in cluster.readers:
            accept_only_token_of(reader.host)
            with db.engine(reader.id).connect() as conn:
                on_reader, instance_id = conn.execute(where_sql(engine)).one()
                tls = conn.execute(text(TLS_IN_USE[engine])).scalar()
                count = conn.execute(text("SELECT count(*) FROM iam_tls")).scalar()
            seen.append((bool(on_reader), str(instance_id), bool(tls), int(count or 0)))
        cluster.failover()
        accept_only_token_of(cluster.writer.host)

        def write(s: Any) -> str:
            s.execute(text("INSERT INTO iam_tls VALUES (2)"))
            return str(s.execute(where_sql(engine)).one()[1])

        return seen, db.run_transaction(write, max_attempts=5), db.stats()["iam_tokens_generated"]
    finally:
        db.close()


def _async_iam_round(cluster: LocalCluster, env: dict[str, str],
                     accept_only_token_of: Any) -> IamRound:
    """``_sync_iam_round`` through AsyncDatabase."""
    engine = cluster.engine

    async def main() -> IamRound:
        db = AsyncDatabase.from_env(env)
        try:
            async with db.session() as s:
                await s.execute(text("CREATE TABLE iam_tls (id int)"))
                await s.execute(text("INSERT INTO iam_tls VALUES (1)"))
                assert await s.scalar(text(TLS_IN_USE[engine]))
            seen = []
            for reader in cluster.readers:
                accept_only_token_of(reader.host)
                async with db.engine(reader.id).connect() as conn:
                    on_reader, instance_id = (await conn.execute(where_sql(engine))).one()
                    tls = await conn.scalar(text(TLS_IN_USE[engine]))
                    count = await conn.scalar(text("SELECT count(*) FROM iam_tls"))
                seen.append((bool(on_reader), str(instance_id), bool(tls), int(count or 0)))
            await asyncio.to_thread(cluster.failover)
            accept_only_token_of(cluster.writer.host)

            async def write(s: AsyncSession) -> str:
                await s.execute(text("INSERT INTO iam_tls VALUES (2)"))
                return str((await s.execute(where_sql(engine))).one()[1])

            new_writer = await db.run_transaction(write, max_attempts=5)
            return seen, new_writer, db.stats()["iam_tokens_generated"]
        finally:
            await db.close()

    return asyncio.run(main())


def test_database_logs_in_from_a_secret_and_follows_its_rotation(secrets: object) -> None:
    with LocalCluster(readers=1, port=free_port(1)) as cluster:
        client = boto3.client("secretsmanager", region_name="us-east-1")
        client.create_secret(Name="local/app", SecretString=json.dumps(
            {"username": cluster.user, "password": cluster.password}))
        env = {k: v for k, v in cluster.env().items()
               if k not in ("AURORA_PASSWORD", "AURORA_USER")}
        db = Database.from_env({**env, "AURORA_SECRET_ID": "local/app",
                                "AURORA_REGION": "us-east-1"})
        try:
            with db.session() as s:
                s.execute(text("CREATE TABLE secret_probe (id int)"))
            # rotation: the database and the secret change; pooled connections live on,
            # a new connection is refused with the cached secret, reads it again, gets in
            set_app_password(cluster, "rotated-1")
            client.put_secret_value(SecretId="local/app", SecretString=json.dumps(
                {"username": cluster.user, "password": "rotated-1"}))
            db.credentials._read_at -= 5  # type: ignore[attr-defined]
            db.engine("writer").dispose()
            with db.session() as s:
                s.execute(text("INSERT INTO secret_probe VALUES (1)"))
        finally:
            db.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to add a PAM service in /etc/pam.d")
@pytest.mark.parametrize("api", ["sync", "async"])
def test_iam_through_the_cleartext_plugin_over_tls_as_on_aurora_mysql(
        api: str, shm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Aurora MySQL checks an IAM token with a server plugin that asks the client for the
    password in clear (mysql_clear_password), which is safe only inside TLS. MariaDB does the
    same with PAM and ``pam_use_cleartext_plugin``: a PAM service accepts exactly the token for
    this clock, as Aurora accepts exactly a valid signature. PyMySQL (``Database``) and
    aiomysql (``AsyncDatabase``) alike."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-key-not-real-000000000000")
    plugins: list[bytes] = []
    if api == "sync":
        process_auth = pymysql.connections.Connection._process_auth

        def recording(self: Any, plugin_name: bytes, *args: Any) -> Any:
            plugins.append(plugin_name)
            return process_auth(self, plugin_name, *args)

        monkeypatch.setattr(pymysql.connections.Connection, "_process_auth", recording)
    else:
        process_auth_async = aiomysql.connection.Connection._process_auth

        async def recording_async(self: Any, plugin_name: bytes, *args: Any) -> Any:
            plugins.append(plugin_name)
            return await process_auth_async(self, plugin_name, *args)

        monkeypatch.setattr(aiomysql.connection.Connection, "_process_auth", recording_async)
    expected = shm_dir / "expected-token"
    check = shm_dir / "check-token"
    check.write_text(f'#!/bin/bash\nIFS= read -r -d "" token\n[ "$token" = "$(cat {expected})" ]\n')
    check.chmod(0o755)
    with LocalCluster(engine="mysql", readers=0, port=free_port(0), tls=True) as cluster, \
            time_machine.travel(FROZEN, tick=False):
        service = Path(f"/etc/pam.d/aurora-access-test-{cluster.port}")
        service.write_text(f"auth required pam_exec.so expose_authtok quiet {check}\n"
                           "account required pam_permit.so\n")
        try:
            writer = cluster.writer
            conf = cluster.dir / writer.id / "my.cnf"
            conf.write_text(conf.read_text() + "plugin-load-add = auth_pam_v1\n"
                            "pam-use-cleartext-plugin = ON\n")
            cluster.restart(writer.id)
            admin = create_engine(cluster.admin_url(writer.id), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f"CREATE USER 'iam'@'%' IDENTIFIED VIA pam USING "
                                  f"'{service.name}'"))
                conn.execute(text("GRANT ALL ON app.* TO 'iam'@'%'"))
                conn.execute(text("GRANT SELECT ON aurora_local.* TO 'iam'@'%'"))
            admin.dispose()
            expected.write_text(IamTokens("iam", "us-east-1").token(writer.host, cluster.port))
            expected.chmod(0o644)
            env = {k: v for k, v in cluster.env().items() if k != "AURORA_PASSWORD"}
            env.update(AURORA_CLUSTER_ENDPOINT=writer.host, AURORA_USER="iam",
                       AURORA_IAM_AUTH="true", AURORA_REGION="us-east-1")
            write_then_read = _write_then_read if api == "sync" else _write_then_read_async
            assert write_then_read(env) == (True, 1)  # verify-full with the cluster's CA
            assert b"mysql_clear_password" in plugins
            with pytest.raises(AuroraAccessError, match="refused the login of user 'iam' with "
                               "an IAM auth token"):
                write_then_read({**env, "AURORA_REGION": "eu-west-3"})
        finally:
            service.unlink()


def _write_then_read(env: dict[str, str]) -> tuple[bool, int]:
    """Write on the writer, read it back: (TLS in use, rows read)."""
    db = Database.from_env(env)
    try:
        with db.session() as s:
            s.execute(text("CREATE TABLE IF NOT EXISTS cleartext_probe (id int)"))
            s.execute(text("INSERT INTO cleartext_probe VALUES (1)"))
            tls = bool(s.execute(text(TLS_IN_USE["mysql"])).scalar())
        with db.session() as s:
            return tls, int(s.execute(text("SELECT count(*) FROM cleartext_probe")).scalar() or 0)
    finally:
        db.close()


def _write_then_read_async(env: dict[str, str]) -> tuple[bool, int]:
    """``_write_then_read`` through AsyncDatabase."""

    async def main() -> tuple[bool, int]:
        db = AsyncDatabase.from_env(env)
        try:
            async with db.session() as s:
                await s.execute(text("CREATE TABLE IF NOT EXISTS cleartext_probe (id int)"))
                await s.execute(text("INSERT INTO cleartext_probe VALUES (1)"))
                tls = bool(await s.scalar(text(TLS_IN_USE["mysql"])))
            async with db.session() as s:
                return tls, int(await s.scalar(text("SELECT count(*) FROM cleartext_probe")) or 0)
        finally:
            await db.close()

    return asyncio.run(main())
