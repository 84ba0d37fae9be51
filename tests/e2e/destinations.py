"""Every destination behind one proxy: the table the end-to-end suite writes through.

One entry per destination: its name, how to build its proxy variables from its stand-in
fixture, and how to read back its rows. The entries come from the conformance adapters
(tests/destinations/adapters/, each with `env()` and `rows(table)`), so a destination
that joins the conformance suite joins this one too; for a destination with several
adapters (write modes) the first is used. `mixpanel` is not in the table: the suite
forwards to the Mixpanel double synchronously and checks it record by record.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.destinations.adapters.base import Adapter

ADAPTERS_DIR = Path(__file__).resolve().parents[1] / "destinations" / "adapters"


@dataclass(frozen=True)
class Entry:
    """How the suite uses one destination."""

    name: str
    #: The session fixture that starts its stand-in, or None.
    standin: str | None
    #: (stand-in, unique name) -> a landing for one test.
    make: Callable[[Any, str], Landing]


@dataclass
class Landing:
    """One destination, set up for one test: proxy variables and a row reader."""

    name: str
    env: dict[str, str]
    rows: Callable[[str], list[dict[str, Any]]]
    cleanup: Callable[[], None] = lambda: None


def from_adapter(cls: type[Adapter]) -> Entry:
    def make(standin: Any, unique: str) -> Landing:
        adapter = cls(standin, unique)
        return Landing(cls.name, dict(adapter.env()), adapter.rows, adapter.cleanup)

    return Entry(cls.name, cls.standin, make)


def table() -> list[Entry]:
    """Every destination with a conformance adapter, first adapter per name, by name."""
    first: dict[str, type[Adapter]] = {}
    for path in sorted(ADAPTERS_DIR.glob("*.py")):
        if path.stem in ("__init__", "base"):
            continue
        for cls in getattr(importlib.import_module(f"tests.destinations.adapters.{path.stem}"), "ADAPTERS", []):
            if cls.name != "mixpanel":
                first.setdefault(cls.name, cls)
    return [from_adapter(first[name]) for name in sorted(first)]


def land(request: pytest.FixtureRequest, unique: str) -> tuple[list[Landing], dict[str, str]]:
    """Start (once per run) every destination's stand-in and set each up for this test.
    A stand-in that cannot run here (its fixture skips) is left out and reported with why."""
    landings: list[Landing] = []
    missing: dict[str, str] = {}
    for entry in table():
        try:
            standin = request.getfixturevalue(entry.standin) if entry.standin else None
        except pytest.skip.Exception as exc:
            missing[entry.name] = str(exc) or "stand-in unavailable"
            continue
        landings.append(entry.make(standin, unique))
    return landings, missing


def merged_env(landings: list[Landing]) -> dict[str, str]:
    """All destinations' variables for one proxy; two destinations may share a variable
    (the lakes share credentials) only with the same value."""
    env: dict[str, str] = {}
    for landing in landings:
        for key, value in landing.env.items():
            key = key.upper()
            if key in env and env[key] != value:
                raise AssertionError(f"{landing.name} sets {key}={value!r}, another destination set {env[key]!r}")
            env[key] = value
    return env
