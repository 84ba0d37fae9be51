"""One conformance suite for every destination, through the running proxy under gunicorn.

Parametrized over every adapter in tests/destinations/adapters/ (a new destination joins
with one module there). For each it proves:

  exactly_once   1,000 events (plus profile and group updates) land exactly once
  round_trip     quotes, backslashes, newlines, unicode, emoji, nested JSON, `$` keys,
                 large ints, floats and nulls come back exactly
  close_flushes  SIGTERM drains every buffered row within the graceful timeout
  setup          `flask setup` is idempotent and leaves existing data untouched
  drop           /drop removes what this proxy owns and nothing else
  transient      a transient error is retried, then the rows land once
  permanent      a permanent error is dead-lettered with its reason; `flask replay`
                 delivers it once the destination is fixed
  rejected_row   one refused row is dead-lettered with its reason while the rest land

The fault checks wrap the real sink in tests/support/faulty.py (FAULTY_INNER=<name>), so
the delivery layer's handling is proven against the real service behind it.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.destinations.adapters.base import Adapter
from tests.fixtures_core import start_gunicorn
from tests.support.processes import flask_command, wait_until

pytestmark = pytest.mark.emulator
GRACEFUL_SECONDS = 20
DROP_TOKEN = "conformance-drop-token"


def _adapters() -> list[type[Adapter]]:
    found: list[type[Adapter]] = []
    for path in sorted((Path(__file__).parent / "adapters").glob("*.py")):
        if path.stem in ("__init__", "base"):
            continue
        found += importlib.import_module(f"tests.destinations.adapters.{path.stem}").ADAPTERS
    return found


ADAPTERS = _adapters()

# -- what we send --------------------------------------------------------------------------

TRICKY: dict[str, Any] = {
    "quote": "say \"hi\", it's 'quoted'",
    "backslash": "C:\\temp\\new \\u0041 \\\\",
    "newlines": "line1\nline2\r\nline3\ttab",
    "unicode": "naïve café – 日本語 – Ελληνικά – עברית",
    "emoji": "🎉 👩‍💻 🏳️‍🌈",
    "nested": {"a": [1, {"b": None, "c": [True, False]}], "d": {"e": {"f": "g"}}, "empty": {}, "list": []},
    "$browser": "Chrome",
    "$current_url": "https://example.com/?a=1&b=$c#frag",
    "dollar_value": "$browser $os :1 ? %s {0}",
    "sql": "'); DROP TABLE events; --",
    "large_int": 9007199254740993,
    "negative_int": -(2**62),
    "float": 1.0000000000000002,
    "small_float": 1.5e-10,
    "null": None,
    "true": True,
    "empty_string": "",
}


def event(check: str, unique: str, index: int, **extra: Any) -> dict[str, Any]:
    return {
        "event": f"conformance {check}",
        "properties": {
            "token": "conformance-token",
            "distinct_id": f"user-{index % 37}",
            "$insert_id": f"{unique}-{check}-{index}",
            "time": 1767225600 + index,
            "conformance": unique,
            "check": check,
            "n": index,
            **extra,
        },
    }


def engage(unique: str, index: int) -> dict[str, Any]:
    update = {"plan": "pro", "conformance": unique, "n": index}
    return {"$token": "conformance-token", "$distinct_id": f"user-{index}", "$set": update}


def group(unique: str, index: int) -> dict[str, Any]:
    return {
        "$token": "conformance-token",
        "$group_key": "company",
        "$group_id": f"acme-{index}",
        "$set": {"conformance": unique, "n": index},
    }


def post(url: str, path: str, items: list[dict[str, Any]]) -> None:
    reply = requests.post(f"{url}{path}", data={"data": json.dumps(items)}, timeout=30)
    assert reply.status_code == 200 and reply.text == "1", (path, reply.status_code, reply.text[:300])


def ours(rows: list[dict[str, Any]], unique: str, check: str | None = None) -> list[dict[str, Any]]:
    def props(row: dict[str, Any]) -> dict[str, Any]:
        value = row.get("properties")
        if isinstance(value, dict) and isinstance(value.get("$set"), dict):  # a mixpanel profile update
            return value["$set"]
        return value if isinstance(value, dict) else {}

    return [r for r in rows if props(r).get("conformance") == unique and (check is None or props(r).get("check") == check)]


# -- the proxy around one adapter ------------------------------------------------------------


class Harness:
    def __init__(self, adapter: Adapter, workdir: Path) -> None:
        self.adapter = adapter
        self.workdir = workdir
        self.control = workdir / "faulty-control"
        self.spool = workdir / "spool"
        self.runs = 0
        self.servers: list[Any] = []

    def env(self, faulty: bool = False, **extra: str) -> dict[str, str]:
        env = {
            "DESTINATIONS": "tests.support.faulty:make" if faulty else self.adapter.name,
            "DATA_DIR": str(self.workdir / "data"),
            "DEAD_LETTER_DIR": str(self.spool),
            "DELIVERY": "batch",
            "BATCH_MAX_SECONDS": "0.5",
            "RETRY_BASE_SECONDS": "0.05",
            "RETRY_MAX_SECONDS": "60",
            "RETRY_MAX_ATTEMPTS": "1000",
            "GRACEFUL_TIMEOUT": str(GRACEFUL_SECONDS),
            "ENVIRONMENT": "development",
            "DROP_TOKEN": DROP_TOKEN,
            "WEB_CONCURRENCY": "2",
            **{k.upper(): v for k, v in self.adapter.env().items()},
            **extra,
        }
        if faulty:
            env.update({"FAULTY_INNER": self.adapter.name, "FAULTY_CONTROL": str(self.control)})
        return env

    def start(self, env: dict[str, str]) -> Any:
        self.runs += 1
        server = start_gunicorn(env, self.workdir / f"proxy-{self.runs}.log", workers=int(env["WEB_CONCURRENCY"]))
        self.servers.append(server)
        return server

    def stop_leftovers(self) -> None:
        """Stop what a failed check left running (stop() is a no-op for a stopped server)."""
        for server in self.servers:
            server.stop(timeout=GRACEFUL_SECONDS + 10)

    def url(self, server: Any) -> str:
        return f"http://127.0.0.1:{server.port}"

    def stop(self, server: Any) -> float:
        """SIGTERM, then how long the drain took; fails if gunicorn outlives its graceful timeout."""
        started = time.monotonic()
        code = server.stop(timeout=GRACEFUL_SECONDS + 10)
        took = time.monotonic() - started
        assert code == 0, f"gunicorn exited with {code} after {took:.1f}s (killed if negative):\n{server.log()[-2000:]}"
        return took

    def flask(self, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        return flask_command(env, *args)

    def spooled(self) -> list[dict[str, Any]]:
        batches = []
        for path in sorted(self.spool.rglob("*.ndjson")):
            batches.append(json.loads(path.read_text(encoding="utf-8")))
        return batches

    def events(self, check: str) -> list[dict[str, Any]]:
        return ours(self.adapter.rows("events"), self.adapter.unique, check)


@pytest.fixture(scope="module", params=ADAPTERS, ids=lambda cls: f"{cls.name}-{cls.variant}" if cls.variant else cls.name)
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    cls: type[Adapter] = request.param
    standin = request.getfixturevalue(cls.standin) if cls.standin else None
    adapter = cls(standin, "c" + uuid.uuid4().hex[:10])
    harness = Harness(adapter, tmp_path_factory.mktemp(f"conformance-{adapter.label}"))
    harness.landed: dict[str, Any] = {}  # type: ignore[misc]
    try:
        yield harness
    finally:
        harness.stop_leftovers()
        adapter.cleanup()


def applies(harness: Harness, check: str) -> None:
    reason = harness.adapter.not_applicable.get(check)
    if reason:
        pytest.skip(f"{harness.adapter.label}: {reason}")


@pytest.fixture(scope="module")
def landed(harness: Harness) -> dict[str, Any]:
    """One run: 1,000 events, the tricky values, profile and group updates, all held in the
    buffers (a 60 s flush interval) until SIGTERM drains them."""
    unique = harness.adapter.unique
    server = harness.start(harness.env(BATCH_MAX_SECONDS="60"))
    url = harness.url(server)
    sent = [event("once", unique, i) for i in range(1000)]
    for start in range(0, len(sent), 50):
        post(url, "/track", sent[start : start + 50])
    tricky = [event("round_trip", unique, i, **TRICKY) for i in range(3)]
    post(url, "/track", tricky)
    post(url, "/engage", [engage(unique, i) for i in range(10)])
    post(url, "/groups", [group(unique, i) for i in range(5)])
    drain_seconds = harness.stop(server)
    return {
        "sent": sent,
        "tricky": tricky,
        "drain_seconds": drain_seconds,
        "events": ours(harness.adapter.rows("events"), unique),
        "users": ours(harness.adapter.rows("users"), unique),
        "groups": ours(harness.adapter.rows("groups"), unique),
        "log": server.log(),
    }


def insert_ids(rows: list[dict[str, Any]]) -> Counter:
    return Counter(r.get("insert_id") or r["properties"].get("$insert_id") for r in rows)


def test_exactly_once(harness: Harness, landed: dict[str, Any]) -> None:
    applies(harness, "exactly_once")
    once = [r for r in landed["events"] if r["properties"].get("check") == "once"]
    counts = insert_ids(once)
    assert len(once) == 1000, f"{len(once)} of 1000 events landed"
    assert set(counts) == {e["properties"]["$insert_id"] for e in landed["sent"]}
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1][:5]
    assert len(landed["users"]) == 10 and len(landed["groups"]) == 5


def test_round_trip(harness: Harness, landed: dict[str, Any]) -> None:
    applies(harness, "round_trip")
    tricky = [r["properties"] for r in landed["events"] if r["properties"].get("check") == "round_trip"]
    stored = {props["$insert_id"]: props for props in tricky}
    assert len(stored) == 3
    for sent in landed["tricky"]:
        props = stored[sent["properties"]["$insert_id"]]
        for key, value in TRICKY.items():
            assert key in props, key
            assert props[key] == value and type(props[key]) is type(value), (key, props[key], value)


def test_close_flushes(harness: Harness, landed: dict[str, Any]) -> None:
    """Nothing was flushed by the timer (60 s): every row above came from the drain."""
    applies(harness, "close_flushes")
    assert landed["drain_seconds"] < GRACEFUL_SECONDS
    assert len(landed["events"]) == 1003
    assert "lost" not in landed["log"]


def test_setup_is_idempotent_and_keeps_data(harness: Harness, landed: dict[str, Any]) -> None:
    applies(harness, "setup")
    env = harness.env()
    before = len(ours(harness.adapter.rows("events"), harness.adapter.unique))
    for _ in range(2):
        result = harness.flask(env, "setup")
        assert result.returncode == 0, result.stdout + result.stderr
    assert len(ours(harness.adapter.rows("events"), harness.adapter.unique)) == before == 1003


def test_drop_removes_only_what_the_proxy_owns(harness: Harness, landed: dict[str, Any]) -> None:
    applies(harness, "drop")
    harness.adapter.plant_foreign()
    before = ours(harness.adapter.rows("events"), harness.adapter.unique)
    server = harness.start(harness.env())
    try:
        reply = requests.post(f"{harness.url(server)}/drop", headers={"Authorization": f"Bearer {DROP_TOKEN}"}, timeout=120)
    finally:
        harness.stop(server)
    assert reply.status_code == 200, reply.text
    assert "error" not in json.dumps(reply.json()["results"]), reply.text
    after = ours(harness.adapter.rows("events"), harness.adapter.unique)
    assert after == ([] if harness.adapter.owns_data else before) and len(before) == 1003
    assert harness.adapter.foreign_intact()


def test_transient_error_is_retried_then_lands(harness: Harness) -> None:
    applies(harness, "transient")
    harness.control.write_text("down")
    server = harness.start(harness.env(faulty=True))
    url = harness.url(server)
    sent = [event("transient", harness.adapter.unique, i) for i in range(100)]
    post(url, "/track", sent[:50])
    post(url, "/track", sent[50:])

    def retrying() -> bool:
        health = requests.get(f"{url}/health", timeout=5).json()
        return "retrying" in json.dumps(health)

    wait_until(retrying, 30, 0.2, what="the destination to be retrying")
    harness.control.write_text("up")
    wait_until(lambda: len(harness.events("transient")) >= 100, 60, 0.5, what="rows to land after the outage")
    harness.stop(server)
    assert sorted(insert_ids(harness.events("transient")).values()) == [1] * 100
    assert not [b for b in harness.spooled() if b["rows"] and "transient" in json.dumps(b["rows"])]


def test_permanent_error_is_dead_lettered_then_replayed(harness: Harness) -> None:
    applies(harness, "permanent")
    harness.control.write_text("reject")
    env = harness.env(faulty=True)
    server = harness.start(env)
    sent = [event("permanent", harness.adapter.unique, i) for i in range(30)]
    post(harness.url(server), "/track", sent)
    harness.stop(server)
    spooled = [b for b in harness.spooled() if b["reason"].startswith("permanent")]
    assert spooled and all(b["reason"] == "permanent: injected rejection" for b in spooled), spooled[:1]
    assert sum(len(b["rows"]) for b in spooled) == 30
    assert harness.events("permanent") == []

    harness.control.write_text("up")
    result = harness.flask(env, "replay")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "30 replayed" in result.stdout, result.stdout
    assert sorted(insert_ids(harness.events("permanent")).values()) == [1] * 30
    assert not [b for b in harness.spooled() if b["reason"].startswith("permanent")]


def test_one_rejected_row_is_dead_lettered_while_the_rest_land(harness: Harness) -> None:
    applies(harness, "rejected_row")
    harness.control.write_text("up")
    server = harness.start(harness.env(faulty=True))
    sent = [event("rejected", harness.adapter.unique, i) for i in range(20)]
    sent[7]["properties"]["poison"] = "__reject_me__"
    post(harness.url(server), "/track", sent)
    harness.stop(server)
    landed = harness.events("rejected")
    assert sorted(r["properties"]["n"] for r in landed) == [i for i in range(20) if i != 7]
    rejected = [b for b in harness.spooled() if b["reason"].startswith("rejected")]
    assert len(rejected) == 1 and rejected[0]["reason"] == "rejected: injected: row refused"
    [row] = rejected[0]["rows"]
    assert "__reject_me__" in json.dumps(row)


def test_every_destination_is_covered() -> None:
    """Every registered destination has a conformance adapter (a new one cannot forget)."""
    from destinations import REGISTRY

    covered = {cls.name for cls in ADAPTERS}
    assert set(REGISTRY) <= covered, f"no conformance adapter for {sorted(set(REGISTRY) - covered)}"
