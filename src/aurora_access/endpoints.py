"""Aurora custom endpoints: which instances each one names, and which take no general reads.

A custom endpoint names a subset of a cluster's instances (analytics readers kept away from shop
traffic). ``read_only(endpoint="analytics")`` reads only on its members; with
AURORA_EXCLUSIVE_ENDPOINTS, plain reads never go to an instance that only exclusive endpoints
name. Membership comes from AURORA_CUSTOM_ENDPOINTS when given, else from RDS
(``describe_db_cluster_endpoints``: an endpoint's static members, or every instance but its
excluded ones), asked when first needed and again, by the monitor's thread, at most every
``RDS_REFRESH_S`` (RDS's API is rate-limited and membership changes rarely).

No I/O on a request path once membership is known; RDS is asked through the caller's
``blocking.run`` (a thread under asyncio).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .hosts import cluster_identifier
from .settings import Settings, env_variable

log = logging.getLogger("aurora_access")

RDS_REFRESH_S = 60.0


@dataclass(frozen=True)
class Membership:
    """One custom endpoint's members as RDS states them: ``static`` ids, or (when there are
    none) every instance of the cluster but the ``excluded`` ones."""

    static: frozenset[str]
    excluded: frozenset[str] = frozenset()

    def members(self, instance_ids: Iterable[str]) -> frozenset[str]:
        if self.static:
            return self.static
        return frozenset(instance_ids) - self.excluded


class CustomEndpoints:
    """The custom endpoints of one Database (see the module docstring)."""

    def __init__(self, settings: Settings,
                 rds_client: Callable[[], Any] | None = None) -> None:
        self.exclusive = settings.exclusive_endpoints
        given = settings.custom_endpoints
        self._known: dict[str, Membership] | None = None if given is None else {
            name: Membership(frozenset(ids)) for name, ids in given.items()}
        self._cluster = cluster_identifier(settings.cluster_endpoint)
        self._region = settings.region
        self._make_client = rds_client or self._boto3_client
        self._client: Any = None
        self._lock = threading.Lock()
        self._asked_at: float | None = None
        self.from_rds = given is None
        self._used = bool(self.exclusive)  # whether anything needs the membership

    def refresh(self, force: bool = False) -> None:
        """Ask RDS again if membership comes from it, something uses it and the last answer
        is older than RDS_REFRESH_S (or ``force``). A failure keeps the last answer."""
        if not self.from_rds or not (self._used or force):
            return
        with self._lock:
            now = time.monotonic()
            if not force and self._asked_at is not None \
                    and now - self._asked_at < RDS_REFRESH_S:
                return
            self._asked_at = now
            try:
                self._known = self._describe()
            except Exception as exc:  # unreachable AWS, no credentials, throttling
                log.warning("could not read the custom endpoints from RDS (%s): %s",
                            type(exc).__name__, exc)
                if self._known is None:
                    self._known = {}

    def must_ask(self) -> bool:
        """Whether membership is unknown yet: ``refresh(force=True)`` (I/O) before use."""
        return self._known is None

    def members(self, name: str, instance_ids: Iterable[str]) -> frozenset[str]:
        """The ids of ``name``'s members; ValueError naming the endpoint if there is none such.
        No I/O (an unknown membership counts as empty: see ``must_ask``)."""
        self._used = True
        known = self._known or {}
        if name not in known:
            listed = ", ".join(sorted(known)) or "none"
            where = (f"RDS lists for cluster {self._cluster}" if self.from_rds
                     else f"{env_variable('custom_endpoints')} lists")
            raise ValueError(f"no custom endpoint {name!r}: {where}: {listed}")
        return known[name].members(instance_ids)

    def excluded(self, instance_ids: Iterable[str]) -> frozenset[str]:
        """Instances that only exclusive endpoints name: no general reads go there."""
        if not self.exclusive:
            return frozenset()
        ids = list(instance_ids)
        known = self._known or {}
        kept: set[str] = set()
        shared: set[str] = set()
        for name, membership in known.items():
            (kept if name in self.exclusive else shared).update(membership.members(ids))
        return frozenset(kept - shared)

    def _describe(self) -> dict[str, Membership]:
        if self._cluster is None:
            raise LookupError(f"{env_variable('cluster_endpoint')} is not an Aurora cluster "
                              "endpoint, so the cluster's name is unknown; list the members "
                              f"in {env_variable('custom_endpoints')}")
        if self._client is None:
            self._client = self._make_client()
        found: dict[str, Membership] = {}
        pages = self._client.get_paginator("describe_db_cluster_endpoints").paginate(
            DBClusterIdentifier=self._cluster,
            Filters=[{"Name": "db-cluster-endpoint-type", "Values": ["custom"]}])
        for page in pages:
            for endpoint in page.get("DBClusterEndpoints", []):
                found[endpoint["DBClusterEndpointIdentifier"]] = Membership(
                    frozenset(endpoint.get("StaticMembers") or ()),
                    frozenset(endpoint.get("ExcludedMembers") or ()))
        log.info("custom endpoints from RDS: %s", describe(found))
        return found

    def _boto3_client(self) -> Any:
        import boto3  # noqa: PLC0415 - only where custom endpoints come from RDS

        return boto3.client("rds", region_name=self._region)


def describe(found: Mapping[str, Membership]) -> str:
    return "; ".join(
        f"{name}={','.join(sorted(m.static)) or 'all but ' + ','.join(sorted(m.excluded))}"
        for name, m in sorted(found.items())) or "none"
