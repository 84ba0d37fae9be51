"""The benchmark: scenarios x destination sets, the nginx pass-through baseline, a py-spy
profile and an optional memory soak. `bench/run.sh --help` lists the options."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from bench import payloads, procs, profile, report
from bench.payloads import SCENARIOS, Scenario
from core.settings import DEFAULT_BUFFER, DEFAULT_FSYNC
from destinations.delivery import DeliveryConfig

ROOT = procs.ROOT
BENCH = ROOT / "bench"
LUA = BENCH / "wrk" / "post.lua"
# BATCH_MAX_SECONDS default (destinations/delivery.py); the harness does not override it
FLUSH_SECONDS = DeliveryConfig.max_seconds
WORKERS = 2
# The framework ceiling (bench/ceiling.py): the same gunicorn command with this app instead of app:app.
CEILING_APP = "bench.ceiling:app"
# The forwarding ceiling: the same, but each body goes on to the Mixpanel double verbatim.
FORWARD_APP = "bench.ceiling:forwarder"
# The decoding ceiling: the forwarder, plus decoding each body with the proxy's decoder.
DECODE_APP = "bench.ceiling:decoder"
# The essential-work ceiling: the forwarder, plus decoding and one gzipped NDJSON line per record.
ESSENTIAL_APP = "bench.ceiling:essentials"
# The same, durable as the proxy's default: each request's rows fsynced (group commit) before the reply.
DURABLE_APP = "bench.ceiling:durable"
# The same, doing what this proxy's contracts ask: row-model lines, the SDK's JSON gzipped upstream.
ROWMODEL_APP = "bench.ceiling:rowmodel"
# The reference apps in bench/ceiling.py, by set; they run right after the pass-through, in this order.
CEILING_APPS = {
    "ceiling": CEILING_APP,
    "forward": FORWARD_APP,
    "decode": DECODE_APP,
    "essential": ESSENTIAL_APP,
    "durable": DURABLE_APP,
    "rowmodel": ROWMODEL_APP,
}
SETS: dict[str, tuple[str, str]] = {
    # key: (DESTINATIONS, title); `ceiling` is not the proxy and has no destinations
    "ceiling": ("", "framework ceiling: Flask on gunicorn+gevent, reads the body, answers 1"),
    "forward": ("", "forwarding ceiling: the same, forwards the body verbatim to Mixpanel"),
    "decode": ("", "decoding ceiling: forwards verbatim, decodes the body with the proxy's decoder"),
    "essential": ("", "essential-work ceiling: forwards, decodes, gzips one NDJSON line per record"),
    "durable": ("", "durable essential-work ceiling: the same, fsynced before the reply (group commit)"),
    "rowmodel": ("", "row-model ceiling: the same, its lines the proxy's rows, the SDK's JSON gzipped upstream"),
    "mixpanel": ("mixpanel", "Mixpanel only"),
    "files": ("mixpanel,files", "Mixpanel + files"),
    "s3": ("mixpanel,s3", "Mixpanel + S3 (moto)"),
    "all": ("mixpanel,files,s3", "everything available (Mixpanel + files + S3)"),
    "files-batch": ("mixpanel,files", "Mixpanel + files, MIXPANEL_DELIVERY=batch"),
    "files-batch-memory": ("mixpanel,files", "Mixpanel + files, MIXPANEL_DELIVERY=batch, BUFFER=memory"),
    "files-batch-never": ("mixpanel,files", "Mixpanel + files, MIXPANEL_DELIVERY=batch, BUFFER_FSYNC=never"),
    # `--node-original DIR`: the seed's Node proxy (forwards to Mixpanel only), pointed at the same double.
    "node": ("", "Node original (Mixpanel only), the anchor"),
}
# Extra environment per set (the default is none).
SET_ENV: dict[str, dict[str, str]] = {
    "files-batch": {"MIXPANEL_DELIVERY": "batch"},
    # The same without the write-ahead buffer: no reply waits for a group fsync (BUFFER_FSYNC).
    "files-batch-memory": {"MIXPANEL_DELIVERY": "batch", "BUFFER": "memory"},
    "files-batch-never": {"MIXPANEL_DELIVERY": "batch", "BUFFER_FSYNC": "never"},
}
# Sets run again at 96 connections, as `<set>-c96`. A client that waits for each reply gets at
# most one per fsync round (BUFFER_FSYNC=10: 100 a second), so 32 connections cap the durable
# default at 3,200 requests/s whatever the CPU; at 96 the cap is above what the CPU allows, and
# `BUFFER=disk` against `BUFFER=memory` shows what the buffer costs in CPU alone.
AT_96 = ("files-batch", "files-batch-memory")
SET_CONNECTIONS: dict[str, int] = {f"{key}-c96": 96 for key in AT_96}  # connections where not the scenario's
for _key in AT_96:
    SETS[f"{_key}-c96"] = (SETS[_key][0], f"{SETS[_key][1]}, 96 connections")
    SET_ENV[f"{_key}-c96"] = SET_ENV[_key]
# A run is disturbed when the host's speed probe (procs.speed_probe) took this many times the
# fastest probe of the bench run, just before it: the host was busy with other guests.
SLOW_HOST = 1.2
# --isolation: a destination that never answers (tests/support/faulty.py in mode `hang`) next to Mixpanel.
FAULTY = "tests.support.faulty:make"
ISOLATION: dict[str, dict[str, Any]] = {
    # key: DESTINATIONS, extra environment, whether the reply must be a 2xx (preflight), title
    "baseline": {"destinations": "mixpanel", "env": {}, "expect_ok": True, "title": "Mixpanel only (baseline)"},
    # The same destination working, so the hang's own cost can be told from the row work any destination adds.
    "healthy-batch": {
        "destinations": f"mixpanel,{FAULTY}",
        "env": {},
        "fault": "up",
        "expect_ok": True,
        "title": "Mixpanel + faulty `up` (the same destination, healthy), batch delivery",
    },
    "hang-batch": {
        "destinations": f"mixpanel,{FAULTY}",
        "env": {},
        "expect_ok": True,
        "title": "Mixpanel + faulty `hang`, batch delivery (default)",
    },
    "hang-sync": {
        "destinations": f"mixpanel,{FAULTY}",
        "env": {"DELIVERY": "sync", "DESTINATION_TIMEOUT_SECONDS": "1"},
        "expect_ok": False,  # the reply is bounded by the 1 s deadline; whether it is a 200 is what we measure
        "title": "Mixpanel + faulty `hang`, `DELIVERY=sync`, `DESTINATION_TIMEOUT_SECONDS=1`",
    },
}
# --isolation-rounds N repeats the runs whose events/s are compared, every other round in reverse
# order (as --buffer-rounds); the sync run is bounded by its deadline, not by the CPU, and runs once.
ISOLATION_COMPARED = ("baseline", "healthy-batch", "hang-batch")


def isolation_runs(rounds: int = 1) -> list[tuple[int, str]]:
    """(round, ISOLATION key) in the order they run."""
    plan = [(1, key) for key in ISOLATION]
    for number in range(2, rounds + 1):
        keys = ISOLATION_COMPARED if number % 2 else ISOLATION_COMPARED[::-1]
        plan += [(number, key) for key in keys]
    return plan


# --buffer: what the write-ahead buffer costs. Mixpanel + files, browser batches, a fresh proxy per
# run: BUFFER=memory, then BUFFER=disk with each fsync policy; --buffer-rounds N repeats the
# sequence, every other round in reverse order, so drift on a shared machine hits every policy alike.
BUFFER_DESTINATIONS = "mixpanel,files"
BUFFER_POLICIES = "never,always,10,100"


def buffer_runs(policies: str, rounds: int = 1) -> list[tuple[str, dict[str, str]]]:
    plan = [("memory", {"BUFFER": "memory"})]
    plan += [(f"disk-{p}", {"BUFFER": "disk", "BUFFER_FSYNC": p}) for p in policies.split(",") if p]
    runs: list[tuple[str, dict[str, str]]] = []
    for round_no in range(rounds):
        runs += plan if round_no % 2 == 0 else plan[::-1]
    if rounds == 1:
        runs.append(plan[0])  # memory once more at the end: how much the machine drifted
    return runs


def proxy_environment(destinations: str, mixpanel_port: int, data_dir: Path, spool: Path, buffer_dir: Path) -> dict[str, str]:
    """What every proxy run gets: its destinations, the Mixpanel double upstream, quiet logs
    and its own data, dead-letter and write-ahead folders (bench.instructions uses it too)."""
    return {
        "DESTINATIONS": destinations,
        "MIXPANEL_API_HOST": f"http://127.0.0.1:{mixpanel_port}",
        "LOG_LEVEL": "WARNING",
        "DATA_DIR": str(data_dir),
        "DEAD_LETTER_DIR": str(spool),
        "BUFFER_DIR": str(buffer_dir),
    }


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- wrk ------------------------------------------------------------------------------------


def run_wrk(
    url: str, scenario: Scenario, bodies: str, seconds: float, out: Path, tag: str, connections: int, statuses: bool = False
) -> dict:
    """One wrk run. `statuses`: also count every reply by HTTP status (a Lua `response()` hook, some wrk CPU)."""
    result = out / f"wrk-{tag}.json"
    result.unlink(missing_ok=True)
    args = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{int(seconds)}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(LUA),
        url + scenario.path,
    ]
    env = {
        "BENCH_BODIES": bodies,
        "BENCH_PATH": scenario.path,
        "BENCH_CONTENT_TYPE": scenario.content_type,
        "BENCH_AUTH": scenario.authorization or "",
        "BENCH_ORIGIN": scenario.origin or "",
        "BENCH_RESULT": str(result),
        "BENCH_STATUSES": "1" if statuses else "",
    }
    proc = procs.start(args, out / f"wrk-{tag}.txt", env=env)
    try:
        proc.wait(seconds + 60)
    finally:
        procs.stop(proc, timeout=5)
    if not result.exists():
        raise RuntimeError(f"wrk wrote no result for {tag}: {procs.tail(out / f'wrk-{tag}.txt')}")
    data = json.loads(result.read_text())
    data["ok_requests"] = data["requests"] - data["status_errors"]
    data["seconds"] = data["duration_us"] / 1e6
    data["command"] = shlex.join(args)
    return data


def preflight(url: str, scenario: Scenario, bodies: str, strict: bool = True) -> dict:
    """One request with urllib: the reply must be what the SDK needs (HTTP 200, status 1 / code 200).
    Not `strict`: record whatever came back (status, reply, seconds) instead of raising."""
    with open(bodies, "rb") as handle:
        body = handle.readline().rstrip(b"\n")
    headers = {"Content-Type": scenario.content_type, "X-Forwarded-For": "203.0.113.7"}
    if scenario.authorization:
        headers["Authorization"] = scenario.authorization
    request = urllib.request.Request(url + scenario.path, data=body, headers=headers, method="POST")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - 127.0.0.1 only
            status, text = response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        if strict:
            raise
        status, text = exc.code, exc.read().decode("utf-8", "replace")
    seconds = round(time.monotonic() - started, 3)
    try:
        reply = json.loads(text)
    except ValueError:
        reply = {}
    if not isinstance(reply, dict):  # the Node original answers its own list of results
        reply = {}
    ok = status == 200 and (reply.get("code") == 200 if scenario.name == "import" else reply.get("status") == 1)
    if not ok and strict:
        raise RuntimeError(f"preflight {scenario.name} to {url}: HTTP {status} {text[:300]}")
    return {"status": status, "reply": text[:160], "seconds": seconds, "ok": ok}


# --- storage counting -------------------------------------------------------------------------


def count_spool(spool: Path) -> tuple[int, dict[str, int], dict[str, int]]:
    """Dead-lettered files, rows per destination and rows per reason: each `<spool>/<destination>/*.ndjson`
    is one JSON line whose `rows` list holds the rows (temporary `.*.tmp` names are not counted)."""
    files = 0
    rows: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for path in spool.rglob("*.ndjson") if spool.exists() else []:
        line = json.loads(path.read_text())
        files += 1
        rows[line["destination"]] = rows.get(line["destination"], 0) + len(line["rows"])
        reason = str(line.get("reason", "?"))[:80]
        reasons[reason] = reasons.get(reason, 0) + len(line["rows"])
    return files, rows, reasons


class Landed(NamedTuple):
    """What a lake holds after a run."""

    objects: int
    rows: int
    bytes: int
    partitions: int  # distinct hour partitions (dt=/hr=) the objects are in


def count_files(data_dir: Path) -> Landed:
    """The lake objects under `data_dir`."""
    objects = rows = size = 0
    partitions: set[Path] = set()
    for path in data_dir.rglob("*.json.gz"):
        if "_proxy_probe" in path.parts:
            continue
        objects += 1
        size += path.stat().st_size
        partitions.add(path.parent)
        with gzip.open(path, "rb") as handle:
            rows += sum(1 for _ in handle)
    return Landed(objects, rows, size, len(partitions))


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )


def count_bucket(endpoint: str, bucket: str) -> Landed:
    """The lake objects in the bucket."""
    client = s3_client(endpoint)
    objects = rows = size = 0
    partitions: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            if item["Key"].startswith("_proxy_probe") or "/_proxy_probe/" in item["Key"]:
                continue
            objects += 1
            partitions.add(item["Key"].rpartition("/")[0])
            data = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            size += len(data)
            rows += gzip.decompress(data).count(b"\n")
    return Landed(objects, rows, size, len(partitions))


def s3_status() -> str | None:
    """None if destinations/s3.py is present; otherwise why the S3 sets cannot run."""
    if not (ROOT / "destinations" / "s3.py").exists():
        return "not yet available: destinations/s3.py does not exist in this checkout"
    return None


# --- one measured run -----------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = BENCH / "out"
        # Always a fresh folder of our own, so removing it afterwards can only remove what we wrote.
        if args.work_dir:
            Path(args.work_dir).mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="mpproxy-bench-", dir=args.work_dir))
        self.nginx: procs.Nginx | None = None
        self.moto: subprocess.Popen | None = None
        self.moto_url: str | None = None
        self.bodies: dict[str, dict] = {}
        self.fastest_probe = float("inf")  # procs.speed_probe(): the fastest seen in this bench run

    def setup(self) -> None:
        if self.out.exists() and not self.args.skip_matrix:
            shutil.rmtree(self.out)  # a full run starts clean; --skip-matrix keeps the matrix's logs
        self.out.mkdir(parents=True, exist_ok=True)
        procs.ensure_tools(log)
        log("generating request bodies (fixed seed)")
        self.bodies = payloads.generate(self.work / "bodies", seed=self.args.seed)
        self.nginx = procs.Nginx(self.work / "nginx").start()
        log(f"nginx: Mixpanel double on :{self.nginx.mixpanel_port}, pass-through on :{self.nginx.passthrough_port}")
        self.fastest_probe = min(procs.speed_probe() for _ in range(3))
        log(f"host speed probe: {self.fastest_probe:.0f} ms (a run is disturbed beyond {SLOW_HOST:g}x that)")

    def start_moto(self) -> str:
        if self.moto_url is None:
            port = procs.free_port()
            self.moto = procs.start(
                [str(procs.VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], self.out / "moto.log"
            )
            self.moto_url = f"http://127.0.0.1:{port}"
            procs.wait_until(lambda: procs.http_ok(self.moto_url + "/moto-api/"), 30, what="moto_server")
            log(f"moto_server on :{port}")
        return self.moto_url

    def proxy_env(self, destinations: str, tag: str) -> tuple[dict[str, str], dict[str, Any]]:
        data_dir = self.work / "data" / tag
        spool = self.work / "spool" / tag
        for path in (data_dir, spool):
            shutil.rmtree(path, ignore_errors=True)
        env = proxy_environment(destinations, self.nginx.mixpanel_port, data_dir, spool, self.work / "buffer" / tag)
        storage: dict[str, Any] = {"data_dir": data_dir, "spool": spool}
        if "s3" in destinations.split(","):
            endpoint = self.start_moto()
            bucket = f"bench-{tag}".replace("_", "-").lower()[:60]
            s3_client(endpoint).create_bucket(Bucket=bucket)
            env.update(
                {
                    "S3_BUCKET": bucket,
                    "S3_ENDPOINT_URL": endpoint,
                    "S3_ACCESS_KEY_ID": "test",
                    "S3_SECRET_ACCESS_KEY": "test",
                    "S3_REGION": "us-east-1",
                    "AWS_ACCESS_KEY_ID": "test",
                    "AWS_SECRET_ACCESS_KEY": "test",
                    "AWS_DEFAULT_REGION": "us-east-1",
                }
            )
            storage.update({"endpoint": endpoint, "bucket": bucket})
        return env, storage

    def wait_for_quiet(self, tag: str) -> float:
        """Other jobs on a shared machine skew every number: wait (bounded) until it is nearly idle."""
        started = time.monotonic()
        quiet = 0
        while time.monotonic() - started < self.args.quiet_wait:
            before = procs.machine_busy_seconds()
            time.sleep(1.0)
            busy = (procs.machine_busy_seconds() - before) / (os.cpu_count() or 1)
            quiet = quiet + 1 if busy < 0.15 else 0
            if quiet >= 2:
                break
        waited = time.monotonic() - started
        if waited > 5:
            log(
                f"  waited {waited:.0f}s for other jobs on the machine to go quiet before {tag}"
                + ("" if quiet >= 2 else " (gave up)")
            )
        return waited

    def measure(
        self, url: str, scenario: Scenario, tag: str, pids: Any = None, statuses: bool = False, strict: bool = True
    ) -> dict:
        bodies = self.bodies[scenario.name]["path"]
        connections = scenario.connections
        waited = self.wait_for_quiet(tag)
        # Once the machine is quiet (after the run, the proxy may still be busy flushing).
        probe = procs.speed_probe()
        first = preflight(url, scenario, bodies, strict)
        warm = run_wrk(url, scenario, bodies, self.args.warmup, self.out, tag + "-warmup", connections, statuses)
        helpers = self.nginx.pids() + ([self.moto.pid] if self.moto else [])
        cpu_before, kernel_before = procs.cpu_times(pids()) if pids else (None, None)
        helpers_before, wrk_before, busy_before = (
            procs.cpu_seconds(helpers),
            procs.children_cpu_seconds(),
            procs.machine_busy_seconds(),
        )
        main = run_wrk(url, scenario, bodies, self.args.duration, self.out, tag, connections, statuses)
        cpu_after, kernel_after = procs.cpu_times(pids()) if pids else (None, None)
        helpers_cpu = procs.cpu_seconds(helpers) - helpers_before
        wrk_cpu = procs.children_cpu_seconds() - wrk_before
        busy = procs.machine_busy_seconds() - busy_before
        self.fastest_probe = min(self.fastest_probe, probe)
        events = main["ok_requests"] * scenario.events_per_request
        result = {
            "tag": tag,
            "scenario": scenario.name,
            "connections": connections,
            "preflight": first,
            "wrk": main,
            "warmup_requests": warm["ok_requests"],
            "warmup_statuses": warm.get("statuses"),
            "warmup_requests_all": warm["requests"],
            "requests_per_s": main["ok_requests"] / main["seconds"],
            "events_per_s": events / main["seconds"],
            "events_measured": events,
            "events_sent": (main["ok_requests"] + warm["ok_requests"] + 1) * scenario.events_per_request,
            "p50_ms": main["p50_us"] / 1000,
            "p99_ms": main["p99_us"] / 1000,
            "errors": {k: main[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")},
        }
        proxy_cpu = (cpu_after - cpu_before) if cpu_before is not None else 0.0
        result["machine"] = {
            "busy_percent": round(100 * busy / (main["seconds"] * (os.cpu_count() or 1)), 1),
            "proxy_cpu_s": round(proxy_cpu, 2),
            "nginx_moto_cpu_s": round(helpers_cpu, 2),
            "waited_for_quiet_s": round(waited, 1),
            "wrk_cpu_s": round(wrk_cpu, 2),
            # Anything else running on the machine during the window (other jobs, the kernel's share).
            "other_cpu_s": round(busy - proxy_cpu - helpers_cpu - wrk_cpu, 2),
            # procs.speed_probe() just before the preflight.
            "probe_ms": round(probe, 1),
        }
        if cpu_before is not None and events:
            result["cpu_seconds"] = cpu_after - cpu_before
            result["cpu_s_per_10k_events"] = (cpu_after - cpu_before) / events * 10_000
            # The kernel's part (system calls, and what the kernel charges to the process it
            # interrupted): where disk writes, fsyncs and socket I/O show up.
            result["kernel_share"] = (kernel_after - kernel_before) / (cpu_after - cpu_before) if cpu_after > cpu_before else None
        return result

    def run_passthrough(self, scenario: Scenario) -> dict:
        tag = f"passthrough-{scenario.name}"
        log(f"{tag}: nginx pass-through, {scenario.connections} connections, {self.args.duration:g}s")
        result = self.measure(f"http://127.0.0.1:{self.nginx.passthrough_port}", scenario, tag)
        result["set"] = "passthrough"
        log(f"  {result['events_per_s']:.0f} events/s, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms")
        return result

    def run_node(self, scenario: Scenario) -> dict:
        """The seed's Node original, forwarding to the same nginx double (`--node-original DIR`)."""
        tag = f"node-{scenario.name}"
        if not self.args.node_original:
            return {"tag": tag, "set": "node", "scenario": scenario.name, "unavailable": "not measured (`--node-original DIR`)"}
        double = f"http://127.0.0.1:{self.nginx.mixpanel_port}"
        server = procs.NodeOriginal(Path(self.args.node_original), self.work / "node-original", double, self.out / f"{tag}.log")
        log(f"{tag}: the Node original, {scenario.connections} connections, {self.args.duration:g}s")
        try:
            server.start()
        except (TimeoutError, OSError, subprocess.CalledProcessError) as exc:
            server.stop()
            log(f"  the Node original does not start: {exc}")
            return {"tag": tag, "set": "node", "scenario": scenario.name, "unavailable": f"does not start: {exc}"}
        try:
            result = self.measure(server.url, scenario, tag, server.all_pids, strict=False)
        finally:
            server.stop()
        result["set"] = "node"
        log(f"  {result['events_per_s']:.0f} events/s, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms")
        return result

    def ceiling_env(self, set_key: str) -> tuple[str, dict[str, str]]:
        """The WSGI spec and environment of a reference app in bench/ceiling.py."""
        env = {"LOG_LEVEL": "WARNING"}
        if set_key != "ceiling":
            env["MIXPANEL_API_HOST"] = f"http://127.0.0.1:{self.nginx.mixpanel_port}"
        if set_key in ("durable", "rowmodel"):  # its log goes where the proxy's write-ahead buffer goes: the same disk
            directory = self.work / "buffer" / set_key
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            env["BUFFER_DIR"] = str(directory)
        return CEILING_APPS[set_key], env

    def run_ceiling(self, scenario: Scenario, set_key: str = "ceiling") -> dict:
        """bench/ceiling.py on the proxy's stack: what any Flask proxy here can do at best (`ceiling`),
        or any that forwards each request to Mixpanel (`forward`), and also decodes it (`decode`),
        and also keeps its records as gzipped rows (`essential`), fsynced before the reply
        (`durable`). Nothing to count."""
        tag = f"{set_key}-{scenario.name}"
        app, env = self.ceiling_env(set_key)
        server = procs.Gunicorn(env, self.out / f"gunicorn-{tag}.log", WORKERS, app=app)
        log(f"{tag}: {app}, {scenario.connections} connections, {self.args.duration:g}s")
        server.start()
        try:
            result = self.measure(server.url, scenario, tag, server.all_pids)
            record_server(result, server)
        finally:
            rc = server.stop()
        result["set"] = set_key
        result["app"] = app
        result["exit_code"] = rc
        log(
            f"  {result['events_per_s']:.0f} events/s, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms,"
            f" {result.get('cpu_s_per_10k_events', 0):.2f} CPU-s/10k events"
        )
        return result

    def run_proxy(self, set_key: str, scenario: Scenario) -> dict:
        destinations, _title = SETS[set_key]
        tag = f"{set_key}-{scenario.name}"
        if "s3" in destinations.split(",") and (reason := s3_status()):
            log(f"{tag}: skipped, S3 {reason}")
            why = f"S3 destination {reason}"
            if set_key == "all":
                why = f"same as Mixpanel + files until S3 is available ({reason})"
            return {"tag": tag, "set": set_key, "scenario": scenario.name, "unavailable": why}
        env, storage = self.proxy_env(destinations, tag)
        env.update(SET_ENV.get(set_key, {}))
        if set_key in SET_CONNECTIONS:
            scenario = dataclasses.replace(scenario, connections=SET_CONNECTIONS[set_key])
        server = procs.Gunicorn(env, self.out / f"gunicorn-{tag}.log", WORKERS)
        log(f"{tag}: DESTINATIONS={destinations}, {scenario.connections} connections, {self.args.duration:g}s")
        started = time.monotonic()
        try:
            server.start()
        except RuntimeError as exc:
            if "s3" in destinations:
                log(f"  S3 destination does not start: {exc}")
                return {"tag": tag, "set": set_key, "scenario": scenario.name, "unavailable": f"S3 destination fails: {exc}"}
            raise
        try:
            result = self.measure(server.url, scenario, tag, server.all_pids)
            record_server(result, server)
            # The garbage collector's passes over the proxy's life so far (proxy/memory.py), both workers.
            result["gc"] = {
                "passes": metric(server.url, "mpproxy_gc_collections_total"),
                "seconds": metric(server.url, "mpproxy_gc_seconds_total"),
            }
        finally:
            rc = server.stop()
        result["alive_seconds"] = time.monotonic() - started
        result["set"] = set_key
        result["destinations"] = destinations
        result["buffer"] = env.get("BUFFER", DEFAULT_BUFFER)
        result["buffer_fsync"] = env.get("BUFFER_FSYNC", DEFAULT_FSYNC)
        result["exit_code"] = rc
        self.count_storage(result, storage)
        shutil.rmtree(storage["data_dir"], ignore_errors=True)
        log(
            f"  {result['events_per_s']:.0f} events/s, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms,"
            f" {result.get('cpu_s_per_10k_events', 0):.2f} CPU-s/10k events, objects {result.get('objects')}"
        )
        return result

    def count_storage(self, result: dict, storage: dict) -> None:
        stores: dict[str, Landed] = {}
        names = result["destinations"].split(",")
        if "files" in names:
            stores["files"] = count_files(storage["data_dir"])
        if "s3" in names:
            stores["s3"] = count_bucket(storage["endpoint"], storage["bucket"])
        result["spooled_files"], result["spooled_rows"], _reasons = count_spool(storage["spool"])
        if not stores:
            return
        result["objects"] = {k: v.objects for k, v in stores.items()}
        result["rows"] = {k: v.rows for k, v in stores.items()}
        sent = result["events_sent"]
        result["objects_per_10k_events"] = {k: v.objects / sent * 10_000 for k, v in stores.items()}
        result["object_bytes"] = {k: v.bytes for k, v in stores.items()}
        result["object_partitions"] = {k: v.partitions for k, v in stores.items()}
        # Target: at most one object per flush interval per table per worker (+1 for the final drain).
        intervals = int(result["alive_seconds"] // FLUSH_SECONDS) + 1
        result["object_budget"] = intervals * 1 * WORKERS
        # A buffer also flushes as soon as it holds BATCH_MAX_BYTES (whichever comes first: memory
        # stays bounded), so each BATCH_MAX_BYTES written may add one object to the budget.
        # Lakes partition by hour: a buffer holding rows of two hours (a run across the hour)
        # flushes one object per hour, so each hour boundary crossed may add one per worker.
        result["object_budgets"] = {
            k: result["object_budget"] + v.bytes // DeliveryConfig.max_bytes + (max(v.partitions, 1) - 1) * WORKERS
            for k, v in stores.items()
        }
        if "s3" in stores and stores["s3"].objects == 0:
            result["s3_problem"] = "the S3 destination wrote no objects (see the gunicorn log)"

    def disturbance(self, result: dict) -> str | None:
        """Why a run's numbers are not this machine's usual ones, or None: other jobs took more
        than 10% of it, or the host itself ran slow (the speed probe just before the run
        took more than SLOW_HOST times the fastest of this bench run)."""
        machine = result["machine"]
        if machine["other_cpu_s"] > 0.10 * result["wrk"]["seconds"] * (os.cpu_count() or 1):
            return f"other jobs used {machine['other_cpu_s']:.1f} CPU-s"
        probe = machine.get("probe_ms") or 0
        if probe > SLOW_HOST * self.fastest_probe:
            return f"the host ran slow (speed probe {probe:.0f} ms, fastest {self.fastest_probe:.0f} ms)"
        return None

    def clean_run(self, run: Any) -> dict:
        """Repeat a run (up to --retries times) while it is disturbed (see disturbance())."""
        attempts: list[dict] = []
        for attempt in range(1 + self.args.retries):
            result = run()
            if result.get("machine") is None:
                return result
            result["attempt"] = attempt + 1
            attempts.append(result)
            why = self.disturbance(result)
            if why is None:
                break
            log(f"  {why} during {result['tag']}: repeating it")
        # The undisturbed attempt, else the one least disturbed.
        best = min(
            attempts,
            key=lambda r: (self.disturbance(r) is not None, r["machine"]["probe_ms"], r["machine"]["other_cpu_s"]),
        )
        why = self.disturbance(best)
        best["contaminated"] = why is not None
        if why:
            best["disturbed_by"] = why
        return best

    # -- isolation: a destination that never answers --------------------------------------------
    def run_isolation(self, key: str) -> dict:
        """Browser batches at 32 connections with tests/support/faulty.py hanging next to Mixpanel.
        The control file says `hang` for the whole run, also while the proxy drains on SIGTERM;
        it is switched back to `up` in a `finally`, so nothing is left waiting on it."""
        case = ISOLATION[key]
        scenario = SCENARIOS["browser"]
        destinations = case["destinations"]
        tag = f"isolation-{key}"
        env, storage = self.proxy_env(destinations, tag)
        env.update(case["env"])
        faulty_root = self.work / "faulty" / tag
        control: Path | None = None
        if FAULTY in destinations.split(","):
            shutil.rmtree(faulty_root, ignore_errors=True)
            faulty_root.mkdir(parents=True)
            control = faulty_root / "control"
            control.write_text(case.get("fault", "hang") + "\n")
            env.update({"FAULTY_CONTROL": str(control), "FAULTY_DIR": str(faulty_root / "data")})
        (self.out / f"gunicorn-{tag}.log").unlink(missing_ok=True)  # one attempt per log
        server = procs.Gunicorn(env, self.out / f"gunicorn-{tag}.log", WORKERS)
        extra = " ".join(f"{k}={v}" for k, v in case["env"].items())
        log(f"{tag}: DESTINATIONS={destinations} {extra}, {scenario.connections} connections, {self.args.duration:g}s")
        started = time.monotonic()
        try:
            server.start()
            result = self.measure(server.url, scenario, tag, server.all_pids, statuses=True, strict=case["expect_ok"])
            workers = server.worker_pids()
            result["rss_peak_kb"] = {str(pid): procs.status_kb(pid, "VmHWM") for pid in workers}
            result["gunicorn_command"] = shlex.join(server.command)
            # What the proxy had dead-lettered by the end of the load, the destination still hanging.
            files, rows, reasons = count_spool(storage["spool"])
            result["spooled_during_load"] = {"files": files, "rows": rows, "reasons": reasons}
            stopping = time.monotonic()
            rc = server.stop()  # SIGTERM while it still hangs: the drain has to spool what is buffered
            result["stop_seconds"] = round(time.monotonic() - stopping, 1)
        finally:
            if control is not None:
                control.write_text("up\n")  # release any write still waiting on the control file
            server.stop()  # no-op when already stopped
        result["alive_seconds"] = time.monotonic() - started
        result["set"] = key
        result["title"] = case["title"]
        result["destinations"] = destinations
        result["extra_env"] = case["env"]
        result["exit_code"] = rc
        result["spooled_files"], result["spooled_rows"], result["spooled_reasons"] = count_spool(storage["spool"])
        if control is not None:
            landed = count_files(faulty_root / "data")
            result["faulty_landed"] = {"objects": landed.objects, "rows": landed.rows}
            shutil.rmtree(faulty_root, ignore_errors=True)
        # Every request the proxy answered (any status): preflight + warm-up + measured window.
        result["requests_answered"] = 1 + result["warmup_requests_all"] + result["wrk"]["requests"]
        result["events_offered"] = result["requests_answered"] * scenario.events_per_request
        if control is not None:
            # Rows the faulty destination was handed that are neither written nor in the dead letter after the
            # drain (requests still in flight when wrk stopped are not in `events_offered`: a lower bound).
            landed = result["faulty_landed"]["rows"]
            result["rows_unaccounted"] = result["events_offered"] - landed - result["spooled_rows"].get("faulty", 0)
        w = result["wrk"]
        result["replies_per_s"] = w["requests"] / w["seconds"]
        result["max_ms"] = w["max_us"] / 1000
        result["p999_ms"] = w["p999_us"] / 1000
        log(
            f"  {result['replies_per_s']:.1f} replies/s, {result['events_per_s']:.0f} events/s (2xx), p50 {result['p50_ms']:.1f}"
            f" ms, p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms, statuses {w.get('statuses')},"
            f" dead-lettered {result['spooled_rows']} (during load {result['spooled_during_load']['rows']},"
            f" reasons {result['spooled_reasons']}),"
            f" unaccounted {result.get('rows_unaccounted')}, stop {result['stop_seconds']} s"
        )
        return result

    # -- the write-ahead buffer's cost ------------------------------------------------------------
    def run_buffer(self, key: str, extra: dict[str, str], number: int = 0) -> dict:
        scenario = SCENARIOS["browser"]
        tag = f"buffer-{number + 1}-{key}"
        env, storage = self.proxy_env(BUFFER_DESTINATIONS, tag)
        buffer_dir = Path(env["BUFFER_DIR"])
        shutil.rmtree(buffer_dir, ignore_errors=True)
        env.update(extra)
        (self.out / f"gunicorn-{tag}.log").unlink(missing_ok=True)
        server = procs.Gunicorn(env, self.out / f"gunicorn-{tag}.log", WORKERS)
        log(f"{tag}: DESTINATIONS={BUFFER_DESTINATIONS} {extra}, {scenario.connections} connections, {self.args.duration:g}s")
        started = time.monotonic()
        server.start()
        try:
            io_before = procs.io_write_bytes(server.all_pids())
            fsyncs_before = metric(server.url, "mpproxy_disk_buffer_fsync_seconds_count")
            fsync_seconds_before = metric(server.url, "mpproxy_disk_buffer_fsync_seconds_sum")
            result = self.measure(server.url, scenario, tag, server.all_pids)
            result["disk_write_bytes"] = procs.io_write_bytes(server.all_pids()) - io_before
            result["fsync_rounds"] = metric(server.url, "mpproxy_disk_buffer_fsync_seconds_count") - fsyncs_before
            fsync_seconds = metric(server.url, "mpproxy_disk_buffer_fsync_seconds_sum") - fsync_seconds_before
            # How long the disk took per round: a slow (or throttled) disk lengthens every reply's wait.
            result["fsync_mean_ms"] = fsync_seconds / result["fsync_rounds"] * 1000 if result["fsync_rounds"] else None
            result["buffer_peak_bytes"] = metric(server.url, "mpproxy_disk_buffer_bytes")
            record_server(result, server)
        finally:
            rc = server.stop()
        result["alive_seconds"] = time.monotonic() - started
        result["set"] = key
        result["order"] = number + 1
        result["destinations"] = BUFFER_DESTINATIONS
        result["buffer_env"] = extra
        result["exit_code"] = rc
        self.count_storage(result, storage)
        result["segments_left"] = len(list(buffer_dir.rglob("*.seg"))) if buffer_dir.exists() else 0
        shutil.rmtree(storage["data_dir"], ignore_errors=True)
        shutil.rmtree(buffer_dir, ignore_errors=True)
        log(
            f"  {result['events_per_s']:.0f} events/s, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms,"
            f" {result.get('cpu_s_per_10k_events', 0):.2f} CPU-s/10k events"
            f" ({(result.get('kernel_share') or 0) * 100:.0f}% kernel),"
            f" {result['fsync_rounds']:.0f} fsync rounds"
            f" ({result['fsync_mean_ms'] or 0:.2f} ms each),"
            f" {result['disk_write_bytes'] / 2**20:.0f} MiB written"
        )
        return result

    def run_buffer_suite(self) -> dict:
        plan = buffer_runs(self.args.buffer_policies, self.args.buffer_rounds)
        runs = []
        for number, (key, extra) in enumerate(plan):
            run = self.clean_run(lambda k=key, e=extra, n=number: self.run_buffer(k, e, n))
            runs.append(run)
        return {
            "scenario": "browser",
            "destinations": BUFFER_DESTINATIONS,
            "connections": SCENARIOS["browser"].connections,
            "duration": self.args.duration,
            "warmup": self.args.warmup,
            "workers": WORKERS,
            "rounds": self.args.buffer_rounds,
            "defaults": {"BUFFER": DEFAULT_BUFFER, "BUFFER_FSYNC": DEFAULT_FSYNC, "BATCH_MAX_SECONDS": FLUSH_SECONDS},
            "runs": runs,
        }

    def run_isolation_suite(self) -> dict:
        from core.settings import Settings

        defaults = DeliveryConfig()
        runs = []
        for number, key in isolation_runs(self.args.isolation_rounds):
            result = self.clean_run(lambda k=key: self.run_isolation(k))
            result["round"] = number
            runs.append(result)
        return {
            "scenario": "browser",
            "connections": SCENARIOS["browser"].connections,
            "duration": self.args.duration,
            "warmup": self.args.warmup,
            "workers": WORKERS,
            "rounds": self.args.isolation_rounds,
            "defaults": {
                "DESTINATION_TIMEOUT_SECONDS": Settings().destination_timeout_seconds,
                "RETRY_MAX_ATTEMPTS": defaults.retry.max_attempts,
                "RETRY_MAX_SECONDS": defaults.retry.max_seconds,
                "MAX_BUFFER_BYTES": defaults.max_buffer_bytes,
                "BATCH_MAX_SECONDS": defaults.max_seconds,
            },
            "runs": runs,
        }

    # -- profile -------------------------------------------------------------------------------
    def run_profile(self, name: str) -> dict:
        scenario = SCENARIOS[name]
        set_key = self.args.profile_set
        destinations = SETS[set_key][0]
        tag = f"profile-{set_key}-{name}"
        if set_key in CEILING_APPS:  # a reference app: what the proxy's own profile is read against
            app, env = self.ceiling_env(set_key)
        else:
            app = "app:app"
            env, _storage = self.proxy_env(destinations, tag)
            env.update(SET_ENV.get(set_key, {}))
        server = procs.Gunicorn(env, self.out / f"gunicorn-{tag}.log", WORKERS, app=app).start()
        seconds = self.args.profile_seconds
        log(f"{tag}: py-spy on both workers for {seconds:g}s under {scenario.title} load")
        svg_path, raw_path = self.out / f"profile-{name}.svg", self.out / f"profile-{name}.txt"
        try:
            bodies = self.bodies[name]["path"]
            self.wait_for_quiet(tag)
            run_wrk(server.url, scenario, bodies, 3, self.out, tag + "-warmup", scenario.connections)
            spy = str(procs.VENV_BIN / "py-spy")
            common = ["record", "--pid", str(server.proc.pid), "--subprocesses", "--nonblocking", "--rate", "100"]
            common += ["--duration", str(int(seconds))]
            svg = procs.start([spy, *common, "-o", str(svg_path)], self.out / f"py-spy-{name}-svg.log")
            raw = procs.start(
                [spy, *common, "--function", "--format", "raw", "-o", str(raw_path)], self.out / f"py-spy-{name}-raw.log"
            )
            load = run_wrk(server.url, scenario, bodies, seconds + 3, self.out, tag, scenario.connections)
            for proc in (svg, raw):
                proc.wait(60)
                procs.stop(proc, timeout=5)
        finally:
            server.stop()
        if not raw_path.exists():
            return {"error": f"py-spy wrote nothing: {procs.tail(self.out / f'py-spy-{name}-raw.log')}"}
        summary = profile.summarize(raw_path.read_text())
        summary["scenario"] = name
        summary["set"] = set_key
        summary["files"] = [f"bench/out/{svg_path.name}", f"bench/out/{raw_path.name}"]
        summary["load_events_per_s"] = load["ok_requests"] * scenario.events_per_request / load["seconds"]
        summary["command"] = shlex.join(["py-spy", *common, "--function", "--format", "raw", "-o", f"bench/out/{raw_path.name}"])
        return summary

    # -- soak ------------------------------------------------------------------------------------
    def run_soak(self, seconds: float) -> dict:
        scenario = SCENARIOS["browser"]
        tag = "soak-files-browser"
        env, storage = self.proxy_env(SETS["files"][0], tag)
        server = procs.Gunicorn(env, self.out / f"gunicorn-{tag}.log", WORKERS).start()
        log(f"{tag}: {seconds:g}s of browser batches to Mixpanel + files, RSS sampled every 10 s")
        samples: list[dict] = []
        try:
            bodies = self.bodies["browser"]["path"]
            result = self.out / f"wrk-{tag}.json"
            args = ["wrk", "-t2", f"-c{scenario.connections}", f"-d{int(seconds)}s", "--timeout", "30s", "--latency"]
            args += ["-s", str(LUA), server.url + scenario.path]
            env_wrk = {
                "BENCH_BODIES": bodies,
                "BENCH_PATH": scenario.path,
                "BENCH_CONTENT_TYPE": scenario.content_type,
                "BENCH_ORIGIN": scenario.origin or "",
                "BENCH_RESULT": str(result),
            }
            workers = server.worker_pids()
            self.wait_for_quiet(tag)
            busy_before = procs.machine_busy_seconds()
            started = time.monotonic()
            proc = procs.start(args, self.out / f"wrk-{tag}.txt", env=env_wrk)
            next_sample = started + 10
            while proc.poll() is None and time.monotonic() < started + seconds + 60:
                time.sleep(max(0.0, min(1.0, next_sample - time.monotonic())))
                if time.monotonic() >= next_sample:
                    rss = {str(pid): procs.status_kb(pid, "VmRSS") for pid in workers}
                    samples.append({"t": round(time.monotonic() - started), "rss_kb": rss})
                    next_sample += 10
            procs.stop(proc, timeout=5)
            busy_percent = (
                100 * (procs.machine_busy_seconds() - busy_before) / ((time.monotonic() - started) * (os.cpu_count() or 1))
            )
            wrk = json.loads(result.read_text())
            if server.worker_pids() != workers:
                log("  warning: the worker set changed during the soak (a worker restarted)")
        finally:
            server.stop()
        landed = count_files(storage["data_dir"])
        shutil.rmtree(storage["data_dir"], ignore_errors=True)
        return {
            "seconds": seconds,
            "samples": samples,
            "workers": workers,
            "events_per_s": (wrk["requests"] - wrk["status_errors"]) * scenario.events_per_request / (wrk["duration_us"] / 1e6),
            "p99_ms": wrk["p99_us"] / 1000,
            "errors": wrk["status_errors"] + wrk["timeouts"] + wrk["read_errors"] + wrk["connect_errors"],
            "objects": landed.objects,
            "rows": landed.rows,
            "machine_busy_percent": round(busy_percent, 1),
        }

    def teardown(self) -> None:
        if self.nginx:
            self.nginx.stop()
            if (self.nginx.prefix / "error.log").exists():
                shutil.copy(self.nginx.prefix / "error.log", self.out / "nginx-error.log")
        if self.moto:
            procs.stop(self.moto, timeout=10)
        procs.stop_all()
        if not self.args.keep_work_dir:
            shutil.rmtree(self.work, ignore_errors=True)


def metric(url: str, name: str) -> float:
    """A sample summed over its labels from /metrics (0 when absent)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:  # noqa: S310 - 127.0.0.1 only
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def record_server(result: dict, server: procs.Gunicorn) -> None:
    """Worker memory (peak and now) and the command line, read while gunicorn still runs."""
    workers = server.worker_pids()
    result["rss_peak_kb"] = {str(pid): procs.status_kb(pid, "VmHWM") for pid in workers}
    result["rss_now_kb"] = {str(pid): procs.status_kb(pid, "VmRSS") for pid in workers}
    result["gunicorn_command"] = shlex.join(server.command)


def machine() -> dict[str, str]:
    def out(args: list[str]) -> str:
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=ROOT)
        except (OSError, subprocess.SubprocessError):
            return "?"
        return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else "?"

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    dirty = out(["git", "status", "--porcelain"]) != "?"
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": out([str(procs.VENV_BIN / "python"), "-VV"]),
        "gunicorn": out([str(procs.VENV_BIN / "gunicorn"), "--version"]),
        "nginx": out(["nginx", "-v"]),
        "wrk": out(["wrk", "-v"]).split(" Copyright")[0],
        "commit": out(["git", "rev-parse", "--short", "HEAD"]) + (" + uncommitted changes" if dirty else ""),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__)
    parser.add_argument("--duration", type=float, default=20, help="measured seconds per run (default 20)")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up seconds before each run (default 3)")
    parser.add_argument("--soak", type=float, default=0, help="also run the memory soak for this many seconds (e.g. 300)")
    parser.add_argument(
        "--skip-matrix", action="store_true", help="skip the scenario matrix, keeping its results from bench/results.json"
    )
    parser.add_argument(
        "--isolation",
        action="store_true",
        help="also measure a destination that never answers (browser, 32 connections): Mixpanel only, + a hanging "
        "destination in batch mode, and in sync mode with DESTINATION_TIMEOUT_SECONDS=1",
    )
    parser.add_argument(
        "--isolation-rounds",
        type=int,
        default=1,
        help="repeat the isolation runs compared by events/s (Mixpanel only, the destination healthy, hanging in batch "
        "mode), alternating their order; ratios are the median of the rounds'",
    )
    parser.add_argument(
        "--buffer",
        action="store_true",
        help="also measure the write-ahead buffer: Mixpanel + files, browser batches, BUFFER=memory against "
        "BUFFER=disk for each --buffer-policies fsync policy, then memory again",
    )
    parser.add_argument("--buffer-policies", default=BUFFER_POLICIES, help=f"BUFFER_FSYNC values (default {BUFFER_POLICIES})")
    parser.add_argument("--buffer-rounds", type=int, default=1, help="repeat the --buffer sequence, alternating its order")
    parser.add_argument("--profile-seconds", type=float, default=20, help="py-spy recording length (0 = no profile)")
    parser.add_argument("--profile-scenarios", default="browser,single", help="scenarios to profile")
    parser.add_argument("--profile-set", default="files", help="the destination set profiled (default files: Mixpanel + files)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list of " + ", ".join(SCENARIOS))
    parser.add_argument("--sets", default=",".join(SETS), help="comma list of " + ", ".join(SETS))
    parser.add_argument(
        "--node-original",
        default=None,
        metavar="DIR",
        help="a checkout of the seed's Node proxy: copied, its Mixpanel URL pointed at the double, run as the anchor row",
    )
    parser.add_argument("--seed", type=int, default=20241129)
    parser.add_argument("--render-only", action="store_true", help="only re-render RESULTS.md from bench/results.json")
    parser.add_argument(
        "--passes",
        type=int,
        default=1,
        help="run the whole matrix this many times, one pass after another; RESULTS.md shows each set's median pass "
        "and every ratio as the median of the passes' (on a shared machine, one run of each set is not enough)",
    )
    parser.add_argument("--retries", type=int, default=1, help="repeat a run disturbed by other jobs this many times")
    parser.add_argument(
        "--quiet-wait", type=float, default=60, help="max seconds to wait before each run for the machine to be idle (default 60)"
    )
    parser.add_argument(
        "--results-dir",
        default=str(BENCH.relative_to(ROOT)),
        metavar="DIR",
        help="where RESULTS.md and results.json are read and written (default bench/): a focused run written "
        "elsewhere leaves the full run's record as it is",
    )
    parser.add_argument("--work-dir", default=None, help="parent of the scratch folder (default: the system temp dir)")
    parser.add_argument("--keep-work-dir", action="store_true", help="keep the scratch space (written data) afterwards")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    os.chdir(ROOT)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    out = ROOT / args.results_dir
    if args.render_only:
        results = json.loads((out / "results.json").read_text())
        (out / "RESULTS.md").write_text(report.render(results))
        log(f"re-rendered {args.results_dir}/RESULTS.md from {args.results_dir}/results.json")
        return 0
    bench = Bench(args)
    started = datetime.now(UTC)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "results.json"
    results: dict[str, Any] = {
        "command": shlex.join(["bench/run.sh", *argv]),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "settings": {
            "passes": args.passes,
            "duration": args.duration,
            "warmup": args.warmup,
            "workers": WORKERS,
            "flush_seconds": FLUSH_SECONDS,
            "batch_max_records": DeliveryConfig.max_records,
            "batch_max_mib": DeliveryConfig.max_bytes / 2**20,
            "sets": {k: SETS[k] for k in args.sets.split(",")},
        },
        "runs": [],
    }
    if args.skip_matrix and previous.exists():
        # Keep the matrix from the last full run; the profile and soak record their own command and date.
        results = json.loads(previous.read_text())
    stamp = {"command": shlex.join(["bench/run.sh", *argv]), "date": started.strftime("%Y-%m-%d %H:%M UTC")}
    try:
        bench.setup()
        results["bodies"] = {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in bench.bodies.items()}
        results["scenarios"] = {k: vars(v) | {"authorization": bool(v.authorization)} for k, v in SCENARIOS.items()}
        if not args.skip_matrix:
            # The ceilings right after the pass-through, whatever the order in --sets: the references first.
            order = list(CEILING_APPS)
            sets = sorted(args.sets.split(","), key=lambda k: order.index(k) if k in order else len(order))
            for number in range(1, args.passes + 1):
                if args.passes > 1:
                    log(f"pass {number} of {args.passes}")
                for name in args.scenarios.split(","):
                    scenario = SCENARIOS[name]
                    plan = [(lambda s=scenario: bench.run_passthrough(s))]
                    for set_key in sets:
                        if set_key in CEILING_APPS:
                            plan.append(lambda k=set_key, s=scenario: bench.run_ceiling(s, k))
                        elif set_key == "node":
                            plan.append(lambda s=scenario: bench.run_node(s))
                        else:
                            plan.append(lambda k=set_key, s=scenario: bench.run_proxy(k, s))
                    for run in plan:
                        result = bench.clean_run(run)
                        if args.passes > 1:
                            result["pass"] = number
                            result["tag"] = f"{result['tag']} (pass {number})"
                        results["runs"].append(result)
        if args.isolation:
            results["isolation"] = bench.run_isolation_suite() | stamp
        if args.buffer:
            results["buffer"] = bench.run_buffer_suite() | stamp
        if args.profile_seconds > 0:
            results.pop("profile", None)
            run_stamp = {"run_command": stamp["command"], "date": stamp["date"]}
            results["profiles"] = {name: bench.run_profile(name) | run_stamp for name in args.profile_scenarios.split(",")}
        if args.soak > 0:
            results["soak"] = bench.run_soak(args.soak) | stamp
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}); stopping everything")
        return 130
    finally:
        bench.teardown()
    minutes = round((datetime.now(UTC) - started).total_seconds() / 60, 1)
    if args.skip_matrix:
        results["extra_wall_minutes"] = minutes
    else:
        results["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        results["wall_minutes"] = minutes
    previous.write_text(json.dumps(results, indent=1, default=str))
    (out / "RESULTS.md").write_text(report.render(results))
    log(f"wrote {args.results_dir}/RESULTS.md and {args.results_dir}/results.json in {minutes} min")
    return 0
