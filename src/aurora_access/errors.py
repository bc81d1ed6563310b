"""Exceptions raised by aurora-access.

::

    AuroraAccessError
     +- ConfigError                    bad or missing configuration
     +- ReadOnlySessionError           a write in db.read_only()
     +- InvalidCommitToken             a commit token that is not ours (a ValueError)
     +- PoolExhausted                  no pooled connection in time (a TimeoutError)
     +- AuthenticationFailed           an instance refused the login
     +- EndpointUnavailable            no member of a custom endpoint can serve a read
     +- FailoverError
     |   +- TransactionReplayRequired  a failover rolled the transaction back; run it again
     |   +- CommitOutcomeUnknown       a commit was in flight during a failover; outcome unknown
     |   +- NoWriterAvailable          no writer found within AURORA_FAILOVER_TIMEOUT
     +- LocalClusterError              the local Aurora-like cluster could not do what was asked

Each error says what happened, where (an instance or a variable) and what the caller can do.
No message ever contains a password, token or secret value.
"""

from __future__ import annotations


class AuroraAccessError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(AuroraAccessError):
    """A configuration value is missing or malformed.

    ``variable`` names the setting (for example ``AURORA_PORT``) so the message can be acted on.
    """

    def __init__(self, variable: str, message: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}: {message}")


class ReadOnlySessionError(AuroraAccessError):
    """A write was attempted in a read-only session; no SQL was sent."""


class InvalidCommitToken(AuroraAccessError, ValueError):
    """``session(after=token)`` was given something that is not a commit token of this
    engine (a web service answers it with 400: it came from the client)."""


class PoolExhausted(AuroraAccessError, TimeoutError):
    """No connection to an instance within AURORA_POOL_TIMEOUT: every connection its pool
    allows (AURORA_POOL_SIZE + AURORA_MAX_OVERFLOW) is in use in this process. ``instance``
    and ``role`` say which pool."""

    def __init__(self, message: str, instance: str | None, role: str | None) -> None:
        self.instance = instance
        self.role = role
        super().__init__(message)


class AuthenticationFailed(AuroraAccessError):
    """An instance refused the login: the message names the user, the kind of credentials and
    what to check for that kind, never a password, token or secret. ``instance`` is the host
    that refused."""

    def __init__(self, message: str, instance: str | None = None) -> None:
        self.instance = instance
        super().__init__(message)


class EndpointUnavailable(AuroraAccessError):
    """``read_only(endpoint=name)``: no member of that custom endpoint can serve the read (down,
    lagging beyond AURORA_MAX_REPLICA_LAG_MS, or not caught up with the commits the read must
    see); the read is not sent to other instances, which the endpoint keeps it away from.
    ``endpoint`` names it."""

    def __init__(self, message: str, endpoint: str | None = None) -> None:
        self.endpoint = endpoint
        super().__init__(message)


class FailoverError(AuroraAccessError):
    """The writer changed or vanished while work was in progress."""

    def __init__(self, message: str, instance: str | None = None) -> None:
        self.instance = instance
        super().__init__(message)


class TransactionReplayRequired(FailoverError):
    """A failover rolled the transaction back; nothing of it was committed: run it again."""


class CommitOutcomeUnknown(FailoverError):
    """A COMMIT was in flight when the connection died and its outcome could not be learned."""


class NoWriterAvailable(FailoverError):
    """No instance accepted writes within the failover timeout."""


class LocalClusterError(AuroraAccessError):
    """The local Aurora-like cluster could not be started, changed or stopped."""
