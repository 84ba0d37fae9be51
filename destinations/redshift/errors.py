"""What a Redshift failure means for the delivery layer, from SQLSTATE (direct path) or the
statement's error text (Data API, which reports only text).

* transient: serialisation conflicts (Redshift's 1023 "Serializable isolation violation"),
  deadlocks, lock and statement timeouts, lost or refused connections, throttling, a
  cluster that is resuming or in maintenance: retry the write.
* data: a value the table refuses (bad syntax for the type, out of range, invalid JSON): the
  sink splits the statement to find the row, and rejects that row alone.
* missing: the table or schema is gone (someone dropped it): the sink re-runs set-up once.
* permanent: everything else (permissions, credentials, syntax): dead-letter at once.

Messages are cut to their first line and quoted values are blanked: they may reach logs
and /health, and must never carry row values.
"""

from __future__ import annotations

import re
from typing import Literal

Kind = Literal["transient", "data", "missing", "permanent"]

TRANSIENT_CLASSES = {"08", "40", "53", "57", "58"}  # connection, rollback, resources, operator, system
TRANSIENT_STATES = {"55P03", "55006"}  # lock not available, object in use
DATA_CLASSES = {"22", "23"}  # data exception, integrity constraint (NOT NULL)
MISSING_STATES = {"42P01", "3F000"}

TRANSIENT_TEXT = re.compile(
    r"serializable isolation violation|could not serialize|deadlock detected|lock timeout|could not obtain lock"
    r"|connection|terminat|timed? ?out|canceling statement|too many|throttl|rate exceeded|temporarily|try again"
    r"|out of memory|resuming|maintenance|shutting down|starting up|not yet available|unavailable",
    re.IGNORECASE,
)
DATA_TEXT = re.compile(
    r"invalid input syntax|value too long|out of range|invalid json|json parsing|invalid byte sequence"
    r"|unsupported unicode escape|null value in column|violates not-null|violates check|numeric field overflow"
    r"|date/time field value|cannot contain nul|invalid escape|character with byte sequence|invalid .* value",
    re.IGNORECASE,
)
MISSING_TEXT = re.compile(r'(relation|schema) "[^"]*" does not exist', re.IGNORECASE)
QUOTED_VALUE = re.compile(r""":\s*(["']).*?\1""", re.DOTALL)


class StatementDataError(Exception):
    """A statement failed because of a value in it; the sink isolates the row."""


class MissingTable(Exception):
    """The target table or schema does not exist (any more)."""


def classify(sqlstate: str | None, message: str) -> Kind:
    code = (sqlstate or "").upper()
    if code in MISSING_STATES or (not code and MISSING_TEXT.search(message)):
        return "missing"
    if code[:2] in DATA_CLASSES:
        return "data"
    if code[:2] in TRANSIENT_CLASSES or code in TRANSIENT_STATES:
        return "transient"
    if code and code != "XX000":
        # A known SQLSTATE outside the classes above (permissions 42501, auth 28P01, syntax
        # 42601...) is permanent; XX000 is Redshift's catch-all, so read its text.
        return "permanent"
    if TRANSIENT_TEXT.search(message):
        return "transient"
    if DATA_TEXT.search(message):
        return "data"
    return "permanent"


def safe_message(message: str, limit: int = 200) -> str:
    """The first line, without the `ERROR:` prefix, with quoted values after a colon blanked."""
    first = (message or "").strip().splitlines()[0] if (message or "").strip() else "unknown error"
    first = re.sub(r"^(ERROR|FATAL):\s*", "", first)
    first = QUOTED_VALUE.sub(lambda m: f": {m.group(1)}…{m.group(1)}", first)
    return first if len(first) <= limit else first[: limit - 1] + "…"
