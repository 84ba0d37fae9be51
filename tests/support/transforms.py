"""Transform hooks used by the tests (loaded through TRANSFORM=tests.support.transforms:NAME)."""

from __future__ import annotations

from datetime import UTC, datetime


def tag(record: dict, kind: str) -> dict:
    if kind == "event":
        record["properties"]["transformed"] = True
        record["properties"]["when"] = datetime(2024, 1, 1, tzinfo=UTC)  # not JSON: made safe
    else:
        record.setdefault("$set", {})["transformed"] = True
    return record


def drop_secret(record: dict, kind: str) -> dict | None:
    return None if record.get("event") == "secret" else record


def split(record: dict, kind: str) -> list[dict]:
    copy = {**record, "event": record["event"] + " (copy)", "properties": dict(record["properties"])}
    copy["properties"]["$insert_id"] = record["properties"]["$insert_id"] + "-copy"
    return [record, copy]


def boom(record: dict, kind: str) -> dict:
    if record.get("event") == "bad":
        raise RuntimeError("boom: secret-payload-value")
    return record


def mutate_and_raise(record: dict, kind: str) -> dict:
    record["properties"]["mutated"] = True  # must not leak when the hook then fails
    raise ValueError("after mutating")
