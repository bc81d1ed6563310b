"""Where a statement goes: the writer or a reader.

The decision is a pure function of the statement, its execution options and the session's
state (``statement_route``), so it is tested without a database; ``RoutingSession`` (in
``session.py``) only carries the state and asks it.

Rules (API.md): ORM flushes, INSERT/UPDATE/DELETE/MERGE, DDL, ``SELECT ... FOR UPDATE/SHARE``
and any statement in a transaction that already wrote go to the writer; a statement pinned with
``execution_options(aurora_route="writer" | "reader")`` goes where it is pinned; other reads go
to a reader. Textual SQL is read only when it is recognisably read-only: a plain
SELECT/VALUES/TABLE/SHOW, a WITH whose parts are all SELECTs, an EXPLAIN without ANALYZE;
anything else (data-modifying CTEs, ``SELECT ... INTO``, locking clauses including MySQL's
``LOCK IN SHARE MODE``, calls of functions that write such as ``nextval`` or that answer about the
connection's last write such as MySQL's ``LAST_INSERT_ID()``, multiple statements, unknown
commands) goes to the writer.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.ddl import ExecutableDDLElement
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import CompoundSelect, Join, Select

ROUTE_OPTION = "aurora_route"


class Route(Enum):
    WRITER = "writer"
    READER = "reader"


_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_LITERALS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$(\w*)\$.*?\$\1\$", re.S)
_READ_START = re.compile(r"^\s*\(*\s*(select|values|table|show|with|explain)\b", re.I)
# Inside a statement that starts like a read, what can still write or take locks: a
# data-modifying CTE, SELECT ... INTO, a locking clause, or a function that writes.
_WRITE_WORDS = re.compile(
    r"\b(insert|update|delete|merge|into)\b"
    r"|\bfor\s+(no\s+key\s+)?update\b|\bfor\s+(key\s+)?share\b|\block\s+in\s+share\s+mode\b"
    r"|\bnext\s+value\s+for\b"  # a MariaDB sequence
    r"|\b(nextval|setval|lastval|txid_current|pg_current_xact_id|pg_notify|set_config|lo_create|"
    r"lo_import|lo_unlink|pg_advisory_lock|pg_advisory_xact_lock|get_lock|release_lock|"
    # MySQL functions that answer about this connection's last write: the writer's
    r"last_insert_id|found_rows|row_count)\s*\(",
    re.I,
)


def text_is_read_only(sql: str) -> bool:
    """Whether textual SQL is recognisably read-only (see the module docstring).

    Comments and quoted literals are ignored, so ``SELECT 'update'`` reads; a word that writes
    anywhere else (``WITH x AS (DELETE ...) SELECT``, ``SELECT nextval(...)``) sends the
    statement to the writer, erring on the side that is never wrong.
    """
    stripped = _LITERALS.sub("''", _COMMENTS.sub(" ", sql))
    if not _READ_START.match(stripped):
        return False
    body = stripped.strip().rstrip(";")
    if ";" in body:  # several statements: cannot vouch for all of them
        return False
    return _WRITE_WORDS.search(body) is None


def statement_route(statement: Any, *, flushing: bool = False, wrote: bool = False,
                    pinned: str | None = None) -> Route:
    """The route of one statement.

    ``flushing``: the ORM is flushing; ``wrote``: the session's transaction already wrote;
    ``pinned``: an ``aurora_route`` execution option given at the call rather than on the
    statement. Raises ValueError for a pinned route other than "writer" or "reader".
    """
    option = pinned
    if option is None and isinstance(statement, Executable):
        option = statement.get_execution_options().get(ROUTE_OPTION)
    if option is not None:
        if option not in ("writer", "reader"):
            raise ValueError(f"{ROUTE_OPTION} must be 'writer' or 'reader', not {option!r}")
        # a pinned read inside a transaction that wrote would not see its own writes
        return Route.WRITER if wrote else Route(option)
    if flushing or wrote:
        return Route.WRITER
    return Route.READER if statement_reads(statement) else Route.WRITER


def statement_reads(statement: Any) -> bool:
    """Whether a statement only reads, judged from the statement alone."""
    if isinstance(statement, Select):
        return statement._for_update_arg is None and not _selects_into(statement)
    if isinstance(statement, CompoundSelect):
        return all(statement_reads(s) for s in statement.selects)
    if isinstance(statement, TextClause):
        return text_is_read_only(statement.text)
    if isinstance(statement, UpdateBase | ExecutableDDLElement):
        return False
    return False  # unknown kinds of statement: the writer is never wrong


def _selects_into(statement: Select[Any]) -> bool:
    """Whether a SELECT reads from a data-modifying CTE (``insert(...).cte()``).

    Looks at what the statement names directly (its columns, FROM list, joins and CTEs), not
    at compiled SQL: compiling here would cost more than the query.
    """
    stack: list[Any] = [*statement._raw_columns, *statement._from_obj,
                        *(statement._independent_ctes or ()),
                        *(join[0] for join in statement._setup_joins)]
    while stack:
        element = stack.pop()
        if isinstance(getattr(element, "element", None), UpdateBase):
            return True
        table = getattr(element, "table", None)  # a column of the CTE
        if table is not None and table is not element:
            stack.append(table)
        if isinstance(element, Join):
            stack += [element.left, element.right]
    return False
