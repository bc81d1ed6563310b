"""How each new connection logs in: a password, RDS IAM auth tokens, or Secrets Manager.

Every new physical connection asks its ``Credentials`` for the user and password *of the host and
port it actually reaches* (an instance or an endpoint): IAM tokens are signed for one host, port,
user and region. After an authentication failure the connection is retried once with fresh
credentials (a new token; the secret read again, for a rotation).

No token, password or secret value is ever logged or put in an exception message.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .errors import AuroraAccessError, AuthenticationFailed
from .settings import Settings

log = logging.getLogger("aurora_access")

#: IAM tokens live 15 minutes; a cached one is replaced well before that
IAM_TOKEN_REFRESH_S = 10 * 60.0

# botocore logs, at DEBUG, the canonical request and signature of what it signs (an IAM auth
# token is such a signature) and the bodies of responses (a secret's value): with DEBUG on, a
# token or a password would reach the application's logs.
_SECRET_BEARING_LOGGERS = ("botocore.auth", "botocore.parsers", "botocore.endpoint",
                           "botocore.hooks", "botocore.retryhandler")


class _NoSecretBearingDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_quiet = _NoSecretBearingDebug()


def _silence_botocore_secrets() -> None:
    for name in _SECRET_BEARING_LOGGERS:
        logger = logging.getLogger(name)
        if _quiet not in logger.filters:
            logger.addFilter(_quiet)


class Credentials(Protocol):
    def login(self, host: str, port: int) -> tuple[str | None, str | None]:
        """(user, password) for a new connection to ``host:port``."""
        ...

    def renew(self, host: str, port: int) -> bool:
        """Forget what was used for ``host:port`` after it was refused; True if trying again
        with fresh credentials can help."""
        ...

    def cached(self, host: str, port: int) -> tuple[str | None, str | None] | None:
        """What ``login`` would return, if that is known without any I/O (a password, a
        token signed lately, a secret read before); None if ``login`` has work to do."""
        ...


class PasswordCredentials:
    """A fixed user and password (or none: trust, .pgpass, a client certificate)."""

    def __init__(self, user: str | None, password: str | None) -> None:
        self._user = user
        self._password = password

    def login(self, host: str, port: int) -> tuple[str | None, str | None]:
        return self._user, self._password

    def renew(self, host: str, port: int) -> bool:
        return False

    def cached(self, host: str, port: int) -> tuple[str | None, str | None] | None:
        return self._user, self._password

    def __repr__(self) -> str:
        return f"PasswordCredentials(user={self._user!r}, password='***')"


class IamTokens:
    """RDS IAM auth tokens, one per (host, port, user, region), cached for
    ``refresh_s`` and shared by every thread; generating one is a local signature, no I/O."""

    def __init__(self, user: str, region: str, refresh_s: float = IAM_TOKEN_REFRESH_S,
                 clock: Callable[[], float] = time.time,
                 rds_client: Callable[[], Any] | None = None,
                 on_generate: Callable[[], None] = lambda: None) -> None:
        self._user = user
        self._region = region
        self._refresh_s = refresh_s
        self._clock = clock
        self._make_client = rds_client or self._boto3_client
        self._client: Any = None
        self._on_generate = on_generate
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, int], tuple[float, str]] = {}
        _silence_botocore_secrets()

    def _boto3_client(self) -> Any:
        import boto3  # noqa: PLC0415 - only where IAM is used

        return boto3.client("rds", region_name=self._region)

    def login(self, host: str, port: int) -> tuple[str | None, str | None]:
        return self._user, self.token(host, port)

    def token(self, host: str, port: int) -> str:
        key = (host, port)
        with self._lock:
            cached = self._tokens.get(key)
            now = self._clock()
            if cached is not None and now - cached[0] < self._refresh_s:
                return cached[1]
            if self._client is None:
                self._client = self._make_client()
            token: str = self._client.generate_db_auth_token(
                DBHostname=host, Port=port, DBUsername=self._user, Region=self._region)
            self._tokens[key] = (now, token)
        self._on_generate()
        log.debug("new IAM auth token for %s@%s:%s (%s)", self._user, host, port, self._region)
        return token

    def renew(self, host: str, port: int) -> bool:
        with self._lock:
            return self._tokens.pop((host, port), None) is not None

    def cached(self, host: str, port: int) -> tuple[str | None, str | None] | None:
        cached = self._tokens.get((host, port))
        if cached is None or self._clock() - cached[0] >= self._refresh_s:
            return None
        return self._user, cached[1]

    def __repr__(self) -> str:
        return f"IamTokens(user={self._user!r}, region={self._region!r})"


class SecretCredentials:
    """User and password from a Secrets Manager secret (JSON ``username``/``password``), read
    once and again after an authentication failure (the secret may have been rotated)."""

    def __init__(self, secret_id: str, region: str | None,
                 secrets_client: Callable[[], Any] | None = None,
                 user: str | None = None) -> None:
        self._secret_id = secret_id
        self._region = region
        self._make_client = secrets_client or self._boto3_client
        self._user = user
        self._lock = threading.Lock()
        self._value: tuple[str, str] | None = None
        self._read_at = 0.0
        _silence_botocore_secrets()

    def _boto3_client(self) -> Any:
        import boto3  # noqa: PLC0415 - only where Secrets Manager is used

        return boto3.client("secretsmanager", region_name=self._region)

    def login(self, host: str, port: int) -> tuple[str | None, str | None]:
        with self._lock:
            if self._value is None:
                self._value = self._read()
            user, password = self._value
        return self._user or user, password

    def _read(self) -> tuple[str, str]:
        try:
            response = self._make_client().get_secret_value(SecretId=self._secret_id)
            document = json.loads(response["SecretString"])
            user, password = document["username"], document["password"]
        except (KeyError, TypeError, ValueError) as exc:
            raise AuroraAccessError(
                f"secret {self._secret_id!r} is not JSON with 'username' and 'password' "
                f"({type(exc).__name__})") from None
        except Exception as exc:  # botocore's ClientError and friends
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            raise AuroraAccessError(
                f"could not read secret {self._secret_id!r} from Secrets Manager in "
                f"{self._region}: {code}") from None
        self._read_at = time.monotonic()
        log.info("read database credentials from secret %s", self._secret_id)
        return str(user), str(password)

    def cached(self, host: str, port: int) -> tuple[str | None, str | None] | None:
        value = self._value
        return None if value is None else (self._user or value[0], value[1])

    def renew(self, host: str, port: int) -> bool:
        with self._lock:
            if time.monotonic() - self._read_at < 1.0:
                return False  # just read: reading again will not change the answer
            self._value = None
            return True

    def __repr__(self) -> str:
        return f"SecretCredentials(secret_id={self._secret_id!r})"


def credentials_for(settings: Settings, on_token: Callable[[], None]) -> Credentials:
    """The credentials ``settings`` ask for."""
    if settings.iam_auth:
        assert settings.user is not None and settings.region is not None  # Settings checks
        return IamTokens(settings.user, settings.region, on_generate=on_token)
    if settings.secret_id:
        return SecretCredentials(settings.secret_id, settings.secret_region,
                                 user=settings.user)
    return PasswordCredentials(settings.user, settings.password)


def login_refused(settings: Settings, host: str, port: int, user: str | None,
                  error: BaseException) -> AuthenticationFailed:
    """What a refused login means, for the kind of credentials in use: one line naming the
    user, the credentials' kind and what to check, then the server's own words (which name
    the user, never the password)."""
    user = user or settings.user
    if settings.iam_auth:
        how, check = "an IAM auth token", (
            f"check AURORA_USER, AURORA_REGION ({settings.region}) and that the IAM policy "
            "allows rds-db:connect for this user, who must have the rds_iam role (PostgreSQL) "
            "or the AWSAuthenticationPlugin (MySQL)")
    elif settings.secret_id:
        how, check = f"the secret {settings.secret_id}", (
            f"check that the secret (in {settings.secret_region}) holds this database's "
            "username and password: a rotation may not have reached the database")
    else:
        how, check = "a password", "check AURORA_USER and AURORA_PASSWORD"
    return AuthenticationFailed(
        f"{host}:{port} refused the login of user {user!r} with {how}: {check} "
        f"(server: {first_line(error)})", host)


def first_line(error: BaseException) -> str:
    """A driver error's first line (psycopg's messages run over several; PyMySQL's are a
    (code, message) pair)."""
    orig = getattr(error, "orig", None) or error
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    if len(args) == 2 and isinstance(args[0], int):
        text = f"{args[0]} {args[1]}"
    else:
        text = str(orig).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(orig).__name__
