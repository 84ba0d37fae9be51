"""The destination table itself: every conformance adapter's destination is in it once, and
one proxy can hold all of them. No stand-in is started here."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.e2e.destinations import ADAPTERS_DIR, Landing, merged_env, table


def test_every_adapter_destination_but_mixpanel_is_in_the_table_once() -> None:
    names: list[str] = []
    for path in sorted(Path(ADAPTERS_DIR).glob("*.py")):
        if path.stem not in ("__init__", "base"):
            names += [cls.name for cls in importlib.import_module(f"tests.destinations.adapters.{path.stem}").ADAPTERS]
    entries = [entry.name for entry in table()]
    assert sorted(entries) == sorted(set(names) - {"mixpanel"})
    assert {"files", "s3", "gcs", "azure"} <= set(entries)


def test_destinations_may_share_a_variable_only_with_the_same_value() -> None:
    def landing(name: str, **env: str) -> Landing:
        return Landing(name, env, lambda table: [])

    shared = merged_env([landing("s3", s3_region="x", s3_bucket="a"), landing("gcs", S3_REGION="x", gcs_bucket="b")])
    assert shared == {"S3_REGION": "x", "S3_BUCKET": "a", "GCS_BUCKET": "b"}
    with pytest.raises(AssertionError, match="S3_REGION"):
        merged_env([landing("s3", s3_region="x"), landing("other", s3_region="y")])
