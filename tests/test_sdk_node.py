"""The real Node SDK (npm `mixpanel` 0.24) against the proxy under gunicorn: nothing it
sends may fail, Mixpanel gets exactly its records, and local files get the rows.

The SDK sends the API secret over HTTPS only, so the proxy runs with a self-signed
certificate that Node is told to trust."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

import pytest

from tests.fixtures_core import read_rows, run_proxy  # noqa: F401
from tests.support.processes import ROOT

pytestmark = pytest.mark.skipif(not shutil.which("node"), reason="node is not installed")
SCRIPT = ROOT / "tests" / "support" / "node_sdk.js"
TOKEN = "tok-node"
SECRET = "node-api-secret"
BATCH = 60  # more than the SDK's 50 per request: two POSTs


def _run_node(proxy, verbose: bool) -> subprocess.CompletedProcess:
    port = int(proxy.url.rsplit(":", 1)[1])
    config = {
        "host": "127.0.0.1",
        "port": port,
        "protocol": "https",
        "token": TOKEN,
        "secret": SECRET,
        "verbose": verbose,
        "batch_size": BATCH,
    }
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": proxy.ca_file, "NODE_PATH": str(ROOT / "node_modules")}
    return subprocess.run(
        ["node", str(SCRIPT), json.dumps(config)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("verbose", [False, True], ids=["plain", "verbose"])
def test_node_sdk_through_the_proxy(verbose, run_proxy, mp) -> None:  # noqa: F811
    proxy = run_proxy(tls=True, destinations="mixpanel,files", mixpanel_api_host=mp.url)
    result = _run_node(proxy, verbose)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"errors": []}

    lib = {"mp_lib": "node", "$lib_version": "0.24.0"}
    track = mp.records("track")
    assert track[0] == {
        "event": "node track",
        "properties": {"distinct_id": "n-1", "plan": "?>?>~~ ÿ", "time": 1700000000, "token": TOKEN, **lib},
    }
    assert sorted(track[1:], key=lambda e: e["properties"]["i"]) == [
        {
            "event": "node batch",
            "properties": {"distinct_id": f"n-{i}", "time": 1700000000 + i, "note": "~~~???", "i": i, "token": TOKEN},
        }
        for i in range(BATCH)
    ]
    batch_requests = [r for r in mp.requests("track")][1:]
    assert sorted(len(r.records) for r in batch_requests) == [BATCH - 50, 50]
    assert all(r.query["ip"] == "0" for r in mp.requests("track"))
    assert mp.records("engage") == [{"$token": TOKEN, "$distinct_id": "n-1", "$set": {"$name": "Ada", "tier": 2}}]
    assert mp.records("groups") == [{"$token": TOKEN, "$group_key": "company", "$group_id": "acme", "$set": {"seats": 12}}]
    [imported] = mp.records("import")
    assert imported == {
        "event": "node import",
        "properties": {"distinct_id": "n-1", "$insert_id": "node-imp-1", "time": 1600000000, "token": TOKEN, **lib},
    }
    [import_request] = mp.requests("import")
    assert import_request.headers["authorization"] == "Basic " + base64.b64encode(f"{SECRET}:".encode()).decode()

    events = read_rows(proxy.data_dir, "events")
    assert len(events) == 1 + BATCH + 1
    by_event = {(r["event"], r["distinct_id"]): r for r in events}
    row = by_event[("node track", "n-1")]
    assert set(row) == {
        "event",
        "event_time",
        "insert_time",
        "token",
        "device_id",
        "insert_id",
        "user_id",
        "distinct_id",
        "properties",
    }
    assert row["event_time"] == "2023-11-14T22:13:20.000000Z"
    assert (row["token"], row["device_id"], row["user_id"]) == (TOKEN, None, None)
    assert row["properties"] == track[0]["properties"]
    assert by_event[("node import", "n-1")]["insert_id"] == "node-imp-1"
    assert by_event[("node import", "n-1")]["event_time"] == "2020-09-13T12:26:40.000000Z"
    [user] = read_rows(proxy.data_dir, "users")
    assert {k: v for k, v in user.items() if k != "insert_time"} == {
        "token": TOKEN,
        "distinct_id": "n-1",
        "ip": None,
        "operation": "$set",
        "properties": {"$name": "Ada", "tier": 2},
    }
    [group] = read_rows(proxy.data_dir, "groups")
    assert {k: v for k, v in group.items() if k != "insert_time"} == {
        "token": TOKEN,
        "group_key": "company",
        "group_id": "acme",
        "operation": "$set",
        "properties": {"seats": 12},
    }
