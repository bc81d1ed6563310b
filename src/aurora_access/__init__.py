"""aurora-access: read/write-splitting, failover-aware SQLAlchemy sessions for Amazon Aurora."""

from .async_database import AsyncDatabase, AsyncUnitOfWork
from .consistency import UnitOfWork
from .database import Database
from .errors import (
    AuroraAccessError,
    AuthenticationFailed,
    CommitOutcomeUnknown,
    ConfigError,
    EndpointUnavailable,
    FailoverError,
    InvalidCommitToken,
    LocalClusterError,
    NoWriterAvailable,
    PoolExhausted,
    ReadOnlySessionError,
    TransactionReplayRequired,
)
from .session import RoutingSession
from .settings import Settings
from .topology import Instance, Topology

__all__ = [
    "AsyncDatabase",
    "AsyncUnitOfWork",
    "AuroraAccessError",
    "AuthenticationFailed",
    "CommitOutcomeUnknown",
    "ConfigError",
    "Database",
    "EndpointUnavailable",
    "FailoverError",
    "Instance",
    "InvalidCommitToken",
    "LocalClusterError",
    "NoWriterAvailable",
    "PoolExhausted",
    "ReadOnlySessionError",
    "RoutingSession",
    "Settings",
    "Topology",
    "TransactionReplayRequired",
    "UnitOfWork",
]
