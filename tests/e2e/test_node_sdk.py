"""The real Node SDK (npm `mixpanel`), every call single and batched, through the proxy under
gunicorn (HTTPS: the SDK sends its API secret over HTTPS only) into Mixpanel (the double)
and every destination at once. tests/e2e/node_sdk.js notes each request at the SDK's
transport with the exact bytes written."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import check, wire
from tests.support.processes import ROOT

SCRIPT = Path(__file__).with_name("node_sdk.js")
SECRET = "node-e2e-api-secret"
pytestmark = [pytest.mark.emulator, pytest.mark.skipif(not shutil.which("node"), reason="node is not installed")]


def node_operation(endpoint: str, record: Any, request: wire.Sent) -> str:
    return request.transport  # the SDK call that made the request


def test_node_sdk_through_the_proxy_into_every_destination(e2e_proxy, mp, tmp_path) -> None:
    unique = uuid.uuid4().hex[:8]
    proxy = e2e_proxy(tls=True)
    config = {"host": "127.0.0.1", "port": proxy.port, "token": f"tok-node-{unique}", "secret": SECRET, "unique": unique}
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": proxy.ca_file, "NODE_PATH": str(ROOT / "node_modules")}
    started_ms = int(time.time() * 1000)
    result = subprocess.run(
        ["node", str(SCRIPT), json.dumps(config)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    finished_ms = int(time.time() * 1000) + 1000
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-3000:]
    out = json.loads(lines[-1])
    assert result.returncode == 0 and out["errors"] == [], (out["errors"], result.stderr[-2000:])

    sent = [
        wire.Sent("node", r["method"], r["url"], r["headers"], base64.b64decode(r["body"]), r["step"], r["status"])
        for r in out["requests"]
    ]
    assert all(r.status == 200 for r in sent), [(r.transport, r.status) for r in sent]
    # 60 events go as 50 + 10: two POSTs per batch call; every single call is one GET.
    assert sorted(r.transport for r in sent if r.method == "POST") == ["import_batch"] * 2 + ["track_batch"] * 2
    records = wire.sent_records(sent, node_operation, client_ip="127.0.0.1", token=None, times=(started_ms, finished_ms))
    assert {r.operation for r in records} == {r["step"] for r in out["requests"]}
    assert all(wire.flag(r.request, "ip") == "0" for r in records)  # the SDK's default: no geolocation

    report = check.run("node", records, sent, mp, proxy)
    assert not report.problems, report.text
