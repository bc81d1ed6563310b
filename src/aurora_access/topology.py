"""The instances of a cluster and their roles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .dialects import EngineDialect

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


def discover(
    query: Callable[[str, str], list[tuple[Any, ...]]],
    dialect: EngineDialect,
    queries: list[str],
    cluster_endpoint: str,
    reader_endpoint: str,
    port: int,
    host_pattern: str | None,
    candidates: list[str],
) -> Topology:
    """Find the writer and readers by asking instances directly.

    ``query(host, sql)`` runs one statement on one host and returns its rows (raising on
    failure). With a host pattern and Aurora's metadata, one query on any instance answers the
    whole topology; otherwise each endpoint is asked whether it is in recovery. Raises the last
    error if no host answered.

    ``queries`` are the metadata queries to try in order (``dialect.topology_queries``, where
    a later one stands in for a missing table); the one that answers is moved to the front, so
    the next discovery asks it first instead of failing on the missing one again.
    """
    last_error: Exception | None = None
    if host_pattern is not None:
        for host in candidates or [cluster_endpoint]:
            rows = None
            for index, sql in enumerate(queries):
                try:
                    rows = query(host, sql)
                    queries.insert(0, queries.pop(index))
                    break
                except Exception as exc:
                    last_error = exc
                    if dialect.classify(exc).instance_failed:
                        break  # the next candidate may answer
            if rows is None:
                continue
            instances = [
                Instance(id=str(r[0]), host=host_pattern.replace("?", str(r[0])), port=port,
                         role="writer" if r[1] else "reader",
                         lag_ms=None if r[1] or r[2] is None else float(r[2]))
                for r in rows
            ]
            writers = [i for i in instances if i.role == "writer"]
            if len(writers) == 1:
                return Topology(writers[0], sorted((i for i in instances if i.role == "reader"),
                                                   key=lambda i: i.id))
            last_error = LookupError(f"{host} reported {len(writers)} writers")
    writer: Instance | None = None
    readers: list[Instance] = []
    for host in dict.fromkeys([cluster_endpoint, reader_endpoint]):
        try:
            in_recovery = bool(query(host, dialect.is_reader_sql)[0][0])
        except Exception as exc:
            last_error = exc
            continue
        instance = Instance(id=host, host=host, port=port,
                            role="reader" if in_recovery else "writer")
        if in_recovery:
            readers.append(instance)
        elif writer is None:
            writer = instance
    if writer is None:
        raise last_error or LookupError("no writer found")
    return Topology(writer, readers)
