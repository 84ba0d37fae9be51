"""Helpers for write-ahead buffer tests: payloads, reading BUFFER_DIR, a dead process's leftovers."""

from __future__ import annotations

import copy
import os
import subprocess
import time
from pathlib import Path

from core.records import normalize
from core.settings import Settings
from destinations.rows import to_rows
from destinations.schema import build_schemas
from destinations.wal.payload import encode
from destinations.wal.segments import frame


def events(n: int, prefix: str) -> list[dict]:
    return [
        {"event": "view", "properties": {"distinct_id": f"u{i}", "time": 1700000000 + i, "$insert_id": f"{prefix}{i}"}}
        for i in range(n)
    ]


def insert_ids(rows: list[dict]) -> list[str]:
    return [r["insert_id"] for r in rows]


def segments(buffer_dir: Path) -> list[Path]:
    return sorted(buffer_dir.rglob("*.seg")) if buffer_dir.exists() else []


def dead_owner(buffer_dir: Path, requests: list[list[dict]], cut: int = 0, destinations: tuple[str, ...] = ("files",)) -> Path:
    """An owner directory as a killed worker leaves it: an unheld lock and one segment with a
    record per request, encoded by the proxy's own code, the last `cut` bytes cut off (a
    crash in the middle of an append)."""
    owner = buffer_dir / f"deadhost-{os.getpid()}999-abcdef"
    owner.mkdir(parents=True)
    (owner / "lock").touch()
    schemas = build_schemas(Settings())
    data = b""
    for index, items in enumerate(requests):
        records = normalize("track", copy.deepcopy(items), client_ip=None, ip_enabled=False, token=None, received_at=time.time())
        payload = encode("track", list(destinations), to_rows(records, schemas), None)
        assert payload is not None
        data += frame(index, payload)
    (owner / "000001.seg").write_bytes(data[: len(data) - cut] if cut else data)
    return owner


def mount_tmpfs(path: Path, size: str, read_only: bool = False) -> bool:
    """Mount a small tmpfs at `path` (a real full disk); False where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0755" + (",ro" if read_only else "")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)
