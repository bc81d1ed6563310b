"""The report of ``aurora-access check``: each check's outcome, rendered as aligned text or JSON,
with every password or token handed to a connection (and anything shaped like an IAM token)
scrubbed from both."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Check", "Report", "Status"]

Status = Literal["ok", "warn", "FAIL", "skip"]
STATUSES: tuple[Status, ...] = ("ok", "warn", "FAIL", "skip")
_HIDDEN = "***"
# an IAM auth token is a presigned URL: whatever carries its signature is a token
_TOKEN = re.compile(r"\S*X-Amz-(?:Signature|Credential|Security-Token)=\S*")


@dataclass(frozen=True)
class Check:
    """One step's outcome: ``name`` says what was checked, ``detail`` what was found, ``ms``
    how long it took (None where nothing was timed), ``facts`` the same for ``--json``."""

    status: Status
    name: str
    detail: str
    ms: float | None = None
    facts: Mapping[str, object] = field(default_factory=dict)


@dataclass
class Report:
    """What ``run_check`` found; render it with ``text()`` or ``as_json()``."""

    #: environment variable -> value as shown (the password ``***``); empty if unreadable
    configuration: dict[str, object] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    #: values that must not appear in any output (passwords and tokens that were used)
    secrets: set[str] = field(default_factory=set)

    def add(self, status: Status, name: str, detail: str, ms: float | None = None,
            facts: Mapping[str, object] | None = None) -> None:
        self.checks.append(Check(status, name, detail, ms, facts or {}))

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "FAIL"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def summary(self) -> str:
        """``ok (7 ok, 1 warn)`` or ``FAIL (6 ok, 1 FAIL): instance 13``."""
        counts = ", ".join(f"{n} {s}" for s in STATUSES
                           if (n := sum(c.status == s for c in self.checks)))
        failed = ", ".join(c.name for c in self.failures)
        return f"FAIL ({counts}): {failed}" if failed else f"ok ({counts})"

    def text(self) -> str:
        """Aligned lines: the configuration, then ``status  time  name  detail`` per check."""
        lines = ["aurora-access check"]
        if self.configuration:
            lines.append("configuration (secrets hidden)")
            width = max(map(len, self.configuration))
            lines += [f"  {name:<{width}}  {_shown(value)}"
                      for name, value in self.configuration.items()]
        lines.append("checks (time: DNS lookup, login and discovery, or connect)")
        width = max((len(c.name) for c in self.checks), default=0)
        for check in self.checks:
            ms = "" if check.ms is None else f"{check.ms:.1f} ms"
            lines.append(f"  {check.status:<4}  {ms:>10}  {check.name:<{width}}  {check.detail}")
        lines.append(f"result: {self.summary()}")
        return self._scrub_text("\n".join(lines))

    def as_json(self) -> str:
        document = {
            "result": "FAIL" if self.failures else "ok",
            "configuration": self.configuration,
            "checks": [{"status": c.status, "name": c.name, "detail": c.detail, "ms": c.ms,
                        **c.facts} for c in self.checks],
        }
        return json.dumps(self._scrub(document), indent=2)

    def _scrub_text(self, text: str) -> str:
        """``text`` with every known secret and anything shaped like an IAM token hidden."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, _HIDDEN)
        return _TOKEN.sub(_HIDDEN, text)

    def _scrub(self, value: Any) -> Any:
        """``_scrub_text`` over every string of a JSON document."""
        if isinstance(value, str):
            return self._scrub_text(value)
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        return value


def _shown(value: object) -> str:
    if value is None:
        return "-"
    return str(value).lower() if isinstance(value, bool) else str(value)
