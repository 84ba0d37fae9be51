"""`files`: the embedded default. Gzip NDJSON objects under `DATA_DIR` (default `./data`).

Reads: DATA_DIR, LAKE_PREFIX, LAKE_MAX_OBJECT_BYTES. Each object is written to a
temporary name in its final folder and renamed into place, so readers never see a
torn file, and every object has a unique name, so no two workers ever append to
one file.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.green import off_loop
from core.settings import Settings
from core.storage import write_atomically
from destinations.base import PermanentError, TransientError
from destinations.lake import LakeConfig, LakeSink, LakeWriter


class LocalStore:
    def __init__(self, root: str) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise PermanentError(f"object key {key!r} escapes DATA_DIR")
        return path

    def put(self, key: str, data: bytes | bytearray, content_type: str, content_encoding: str | None) -> None:
        # Disk writes and fsync block; gevent cannot switch away from them on its own.
        off_loop(self._put, key, data)

    def _put(self, key: str, data: bytes | bytearray) -> None:
        try:
            write_atomically(self._path(key), data)
        except PermissionError as exc:
            raise PermanentError(f"cannot write under DATA_DIR: {exc.strerror}") from None
        except OSError as exc:
            raise TransientError(f"cannot write under DATA_DIR: {exc.strerror}") from None

    def ensure_container(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PermanentError(f"cannot create DATA_DIR {str(self.root)!r}: {exc.strerror}") from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        for parent in path.parents:  # prune folders left empty, up to DATA_DIR itself
            try:
                if parent == self.root or any(parent.iterdir()):
                    break
                parent.rmdir()
            except OSError:  # another worker just wrote there
                break

    def close(self) -> None:
        pass

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/") or ".")
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))


class FilesSink(LakeSink):
    """Row sink over the shared lake writer."""

    name = "files"

    def __init__(self, settings: Settings) -> None:
        super().__init__(LakeWriter(LocalStore(settings.data_dir), LakeConfig.from_settings(settings)))

    def health(self) -> dict:
        return {"data_dir": str(self.writer.store.root), "writable": os.access(self.writer.store.root, os.W_OK)}
