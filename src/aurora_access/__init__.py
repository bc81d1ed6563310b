"""aurora-access: read/write-splitting, failover-aware SQLAlchemy sessions for Amazon Aurora."""

from .errors import (
    AuroraAccessError,
    CommitOutcomeUnknown,
    ConfigError,
    FailoverError,
    LocalClusterError,
    NoWriterAvailable,
    ReadOnlySessionError,
    TransactionReplayRequired,
)
from .topology import Instance, Topology

__all__ = [
    "AuroraAccessError",
    "CommitOutcomeUnknown",
    "ConfigError",
    "FailoverError",
    "Instance",
    "LocalClusterError",
    "NoWriterAvailable",
    "ReadOnlySessionError",
    "Topology",
    "TransactionReplayRequired",
]
