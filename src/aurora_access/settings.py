"""Configuration: environment variables -> one validated, frozen ``Settings``.

``Settings.from_env()`` reads the variables below; ``Settings(cluster_endpoint=..., database=...,
user=...)`` builds the same object in code. Both run the same checks: a missing or malformed value
raises ``ConfigError`` naming the variable and what it accepts. No message, repr or
``redacted()`` ever contains the password.

In the environment an empty value counts as unset, surrounding whitespace is ignored (not in the
password), choices are case-insensitive, and booleans accept true/false, 1/0, yes/no, on/off in
any case. ``from_env(prefix="APP_DB_")`` reads ``APP_DB_PORT`` and so on instead, and errors then
name those variables.

============================  ======================  ==============================================
variable                      default                 meaning
============================  ======================  ==============================================
AURORA_ENGINE                 postgresql              ``postgresql`` or ``mysql``
AURORA_CLUSTER_ENDPOINT       required                cluster (writer) endpoint host
AURORA_READER_ENDPOINT        the cluster endpoint    reader endpoint host
AURORA_PORT                   5432 / 3306             port of the endpoints and of every instance
AURORA_DATABASE               required                database name
AURORA_USER                   required (*)            user name; (*) unless the secret gives it
AURORA_PASSWORD               none                    password; not with IAM auth or a secret
AURORA_IAM_AUTH               false                   log in with RDS IAM auth tokens
AURORA_REGION                 see below               region for IAM tokens and Secrets Manager
AURORA_SECRET_ID              none                    Secrets Manager secret (name or ARN) holding
                                                      JSON ``username`` and ``password``
AURORA_SSLMODE                verify-full with IAM,   disable, prefer, require, verify-ca,
                              else prefer             verify-full (libpq's meanings)
AURORA_SSLROOTCERT            none                    CA bundle file, or ``system``
AURORA_INSTANCE_HOST_PATTERN  see below               an instance's host, ``?`` standing for its id
AURORA_POOL_SIZE              5                       connections kept per instance (>= 1)
AURORA_MAX_OVERFLOW           10                      extra connections per instance (>= 0)
AURORA_POOL_TIMEOUT           30                      seconds to wait for a pooled connection (> 0)
AURORA_POOL_RECYCLE           1800                    seconds before a connection is replaced
                                                      (>= 0; 0 = never, SQLAlchemy's -1)
AURORA_READER_SELECTION       round_robin             round_robin, random, least_connections,
                                                      lowest_lag
AURORA_READ_YOUR_WRITES       true                    a read after a commit in the same thread or
                                                      task sees that commit
AURORA_MAX_REPLICA_LAG_MS     1000                    a reader lagging more gets no reads (>= 0)
AURORA_RYW_SCOPE              context                 whose commits a read must see: ``context``
                                                      (its own session's, thread's or task's,
                                                      unit of work's) or ``process`` (every
                                                      commit of this process: test suites)
AURORA_RYW_WAIT_MS            50                      ms a read may wait for a reader to apply the
                                                      context's last commit before it goes to the
                                                      writer instead (>= 0)
AURORA_CONNECT_TIMEOUT        5                       seconds for one connection attempt (> 0)
AURORA_FAILOVER_TIMEOUT       30                      seconds to find the new writer (> 0)
AURORA_TOPOLOGY_REFRESH_S     1                       seconds between topology checks (> 0)
AURORA_HUNG_TIMEOUT_S         2                       seconds the writer may take to answer the
                                                      monitor's heartbeat before it is treated
                                                      as failed (> 0); a hung writer is noticed
                                                      within this plus one refresh
AURORA_IDLE_PAUSE_S           60                      seconds without statements after which the
                                                      monitor sleeps and pooled connections are
                                                      closed, so Serverless v2 can pause (>= 0;
                                                      0 = never)
AURORA_RESUME_TIMEOUT_S       20                      seconds a connection may wait for a paused
                                                      Serverless v2 instance to resume (> 0)
AURORA_CUSTOM_ENDPOINTS       none (RDS is asked)     custom endpoints' members when RDS cannot
                                                      be asked: ``name=id,id;name2=id``
AURORA_EXCLUSIVE_ENDPOINTS    none                    custom endpoints whose members get no
                                                      general reads: ``name,name2``
============================  ======================  ==============================================

Region: AURORA_REGION, else (from the environment) AWS_REGION, else AWS_DEFAULT_REGION, else the
region of AURORA_SECRET_ID when that is a full ARN. It is required with IAM auth and with a secret
named without its ARN. Secrets Manager is asked in ``Settings.secret_region``, which is the ARN's
region whenever the secret is given as an ARN.

Instance host pattern: derived from an Aurora endpoint (``hosts.py``), else ``None``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Final, cast

from .errors import ConfigError
from .hosts import (
    derive_instance_host_pattern,
    instance_host,
    is_host,
    is_region,
    secret_arn_region,
)
from .values import (
    SECRET_FIELDS,
    Engine,
    ReaderSelection,
    RywScope,
    SslMode,
    Values,
    parse,
    shown,
)

__all__ = [
    "DEFAULT_PORTS",
    "DEFAULT_PREFIX",
    "Engine",
    "ReaderSelection",
    "RywScope",
    "Settings",
    "SslMode",
    "derive_instance_host_pattern",
    "env_variable",
    "instance_host",
]

DEFAULT_PREFIX: Final = "AURORA_"
_HIDDEN: Final = "***"  # what repr() and redacted() show for the password
DEFAULT_PORTS: Final[Mapping[Engine, int]] = {"postgresql": 5432, "mysql": 3306}

def env_variable(field: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The environment variable of a ``Settings`` field: ``env_variable("port")`` is AURORA_PORT.

    Raises ``ValueError`` for a name that is not a field of ``Settings``.
    """
    if field not in _FIELD_NAMES:
        raise ValueError(f"Settings has no field {field!r}")
    return prefix + field.upper()


@dataclass(frozen=True, init=False, repr=False)
class Settings:
    """Everything aurora-access needs to reach and use one Aurora cluster; see the module doc.

    Build it with ``Settings.from_env()`` or with keywords; both validate the same way and raise
    ``ConfigError`` naming the ``AURORA_`` variable of a bad value. Defaults that depend on other
    fields (``reader_endpoint``, ``port``, ``sslmode``, ``instance_host_pattern``, and ``region``
    from a secret ARN) are resolved once, at construction, and passing ``None`` for them asks for
    that default. ``dataclasses.replace`` re-validates but keeps the resolved values, so pass
    ``None`` for one that should be derived again (``replace(s, engine="mysql", port=None)``).

    ``repr``, ``str`` and ``redacted()`` show the password as ``'***'``.
    """

    engine: Engine
    cluster_endpoint: str
    reader_endpoint: str
    port: int
    database: str
    user: str | None
    password: str | None
    iam_auth: bool
    region: str | None
    secret_id: str | None
    sslmode: SslMode
    sslrootcert: str | None
    instance_host_pattern: str | None
    pool_size: int
    max_overflow: int
    pool_timeout: float
    pool_recycle: float  # 0 means never: give SQLAlchemy -1 for it, as its 0 recycles always
    reader_selection: ReaderSelection
    read_your_writes: bool
    ryw_scope: RywScope
    max_replica_lag_ms: float
    ryw_wait_ms: float
    connect_timeout: float
    failover_timeout: float
    topology_refresh_s: float
    hung_timeout_s: float
    idle_pause_s: float  # 0 means never
    resume_timeout_s: float
    custom_endpoints: Mapping[str, tuple[str, ...]] | None  # None: ask RDS when needed
    exclusive_endpoints: tuple[str, ...]

    def __init__(
        self,
        *,
        cluster_endpoint: str,
        database: str,
        engine: Engine = "postgresql",
        reader_endpoint: str | None = None,
        port: int | None = None,
        user: str | None = None,
        password: str | None = None,
        iam_auth: bool = False,
        region: str | None = None,
        secret_id: str | None = None,
        sslmode: SslMode | None = None,
        sslrootcert: str | None = None,
        instance_host_pattern: str | None = None,
        pool_size: int = 5,
        max_overflow: int = 10,
        pool_timeout: float = 30.0,
        pool_recycle: float = 1800.0,
        reader_selection: ReaderSelection = "round_robin",
        read_your_writes: bool = True,
        ryw_scope: RywScope = "context",
        max_replica_lag_ms: float = 1000.0,
        ryw_wait_ms: float = 50.0,
        connect_timeout: float = 5.0,
        failover_timeout: float = 30.0,
        topology_refresh_s: float = 1.0,
        hung_timeout_s: float = 2.0,
        idle_pause_s: float = 60.0,
        resume_timeout_s: float = 20.0,
        custom_endpoints: Mapping[str, Sequence[str]] | None = None,
        exclusive_endpoints: Sequence[str] = (),
    ) -> None:
        """Validate and resolve the values; raises ``ConfigError`` naming the bad one."""
        self._resolve({
            "engine": engine, "cluster_endpoint": cluster_endpoint,
            "reader_endpoint": reader_endpoint, "port": port, "database": database,
            "user": user, "password": password, "iam_auth": iam_auth, "region": region,
            "secret_id": secret_id, "sslmode": sslmode, "sslrootcert": sslrootcert,
            "instance_host_pattern": instance_host_pattern, "pool_size": pool_size,
            "max_overflow": max_overflow, "pool_timeout": pool_timeout,
            "pool_recycle": pool_recycle, "reader_selection": reader_selection,
            "read_your_writes": read_your_writes, "ryw_scope": ryw_scope,
            "max_replica_lag_ms": max_replica_lag_ms,
            "ryw_wait_ms": ryw_wait_ms, "connect_timeout": connect_timeout,
            "failover_timeout": failover_timeout, "topology_refresh_s": topology_refresh_s,
            "hung_timeout_s": hung_timeout_s, "idle_pause_s": idle_pause_s,
            "resume_timeout_s": resume_timeout_s, "custom_endpoints": custom_endpoints,
            "exclusive_endpoints": exclusive_endpoints,
        }, DEFAULT_PREFIX)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 prefix: str = DEFAULT_PREFIX) -> Settings:
        """Read the settings from ``environ`` (default ``os.environ``): variable ``prefix`` + X.

        Raises ``ConfigError`` naming the variable (with ``prefix``) that is missing or malformed
        and saying what it accepts. Unknown variables with the prefix are ignored.
        """
        env = os.environ if environ is None else environ
        # A password is taken byte for byte (spaces may be part of it) and never echoed.
        password = env.get(prefix + "PASSWORD") or None
        given: dict[str, object] = {"password": password}
        for field in _FIELD_NAMES:
            value = env.get(prefix + field.upper(), "").strip()
            if value and field not in SECRET_FIELDS:
                given[field] = parse(field, value, prefix, password)
        if "region" not in given:
            for fallback in ("AWS_REGION", "AWS_DEFAULT_REGION"):
                region = env.get(fallback, "").strip()
                if region:
                    if not is_region(region):
                        raise ConfigError(fallback, "must be an AWS region name such as "
                                          f"us-east-1, got {shown(region, password)}")
                    given["region"] = region
                    break
        settings = cls.__new__(cls)
        settings._resolve(given, prefix)
        return settings

    @property
    def secret_region(self) -> str | None:
        """Where to ask Secrets Manager: the secret ARN's region, else ``region``."""
        return secret_arn_region(self.secret_id) or self.region

    def redacted(self) -> dict[str, object]:
        """Every field by name, the password as ``'***'`` (``None`` when unset): safe for logs."""
        safe: dict[str, object] = {}
        for field in _FIELD_NAMES:
            value = getattr(self, field)
            safe[field] = _HIDDEN if field in SECRET_FIELDS and value is not None else value
        return safe

    def __repr__(self) -> str:
        body = ", ".join(f"{name}={value!r}" for name, value in self.redacted().items())
        return f"{type(self).__name__}({body})"

    __str__ = __repr__

    def _resolve(self, given: Mapping[str, object], prefix: str) -> None:
        """Check ``given`` (values of the fields' types, absent or None = default) and store."""
        values = Values(given, prefix)
        engine = cast(Engine, values.choice("engine", "postgresql"))
        resolved: dict[str, object] = {"engine": engine}
        resolved |= _endpoints(values, engine)
        resolved |= _credentials(values)
        resolved |= _tuning(values)
        resolved |= _custom_endpoints(values)
        for field, value in resolved.items():
            object.__setattr__(self, field, value)


def _endpoints(values: Values, engine: Engine) -> dict[str, object]:
    cluster_endpoint = values.host("cluster_endpoint", values.required_text(
        "cluster_endpoint", "the cluster (writer) endpoint host, "
        "e.g. mydb.cluster-c9akciq32.us-east-1.rds.amazonaws.com"))
    pattern = values.text("instance_host_pattern")
    if pattern is None:
        pattern = derive_instance_host_pattern(cluster_endpoint)
    elif pattern.count("?") != 1 or not is_host(pattern.replace("?", "x")):
        raise values.error("instance_host_pattern", "must be a host name with exactly one '?' "
                           "standing for the instance id, e.g. "
                           "?.c9akciq32.us-east-1.rds.amazonaws.com", pattern)
    return {
        "cluster_endpoint": cluster_endpoint,
        "reader_endpoint": values.host("reader_endpoint",
                                       values.text("reader_endpoint") or cluster_endpoint),
        "port": int(values.number("port", DEFAULT_PORTS[engine])),
        "database": values.required_text("database", "the database name"),
        "instance_host_pattern": pattern,
    }


def _credentials(values: Values) -> dict[str, object]:
    """Who logs in and how: user, password, IAM, secret, region, TLS."""
    secret_id = values.text("secret_id")
    arn_region = secret_arn_region(secret_id)
    if secret_id is not None and secret_id.startswith("arn:") and arn_region is None:
        raise values.error("secret_id", "must be a secret name or a Secrets Manager secret ARN "
                           "(arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)", secret_id)
    user = values.text("user")
    if user is None and secret_id is None:
        raise values.error("user", f"is required unless {values.name('secret_id')} names a "
                           "secret that holds the user name")
    password = values.text("password")
    iam_auth = values.flag("iam_auth", False)
    iam_on = f"{values.name('iam_auth')}=true"
    if password is not None and iam_auth:
        raise values.error("password", f"cannot be combined with {iam_on}: IAM authentication "
                           "logs in with tokens; unset one of them")
    if secret_id is not None and iam_auth:
        raise values.error("secret_id", f"cannot be combined with {iam_on}: IAM authentication "
                           "logs in with tokens, not a stored password; unset one of them")
    if password is not None and secret_id is not None:
        raise values.error("password", f"cannot be combined with {values.name('secret_id')}: "
                           "the secret holds the password; unset one of them")

    region = values.text("region") or arn_region
    also = "(from the environment, AWS_REGION or AWS_DEFAULT_REGION also serve)"
    if region is not None and not is_region(region):
        raise values.error("region", "must be an AWS region name such as us-east-1", region)
    if region is None and iam_auth:
        raise values.error("region", f"is required with {iam_on}: the cluster's region, "
                           f"e.g. us-east-1 {also}")
    if region is None and secret_id is not None:
        raise values.error("region", f"is required when {values.name('secret_id')} is not a "
                           f"full ARN: the secret's region, e.g. us-east-1 {also}")

    sslrootcert = values.text("sslrootcert")
    if sslrootcert not in (None, "system") and not Path(sslrootcert).is_file():
        raise values.error("sslrootcert", "must be an existing CA bundle file or 'system'",
                           sslrootcert)
    # RDS IAM authentication requires TLS; verify-full also proves the endpoint's identity.
    sslmode = values.choice("sslmode", "verify-full" if iam_auth else "prefer")
    if iam_auth and sslmode == "prefer":
        raise values.error(
            "sslmode", "must be require, verify-ca or verify-full with IAM auth (a token must "
            "not travel in clear; 'disable' is taken only when set on purpose, for a local "
            "server without TLS)", sslmode)
    return {
        "user": user,
        "password": password,
        "iam_auth": iam_auth,
        "region": region,
        "secret_id": secret_id,
        "sslmode": sslmode,
        "sslrootcert": sslrootcert,
    }


def _tuning(values: Values) -> dict[str, object]:
    """Pools, routing and timing."""
    return {
        "pool_size": int(values.number("pool_size", 5)),
        "max_overflow": int(values.number("max_overflow", 10)),
        "pool_timeout": float(values.number("pool_timeout", 30.0)),
        "pool_recycle": float(values.number("pool_recycle", 1800.0)),
        "reader_selection": values.choice("reader_selection", "round_robin"),
        "read_your_writes": values.flag("read_your_writes", True),
        "ryw_scope": values.choice("ryw_scope", "context"),
        "max_replica_lag_ms": float(values.number("max_replica_lag_ms", 1000.0)),
        "ryw_wait_ms": float(values.number("ryw_wait_ms", 50.0)),
        "connect_timeout": float(values.number("connect_timeout", 5.0)),
        "failover_timeout": float(values.number("failover_timeout", 30.0)),
        "topology_refresh_s": float(values.number("topology_refresh_s", 1.0)),
        "hung_timeout_s": float(values.number("hung_timeout_s", 2.0)),
        "idle_pause_s": float(values.number("idle_pause_s", 60.0)),
        "resume_timeout_s": float(values.number("resume_timeout_s", 20.0)),
    }


def _custom_endpoints(values: Values) -> dict[str, object]:
    """Custom endpoints: members given here, else asked of RDS (which needs the region and an
    Aurora cluster endpoint to name the cluster); exclusive ones must be known by one way."""
    custom = values.endpoints("custom_endpoints")
    exclusive = values.names("exclusive_endpoints")
    if custom is not None:
        unknown = [n for n in exclusive if n not in custom]
        if unknown:
            raise values.error("exclusive_endpoints", "names custom endpoints that "
                               f"{values.name('custom_endpoints')} does not list", unknown)
    return {"custom_endpoints": custom, "exclusive_endpoints": exclusive}


_FIELD_NAMES: Final[tuple[str, ...]] = tuple(f.name for f in fields(Settings))


