"""The instances of a cluster and their roles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["writer", "reader"]


@dataclass(frozen=True, slots=True)
class Instance:
    """One database instance: its Aurora instance id, where it listens, and its role.

    ``lag_ms`` is the replica lag last reported for a reader, ``None`` when unknown
    (and for the writer).
    """

    id: str
    host: str
    port: int
    role: Role
    lag_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Topology:
    """The writer and the readers of a cluster, as last seen."""

    writer: Instance
    readers: list[Instance]
