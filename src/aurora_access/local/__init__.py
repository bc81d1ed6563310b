"""A local Aurora-like cluster for development, demos and tests (see ``LocalCluster``)."""

from .cluster import FailoverReport, LocalCluster, free_port

__all__ = ["FailoverReport", "LocalCluster", "free_port"]
