"""The connection budget: how many connections aurora-access may open to each instance.

Pools are per instance and per process, so the connections an instance may have to serve
multiply: per process, at most

- the writer: its transactions' pool and its reads' pool (reads fall back to the writer), each
  ``AURORA_POOL_SIZE + AURORA_MAX_OVERFLOW``, and the library's own small pools for the
  monitor, read-your-writes positions, writer discovery and commit markers (one on the
  instance, one through the cluster endpoint, which leads to it);
- a reader: its reads' pool and the library's own pool on it;
- with ``AsyncDatabase``, one more of the library's own pools per instance: the event loop's
  (the monitor thread keeps its own);

times the worker processes of a server (gunicorn's ``--workers``, Celery's concurrency), which
must stay below what the instance accepts (``max_connections``, which on Aurora follows the
instance class's memory, less the connections reserved for superusers). These are ceilings:
pools open connections as they are needed and keep ``AURORA_POOL_SIZE`` of them idle.
"""

from __future__ import annotations

from dataclasses import dataclass

from .pools import PROBE_MAX_OVERFLOW, PROBE_POOL_SIZE
from .settings import Settings
from .topology import Role

LIBRARY_POOL = PROBE_POOL_SIZE + PROBE_MAX_OVERFLOW


def per_process(settings: Settings, role: Role, asynchronous: bool = False) -> int:
    """The most connections one process opens to an instance of ``role`` (through an
    ``AsyncDatabase`` if ``asynchronous``)."""
    application = settings.pool_size + settings.max_overflow
    library = LIBRARY_POOL * (2 if asynchronous else 1)
    if role == "writer":
        return 2 * application + 2 * library
    return application + library


@dataclass(frozen=True)
class Budget:
    """One instance's budget for ``workers`` processes against what it accepts."""

    role: Role
    workers: int
    each: int  # per process
    accepted: int | None  # max_connections less reserved ones; None if not known

    @property
    def total(self) -> int:
        return self.workers * self.each

    @property
    def exceeded(self) -> bool:
        return self.accepted is not None and self.total > self.accepted

    def text(self) -> str:
        limit = "max_connections unknown" if self.accepted is None else \
            f"{self.accepted} accepted (max_connections less reserved)"
        return f"{self.workers} process(es) x {self.each} = {self.total} of {limit}"


def budget(settings: Settings, role: Role, workers: int, accepted: int | None,
           asynchronous: bool = False) -> Budget:
    return Budget(role, workers, per_process(settings, role, asynchronous), accepted)
