"""A failure-injecting row destination for isolation, retry and outage tests.

Use as `DESTINATIONS=...,tests.support.faulty:make`. It stores rows like `files` does
(gzip NDJSON under FAULTY_DIR) unless the control file FAULTY_CONTROL says otherwise:
`up` (or missing), `down` (TransientError), `reject` (PermanentError) or `hang`
(never answers). The control file is read on every write, so a test can switch a
running gunicorn's destination on and off, like stopping a real stand-in.
"""

from __future__ import annotations

import time
from pathlib import Path

from destinations.base import PermanentError, TransientError
from destinations.files import LocalStore
from destinations.lake import LakeConfig, LakeWriter


class FaultySink:
    name = "faulty"

    def __init__(self, settings) -> None:  # noqa: ANN001
        self.control = Path(settings.require("faulty_control", "faulty"))
        self.writer = LakeWriter(LocalStore(settings.require("faulty_dir", "faulty")), LakeConfig())
        self.calls = 0

    def mode(self) -> str:
        try:
            return self.control.read_text().strip() or "up"
        except FileNotFoundError:
            return "up"

    def write_rows(self, table: str, rows: list[dict]) -> int:
        self.calls += 1
        mode = self.mode()
        if mode == "down":
            raise TransientError("injected outage")
        if mode == "reject":
            raise PermanentError("injected rejection")
        if mode == "hang":
            while self.mode() == "hang":
                time.sleep(0.05)
            raise TransientError("hung, then let go")
        self.writer.write(table, rows)
        return len(rows)

    def setup(self) -> None:
        pass

    def drop(self, tables: list[str]) -> list[str]:
        return self.writer.drop(tables)

    def health(self) -> dict:
        return {"mode": self.mode()}

    def close(self) -> None:
        pass


def make(settings, ctx) -> FaultySink:  # noqa: ANN001
    return FaultySink(settings)
