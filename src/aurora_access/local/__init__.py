"""A local Aurora-like cluster for development, demos and tests (see ``LocalCluster``)."""

from .cluster import LocalCluster
from .layout import FailoverReport, free_port

__all__ = ["FailoverReport", "LocalCluster", "free_port"]
