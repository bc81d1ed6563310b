"""A local Aurora-like cluster for development, demos and tests (see ``LocalCluster``)."""

from .cluster import FailoverReport, LocalCluster

__all__ = ["FailoverReport", "LocalCluster"]
