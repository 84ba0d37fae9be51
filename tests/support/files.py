"""Read back what the lake writer wrote to a local directory."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def objects(root: Path, table: str) -> list[Path]:
    return sorted(p for p in (root / table).rglob("*.json.gz") if not p.name.startswith("."))


def rows(root: Path, table: str) -> list[dict]:
    out: list[dict] = []
    for path in objects(root, table):
        out += [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    return out
