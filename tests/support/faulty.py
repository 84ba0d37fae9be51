"""A failure-injecting row sink for isolation, retry, outage and conformance tests.

Use as `DESTINATIONS=...,tests.support.faulty:make`. It wraps a real sink, named by
FAULTY_INNER (any registered row sink: files, s3, bigquery...), or by default a local
lake writer under FAULTY_DIR. The control file FAULTY_CONTROL says what to do on each
write: `up` (or missing), `down` (TransientError), `reject` (PermanentError) or `hang`
(never answers). In every mode, rows that contain FAULTY_REJECT_MARKER are refused one
by one (a partial success) and the rest go to the real sink. The control file is read
on every write, so a test can switch a running gunicorn's destination on and off, like
stopping a real stand-in.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from destinations import make_sink
from destinations.base import Capabilities, PermanentError, Rejection, RowSink, SinkResult, TransientError
from destinations.files import LocalStore
from destinations.lake import LakeConfig, LakeSink, LakeWriter

REJECT_MARKER = "__reject_me__"


class FaultySink(RowSink):
    name = "faulty"

    def __init__(self, settings) -> None:  # noqa: ANN001
        self.control = Path(settings.require("faulty_control", "faulty"))
        inner = settings.get("faulty_inner")
        if inner:
            self.inner: RowSink = make_sink(inner, settings)
        else:
            self.inner = LakeSink(LakeWriter(LocalStore(settings.require("faulty_dir", "faulty")), LakeConfig()))
        self.marker = (settings.get("faulty_reject_marker") or REJECT_MARKER).encode()
        caps = self.inner.capabilities
        # The plain chunk (not a lake's packed one), so single rows can be taken out of a write.
        # FAULTY_MAX_ROWS makes writes (chunks) smaller than the inner sink's, as Mixpanel's 50.
        max_rows = settings.get_int("faulty_max_rows", caps.max_rows, 1)
        self.capabilities = Capabilities(caps.takes, max_rows, caps.max_bytes, caps.attempt_timeout, caps.idempotent)
        self.calls = 0

    def mode(self) -> str:
        try:
            return self.control.read_text().strip() or "up"
        except FileNotFoundError:
            return "up"

    def _marked(self, item: Any) -> bool:
        if isinstance(item, bytes):  # an encoded record
            raw = item
        elif isinstance(item, tuple):  # an (hour, line) pair
            raw = item[1]
        else:
            raw = json.dumps(item, ensure_ascii=False).encode()
        return self.marker in raw

    def write(self, table: str, items: list[Any]) -> SinkResult:
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
        rejected = tuple(Rejection(i, "injected: row refused") for i, item in enumerate(items) if self._marked(item))
        kept = [item for item in items if not self._marked(item)] if rejected else items
        written = self.inner.write(table, kept).written if kept else 0
        return SinkResult(written, rejected)

    def setup(self) -> None:
        self.inner.setup()

    def drop(self, tables: list[str]) -> list[str]:
        return self.inner.drop(tables)

    def health(self) -> dict:
        return {"fault": self.mode()}

    def close(self) -> None:
        self.inner.close()


def make(settings, ctx):  # noqa: ANN001, ANN201
    return ctx.deliver(FaultySink(settings))
