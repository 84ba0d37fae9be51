"""Render bench/results.json as bench/RESULTS.md."""

from __future__ import annotations

from typing import Any

SET_TITLES = {
    "passthrough": "nginx pass-through (baseline)",
    "mixpanel": "Mixpanel only",
    "files": "Mixpanel + files",
    "s3": "Mixpanel + S3 (moto)",
    "all": "everything (Mixpanel + files + S3)",
}


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    if not a or not b:
        return "–"
    return f"{a / b:.{digits}f}×"


def _errors(run: dict) -> str:
    errors = run.get("errors") or {}
    total = sum(errors.values())
    if not total:
        return "0"
    return ", ".join(f"{k.replace('_errors', '')} {v}" for k, v in errors.items() if v)


def _rss(run: dict) -> str:
    peaks = [v for v in (run.get("rss_peak_kb") or {}).values() if v]
    return _num(max(peaks) / 1024, 0) if peaks else "–"


def _objects(run: dict) -> str:
    per = run.get("objects_per_10k_events")
    if not per:
        return "–"
    return ", ".join(f"{k} {v:.2f}" for k, v in per.items())


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "**missed**")


def render(results: dict[str, Any]) -> str:
    runs: list[dict] = results.get("runs", [])
    scenarios = results.get("scenarios", {})
    bodies = results.get("bodies", {})
    machine = results.get("machine", {})
    settings = results.get("settings", {})
    base = {r["scenario"]: r for r in runs if r.get("set") == "passthrough"}
    out: list[str] = []
    w = out.append

    w("# Benchmark results\n")
    w("Produced by the harness in this folder (see `bench/README.md`); regenerate with the command below.\n")
    w(f"- **Command:** `{results.get('command')}`")
    w(f"- **Date:** {results.get('date')} (wall time {results.get('wall_minutes', '?')} min)")
    for label, part in [("Soak", results.get("soak") or {}), *(("Profile", p) for p in (results.get("profiles") or {}).values())]:
        command = part.get("run_command") or (part.get("command") if label == "Soak" else None)
        if command and command != results.get("command"):
            w(f"- **{label} re-run separately:** `{command}` ({part.get('date')})")
            break
    w(
        f"- **Machine:** {machine.get('nproc')} CPUs ({machine.get('cpu')}), {machine.get('memory')} RAM, "
        f"{machine.get('os')}, Linux {machine.get('kernel')}"
    )
    w(
        f"- **Software:** {machine.get('python')}; {machine.get('gunicorn')}; {machine.get('nginx')}; "
        f"{machine.get('wrk')}; app commit {machine.get('commit')}"
    )
    w(
        f"- **Proxy:** `.venv/bin/gunicorn -c gunicorn.conf.py -w {settings.get('workers', 2)} -b 127.0.0.1:PORT app:app` "
        "(gevent workers), "
        "`LOG_LEVEL=WARNING`, `MIXPANEL_API_HOST` = the nginx Mixpanel double, delivery defaults (batch mode, "
        f"`BATCH_MAX_SECONDS` {settings.get('flush_seconds', 10):g} s, 5,000 rows, 8 MB)."
    )
    w(
        f"- **Load:** wrk 2 threads, {settings.get('warmup', 0):g} s warm-up then "
        f"{settings.get('duration', 0):g} s measured per run; "
        "a fresh gunicorn per run (so peak RSS is per scenario). **wrk, nginx (double and baseline) and moto share the "
        "same 2 CPUs as the proxy**, so absolute numbers understate a dedicated host; ratios are the useful part."
    )
    w("")

    w("## Scenarios\n")
    w("| scenario | request | events/request | mean body | props/event | connections |")
    w("|---|---|---:|---:|---:|---:|")
    for name, sc in scenarios.items():
        b = bodies.get(name, {})
        request = f"POST `{sc['path']}` {sc['content_type']}" + (" + Basic auth" if sc.get("authorization") else "")
        w(
            f"| {name} | {request} | {sc['events_per_request']:,} | {_num(b.get('bytes_mean', 0) / 1024, 1)} KB "
            f"| {b.get('properties_mean', '–')} | {sc['connections']} |"
        )
    w(
        "\nBodies come from `bench/payloads.py` with a fixed seed: mixpanel-browser-shaped events (`$insert_id`, float "
        "`time`, `distinct_id`, `$device_id`, `$browser`, `$current_url`, UTM, ...) base64-encoded and percent-encoded "
        "into `data=` exactly as the browser SDK does when `api_host` is not mixpanel.com; /import gets a raw JSON "
        "array with ms `time`. Each wrk connection cycles through 200 distinct bodies (6 for /import).\n"
    )

    w("## Results\n")
    w(
        "Events/s counts only HTTP 2xx replies. Ratios are against the nginx pass-through for the same scenario "
        "(events/s: higher is better; p99: lower is better). CPU is utime+stime of the gunicorn master and workers over "
        "the measured window; peak RSS is the highest `VmHWM` of the two workers; objects are counted after the proxy "
        "drained on SIGTERM, per 10,000 events sent (warm-up included).\n"
    )
    for name in scenarios:
        these = [r for r in runs if r.get("scenario") == name]
        if not these:
            continue
        pt = base.get(name, {})
        w(f"### {name}: {scenarios[name]['events_per_request']:,} events/request, {scenarios[name]['connections']} connections\n")
        w(
            "| destinations | req/s | events/s | p50 ms | p99 ms | events/s ÷ pass-through | p99 ÷ pass-through "
            "| CPU-s / 10k events | peak RSS / worker MiB | objects / 10k events | errors |"
        )
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in these:
            title = SET_TITLES.get(r["set"], r["set"]) + (" ⚠" if r.get("contaminated") else "")
            if "unavailable" in r:
                w(f"| {title} | {r['unavailable']} ||||||||||")
                continue
            is_base = r["set"] == "passthrough"
            w(
                f"| {title} | {_num(r['requests_per_s'], 1)} | {_num(r['events_per_s'])} | {_num(r['p50_ms'], 1)} "
                f"| {_num(r['p99_ms'], 1)} | {'1×' if is_base else _ratio(r['events_per_s'], pt.get('events_per_s'))} "
                f"| {'1×' if is_base else _ratio(r['p99_ms'], pt.get('p99_ms'), 1)} "
                f"| {_num(r.get('cpu_s_per_10k_events'), 2)} | {_rss(r)} | {_objects(r)} | {_errors(r)} |"
            )
        w("")

    stored = [r for r in runs if r.get("objects")]
    if stored:
        w("### What landed in storage\n")
        w(
            "Rows read back from every object after the run, against events acknowledged (2xx). `budget` is the target "
            "of at most one object per flush interval per table per worker over the proxy's lifetime (+1 interval for "
            "the drain on shutdown): `(floor(alive_s / flush_s) + 1) × 1 table × workers`.\n"
        )
        w(
            "Rows landed may exceed events acknowledged by the requests still in flight when wrk stopped (up to "
            "2 × connections × events/request); fewer rows than acknowledged events would mean loss.\n"
        )
        w(
            "| run | alive s | store | objects | budget | within budget | rows landed | rows dead-lettered "
            "| events acked | landed + dead-lettered ≥ acked |"
        )
        w("|---|---:|---|---:|---:|---|---:|---:|---:|---|")
        for r in stored:
            for store, objects in r["objects"].items():
                budget = r.get("object_budget")
                spooled = (r.get("spooled_rows") or {}).get(store, 0)
                landed = r["rows"][store]
                w(
                    f"| {r['tag']} | {r['alive_seconds']:.0f} | {store} | {objects} | {budget} "
                    f"| {_verdict(objects <= budget if budget else None)} | {landed:,} | {spooled:,} | {r['events_sent']:,} "
                    f"| {'yes' if landed + spooled >= r['events_sent'] else '**NO: rows lost**'} |"
                )
        w("")

    measured = [r for r in runs if r.get("machine")]
    if measured:
        w("### Who used the CPUs during each measured window\n")
        w(
            "Machine-wide busy time from `/proc/stat` over the measured window, split into the proxy (gunicorn master + "
            "workers), nginx (double and baseline) + moto, wrk, and everything else on the machine (other jobs, kernel "
            f"softirq work not charged to a process). Busy % is of {machine.get('nproc')} CPUs. Before each run the harness "
            "waits (up to `--quiet-wait` s) for the machine to be nearly idle, and repeats a run (`--retries`) when other "
            "jobs took more than 10% of the machine; runs still disturbed are marked ⚠ in the tables above.\n"
        )
        w("| run | attempt | machine busy % | proxy CPU-s | nginx + moto CPU-s | wrk CPU-s | other CPU-s | waited for quiet s |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in measured:
            m = r["machine"]
            w(
                f"| {r['tag']} | {r.get('attempt', 1)} | {m['busy_percent']:.0f} | {m['proxy_cpu_s']:.1f} "
                f"| {m['nginx_moto_cpu_s']:.1f} | {m['wrk_cpu_s']:.1f} | {m['other_cpu_s']:.1f} "
                f"| {m.get('waited_for_quiet_s', 0):.0f} |"
            )
        w("")

    w("## Targets\n")
    head = next((r for r in runs if r.get("set") == "files" and r.get("scenario") == "browser" and "unavailable" not in r), None)
    pt = base.get("browser")
    w("| target | measured | verdict |")
    w("|---|---|---|")
    if head and pt:
        ratio = head["events_per_s"] / pt["events_per_s"]
        w(
            f"| Mixpanel + files, browser batches ≥ 0.5× pass-through events/s | {ratio:.2f}× "
            f"({_num(head['events_per_s'])} vs {_num(pt['events_per_s'])}) | {_verdict(ratio >= 0.5)} |"
        )
        w(f"| … p99 ≤ 100 ms at 32 connections | {head['p99_ms']:.1f} ms | {_verdict(head['p99_ms'] <= 100)} |")
    soak = results.get("soak") or {}
    growth = soak_growth(soak)
    if growth is not None:
        w(f"| RSS growth minute 1 → minute 5 < 10% (soak) | {growth:+.1f}% (largest worker) | {_verdict(growth < 10)} |")
    else:
        w("| RSS growth minute 1 → minute 5 < 10% (soak) | soak not run (`--soak 300`) | – |")
    lake_runs = [(r, s, n) for r in stored for s, n in r["objects"].items()]
    if lake_runs:
        worst = max(lake_runs, key=lambda x: x[2] / max(1, x[0].get("object_budget") or 1))
        ok = all(n <= (r.get("object_budget") or 0) for r, _s, n in lake_runs)
        w(
            f"| lakes: ≤ 1 object per flush interval per table per worker | worst: {worst[0]['tag']} {worst[1]} "
            f"{worst[2]} objects vs budget {worst[0].get('object_budget')} | {_verdict(ok)} |"
        )
    w("")

    profiles = results.get("profiles") or ({"browser": results["profile"]} if results.get("profile") else {})
    w("## Profile\n")
    if not profiles:
        w("Not recorded (`--profile-seconds 0`).\n")
    for name, prof in profiles.items():
        title = scenarios.get(name, {}).get("title", name)
        w(f"### {title}, Mixpanel + files\n")
        if not prof.get("samples"):
            w(f"Not recorded ({prof.get('error', 'no samples')}).\n")
            continue
        files = prof.get("files") or ["bench/out/profile.svg", "bench/out/profile.txt"]
        w(
            f"py-spy, 100 Hz, `--nonblocking`, both workers (`--subprocesses`), {prof['samples']:,} non-idle samples "
            f"({_num(prof.get('load_events_per_s'))} events/s while profiled; {prof.get('date', results.get('date'))}). "
            f"Flame graph: `{files[0]}`; collapsed stacks: `{files[1]}`. Idle time (the gevent hub waiting in epoll) is "
            "excluded, so percentages are of busy time in Python frames (time in C called from a frame, e.g. the json C "
            "encoder or zlib, is charged to that frame).\n"
        )
        w(
            "Command (both workers at once, while wrk drives the load): `py-spy record --pid <gunicorn master> --subprocesses "
            f"--nonblocking --rate 100 --duration 20 --function --format raw -o {files[1]}` (and once more without "
            f"`--function --format raw` for the SVG).\n"
        )
        w("**By phase** (each sample charged to the first matching phase, in the order listed in `bench/profile.py`)\n")
        w("| % samples | phase |")
        w("|---:|---|")
        for row in prof.get("phases", []):
            w(f"| {row['percent']:.1f} | {row['phase']} |")
        w("\n**Self time (leaf frame)**\n")
        w("| % samples | function |")
        w("|---:|---|")
        for row in prof["self"]:
            w(f"| {row['percent']:.1f} | `{row['function']}` |")
        w("\n**Inclusive time, project code**\n")
        w("| % samples | function |")
        w("|---:|---|")
        for row in prof["inclusive_project"]:
            w(f"| {row['percent']:.1f} | `{row['function']}` |")
        w("")

    w("## Memory soak\n")
    if soak.get("samples"):
        w(
            f"`{soak.get('command', '')}` ({soak.get('date', '')}): browser batches to Mixpanel + files, 32 connections, "
            f"{soak['seconds']:g} s; {_num(soak['events_per_s'])} events/s, p99 {soak['p99_ms']:.1f} ms, "
            f"{soak['errors']} errors; {soak['objects']} objects, {soak['rows']:,} rows written.\n"
        )
        workers = list(soak["samples"][0]["rss_kb"])
        w("| t (s) | " + " | ".join(f"worker {pid} RSS MiB" for pid in workers) + " |")
        w("|---:|" + "---:|" * len(workers))
        for sample in soak["samples"]:
            w(f"| {sample['t']} | " + " | ".join(_num((sample["rss_kb"].get(pid) or 0) / 1024, 1) for pid in workers) + " |")
        w(f"\nGrowth between minute 1 and the end: {growth:+.1f}% (largest of the workers).\n")
    else:
        w("Not run in this invocation: `bench/run.sh --soak 300`.\n")

    w("## How to read this\n")
    w(
        "- wrk is a closed-loop generator: each connection waits for its reply, so a slower server gets fewer "
        "requests rather than a queue; p99 at fixed concurrency is the comparable number.\n"
        "- The Mixpanel double answers from nginx in microseconds; against the real Mixpanel the proxy's latency adds "
        "the upstream round trip, and the pass-through's does too.\n"
        "- Local files are fsync'ed per object; `DATA_DIR` is on the machine's disk (a fresh folder under `/tmp`).\n"
        "- Raw numbers for every run (wrk summaries, CPU, RSS, object counts) are in `bench/results.json`; logs and "
        "wrk output in `bench/out/` (git-ignored)."
    )
    return "\n".join(out) + "\n"


def soak_growth(soak: dict) -> float | None:
    samples = soak.get("samples") or []
    if len(samples) < 2:
        return None
    first = min(samples, key=lambda s: abs(s["t"] - 60))
    last = samples[-1]
    growths = []
    for pid, start in first["rss_kb"].items():
        end = last["rss_kb"].get(pid)
        if start and end:
            growths.append((end - start) / start * 100)
    return max(growths) if growths else None
