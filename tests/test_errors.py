"""Exact errors (issue 12): each failure to start names what was tried and the one likely
cause, in one line followed by the driver's words; a refused login is AuthenticationFailed,
on both engines, saying what to check for the kind of credentials in use."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from aurora_access import AuroraAccessError, AuthenticationFailed, Database, NoWriterAvailable
from aurora_access.local import LocalCluster
from helpers import set_app_password


def first_use(env: dict[str, str]) -> Exception:
    db = Database.from_env(env)
    try:
        with pytest.raises(AuroraAccessError) as caught:
            db.topology()
        return caught.value
    finally:
        db.close()


def test_a_wrong_port(engine_cluster: LocalCluster) -> None:
    env = engine_cluster.env()
    port = str(engine_cluster.port + 1)
    error = first_use({**env, "AURORA_PORT": port})
    assert isinstance(error, NoWriterAvailable)
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"no writer found through the cluster endpoint "
                              f"{engine_cluster.cluster_host}:{port}: nothing accepts "
                              "connections there: check AURORA_PORT and the endpoint (driver: ")
    assert "refused" in message.lower()
    assert engine_cluster.reader_host not in message  # what was tried, and only that


def test_a_name_that_does_not_resolve(engine_cluster: LocalCluster) -> None:
    error = first_use({**engine_cluster.env(), "AURORA_CLUSTER_ENDPOINT": "nowhere.invalid",
                       "AURORA_INSTANCE_HOST_PATTERN": "?.invalid"})
    assert isinstance(error, NoWriterAvailable) and "\n" not in str(error)
    assert "nowhere.invalid" in str(error)
    assert "the name does not resolve: check AURORA_CLUSTER_ENDPOINT" in str(error)


def test_a_wrong_password_is_authentication_failed(engine_cluster: LocalCluster) -> None:
    error = first_use({**engine_cluster.env(), "AURORA_PASSWORD": "not-the-password"})
    assert isinstance(error, AuthenticationFailed)
    message = str(error)
    assert "\n" not in message and "not-the-password" not in message
    assert message.startswith(f"{engine_cluster.cluster_host}:{engine_cluster.port} refused "
                              f"the login of user '{engine_cluster.user}' with a password: "
                              "check AURORA_USER and AURORA_PASSWORD (server: ")
    assert "AURORA_REGION" not in message and "IAM" not in message  # not this mode's causes
    assert error.instance == engine_cluster.cluster_host


def test_a_login_refused_later_is_authentication_failed_too(
        engine_cluster: LocalCluster) -> None:
    """The password changed under a running application: its next new connection (here to
    a reader, whose pool is empty) is refused, and says so as at the start."""
    db = Database.from_env({**engine_cluster.env(), "AURORA_RYW_WAIT_MS": "0"})
    try:
        db.wait_ready(10)
        set_app_password(engine_cluster, "changed-under-it")
        engine_cluster.wait_replayed()  # the readers have it too
        try:
            with pytest.raises(AuthenticationFailed, match="refused the login of user") as got, \
                    db.read_only() as s:
                s.execute(text("SELECT 1"))
            assert "\n" not in str(got.value) and "changed-under-it" not in str(got.value)
        finally:
            set_app_password(engine_cluster, engine_cluster.password)
            engine_cluster.wait_replayed()
    finally:
        db.close()
