"""Fixtures: apps built from explicit settings, the Mixpanel double, real gunicorn."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from core.settings import Settings
from tests.support.mixpanel_double import MixpanelDouble

# Every stand-in's session fixture (tests/support/standins/<name>.py), started on first use.
pytest_plugins = sorted(
    f"tests.support.standins.{path.stem}"
    for path in (Path(__file__).parent / "support" / "standins").glob("*.py")
    if path.stem != "__init__"
)


@pytest.fixture(scope="session")
def mixpanel() -> Iterator[MixpanelDouble]:
    double = MixpanelDouble().start()
    yield double
    double.stop()


@pytest.fixture
def mp(mixpanel: MixpanelDouble) -> MixpanelDouble:
    """The session's Mixpanel double, cleared for this test."""
    mixpanel.reset()
    return mixpanel


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def build(**values: str) -> Settings:
        base = {
            "data_dir": str(tmp_path / "data"),
            "dead_letter_dir": str(tmp_path / "spool"),
            "buffer_dir": str(tmp_path / "buffer"),
            "delivery": "sync",
        }
        base.update({k.lower(): str(v) for k, v in values.items()})
        return Settings.from_mapping(base)

    return build


@pytest.fixture
def make_app(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Flask]]:
    from app import create_app

    apps: list[Flask] = []

    def build(**values: str) -> Flask:
        app = create_app(make_settings(**values))
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["mpproxy"].close()
