"""The instances of a cluster, their roles, and how to learn them.

Rules (issue 12), in the order discovery applies them:

- With an instance host pattern (Aurora, and the local cluster), the topology comes from
  Aurora's metadata, read on any instance that answers (or, first, the cluster endpoint): one
  query names every instance and the writer. An endpoint is never an instance of the topology.
- When no instance's metadata names exactly one writer (during a failover instances disagree,
  or a reader that lost its writer knows only itself), the instances named are asked
  themselves: the writer is an instance that says it takes writes.
- Without a host pattern (an RDS Proxy, your own DNS name) the endpoints are all there is: the
  writer is the cluster endpoint when it says it takes writes, never the reader endpoint (which
  spreads new connections over readers: the one that answered is not the next one reached).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .dialects import EngineDialect

Role = Literal["writer", "reader"]
Query = Callable[[str, str], list[tuple[Any, ...]]]


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

    @property
    def instances(self) -> list[Instance]:
        return [self.writer, *self.readers]


def read_metadata(query: Query, dialect: EngineDialect, queries: list[str], host: str,
                  host_pattern: str, port: int) -> list[Instance]:
    """The instances Aurora's metadata names, read on ``host`` (roles as the metadata says).

    ``queries`` are the metadata queries to try in order (``dialect.topology_queries``, where a
    later one stands in for a missing table); the one that answers is moved to the front, so the
    next read asks it first. Raises the error of the last query tried.
    """
    last_error: Exception | None = None
    for index, sql in enumerate(queries):
        try:
            rows = query(host, sql)
        except Exception as exc:
            last_error = exc
            if dialect.classify(exc).instance_failed:
                break  # the host is gone: the next query would not answer either
            continue
        queries.insert(0, queries.pop(index))
        return [Instance(id=str(r[0]), host=host_pattern.replace("?", str(r[0])), port=port,
                         role="writer" if r[1] else "reader",
                         lag_ms=None if r[1] or r[2] is None else float(r[2]))
                for r in rows]
    assert last_error is not None
    raise last_error


def discover(
    query: Query,
    dialect: EngineDialect,
    queries: list[str],
    cluster_endpoint: str,
    reader_endpoint: str,
    port: int,
    host_pattern: str | None,
    candidates: Iterable[str],
) -> Topology:
    """Find the writer and readers by asking instances directly (rules in the module docstring).

    ``query(host, sql)`` runs one statement on one host and returns its rows (raising on
    failure); ``candidates`` are the hosts whose metadata to read, in order (the instances known,
    then the cluster endpoint). Raises the last error, or LookupError, if no writer is found.
    """
    if host_pattern is None:
        return _from_endpoints(query, dialect, cluster_endpoint, reader_endpoint, port)
    last_error: Exception | None = None
    named: dict[str, Instance] = {}
    for host in dict.fromkeys(candidates):
        try:
            instances = read_metadata(query, dialect, queries, host, host_pattern, port)
        except Exception as exc:
            last_error = exc
            continue
        writers = [i for i in instances if i.role == "writer"]
        if len(writers) == 1:
            return Topology(writers[0], _readers(instances, writers[0]))
        named.update({i.id: i for i in instances})
        last_error = LookupError(f"{host} named {len(writers)} writers")
    for instance in named.values():  # the metadata did not settle it: ask the instances
        try:
            if query(instance.host, dialect.is_writer_sql)[0][0]:
                writer = Instance(instance.id, instance.host, port, "writer")
                return Topology(writer, _readers(named.values(), writer))
        except Exception as exc:
            last_error = exc
    raise last_error or LookupError("no instance named a writer")


def _readers(instances: Iterable[Instance], writer: Instance) -> list[Instance]:
    return sorted((Instance(i.id, i.host, i.port, "reader", i.lag_ms) for i in instances
                   if i.id != writer.id), key=lambda i: i.id)


def _from_endpoints(query: Query, dialect: EngineDialect, cluster_endpoint: str,
                    reader_endpoint: str, port: int) -> Topology:
    """No host pattern: the cluster endpoint is the writer if it says it takes writes; the
    reader endpoint (if another host, and it answers) is the one reader."""
    if not query(cluster_endpoint, dialect.is_writer_sql)[0][0]:
        raise LookupError(f"the cluster endpoint {cluster_endpoint} reached an instance that "
                          "does not take writes (its DNS may still name the old writer)")
    writer = Instance(id=cluster_endpoint, host=cluster_endpoint, port=port, role="writer")
    readers = []
    if reader_endpoint != cluster_endpoint:
        try:
            query(reader_endpoint, dialect.is_reader_sql)
            readers.append(Instance(reader_endpoint, reader_endpoint, port, "reader"))
        except Exception:  # noqa: S110 - a reader endpoint that does not answer: no reader
            pass
    return Topology(writer, readers)
