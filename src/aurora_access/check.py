"""``aurora-access check``: the configuration doctor.

It reads the ``AURORA_*`` configuration as the application would and walks the path of a first
request, one check per step, so that what is wrong shows up where it is:

- ``config``: ``Settings.from_env()``; the effective configuration is printed with secrets
  hidden (``Settings.redacted()``);
- ``cluster endpoint``, ``reader endpoint``: DNS (``socket.getaddrinfo``);
- ``topology``: ``Database(settings)``, the library's own login and discovery: writer, readers,
  and how read-your-writes works here (log positions, or reported replica lag);
- ``instance <id>``: a fresh connection to each instance through the library's pools (its
  login, TLS and timeouts): connect time, server version, TLS in use, and whether it takes
  writes as its role says;
- ``budget <id>``: the most connections the configuration may open to each instance, for
  ``--workers`` processes, against its ``max_connections`` (``budget.py``);
- ``auth``: password, IAM tokens (region, tokens generated, TLS) or Secrets Manager.

Each check is ``ok``, ``warn`` (works, but look: a reader beyond the lag limit, IAM tokens in
clear), ``FAIL`` (the check goes on wherever it still can: one unreachable reader does not hide
the others) or ``skip`` (an earlier failure leaves nothing to try). The exit code is 1 when any
check failed, else 0.

No password, token or secret value is printed: the configuration comes from ``redacted()``,
messages from the library's errors (which name the user and the kind of credential only) and
from drivers (which do not echo passwords), and, as a last guard, every string of the report is
scrubbed of each password or token that was handed to a connection.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from .auth import Credentials
from .budget import budget
from .check_report import Check, Report, Status
from .database import Database
from .errors import AuroraAccessError, ConfigError, FailoverError
from .failover import Watchdog
from .pools import InstancePools
from .settings import Settings, env_variable
from .topology import Instance

__all__ = ["Check", "Report", "run_check"]

_VERSION_SQL = "SELECT version()"
_REASON_CHARS = 160
_RYW = {"log position": "read-your-writes by log position",
        "replica lag": "read-your-writes by replica lag (best effort)",
        "off": "read-your-writes off"}


def run_check(environ: Mapping[str, str] | None = None, workers: int = 1,
              asynchronous: bool = False) -> Report:
    """Check the configuration in ``environ`` (default ``os.environ``) against its cluster;
    ``workers``: the processes that will use it, for the connection budget (through
    ``AsyncDatabase`` if ``asynchronous``)."""
    report = Report()
    settings = _read_settings(report, environ)
    if settings is None:
        return report
    if not _resolve_endpoints(settings, report):
        report.add("skip", "topology", "the cluster endpoint does not resolve")
        return report
    _check_cluster(settings, report, workers, asynchronous)
    return report


def _ms(began: float, ended: float | None = None) -> float:
    """Milliseconds since ``began`` (a ``perf_counter()``), to a microsecond."""
    return round(((time.perf_counter() if ended is None else ended) - began) * 1000, 3)


# -- configuration and DNS ---------------------------------------------------------------


def _read_settings(report: Report, environ: Mapping[str, str] | None) -> Settings | None:
    began = time.perf_counter()
    try:
        settings = Settings.from_env(environ)
    except ConfigError as error:  # its message names the variable and never the password
        report.add("FAIL", "config", str(error), _ms(began), {"variable": error.variable})
        return None
    if settings.password:
        report.secrets.add(settings.password)
    report.configuration = {env_variable(name): value
                            for name, value in settings.redacted().items()}
    report.add("ok", "config", f"{settings.engine}, database {settings.database!r} at "
               f"{settings.cluster_endpoint}:{settings.port}", _ms(began))
    return settings


def _resolve_endpoints(settings: Settings, report: Report) -> bool:
    """Look both endpoints up; True if the cluster endpoint resolved (the library starts
    there: without it there is nothing more to check)."""
    resolved = _resolve(report, "cluster endpoint", "cluster_endpoint", settings)
    if settings.reader_endpoint == settings.cluster_endpoint:
        report.add("ok" if resolved else "skip", "reader endpoint", "the cluster endpoint "
                   f"({env_variable('reader_endpoint')} unset or the same)")
    else:
        _resolve(report, "reader endpoint", "reader_endpoint", settings)
    return resolved


def _resolve(report: Report, name: str, field: str, settings: Settings) -> bool:
    host, port, variable = getattr(settings, field), settings.port, env_variable(field)
    began = time.perf_counter()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        report.add("FAIL", name, f"{host} ({variable}) does not resolve: {reason}", _ms(began),
                   {"host": host})
        return False
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    report.add("ok", name, f"{host} -> {', '.join(addresses)}", _ms(began),
               {"host": host, "addresses": addresses})
    return True


# -- the cluster through the library ---------------------------------------------------------


def _check_cluster(settings: Settings, report: Report, workers: int = 1,
                   asynchronous: bool = False) -> None:
    """Log in and discover as an application would, then check every instance and the
    login mode. A failed start leaves the instances unknown: they are skipped."""
    began = time.perf_counter()
    db = Database(settings)
    try:
        db.topology()  # the first use: log in and discover
    except Exception as error:  # the doctor reports what went wrong, never a traceback
        db.close()
        _report_failed_start(settings, error, _ms(began), report)
        return
    try:
        _report_topology(db, _ms(began), report)
        witness = _Witness(db.credentials)
        try:
            probes = _probe_instances(db, witness)
        finally:
            report.secrets |= witness.secrets
        for probe in probes:
            _report_instance(settings, probe, report)
        _report_budget(settings, probes, workers, report, asynchronous)
        _report_auth(db, probes, witness, report)
    finally:
        db.close()


def _report_failed_start(settings: Settings, error: Exception, ms: float,
                         report: Report) -> None:
    """``Database`` could not start: no writer answered, or (the one AuroraAccessError that is
    not a FailoverError there) the login was refused; its message names the user and the kind
    of credential, never their value."""
    refused = isinstance(error, AuroraAccessError) and not isinstance(error, FailoverError)
    reason = str(error) if isinstance(error, AuroraAccessError) else \
        f"{type(error).__name__}: {error}"
    report.add("FAIL", "topology", reason, ms)
    report.add("skip", "instances", "no topology to check")
    report.add("FAIL" if refused else "skip", "auth", _auth_mode(settings, None) +
               (": the login was refused" if refused else ": no login completed"))


def _report_topology(db: Database, ms: float, report: Report) -> None:
    topology, settings = db.topology(), db.settings
    readers = ", ".join(r.id for r in topology.readers) or "none"
    # how a read after a commit finds a reader that has it (lag_mode: decided at start-up)
    ryw = ("off" if not settings.read_your_writes else
           "replica lag" if db._router.lag_mode else "log position")
    detail = f"writer {topology.writer.id}, readers {readers}; {_RYW[ryw]}"
    positions = db._monitor.positions
    if ryw == "log position" and positions is not None:
        detail += f" ({positions.name})"
    if settings.instance_host_pattern is None:
        detail += (f" (no {env_variable('instance_host_pattern')}: the endpoints stand for "
                   "the instances)")
    if not topology.readers:
        detail += "; no reader: every read goes to the writer"
    report.add("ok" if topology.readers else "warn", "topology", detail, ms, {
        "writer": topology.writer.id, "readers": [r.id for r in topology.readers],
        "read_your_writes": ryw,
        "positions": positions.name if ryw == "log position" and positions else None})


@dataclass(frozen=True)
class _Probe:
    """One instance as a fresh connection found it; ``error`` set when it could not (and
    ``connect_ms`` is then the time until it failed: a timeout shows as one)."""

    instance: Instance
    connect_ms: float | None = None
    version: str | None = None
    tls: str | None = None
    takes_writes: bool | None = None
    max_connections: int | None = None
    error: str | None = None


class _Witness:
    """The library's credentials, noting the user and password (a token, a secret's password)
    they hand to each connection: the report is scrubbed of those passwords, and says which
    user a secret logs in as."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials
        self.users: set[str] = set()
        self.secrets: set[str] = set()

    def login(self, host: str, port: int) -> tuple[str | None, str | None]:
        user, password = self._credentials.login(host, port)
        if user:
            self.users.add(user)
        if password:
            self.secrets.add(password)
        return user, password

    def renew(self, host: str, port: int) -> bool:
        return self._credentials.renew(host, port)

    def cached(self, host: str, port: int) -> tuple[str | None, str | None] | None:
        return None  # every login through ``login``, to be noted


def _probe_instances(db: Database, credentials: Credentials) -> list[_Probe]:
    """Connect to the writer and every reader afresh, one at a time (so that one instance's
    connect time is not another's), through pools of their own: pooled connections would hide
    the login and TLS handshake being checked."""
    topology = db.topology()
    pools = InstancePools(db.settings, db.dialect, credentials)
    watchdog = Watchdog()
    try:
        return [_probe(db, pools, watchdog, instance)
                for instance in [topology.writer, *topology.readers]]
    finally:
        watchdog.close()
        pools.dispose()


def _probe(db: Database, pools: InstancePools, watchdog: Watchdog,
           instance: Instance) -> _Probe:
    dialect = db.dialect
    engine = pools.probe_engine(instance.host, instance.port)
    connected: list[float] = []
    # first among the pool's connect listeners: the moment the driver has connected, before
    # SQLAlchemy's own first-connect queries
    event.listen(engine.pool, "connect", lambda *_: connected.append(time.perf_counter()),
                 insert=True)
    began = time.perf_counter()
    try:
        with engine.connect() as conn:
            dbapi_connection = conn.connection.dbapi_connection
            # a hung instance accepts TCP and never answers: cut it off as the monitor does
            guard = watchdog.arm(db.settings.hung_timeout_s,
                                 lambda: dialect.abort_connection(dbapi_connection))
            try:
                version = conn.exec_driver_sql(_VERSION_SQL).scalar()
                takes_writes = conn.exec_driver_sql(dialect.is_writer_sql).scalar()
                accepted = conn.exec_driver_sql(dialect.max_connections_sql).scalar()
            finally:
                watchdog.disarm(guard)
            tls = dialect.tls_in_use(dbapi_connection)
    except Exception as error:  # reported per instance; the others are still checked
        return _Probe(instance, _ms(began), error=_failure(db, error))
    connect_ms = _ms(began, connected[0] if connected else None)
    return _Probe(instance, connect_ms, _short_version(str(version)), tls, bool(takes_writes),
                  None if accepted is None else int(accepted))


def _failure(db: Database, error: Exception) -> str:
    """What went wrong, in a few words: a refused login (the user and kind of credential),
    else the kind of failure and the driver's first line (drivers do not echo passwords)."""
    orig = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    if db.dialect.is_auth_failure(orig):
        return f"login refused ({_auth_mode(db.settings, None)})"
    text = str(orig).strip()
    reason = text.splitlines()[0] if text else type(orig).__name__
    if len(reason) > _REASON_CHARS:
        reason = reason[:_REASON_CHARS - 3] + "..."
    if not isinstance(error, DBAPIError):  # from the credentials: boto3, Secrets Manager
        return f"{type(error).__name__}: {reason}"
    kind = db.dialect.classify(error)
    return f"{'unreachable' if kind.instance_failed else 'error'} ({kind.value}): {reason}"


def _short_version(version: str) -> str:
    """``PostgreSQL 15.8 (Debian 15.8-1) on x86_64-pc-linux-gnu, compiled by ...`` without
    the build details; MySQL's and MariaDB's are short already."""
    return version.split(" on ", 1)[0].strip()


def _report_instance(settings: Settings, probe: _Probe, report: Report) -> None:
    instance = probe.instance
    name = f"instance {instance.id}"
    where = f"{instance.role:<6}  {instance.host}:{instance.port}"
    lag = "" if instance.lag_ms is None else f", lag {instance.lag_ms:.1f} ms"
    facts: dict[str, object] = {
        "id": instance.id, "host": instance.host, "port": instance.port, "role": instance.role,
        "lag_ms": instance.lag_ms}
    if probe.error is not None:
        report.add("FAIL", name, f"{where}{lag}: {probe.error}", probe.connect_ms,
                   {**facts, "error": probe.error, "failed_after_ms": probe.connect_ms})
        return
    status, problems = _instance_status(settings, probe)
    tls = f"TLS on: {probe.tls}, {settings.sslmode}" if probe.tls else \
        f"TLS off (sslmode {settings.sslmode})"
    answers = "takes writes" if probe.takes_writes else "read-only"
    detail = "; ".join([f"{where}{lag}, {probe.version}, {tls}, {answers}", *problems])
    report.add(status, name, detail, probe.connect_ms, {
        **facts, "connect_ms": probe.connect_ms, "version": probe.version, "tls": probe.tls,
        "takes_writes": probe.takes_writes})


def _instance_status(settings: Settings, probe: _Probe) -> tuple[Status, list[str]]:
    """FAIL when the instance is not what the topology says it is (a writer that does not
    take writes, a reader that does); warn when a reader lags beyond the limit."""
    instance = probe.instance
    if instance.role == "writer" and not probe.takes_writes:
        return "FAIL", ["the topology names it the writer but it is read-only"]
    if instance.role == "reader" and probe.takes_writes:
        return "FAIL", ["the topology names it a reader but it takes writes"]
    limit = settings.max_replica_lag_ms
    if instance.lag_ms is not None and instance.lag_ms > limit:
        return "warn", [f"lags beyond {env_variable('max_replica_lag_ms')}={limit:g}: "
                        "it gets no reads"]
    return "ok", []


def _report_budget(settings: Settings, probes: list[_Probe], workers: int,
                   report: Report, asynchronous: bool = False) -> None:
    """The connection budget of ``workers`` processes against each instance's limit: warn
    where it can be exceeded (see ``budget.py``)."""
    for probe in probes:
        instance = probe.instance
        plan = budget(settings, instance.role, workers, probe.max_connections, asynchronous)
        status: Status = "warn" if plan.exceeded else "ok"
        advice = (f": lower {env_variable('pool_size')}/{env_variable('max_overflow')} "
                  "or the workers, or use a larger instance class") if plan.exceeded else ""
        report.add(status, f"budget {instance.id}", f"{instance.role}: {plan.text()}{advice}",
                   None, {"instance": instance.id, "role": instance.role, "workers": workers,
                          "per_process": plan.each, "total": plan.total,
                          "accepted": plan.accepted})


def _auth_mode(settings: Settings, user: str | None) -> str:
    """How the application logs in, by kind; a secret's id is no secret, its value is."""
    user = user or settings.user
    if settings.iam_auth:
        return f"IAM auth tokens for user {user!r} in {settings.region}"
    if settings.secret_id:
        who = f"user {user!r}" if user else "user from the secret"
        return (f"Secrets Manager secret {settings.secret_id!r} in {settings.secret_region}, "
                f"{who}")
    if settings.password:
        return f"password for user {user!r}"
    return f"no password for user {user!r} (trust, .pgpass or a client certificate)"


def _report_auth(db: Database, probes: list[_Probe], witness: _Witness,
                 report: Report) -> None:
    settings = db.settings
    user = settings.user or next(iter(sorted(witness.users)), None)
    mode = _auth_mode(settings, user)
    if not settings.iam_auth:
        report.add("ok", "auth", mode, None, {"mode": _mode_name(settings), "user": user})
        return
    tokens = db.stats()["iam_tokens_generated"]
    seen = [p for p in probes if p.error is None]
    clear = [p.instance.id for p in seen if p.tls is None]
    detail = f"{mode}: {tokens} token(s) generated"
    facts: dict[str, object] = {"mode": "iam", "user": user, "tokens_generated": tokens}
    if clear:
        report.add("warn", "auth", f"{detail}; TLS off on {', '.join(clear)}: tokens travel in "
                   f"clear (sslmode {settings.sslmode}; Aurora takes IAM logins over TLS only)",
                   None, facts)
    elif seen:
        report.add("ok", "auth", f"{detail}; TLS on ({settings.sslmode})", None, facts)
    else:
        report.add("warn", "auth", f"{detail}; TLS not seen: no instance answered", None, facts)


def _mode_name(settings: Settings) -> str:
    return "iam" if settings.iam_auth else "secret" if settings.secret_id else "password"

