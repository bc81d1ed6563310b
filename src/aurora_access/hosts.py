"""Aurora's names: hosts, instance host patterns, regions and secret ARNs.

Instance host pattern: Aurora names every instance ``<instance-id>.<cluster suffix>``, so for an
Aurora endpoint (cluster, ``cluster-ro-``, ``cluster-custom-`` or instance; commercial, China and
GovCloud domains) the pattern is derived: ``mydb.cluster-c9akciq32.us-east-1.rds.amazonaws.com``
gives ``?.c9akciq32.us-east-1.rds.amazonaws.com``. Any other host (an IP address, ``localhost``,
an RDS Proxy, your own DNS name) gives ``None``: no instance hosts, topology falls back to the
endpoints.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

__all__ = ["cluster_identifier", "derive_instance_host_pattern", "instance_host", "is_host",
           "is_label", "is_region", "secret_arn_region"]

_LABEL: Final = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
_HOST_NAME: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_INSTANCE_ID: Final = re.compile(_LABEL)
# AWS region names: us-east-1, eu-central-2, cn-northwest-1, us-gov-west-1, us-iso-east-1.
_REGION: Final = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d+")
_SECRET_ARN: Final = re.compile(
    r"arn:aws[a-z-]*:secretsmanager:(?P<region>[^:]+):\d{12}:secret:.+")

# <name>.[cluster-|cluster-ro-|cluster-custom-]<id>.<region domain>: the instances are
# <instance-id>.<id>.<region domain>. Only these kinds: an RDS Proxy (proxy-), a global (global-)
# or a Limitless (shardgrp-) endpoint does not front instances that a client should pick itself.
_AURORA_ENDPOINT: Final = re.compile(
    r"""
    (?P<name>[a-z0-9-]+)\.
    (?:cluster-(?:ro-|custom-)?)?
    (?P<suffix>
        [a-z0-9]+\.
        (?: [a-z0-9-]+\.rds\.amazonaws\.com(?:\.cn)?
          | rds\.[a-z0-9-]+\.(?:amazonaws\.com(?:\.cn)?|c2s\.ic\.gov|sc2s\.sgov\.gov)
        )
    )
    \.?
    """,
    re.VERBOSE | re.IGNORECASE,
)


def instance_host(pattern: str, instance_id: str) -> str:
    """The host of instance ``instance_id``: ``pattern`` with its ``?`` replaced by the id.

    ``instance_host("?.c9akciq32.us-east-1.rds.amazonaws.com", "mydb-2")`` is
    ``mydb-2.c9akciq32.us-east-1.rds.amazonaws.com``. Raises ``ValueError`` when the pattern
    does not hold exactly one ``?`` or the id is not a DNS label (letters, digits, ``-``, ``_``).
    """
    if pattern.count("?") != 1:
        raise ValueError(f"an instance host pattern holds exactly one '?', got {pattern!r}")
    if not _INSTANCE_ID.fullmatch(instance_id):
        raise ValueError(f"an instance id is a DNS label, got {instance_id!r}")
    return pattern.replace("?", instance_id)


def derive_instance_host_pattern(endpoint: str) -> str | None:
    """The instance host pattern Aurora implies for ``endpoint``, or ``None`` for other hosts.

    ``mydb.cluster-ro-c9akciq32.us-east-1.rds.amazonaws.com`` gives
    ``?.c9akciq32.us-east-1.rds.amazonaws.com``; an IP address, ``localhost``, an RDS Proxy
    endpoint or any other DNS name gives ``None``.
    """
    match = _AURORA_ENDPOINT.fullmatch(endpoint)
    return None if match is None else f"?.{match['suffix']}"


def cluster_identifier(endpoint: str) -> str | None:
    """The DB cluster identifier of an Aurora cluster or reader endpoint (its first label:
    ``mydb`` for ``mydb.cluster-c9akciq32.us-east-1.rds.amazonaws.com``), else None."""
    match = _AURORA_ENDPOINT.fullmatch(endpoint)
    return None if match is None or "cluster-" not in endpoint else match["name"]


def is_label(value: str) -> bool:
    """Whether ``value`` is one DNS label: an instance id or an endpoint name."""
    return _INSTANCE_ID.fullmatch(value) is not None


def secret_arn_region(secret_id: str | None) -> str | None:
    """The region of a Secrets Manager secret given as a full ARN, else None."""
    match = None if secret_id is None else _SECRET_ARN.fullmatch(secret_id)
    return None if match is None else match["region"]


def is_host(value: str) -> bool:
    """Whether ``value`` is a host name or an IP address (no scheme, port or path)."""
    if _HOST_NAME.fullmatch(value):
        return True
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_region(value: str) -> bool:
    """Whether ``value`` reads as an AWS region name."""
    return _REGION.fullmatch(value) is not None
