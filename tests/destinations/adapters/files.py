"""`files`: gzip NDJSON under DATA_DIR."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tests.destinations.adapters.base import Adapter
from tests.support import files

FOREIGN = ("events_archive/keep.json.gz", "other/keep.txt", "eventsx/keep.txt")


class FilesAdapter(Adapter):
    name = "files"

    def __init__(self, standin: Any, unique: str) -> None:
        super().__init__(standin, unique)
        self.root = Path(tempfile.mkdtemp(prefix=f"conformance-files-{unique}-"))

    def env(self) -> dict[str, str]:
        return {"DATA_DIR": str(self.root)}

    def rows(self, table: str) -> list[dict[str, Any]]:
        return files.rows(self.root, table)

    def plant_foreign(self) -> None:
        for key in FOREIGN:
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("not ours")

    def foreign_intact(self) -> bool:
        return all((self.root / key).read_text() == "not ours" for key in FOREIGN)


ADAPTERS = [FilesAdapter]
