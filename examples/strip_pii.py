"""Example TRANSFORM hook: strip PII before the record goes anywhere (Mixpanel included).

    TRANSFORM=examples/strip_pii.py:transform

Removes the listed properties from events and from every profile operation
($set, $set_once, ...). Edit PII_KEYS for your data.
"""

from __future__ import annotations

PII_KEYS = frozenset({"$email", "email", "$phone", "phone", "$name", "name", "$first_name", "$last_name", "address"})


def _strip(value):
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in PII_KEYS}
    if isinstance(value, list):  # $unset: a list of property names
        return [k for k in value if k not in PII_KEYS]
    return value


def transform(record: dict, kind: str) -> dict:
    if kind == "event":
        record["properties"] = _strip(record.get("properties") or {})
        return record
    for operation in ("$set", "$set_once", "$add", "$append", "$union", "$remove", "$unset"):
        if operation in record:
            record[operation] = _strip(record[operation])
    return record
