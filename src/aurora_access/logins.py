"""Opening a new connection to an instance: what each one of a pool goes through.

Credentials are asked for the host it reaches (an IAM token signed, a secret read: through
``blocking``, which keeps an event loop free; a password or a token signed lately costs no
thread); a refused login is tried once more with fresh credentials; a refusal by a host that
accepted these credentials before and then lost its connections is the instance having been
rebuilt or replaced (a failover), not a wrong configuration; a connection for the writer must
reach an instance that takes writes; and after the application was idle, a host that may be a
paused Serverless v2 instance gets until AURORA_RESUME_TIMEOUT_S to answer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .auth import Credentials
from .blocking import Blocking
from .dialects import EngineDialect, takes_writes
from .observe import NO_OBSERVER, Observer
from .settings import Settings

log = logging.getLogger("aurora_access")

# how long after a host's connections were lost a refused login there is taken for the
# instance having been rebuilt or replaced rather than for wrong credentials
_CHANGE_WINDOW_S = 60.0


def _apply(login: tuple[str | None, str | None], cparams: dict[str, Any]) -> None:
    user, password = login
    if user is not None:
        cparams["user"] = user
    if password is None:
        cparams.pop("password", None)
    else:
        cparams["password"] = password


class Logins:
    """New connections to the hosts of one Database (module docstring)."""

    def __init__(self, settings: Settings, dialect: EngineDialect, credentials: Credentials,
                 blocking: Blocking) -> None:
        self._settings = settings
        self._dialect = dialect
        self._credentials = credentials
        self._blocking = blocking
        #: told of each new connection and how long it took (metrics exporters)
        self.observer: Observer = NO_OBSERVER
        # hosts that accepted a login, and when a host's connections were last found lost:
        # a refusal after both is the instance changing
        self._accepted: set[str] = set()
        self.lost: dict[str, float] = {}
        # hosts that may be paused (Serverless v2) -> until when a connect may wait for them
        self.resume_until: dict[str, float] = {}

    def _changed(self, host: str) -> bool:
        """Whether ``host`` accepted a login before and lost its connections since, lately."""
        lost = self.lost.get(host)
        return host in self._accepted and lost is not None and \
            time.monotonic() - lost < _CHANGE_WINDOW_S

    def connect(self, dialect: Any, cargs: Any, cparams: dict[str, Any], host: str, port: int,
                 for_writer: bool) -> Any:
        """A new DBAPI connection to ``host:port``, logged in with the credentials (and once
        more with fresh ones if refused); one for the writer (``for_writer``: its transactions,
        reads sent to it) must be to an instance that takes writes."""
        credentials, ours, blocking = self._credentials, self._dialect, self._blocking
        # an IAM token's first signing makes a boto3 client, a secret is read over the
        # network: through ``blocking``, which keeps an event loop free; what is known
        # already (a password, a token signed lately) costs no thread
        _apply(credentials.cached(host, port) or blocking.run(credentials.login, host, port),
               cparams)
        began = time.monotonic()
        try:
            try:
                connection = self._connect_resuming(dialect, cargs, cparams, host)
            except Exception as error:
                if not ours.is_auth_failure(error) or not credentials.renew(host, port):
                    raise
                log.info("login to %s:%s refused; trying once more with fresh "
                         "credentials", host, port)
                _apply(blocking.run(credentials.login, host, port), cparams)
                connection = dialect.connect(*cargs, **cparams)
        except Exception as error:
            if self._changed(host) and ours.is_auth_failure(error):
                # it took these credentials before, then lost its connections: the
                # instance was rebuilt or replaced (a failover), which is the instance
                # failing, not a wrong configuration
                raise ours.lost_connection_error(
                    f"{host}:{port} refused a login it accepted before (an instance "
                    "rebuilt or replaced)") from error
            raise
        self._accepted.add(host)
        self.observer.connection_created(host, time.monotonic() - began)
        ours.connected(connection)
        if for_writer and not takes_writes(ours, connection):
            # the host taken for the writer no longer is: a failover the monitor has not
            # seen yet, the old writer back as a reader (its reads would be stale)
            connection.close()
            raise ours.lost_connection_error(f"{host}:{port} no longer takes writes")
        return connection

    def _connect_resuming(self, dialect: Any, cargs: Any, cparams: dict[str, Any],
                          host: str) -> Any:
        """``dialect.connect``; to a host that may be resuming from a pause, tried again
        until AURORA_RESUME_TIMEOUT_S after the wake-up (a paused Serverless v2 instance holds
        a new connection until it has resumed, which can outlast AURORA_CONNECT_TIMEOUT)."""
        while True:
            try:
                connection = dialect.connect(*cargs, **cparams)
            except Exception as error:
                until = self.resume_until.get(host)
                if until is None or time.monotonic() >= until \
                        or self._dialect.is_auth_failure(error):
                    raise
                log.debug("%s is not answering yet (resuming?): %s", host, type(error).__name__)
                self._blocking.sleep(0.05)
                continue
            until = self.resume_until.get(host)
            if until is not None:
                # resumed: connections still on their way there (another thread's, one that
                # timed out just before) get one more connect timeout, not the whole budget
                self.resume_until[host] = min(until, time.monotonic()
                                               + 2 * self._settings.connect_timeout)
            return connection
