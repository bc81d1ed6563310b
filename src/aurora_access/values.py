"""Checking configuration values one at a time: numbers with bounds, choices, flags, hosts, and
environment strings parsed to their field's type. Every error is a ``ConfigError`` naming the
variable and what it accepts, and never echoes the password."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal, get_args

from .errors import ConfigError
from .hosts import is_host, is_label

Engine = Literal["postgresql", "mysql"]
SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]
ReaderSelection = Literal["round_robin", "random", "least_connections", "lowest_lag"]
RywScope = Literal["context", "process"]

ENGINES: Final[tuple[str, ...]] = get_args(Engine)
SSLMODES: Final[tuple[str, ...]] = get_args(SslMode)
READER_SELECTIONS: Final[tuple[str, ...]] = get_args(ReaderSelection)
RYW_SCOPES: Final[tuple[str, ...]] = get_args(RywScope)

# Fields whose value must never be shown, not even when it is malformed.
SECRET_FIELDS: Final = frozenset({"password"})
NOTHING: Final = object()  # "no value to echo" in an error message

_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
_INTEGER: Final = re.compile(r"[+-]?\d+")
_DECIMAL: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass(frozen=True)
class _Number:
    """What a numeric setting accepts: its type, its bounds and how to say so."""

    integer: bool
    low: float
    low_inclusive: bool
    high: float | None
    accepts: str

    def admits(self, value: float) -> bool:
        above = value >= self.low if self.low_inclusive else value > self.low
        return above and (self.high is None or value <= self.high)


NUMBERS: Final[Mapping[str, _Number]] = {
    "port": _Number(True, 1, True, 65535, "an integer between 1 and 65535"),
    "pool_size": _Number(True, 1, True, None, "an integer >= 1"),
    "max_overflow": _Number(True, 0, True, None, "an integer >= 0"),
    "pool_timeout": _Number(False, 0, False, None, "a number of seconds > 0"),
    "pool_recycle": _Number(False, 0, True, None, "a number of seconds >= 0 (0 = never)"),
    "max_replica_lag_ms": _Number(False, 0, True, None, "a number of milliseconds >= 0"),
    "ryw_wait_ms": _Number(False, 0, True, None, "a number of milliseconds >= 0"),
    "connect_timeout": _Number(False, 0, False, None, "a number of seconds > 0"),
    "failover_timeout": _Number(False, 0, False, None, "a number of seconds > 0"),
    "topology_refresh_s": _Number(False, 0, False, None, "a number of seconds > 0"),
    "hung_timeout_s": _Number(False, 0, False, None, "a number of seconds > 0"),
    "idle_pause_s": _Number(False, 0, True, None, "a number of seconds >= 0 (0 = never)"),
    "resume_timeout_s": _Number(False, 0, False, None, "a number of seconds > 0"),
}
CHOICES: Final[Mapping[str, tuple[str, ...]]] = {
    "engine": ENGINES,
    "sslmode": SSLMODES,
    "reader_selection": READER_SELECTIONS,
    "ryw_scope": RYW_SCOPES,
}
BOOLEANS: Final = ("iam_auth", "read_your_writes")
# ``name=id,id;name2=id``: custom endpoints and their member instances
ENDPOINT_MAPS: Final = ("custom_endpoints",)
# ``name,name2``
NAME_LISTS: Final = ("exclusive_endpoints",)
STRINGS: Final = ("cluster_endpoint", "reader_endpoint", "database", "user", "password",
                   "region", "secret_id", "sslrootcert", "instance_host_pattern")


def shown(value: object, password: str | None) -> str:
    """``value`` as an error message may echo it: shortened, and never carrying the password."""
    if password and password in str(value):
        return "a value that contains the password (not shown)"
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


class Values:
    """The values given for a ``Settings``, read one field at a time with that field's checks."""

    def __init__(self, given: Mapping[str, object], prefix: str) -> None:
        self.given = given
        self.prefix = prefix
        password = given.get("password")
        self.password = password if isinstance(password, str) else None

    def name(self, field: str) -> str:
        return self.prefix + field.upper()

    def error(self, field: str, message: str, got: object = NOTHING) -> ConfigError:
        """A ``ConfigError`` naming ``field``'s variable; echoes ``got`` unless it is secret."""
        if got is not NOTHING and field not in SECRET_FIELDS:
            message = f"{message}, got {shown(got, self.password)}"
        return ConfigError(self.name(field), message)

    def text(self, field: str) -> str | None:
        value = self.given.get(field)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.error(field, f"must be a string, not {type(value).__name__}")
        return value

    def required_text(self, field: str, meaning: str) -> str:
        value = self.text(field)
        if value is None:
            raise self.error(field, f"is required: {meaning}")
        return value

    def host(self, field: str, value: str) -> str:
        if not is_host(value):
            raise self.error(field, "must be a host name or IP address (no scheme, port or path)",
                             value)
        return value

    def choice(self, field: str, default: str) -> str:
        value = self.given.get(field)
        if value is None:
            return default
        options = CHOICES[field]
        if not isinstance(value, str) or value not in options:
            raise self.error(field, f"must be one of {', '.join(options)}", value)
        return value

    def flag(self, field: str, default: bool) -> bool:
        value = self.given.get(field)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(field, "must be true or false", value)
        return value

    def number(self, field: str, default: float) -> float:
        value = self.given.get(field)
        if value is None:
            return default
        spec = NUMBERS[field]
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or (spec.integer and not isinstance(value, int))
                # isfinite() cannot take an int beyond float's range; such an int is finite.
                or (isinstance(value, float) and not math.isfinite(value))
                or not spec.admits(value)):
            raise self.error(field, f"must be {spec.accepts}", value)
        return value


    def endpoints(self, field: str) -> Mapping[str, tuple[str, ...]] | None:
        """Custom endpoint names -> member instance ids (read-only), or None when not given."""
        value = self.given.get(field)
        if value is None:
            return None
        accepts = ("must map custom endpoint names to instance ids, as "
                   "name=id,id;name2=id (names and ids are DNS labels)")
        if not isinstance(value, Mapping):
            raise self.error(field, accepts, value)
        members: dict[str, tuple[str, ...]] = {}
        for name, given in value.items():
            ids = (given,) if isinstance(given, str) else tuple(given)
            if not isinstance(name, str) or not is_label(name) or not ids \
                    or not all(isinstance(i, str) and is_label(i) for i in ids):
                raise self.error(field, accepts, value)
            members[name] = ids
        return MappingProxyType(members)

    def names(self, field: str) -> tuple[str, ...]:
        value = self.given.get(field)
        if value is None:
            return ()
        names = (value,) if isinstance(value, str) else value
        if not isinstance(names, tuple | list) or \
                not all(isinstance(n, str) and is_label(n) for n in names):
            raise self.error(field, "must be custom endpoint names (DNS labels), as name,name2",
                             value)
        return tuple(names)


def _endpoint_map(variable: str, value: str, password: str | None) -> dict[str, list[str]]:
    members: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in value.split(";"))):
        name, sep, ids = part.partition("=")
        if not sep or not name.strip() or name.strip() in members:
            raise ConfigError(variable, "must map custom endpoint names to instance ids, as "
                              f"name=id,id;name2=id, got {shown(value, password)}")
        members[name.strip()] = [i.strip() for i in ids.split(",") if i.strip()]
    return members


def parse(field: str, value: str, prefix: str, password: str | None) -> object:
    """One non-secret environment value, as the type of its field; ``ConfigError`` if malformed.

    ``password`` is only there to keep it out of the message if it was pasted into this value.
    """
    variable = prefix + field.upper()
    if field in BOOLEANS:
        lowered = value.lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise ConfigError(variable, f"must be true or false (also 1/0, yes/no, on/off), "
                          f"got {shown(value, password)}")
    if field in CHOICES:
        # Unknown spellings pass through unchanged; Settings names the accepted ones.
        return value.lower()
    if field in NUMBERS:
        spec = NUMBERS[field]
        pattern = _INTEGER if spec.integer else _DECIMAL
        if not pattern.fullmatch(value):
            raise ConfigError(variable, f"must be {spec.accepts}, got {shown(value, password)}")
        return int(value) if spec.integer else float(value)
    if field in ENDPOINT_MAPS:
        return _endpoint_map(variable, value, password)
    if field in NAME_LISTS:
        return [n.strip() for n in value.split(",") if n.strip()]
    assert field in STRINGS, field
    return value
