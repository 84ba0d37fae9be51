"""Render bench/results.json as bench/RESULTS.md."""

from __future__ import annotations

import math
import statistics
from typing import Any, NamedTuple

from core.settings import parse_fsync

SET_TITLES = {
    "passthrough": "nginx pass-through (baseline)",
    "ceiling": "framework ceiling: Flask on gunicorn+gevent, reads the body, answers 1",
    "forward": "forwarding ceiling: the same, forwards the body verbatim to Mixpanel, answers its reply",
    "decode": "decoding ceiling: the forwarder, plus decoding each body with the proxy's decoder",
    "essential": "essential-work ceiling: the forwarder, plus decoding and gzipping one NDJSON line per record",
    "durable": "durable essential-work ceiling: the same, its gzipped lines appended and fsynced (group commit) before the reply",
    "rowmodel": (
        "row-model ceiling: the same, its lines the proxy's rows and Mixpanel's body the SDK's JSON gzipped, "
        "as the proxy's contracts ask"
    ),
    "mixpanel": "Mixpanel only",
    "files": "Mixpanel + files",
    "s3": "Mixpanel + S3 (moto)",
    "all": "everything (Mixpanel + files + S3)",
    "files-batch": "Mixpanel + files, `MIXPANEL_DELIVERY=batch`",
    "files-batch-memory": "Mixpanel + files, `MIXPANEL_DELIVERY=batch`, `BUFFER=memory`",
    "files-batch-never": "Mixpanel + files, `MIXPANEL_DELIVERY=batch`, `BUFFER_FSYNC=never`",
    "node": "Node original (forwards to Mixpanel only): the anchor",
}

# The reference apps of bench/ceiling.py: measuring sticks, not the proxy.
CEILING_SETS = ("ceiling", "forward", "decode", "essential", "durable", "rowmodel")


def set_title(key: str) -> str:
    """A set's title; a set the harness repeats at other concurrency (`<set>-c96`) is titled
    after the set it repeats."""
    if key in SET_TITLES:
        return SET_TITLES[key]
    base, _, connections = key.rpartition("-c")
    if base in SET_TITLES and connections.isdigit():
        return f"{SET_TITLES[base]}, **{connections} connections**"
    return key


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _percent(share: float | None, digits: int = 0) -> str:
    """`share` as a percentage; with `digits`, trailing zeros dropped (97.9%, 75%)."""
    if share is None:
        return "–"
    text = f"{share * 100:.{digits}f}"
    return (text.rstrip("0").rstrip(".") if digits else text) + "%"


def _ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    if not a or not b:
        return "–"
    return f"{a / b:.{digits}f}×"


def _vs(a: dict, b: dict) -> float:
    """a's events/s ÷ b's. With several passes (`--passes`), the median over the passes of
    the two runs of the same pass: runs minutes apart on this shared machine are not comparable."""
    ratios = _pass_ratios(a, b)
    return statistics.median(ratios) if len(ratios) > 1 else a["events_per_s"] / b["events_per_s"]


def _pass_ratios(a: dict, b: dict) -> list[float]:
    """a's events/s ÷ b's in each pass both ran (empty without several passes)."""
    mine, theirs = a.get("per_pass_events") or {}, b.get("per_pass_events") or {}
    common = [p for p in mine if p in theirs and theirs[p]]
    return [mine[p] / theirs[p] for p in common] if len(common) > 1 else []


REFERENCE_SETS = ("passthrough", "ceiling")  # shown as events/s in the passes' table, not ÷ the ceiling


def _pass_values(runs: list[dict], scenario: str) -> dict[str, dict[int, float]]:
    """set -> pass -> events/s ÷ the framework ceiling of that pass (the references: events/s)."""
    these = [r for r in runs if r["scenario"] == scenario and "events_per_s" in r]
    top = {r.get("pass", 1): r["events_per_s"] for r in these if r["set"] == "ceiling"}
    out: dict[str, dict[int, float]] = {}
    for r in these:
        number = r.get("pass", 1)
        if r["set"] in REFERENCE_SETS:
            out.setdefault(r["set"], {})[number] = r["events_per_s"]
        elif top.get(number):
            out.setdefault(r["set"], {})[number] = r["events_per_s"] / top[number]
    return out


def representatives(runs: list[dict]) -> list[dict]:
    """With several passes over the matrix: one run per (scenario, set), the one whose events/s
    ÷ its own pass's framework ceiling is the median of the passes (the pass-through and the
    ceiling: the median events/s; the lower middle for an even count). Each carries every
    pass's events/s (`per_pass_events`), so ratios are taken pass by pass (see `_vs`)."""
    if len({r.get("pass", 1) for r in runs}) < 2:
        return runs
    out = []
    for scenario in dict.fromkeys(r["scenario"] for r in runs):
        values = _pass_values(runs, scenario)
        for set_key in dict.fromkeys(r["set"] for r in runs if r["scenario"] == scenario):
            group = [r for r in runs if r["scenario"] == scenario and r["set"] == set_key]
            by_pass = values.get(set_key)
            if not by_pass:
                out.append(group[0])
                continue
            middle = statistics.median_low(by_pass.values())
            number = next(p for p, v in by_pass.items() if v == middle)
            chosen = dict(next(r for r in group if r.get("pass", 1) == number))
            chosen["per_pass_events"] = {r.get("pass", 1): r["events_per_s"] for r in group if "events_per_s" in r}
            out.append(chosen)
    return out


def render_passes(runs: list[dict], scenarios: dict) -> list[str]:
    """Every pass's events/s ÷ the framework ceiling of the same pass, per set: the spread
    between passes is what this machine's drift does to one run."""
    passes = sorted({r.get("pass", 1) for r in runs})
    if len(passes) < 2:
        return []
    out = [
        "### Every pass\n",
        f"The matrix ran {len(passes)} times (`--passes`), one pass after another, each set once per pass. The tables "
        "above show, per set, the run of the median pass (its events/s ÷ the ceiling of its own pass); the "
        "targets take every ratio pass by pass and report the median, so the events/s printed beside a ratio (each "
        "set's median pass) need not divide to it. Here is each pass: events/s ÷ that pass's framework ceiling (the "
        "pass-through and the ceiling: events/s); ⚠ marks a disturbed run.\n",
        "| scenario | destinations | " + " | ".join(f"pass {p}" for p in passes) + " | median | max ÷ min |",
        "|---|---|" + "---:|" * (len(passes) + 2),
    ]
    disturbed = {(r["scenario"], r["set"], r.get("pass", 1)) for r in runs if r.get("contaminated")}
    for name in scenarios:
        for set_key, by_pass in _pass_values(runs, name).items():

            def cell(value: float, raw: bool = set_key in REFERENCE_SETS) -> str:
                return _num(value) if raw else f"{value:.2f}×"

            cells = [
                cell(by_pass[p]) + (" ⚠" if (name, set_key, p) in disturbed else "") if p in by_pass else "–" for p in passes
            ]
            spread = max(by_pass.values()) / min(by_pass.values())
            out.append(
                f"| {name} | {set_title(set_key).split(':')[0]} | {' | '.join(cells)} "
                f"| {cell(statistics.median(by_pass.values()))} | {spread:.2f} |"
            )
    out.append("")
    return out


def _errors(run: dict) -> str:
    errors = run.get("errors") or {}
    total = sum(errors.values())
    if not total:
        return "0"
    return ", ".join(f"{k.replace('_errors', '')} {v}" for k, v in errors.items() if v)


def _peak_mib(run: dict) -> float | None:
    """The highest peak RSS (VmHWM) of a run's workers, MiB."""
    peaks = [v for v in (run.get("rss_peak_kb") or {}).values() if v]
    return max(peaks) / 1024 if peaks else None


def _rss(run: dict) -> str:
    peak = _peak_mib(run)
    return _num(peak, 0) if peak is not None else "–"


def _objects(run: dict) -> str:
    per = run.get("objects_per_10k_events")
    if not per:
        return "–"
    return ", ".join(f"{k} {v:.2f}" for k, v in per.items())


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "**missed**")


def render(results: dict[str, Any]) -> str:
    every_pass: list[dict] = results.get("runs", [])
    runs = representatives(every_pass)
    scenarios = results.get("scenarios", {})
    bodies = results.get("bodies", {})
    machine = results.get("machine", {})
    settings = results.get("settings", {})
    base = {r["scenario"]: r for r in runs if r.get("set") == "passthrough"}
    ceiling = {r["scenario"]: r for r in runs if r.get("set") == "ceiling" and "unavailable" not in r}
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
    isolation = results.get("isolation") or {}
    if isolation.get("command") and isolation["command"] != results.get("command"):
        w(f"- **Isolation run separately:** `{isolation['command']}` ({isolation.get('date')})")
    buffer = results.get("buffer") or {}
    if buffer.get("command") and buffer["command"] != results.get("command"):
        w(f"- **Write-ahead buffer run separately:** `{buffer['command']}` ({buffer.get('date')})")
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
        f"`BATCH_MAX_SECONDS` {settings.get('flush_seconds', 10):g} s, "
        f"{settings.get('batch_max_records', 100_000):,} rows, {settings.get('batch_max_mib', 32):g} MiB)."
    )
    w(
        f"- **Load:** wrk 2 threads, {settings.get('warmup', 0):g} s warm-up then "
        f"{settings.get('duration', 0):g} s measured per run"
        + (f", the whole matrix {settings['passes']} times over (`--passes`)" if settings.get("passes", 1) > 1 else "")
        + "; "
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
        request += " + `Origin`" if sc.get("origin") else ""
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
    w(
        "The **framework ceiling** is a measuring stick, not a product: `bench/ceiling.py`, a Flask app run exactly like "
        "the proxy (`gunicorn -c gunicorn.conf.py -w 2 ... bench.ceiling:app`, gevent workers) that routes the request, "
        "reads the whole body and answers what the Mixpanel double answers: no decoding, no forwarding, no storage. "
        "A Flask proxy on this stack does at least that much, so it cannot beat the ceiling; `events/s ÷ ceiling` is the "
        "share of that bound a proxy run reaches. Measured in the same run, right after the pass-through. Each request "
        "yields to gevent once (`gevent.sleep(0)`), as a proxy does at least once on its upstream round trip; without it "
        "a worker keeps serving one keep-alive connection while the others starve. The **forwarding ceiling** "
        "(`bench.ceiling:forwarder`) is the same app sending each body on to the Mixpanel double verbatim through the "
        "proxy's own HTTP client (`core/http.py`) and answering the double's reply: the least a proxy that forwards "
        "each request does.\n"
    )
    for name in scenarios:
        these = [r for r in runs if r.get("scenario") == name]
        if not these:
            continue
        pt = base.get(name, {})
        top = ceiling.get(name, {})
        if not top:  # an older results.json, or `ceiling` left out of --sets: say so where the row belongs
            at = next((i + 1 for i, r in enumerate(these) if r.get("set") == "passthrough"), 0)
            these.insert(at, {"set": "ceiling", "unavailable": "not measured"})
        w(f"### {name}: {scenarios[name]['events_per_request']:,} events/request, {scenarios[name]['connections']} connections\n")
        w(
            "| destinations | req/s | events/s | p50 ms | p99 ms | events/s ÷ pass-through | p99 ÷ pass-through "
            "| events/s ÷ ceiling | CPU-s / 10k events | peak RSS / worker MiB | objects / 10k events | errors |"
        )
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in these:
            title = set_title(r["set"]) + (" ⚠" if r.get("contaminated") else "")
            if "unavailable" in r:
                w(f"| {title} | {r['unavailable']} |||||||||||")
                continue
            is_base = r["set"] == "passthrough"
            # ÷ ceiling is for the proxy rows; the pass-through is not bounded by Flask.
            vs_top = {"passthrough": "–", "ceiling": "1×"}.get(r["set"]) or (f"{_vs(r, top):.2f}×" if top else "–")
            w(
                f"| {title} | {_num(r['requests_per_s'], 1)} | {_num(r['events_per_s'])} | {_num(r['p50_ms'], 1)} "
                f"| {_num(r['p99_ms'], 1)} | {'1×' if is_base else _ratio(r['events_per_s'], pt.get('events_per_s'))} "
                f"| {'1×' if is_base else _ratio(r['p99_ms'], pt.get('p99_ms'), 1)} | {vs_top} "
                f"| {_num(r.get('cpu_s_per_10k_events'), 2)} | {_rss(r)} | {_objects(r)} | {_errors(r)} |"
            )
        w("")

    out.extend(render_passes(every_pass, scenarios))

    stored = [r for r in every_pass if r.get("objects")]
    if stored:
        w("### What landed in storage\n")
        w(
            "Rows read back from every object after the run, against events acknowledged (2xx). `budget` is the target "
            "of at most one object per flush interval per table per worker over the proxy's lifetime (+1 interval for "
            "the drain on shutdown): `(floor(alive_s / flush_s) + 1) × 1 table × workers`, plus one per "
            "`BATCH_MAX_BYTES` written (MiB column), since a buffer also flushes as soon as it holds that much "
            "(whichever comes first; lakes count it compressed), plus one per worker for each hour boundary the run "
            "crossed (hours column: lakes partition by hour, so a buffer holding rows of two hours flushes two "
            "objects).\n"
        )
        w(
            "Rows landed may exceed events acknowledged by the requests still in flight when wrk stopped (up to "
            "2 × connections × events/request); fewer rows than acknowledged events would mean loss.\n"
        )
        w(
            "| run | alive s | store | objects | MiB | hours | budget | within budget | rows landed | rows dead-lettered "
            "| events acked | landed + dead-lettered ≥ acked |"
        )
        w("|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---|")
        for r in stored:
            for store, objects in r["objects"].items():
                budget = _object_budget(r, store)
                size = (r.get("object_bytes") or {}).get(store)
                hours = (r.get("object_partitions") or {}).get(store)
                spooled = (r.get("spooled_rows") or {}).get(store, 0)
                landed = r["rows"][store]
                w(
                    f"| {r['tag']} | {r['alive_seconds']:.0f} | {store} | {objects} "
                    f"| {'–' if size is None else f'{size / 2**20:,.1f}'} | {'–' if hours is None else hours} | {budget} "
                    f"| {_verdict(objects <= budget if budget else None)} | {landed:,} | {spooled:,} | {r['events_sent']:,} "
                    f"| {'yes' if landed + spooled >= r['events_sent'] else '**NO: rows lost**'} |"
                )
        w("")

    measured = [r for r in every_pass if r.get("machine")]
    if measured:
        w("### Who used the CPUs during each measured window\n")
        w(
            "Machine-wide busy time from `/proc/stat` over the measured window, split into the proxy (gunicorn master + "
            "workers; the ceiling's in its rows), nginx (double and baseline) + moto, wrk, and everything else on the "
            "machine (other jobs, kernel softirq work not charged to a process). "
            f"Busy % is of {machine.get('nproc')} CPUs. Before each run the harness "
            "waits (up to `--quiet-wait` s) for the machine to be nearly idle, and repeats a run (`--retries`) when other "
            "jobs took more than 10% of the machine, or when the host itself ran slow: this machine is a VM, and a "
            "busy neighbour on its host slows every process without showing in `/proc/stat`. The host speed probe "
            "(`bench/procs.py` `speed_probe`, a fixed piece of pure-Python work, best of three) runs once the machine is "
            "quiet, just before each run; a run whose probe took more than 1.2× the fastest of the bench run is disturbed (a "
            "slow phase of a few seconds inside a run's window does not show in it). Runs "
            "still disturbed are marked ⚠ in the tables above.\n"
        )
        w(
            "| run | attempt | machine busy % | proxy CPU-s | nginx + moto CPU-s | wrk CPU-s | other CPU-s "
            "| waited for quiet s | host speed probe ms | proxy GC passes, s |"
        )
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in measured:
            m = r["machine"]
            gc = r.get("gc")
            collected = f"{gc['passes']:.0f}, {gc['seconds']:.3f}" if gc else "–"
            probe = _num(m.get("probe_ms"))
            w(
                f"| {r['tag']}{' ⚠' if r.get('contaminated') else ''} | {r.get('attempt', 1)} | {m['busy_percent']:.0f} "
                f"| {m['proxy_cpu_s']:.1f} | {m['nginx_moto_cpu_s']:.1f} | {m['wrk_cpu_s']:.1f} | {m['other_cpu_s']:.1f} "
                f"| {m.get('waited_for_quiet_s', 0):.0f} | {probe} | {collected} |"
            )
        w(
            "\nproxy GC passes, s: the garbage collector's passes in both workers over the proxy's whole life "
            "(preflight, warm-up and measured window) and the time they took (`mpproxy_gc_collections_total`, "
            "`mpproxy_gc_seconds_total`, read just before the proxy stopped; proxy/memory.py).\n"
        )

    if isolation.get("runs"):
        out.extend(render_isolation(isolation, runs))
    if (results.get("buffer") or {}).get("runs"):
        out.extend(render_buffer(results["buffer"]))

    out.extend(round_two(runs, ceiling, isolation))
    w("## Targets (round one)\n")
    head = next((r for r in runs if r.get("set") == "files" and r.get("scenario") == "browser" and "unavailable" not in r), None)
    pt = base.get("browser")
    w("| target | measured | verdict |")
    w("|---|---|---|")
    if head and pt:
        ratio = _vs(head, pt)
        w(
            f"| Mixpanel + files, browser batches ≥ 0.5× pass-through events/s | {ratio:.2f}× "
            f"({_num(head['events_per_s'])} vs {_num(pt['events_per_s'])}) | {_verdict(ratio >= 0.5)} |"
        )
    if pt:
        w(reachable(head, pt, ceiling.get("browser")))
    if head:
        w(
            f"| Mixpanel + files, browser batches: p99 ≤ 100 ms at 32 connections | {head['p99_ms']:.1f} ms "
            f"| {_verdict(head['p99_ms'] <= 100)} |"
        )
        w(littles_law(head))
    soak = results.get("soak") or {}
    growth = soak_growth(soak)
    if growth is not None:
        peak = soak_growth(soak, peak=True)
        w(
            f"| RSS growth minute 1 → minute 5 < 10% (soak) | median {growth:+.1f}%, peak {peak:+.1f}% (largest worker) "
            f"| {_verdict(growth < 10 and peak < 10)} |"
        )
    else:
        w("| RSS growth minute 1 → minute 5 < 10% (soak) | soak not run (`--soak 300`) | – |")
    for row in isolation_targets(isolation):
        w(row)
    for row in buffer_targets(buffer):
        w(row)
    lake_runs = [(r, s, n) for r in stored for s, n in r["objects"].items()]
    if lake_runs:
        worst = max(lake_runs, key=lambda x: x[2] / max(1, _object_budget(x[0], x[1]) or 1))
        ok = all(n <= (_object_budget(r, s) or 0) for r, s, n in lake_runs)
        w(
            f"| lakes: ≤ 1 object per flush interval (or per `BATCH_MAX_BYTES` written, or per hour crossed) per table "
            "per worker "
            f"| worst: {worst[0]['tag']} {worst[1]} {worst[2]} objects vs budget {_object_budget(worst[0], worst[1])} "
            f"| {_verdict(ok)} |"
        )
    w("")

    profiles = results.get("profiles") or ({"browser": results["profile"]} if results.get("profile") else {})
    w("## Profile\n")
    if not profiles:
        w("Not recorded (`--profile-seconds 0`).\n")
    for name, prof in profiles.items():
        title = scenarios.get(name, {}).get("title", name)
        w(f"### {title}, {set_title(prof.get('set', 'files'))}\n")
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
        w(
            f"\nGrowth from minute 1 to the last minute, median of each minute's samples: {growth:+.1f}%; "
            f"of each minute's peak: {soak_growth(soak, peak=True):+.1f}% (largest of the workers). The peaks are "
            "flushes, which briefly hold one batch (up to `BATCH_MAX_BYTES`) while it is compressed.\n"
        )
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


def reachable(head: dict | None, pt: dict, top: dict | None) -> str:
    """Targets row: can the 0.5× pass-through target be met on this stack at all? Only if the
    framework ceiling (the least any Flask proxy does) itself reaches 0.5× the pass-through."""
    target = ("| … " if head else "| 0.5× pass-through, browser batches: ") + (
        "reachable on this stack at all (the framework ceiling itself ≥ 0.5× pass-through)?"
    )
    if not top:
        return f"{target} | framework ceiling not measured (`--sets ceiling,...`) | – |"
    reach = _vs(top, pt)
    files = f"reaches {_vs(head, top):.2f}× it" if head else "not measured"
    return (
        f"{target} | the framework ceiling itself reaches {reach:.2f}× the pass-through ({_num(top['events_per_s'])} "
        f"vs {_num(pt['events_per_s'])} events/s), so the target asks for {0.5 / reach:.2f}× the ceiling; "
        f"Mixpanel + files {files} | {'yes' if reach >= 0.5 else '**no: out of reach on this stack**'} |"
    )


def littles_law(head: dict) -> str:
    """Targets row: with wrk's closed loop every connection always has one request in flight, so
    the mean latency is connections ÷ req/s (Little's law) and p99 is throughput-bound: at this
    run's tail shape (p99 ÷ that mean), p99 ≤ 100 ms needs req/s × p99 ÷ 100 ms."""
    connections = head.get("connections") or 32
    mean_ms = connections / head["requests_per_s"] * 1000
    needed = head["events_per_s"] * head["p99_ms"] / 100
    return (
        f"| … why: {connections} connections in a closed loop | mean latency = {connections} ÷ {_num(head['requests_per_s'])} "
        f"req/s = {mean_ms:.0f} ms (Little's law), p99 = {head['p99_ms'] / mean_ms:.1f}× that; p99 ≤ 100 ms at this tail "
        f"shape needs ≈ {_num(needed)} events/s, {needed / head['events_per_s']:.2f}× the measured | – |"
    )


def soak_growth(soak: dict, peak: bool = False) -> float | None:
    """RSS growth from minute 1 to the last minute, per worker (the largest is reported).
    Compares the median of each minute's samples: a flush briefly holds one batch (up to
    BATCH_MAX_BYTES) and single samples land on or off those spikes. `peak` compares the
    highest sample of each minute instead."""
    samples = soak.get("samples") or []
    if len(samples) < 2:
        return None
    end_t = samples[-1]["t"]
    first = [s for s in samples if s["t"] <= 60]
    last = [s for s in samples if s["t"] > end_t - 60]
    pick = max if peak else statistics.median
    growths = []
    for pid in samples[0]["rss_kb"]:
        start = [s["rss_kb"][pid] for s in first if s["rss_kb"].get(pid)]
        end = [s["rss_kb"][pid] for s in last if s["rss_kb"].get(pid)]
        if start and end:
            growths.append((pick(end) - pick(start)) / pick(start) * 100)
    return max(growths) if growths else None


# --- isolation: a destination that never answers ---------------------------------------------------


ISOLATION_KEYS = ("baseline", "hang-batch", "hang-sync", "healthy-batch")  # (a)-(d): bench/harness.py ISOLATION


def _statuses(run: dict) -> str:
    statuses = run["wrk"].get("statuses") or {}
    if not statuses:
        return "–"
    return ", ".join(f"{code}: {n:,}" for code, n in sorted(statuses.items()))


def _non_2xx(run: dict) -> int:
    statuses = run["wrk"].get("statuses")
    if statuses is None:
        return run["wrk"]["status_errors"]
    return sum(n for code, n in statuses.items() if not 200 <= int(code) < 300)


def _rows(counts: dict | None) -> int:
    return sum((counts or {}).values())


def _deadline_s(run: dict, isolation: dict) -> float:
    extra = run.get("extra_env") or {}
    return float(extra.get("DESTINATION_TIMEOUT_SECONDS") or isolation["defaults"]["DESTINATION_TIMEOUT_SECONDS"])


def _unaccounted(run: dict) -> int | None:
    if "faulty" not in run.get("destinations", ""):
        return None
    if "rows_unaccounted" in run:
        return run["rows_unaccounted"]
    landed = (run.get("faulty_landed") or {}).get("rows", 0)
    return run["events_offered"] - landed - (run.get("spooled_rows") or {}).get("faulty", 0)


def isolation_representatives(iso: dict) -> dict[str, dict]:
    """ISOLATION key -> its run; with several rounds (`--isolation-rounds`), the run whose
    events/s is the median of that key's (the lower middle for an even count)."""
    by_key: dict[str, list[dict]] = {}
    for r in iso.get("runs") or []:
        by_key.setdefault(r["set"], []).append(r)
    out = {}
    for key, group in by_key.items():
        middle = statistics.median_low(r["events_per_s"] for r in group)
        out[key] = next(r for r in group if r["events_per_s"] == middle)
    return out


def isolation_rounds(iso: dict) -> dict[int, dict[str, dict]]:
    """round -> ISOLATION key -> its run, in round order (results without rounds: one)."""
    rounds: dict[int, dict[str, dict]] = {}
    for r in iso.get("runs") or []:
        rounds.setdefault(r.get("round", 1), {})[r["set"]] = r
    return dict(sorted(rounds.items()))


def isolation_ratio(iso: dict, key: str, reference: str) -> tuple[float, list[float]] | None:
    """`key`'s events/s ÷ `reference`'s, round by round (runs of one round ran minutes apart at
    most): the median and each round's ratio, or None when either was not measured."""
    ratios = [
        runs[key]["events_per_s"] / runs[reference]["events_per_s"]
        for runs in isolation_rounds(iso).values()
        if key in runs and reference in runs and runs[reference]["events_per_s"]
    ]
    return (statistics.median(ratios), ratios) if ratios else None


def _ratio_cell(measured: tuple[float, list[float]], what: str) -> str:
    """One round: the ratio and the events/s it comes from (`what`); several: the rounds' ratios."""
    median, ratios = measured
    if len(ratios) < 2:
        return f"{median:.2f}× ({what})"
    each = ", ".join(f"{r:.2f}" for r in ratios)
    return f"{median:.2f}×, the median of {len(ratios)} rounds ({each})"


def render_isolation(iso: dict, matrix: list[dict] | None = None) -> list[str]:
    runs = isolation_representatives(iso)
    base = runs.get("baseline") or {}
    defaults = iso.get("defaults") or {}
    out: list[str] = []
    w = out.append
    w("## Isolation: a destination that never answers\n")
    w(
        f"`{iso.get('command')}` ({iso.get('date')}). Browser batches (50 events/request), {iso['connections']} "
        f"connections, {iso['warmup']:g} s warm-up then {iso['duration']:g} s measured, a fresh gunicorn "
        f"(`-w {iso['workers']}`, gevent) per run, the same Mixpanel double as above. The hanging destination is "
        "`tests/support/faulty.py` (`DESTINATIONS=mixpanel,tests.support.faulty:make`, `FAULTY_CONTROL` = a file "
        "containing `hang`): its write never returns until the file changes. It keeps hanging through the measured "
        "window and the proxy's drain on SIGTERM, and is switched back to `up` only once the proxy has stopped. "
        "(d) is the same destination working (`up`), to tell the hang's own cost from the row work any destination adds. "
        "Mixpanel forwarding is synchronous in all runs (it is not a row destination, `DELIVERY` does not apply "
        "to it). Defaults: `DESTINATION_TIMEOUT_SECONDS` "
        f"{defaults.get('DESTINATION_TIMEOUT_SECONDS', 15):g} s per attempt, `RETRY_MAX_ATTEMPTS` "
        f"{defaults.get('RETRY_MAX_ATTEMPTS', 5)}, `RETRY_MAX_SECONDS` {defaults.get('RETRY_MAX_SECONDS', 30):g} s, "
        f"`MAX_BUFFER_BYTES` {defaults.get('MAX_BUFFER_BYTES', 64 << 20) / (1 << 20):g} MiB per worker."
        + (
            f" (a), (b) and (d) ran {iso['rounds']} times (`--isolation-rounds`), every other round in reverse order;"
            " each shows its median run, and the ratios in the targets are the median of the rounds' (see below)."
            if iso.get("rounds", 1) > 1
            else ""
        )
        + "\n"
    )
    w(
        "Replies/s counts every reply whatever its status; events/s only 2xx replies. Latencies are wrk's over the "
        "measured window (every reply, any status); ratios are against (a). Statuses count every reply of the "
        "measured window (a wrk `response()` hook). Rows dead-lettered: rows in `DEAD_LETTER_DIR/faulty/*.ndjson`, "
        "counted when the load stopped (the destination still hanging) and again after the proxy drained and exited "
        "(SIGTERM, gunicorn's default 30 s graceful timeout; stop s is how long that took); rows offered = 50 × every "
        "request answered (preflight + warm-up + measured), so rows neither written nor dead-lettered (offered − "
        "landed − dead-lettered; nothing landed, the destination hangs) is a lower bound.\n"
    )
    w(
        "| run | replies/s | events/s (2xx) | p50 ms | p99 ms | max ms | p50 ÷ (a) | p99 ÷ (a) | replies by status "
        "| non-2xx | socket errors / timeouts | rows offered | rows dead-lettered: end of load → after drain "
        "| rows neither written nor dead-lettered | stop s | peak RSS / worker MiB |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|")
    for letter, key in zip("abcd", ISOLATION_KEYS, strict=True):
        r = runs.get(key)
        if r is None:
            continue
        is_base = key == "baseline"
        socket = sum(v for k, v in r["errors"].items() if k != "status_errors")
        faulty = "faulty" in r.get("destinations", "")
        spooled = (
            f"{_rows((r.get('spooled_during_load') or {}).get('rows')):,} → {_rows(r.get('spooled_rows')):,}" if faulty else "–"
        )
        title = f"({letter}) {r.get('title', key)}" + (" ⚠" if r.get("contaminated") else "")
        w(
            f"| {title} | {_num(r['replies_per_s'], 1)} | {_num(r['events_per_s'])} | {_num(r['p50_ms'], 1)} "
            f"| {_num(r['p99_ms'], 1)} | {_num(r['max_ms'], 1)} "
            f"| {'1×' if is_base else _ratio(r['p50_ms'], base.get('p50_ms'), 1)} "
            f"| {'1×' if is_base else _ratio(r['p99_ms'], base.get('p99_ms'), 1)} | {_statuses(r)} | {_non_2xx(r):,} "
            f"| {socket} | {_num(r['events_offered']) if faulty else '–'} | {spooled} "
            f"| {_num(_unaccounted(r))} | {r.get('stop_seconds', '–')} | {_rss(r)} |"
        )
    w("")
    reasons = [
        f"({letter}) " + ", ".join(f"`{why}` {n:,}" for why, n in runs[key]["spooled_reasons"].items())
        for letter, key in zip("abcd", ISOLATION_KEYS, strict=True)
        if (runs.get(key) or {}).get("spooled_reasons")
    ]
    if reasons:
        w("Dead-letter reasons, rows after the drain: " + "; ".join(reasons) + ".\n")
    w(isolation_summary(iso, matrix or []) + "\n")
    out.extend(render_isolation_rounds(iso))
    return out


def render_isolation_rounds(iso: dict) -> list[str]:
    """With several rounds: each round's events/s and ratios, so the spread shows."""
    rounds = isolation_rounds(iso)
    if len(rounds) < 2:
        return []
    out = [
        "| round | (a) events/s | (d) healthy | (b) hanging | (b) ÷ (a) | (b) ÷ (d) | (d) ÷ (a) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for number, row in rounds.items():
        cells = []
        for key in ("baseline", "healthy-batch", "hang-batch"):
            run = row.get(key)
            cells.append(_num(run["events_per_s"]) + (" ⚠" if run.get("contaminated") else "") if run else "–")
        pairs = [("hang-batch", "baseline"), ("hang-batch", "healthy-batch"), ("healthy-batch", "baseline")]
        ratios = [_ratio(row[a]["events_per_s"], row[b]["events_per_s"]) if a in row and b in row else "–" for a, b in pairs]
        out.append(f"| {number} | " + " | ".join(cells + ratios) + " |")
    out.append("")
    return out


def isolation_summary(iso: dict, matrix: list[dict]) -> str:
    """Three sentences on what the numbers show, written from the numbers."""
    runs = isolation_representatives(iso)
    base, batch, sync = runs.get("baseline"), runs.get("hang-batch"), runs.get("hang-sync")
    if not (base and batch and sync):
        return ""
    answered = batch["wrk"]["requests"]
    sentences = [
        f"**Batch (b):** the request only appends to the destination's buffer, so the hanging destination does not "
        f"hold up the Mixpanel-path reply: p50 {batch['p50_ms']:.1f} ms and p99 {batch['p99_ms']:.1f} ms are "
        f"{batch['p50_ms'] / base['p50_ms']:.1f}× and {batch['p99_ms'] / base['p99_ms']:.1f}× (a)'s, max "
        f"{batch['max_ms']:.0f} ms, {answered - _non_2xx(batch):,} of {answered:,} replies 2xx"
    ]
    ref = {r["set"]: r for r in matrix if r.get("scenario") == "browser" and r.get("p50_ms")}
    if "mixpanel" in ref and "files" in ref:
        sentences[0] += (
            ", about what any second destination costs on these CPUs (the matrix's Mixpanel + files: "
            f"{ref['files']['p50_ms'] / ref['mixpanel']['p50_ms']:.1f}× and "
            f"{ref['files']['p99_ms'] / ref['mixpanel']['p99_ms']:.1f}× Mixpanel only)"
        )
    sentences[0] += "."
    lost = _unaccounted(batch) or 0
    spooled = _rows(batch.get("spooled_rows"))
    sentence = (
        f"Of the {batch['events_offered']:,} rows it acknowledged for the destination, {spooled:,} reached the dead "
        f"letter ({_rows((batch.get('spooled_during_load') or {}).get('rows')):,} of them while under load)"
    )
    if lost > 0:
        sentence += (
            f" and at least **{lost:,} were neither written nor dead-lettered** when the proxy was stopped with the "
            f"destination still hanging (stopping took {batch.get('stop_seconds')} s"
            + (", i.e. the drain ran into gunicorn's 30 s graceful timeout" if (batch.get("stop_seconds") or 0) >= 29 else "")
            + "): acknowledged rows lost at shutdown."
        )
    else:
        sentence += ", so none were lost although the destination never answered."
    sentences.append(sentence)
    deadline = _deadline_s(sync, iso)
    non_2xx = _non_2xx(sync)
    total = sync["wrk"]["requests"]
    within = sync["max_ms"] <= deadline * 1000 * 1.1
    dispatch_cut = "timed out after" in (sync.get("preflight") or {}).get("reply", "")
    sentence = (
        f"**Sync (c):** every request waits for the destination, so every reply takes the deadline: p50 "
        f"{sync['p50_ms']:.0f} ms, max {sync['max_ms']:.0f} ms against `DESTINATION_TIMEOUT_SECONDS` = {deadline:g} s "
        f"({'bounded by it, within 10%' if within else '**beyond it**'}), which holds 32 connections to "
        f"{sync['replies_per_s']:.0f} replies/s"
    )
    if non_2xx:
        sentence += (
            f"; but {non_2xx:,} of {total:,} replies were non-2xx ({_statuses(sync)}) with "
            f"{_rows(sync.get('spooled_rows')):,} rows dead-lettered"
        )
        if dispatch_cut:
            sentence += (
                " (the reply says `timed out after "
                f"{deadline:g}s`: the request's deadline in `proxy/dispatch.py` fired before the delivery layer's own "
                f"{deadline:g} s cut-off could spool the rows), so the SDK is told to retry a batch that Mixpanel "
                "already accepted."
            )
        else:
            sentence += "."
    else:
        sentence += f", all {total:,} replies 2xx and {_rows(sync.get('spooled_rows')):,} rows dead-lettered."
    sentences.append(sentence)
    return " ".join(sentences)


def isolation_targets(iso: dict) -> list[str]:
    runs = isolation_representatives(iso)
    base, batch, sync = runs.get("baseline"), runs.get("hang-batch"), runs.get("hang-sync")
    rows: list[str] = []
    if base and batch:
        ok = batch["max_ms"] <= _deadline_s(batch, iso) * 1000 and not _non_2xx(batch)
        rows.append(
            f"| hanging destination, batch: Mixpanel-path reply not delayed beyond the deadline "
            f"({_deadline_s(batch, iso):g} s), all 2xx | p99 {batch['p99_ms']:.1f} ms "
            f"({batch['p99_ms'] / base['p99_ms']:.1f}× Mixpanel only), max {batch['max_ms']:.0f} ms, "
            f"{_non_2xx(batch)} non-2xx | {_verdict(ok)} |"
        )
    if batch:
        # Every hanging run must account for its rows, not only the one shown.
        hung = [r for r in iso["runs"] if r["set"] == "hang-batch"]
        worst = max(hung, key=lambda r: _unaccounted(r) or 0)
        lost = _unaccounted(worst) or 0
        runs_note = f" (the worst of {len(hung)} runs)" if len(hung) > 1 else ""
        rows.append(
            "| … and every row acknowledged for it is written or dead-lettered, also when stopped while it hangs "
            f"| {lost:,} of {worst['events_offered']:,} neither{runs_note} | {_verdict(lost <= 0)} |"
        )
    if sync:
        deadline = _deadline_s(sync, iso)
        bounded = sync["max_ms"] <= deadline * 1000 * 1.1
        rows.append(
            f"| hanging destination, sync: reply bounded by `DESTINATION_TIMEOUT_SECONDS` ({deadline:g} s, +10%) "
            f"| max {sync['max_ms']:.0f} ms | {_verdict(bounded)} |"
        )
        rows.append(
            f"| … and the SDK gets a 2xx (rows dead-lettered, not retried) | {_non_2xx(sync):,} of "
            f"{sync['wrk']['requests']:,} replies non-2xx | {_verdict(not _non_2xx(sync))} |"
        )
    return rows


def round_two(runs: list[dict], ceiling: dict[str, dict], isolation: dict) -> list[str]:
    """Performance round two: targets stated against the framework ceiling measured in the
    same run, plus the Node original as an anchor."""

    def run(set_key: str, scenario: str) -> dict | None:
        return next((r for r in runs if r.get("set") == set_key and r.get("scenario") == scenario and "events_per_s" in r), None)

    def vs(set_key: str, scenario: str, target: float, what: str, p99: float | None = None) -> str:
        mine, top = run(set_key, scenario), ceiling.get(scenario)
        if not mine or not top:
            return f"| {what} | ≥ {target}× ceiling | not measured | – |"
        ratio = _vs(mine, top)
        ok = None if not target else ratio >= target and (p99 is None or mine["p99_ms"] <= p99)
        extra = f", p99 {mine['p99_ms']:.0f} ms (≤ {p99:g})" if p99 is not None else ""
        goal = ("reported" if not target else f"≥ {target}× ceiling") + (f", p99 ≤ {p99:g} ms" if p99 else "")
        return (
            f"| {what} | {goal} | {ratio:.2f}× "
            f"({_num(mine['events_per_s'])} vs {_num(top['events_per_s'])} events/s){extra} | {_verdict(ok)} |"
        )

    out = [
        "## Targets (round two: against the framework ceiling, same run)\n",
        "| scenario | target | measured | verdict |",
        "|---|---|---|---|",
    ]
    out.append(vs("files", "browser", 0.35, "browser batches, Mixpanel + files", p99=100))
    for key in ("essential", "durable", "rowmodel"):
        out += bound_rows(key, run(key, "browser"), ceiling.get("browser"), run(BOUNDS[key].proxy, "browser"))
    out.append(vs("mixpanel", "browser", 0.5, "browser batches, Mixpanel only"))
    out += forwarding_budget(run("forward", "browser"), ceiling.get("browser"), run("mixpanel", "browser"))
    out += bound_rows("decode", run("decode", "browser"), ceiling.get("browser"), run(BOUNDS["decode"].proxy, "browser"))
    out.append(vs("files-batch", "single", 0.5, "single events, Mixpanel + files, `MIXPANEL_DELIVERY=batch`"))
    single = "single events"
    out += bound_rows(
        "durable", run("durable", "single"), ceiling.get("single"), run("files-batch", "single"), scenario=single, target=0.5
    )
    memory_title = "… the same with `BUFFER=memory` (lever 5 as the issue framed it, before the write-ahead buffer)"
    out.append(vs("files-batch-memory", "single", 0.5, memory_title))
    out += durability_cost(run("files-batch", "single"), run("files-batch-never", "single"), run("files-batch-memory", "single"))
    out += round_bound(run("files-batch", "single"), ceiling.get("single"))
    out += durability_at(run("files-batch-c96", "single"), run("files-batch-memory-c96", "single"), ceiling.get("single"))
    out.append(vs("files", "single", 0.0, "single events, Mixpanel + files, `sync` (reported, no target)"))
    out += hang_targets(isolation)
    out.append(memory_target(runs, isolation))
    node, files = run("node", "browser"), run("files", "browser")
    if node and files:
        ratio = _vs(files, node)
        out.append(
            f"| browser batches, Mixpanel + files ÷ the Node original (Mixpanel only) | ≥ 5× | {ratio:.2f}× "
            f"({_num(files['events_per_s'])} vs {_num(node['events_per_s'])}) | {_verdict(ratio >= 5)} |"
        )
        if essential := run("essential", "browser"):
            bound, passes = _vs(essential, node), _pass_ratios(essential, node)
            out.append(
                "| … the essential-work ceiling ÷ the Node original: the most any Mixpanel + files proxy on this stack "
                f"reaches | reported | {bound:.2f}× ({_num(essential['events_per_s'])} vs {_num(node['events_per_s'])}) "
                f"| {_settled(passes, 5) or _reach(bound, 5) + _confidence(passes)} |"
            )
    else:
        out.append("| Mixpanel + files ÷ the Node original | ≥ 5× | not measured (`--node-original DIR`) | – |")
    out.append("")
    return out


def _cpu_us_per_request(run: dict) -> float | None:
    requests = (run.get("wrk") or {}).get("ok_requests")
    return run["cpu_seconds"] / requests * 1e6 if run.get("cpu_seconds") and requests else None


def _object_budget(run: dict, store: str) -> int | None:
    """A run's object budget for one store: per flush interval, plus per BATCH_MAX_BYTES written
    and per hour boundary crossed where the run recorded them (older results.json files hold the
    interval budget only)."""
    return (run.get("object_budgets") or {}).get(store, run.get("object_budget"))


def forwarding_budget(forward: dict | None, top: dict | None, mixpanel: dict | None) -> list[str]:
    """What forwarding alone takes of the ceiling, and what the 0.5x target then leaves for
    the proxy's own work per request (CPU, all cores busy in every run)."""
    if not forward or not top:
        return ["| … forwarding alone: the forwarding ceiling | reported | not measured (`--sets forward`) | – |"]
    rows = [
        f"| … forwarding alone: the forwarding ceiling (`bench.ceiling:forwarder`) | reported "
        f"| {_vs(forward, top):.2f}× ({_num(forward['events_per_s'])} vs "
        f"{_num(top['events_per_s'])} events/s) | – |"
    ]
    c_top, c_fwd = _cpu_us_per_request(top), _cpu_us_per_request(forward)
    c_mp = _cpu_us_per_request(mixpanel) if mixpanel else None
    if c_top and c_fwd and c_mp:
        budget, spent = 2 * c_top - c_fwd, c_mp - c_fwd
        rows.append(
            f"| … CPU per request the 0.5× target leaves for the proxy's own work (2 × ceiling − forwarding ceiling) "
            f"against what it spends (Mixpanel only − forwarding ceiling) | spent ≤ budget | budget {budget:,.0f} µs "
            f"(2 × {c_top:,.0f} − {c_fwd:,.0f}), spent {spent:,.0f} µs ({spent / budget:.1f}× the budget) "
            f"| {_verdict(spent <= budget)} |"
        )
        rows.append(
            f"| browser batches, Mixpanel only ÷ the forwarding ceiling (proposed) | reported "
            f"| {_vs(mixpanel, forward):.2f}× ({_num(mixpanel['events_per_s'])} vs "
            f"{_num(forward['events_per_s'])} events/s) | – |"
        )
    return rows


class Bound(NamedTuple):
    """A reference app of bench/ceiling.py that bounds every proxy of a kind (`--sets <its set>`)."""

    ceiling: str
    app: str  # bench.ceiling:<app>
    lead: str  # what it does
    kind: str  # the proxies it bounds
    proxy: str  # the set read against it
    target: float  # the round-two target (× the framework ceiling)
    proposed: float | None  # the share of the bound proposed instead (None: the share is reported)


BOUNDS = {
    # The Mixpanel-only proxy's floor: the 0.5x target for Mixpanel only.
    "decode": Bound("the decoding ceiling", "decoder", "forwarding plus decoding", "Mixpanel-only", "mixpanel", 0.5, 0.8),
    # Forwarding plus the least row work (decode, one orjson line per record, ISA-L gzip): the 0.35x target.
    "essential": Bound(
        "the essential-work ceiling",
        "essentials",
        "forwarding plus the least row work",
        "Mixpanel + files",
        "files",
        0.35,
        0.5,
    ),
    # The same, as durable as the proxy's default (`BUFFER=disk`, `BUFFER_FSYNC=10`); the 0.35x
    # target was set before the write-ahead buffer existed, and Mixpanel + files runs that default.
    "durable": Bound(
        "the durable essential-work ceiling",
        "durable",
        "the least row work, durable as the default `BUFFER=disk` (each request fsynced before its reply)",
        "durable Mixpanel + files",
        "files",
        0.35,
        0.6,
    ),
    # The same, doing the row work this proxy's contracts ask (the README's row model, the IP added)
    # and sending Mixpanel what docs/wire-formats.md says (the SDK's JSON, gzipped): a bound on
    # this proxy, not on any proxy (bench/ceiling.py; tests/test_bench_bounds.py keeps it honest).
    "rowmodel": Bound(
        "the row-model ceiling",
        "rowmodel",
        "the same, storing the proxy's own rows and sending Mixpanel its gzipped body",
        "durable Mixpanel + files proxy with this row model and wire format; not of any",
        "files",
        0.35,
        0.7,
    ),
}


def bound_rows(
    sets: str,
    bound_run: dict | None,
    top: dict | None,
    proxy: dict | None,
    *,
    scenario: str = "browser batches",
    target: float | None = None,
) -> list[str]:
    """BOUNDS[sets] (its run: `bound_run`) against its round-two target (or `target`, for
    another scenario's), and the share of it the proxy's run reaches, against the proposed
    target or reported."""
    ceiling, app, lead, kind, _, bound_target, proposed = BOUNDS[sets]
    if target is not None:  # another scenario: its own target, and the share reported
        bound_target, proposed = target, None
    where = "" if scenario == "browser batches" else f"{scenario}, "
    if not bound_run or not top:
        return [f"| … {where}{lead}: {ceiling} | reported | not measured (`--sets {sets}`) | – |"]
    ratio = _vs(bound_run, top)
    # How close to the bound itself the target sits: a proxy doing anything beyond the bound's work stays below it.
    headroom = f": the target is {_percent(bound_target / ratio)} of this bound" if ratio >= bound_target else ""
    passes = _pass_ratios(bound_run, top)
    verdict = _settled(passes, bound_target) or f"{_reach(ratio, bound_target)}{_confidence(passes)}{headroom}"
    rows = [
        f"| … {where}{lead}: {ceiling} (`bench.ceiling:{app}`), a bound on any {kind} proxy | reported "
        f"| {_against(ratio, bound_target)}× ({_num(bound_run['events_per_s'])} vs {_num(top['events_per_s'])} events/s) "
        f"| {verdict} |"
    ]
    if proxy:
        share, shares = _vs(proxy, bound_run), _pass_ratios(proxy, bound_run)
        goal, verdict = ("reported", "–") if proposed is None else (f"≥ {proposed}×", _met(shares, share, proposed))
        label = f"{scenario}, {set_title(proxy['set'])} ÷ {ceiling}" + ("" if proposed is None else " (proposed)")
        rows.append(
            f"| {label} | {goal} "
            f"| {share:.2f}× ({_num(proxy['events_per_s'])} vs {_num(bound_run['events_per_s'])} events/s) "
            f"| {verdict} |"
        )
    return rows


def durability_cost(disk: dict | None, never: dict | None, memory: dict | None) -> list[str]:
    """What acknowledging on disk (`BUFFER=disk`, the default) costs single events, against the
    same run with `BUFFER=memory`: the append per request (`BUFFER_FSYNC=never` shows it
    alone), then the group fsync and each reply's wait for it."""
    if not disk or not memory:
        return []
    rows = []
    if never:
        rows.append(
            "| … `BUFFER_FSYNC=never` ÷ `BUFFER=memory`: the write-ahead append alone (frame, compress, write) "
            f"| reported | {_vs(never, memory):.2f}× ({_num(never['events_per_s'])} vs {_num(memory['events_per_s'])}) | – |"
        )
    rows.append(
        f"| … `BUFFER=disk` (default, `BUFFER_FSYNC={disk.get('buffer_fsync', 10)}`) ÷ `BUFFER=memory`: the append, "
        "the group fsync and each reply's "
        f"wait for it | reported | {_vs(disk, memory):.2f}× ({_num(disk['events_per_s'])} vs {_num(memory['events_per_s'])}), "
        f"p50 {disk['p50_ms']:.1f} ms against {memory['p50_ms']:.1f} ms | – |"
    )
    return rows


def _fsync_ms(run: dict) -> float | None:
    """The run's fsync interval in ms; None unless its replies wait for interval rounds."""
    if run.get("buffer") != "disk" or not run.get("buffer_fsync"):
        return None
    try:
        ms = parse_fsync(str(run["buffer_fsync"]))
    except ValueError:
        return None
    return ms or None  # never (None) and always (0) have no interval


def round_bound(disk: dict | None, top: dict | None) -> list[str]:
    """What `BUFFER_FSYNC`'s interval allows clients that wait for each reply: a request is
    answered after the first round that starts once it is appended, so each connection gets
    at most one reply per round, and rounds start at most once per interval."""
    if not disk or not top or not disk.get("requests_per_s") or not (ms := _fsync_ms(disk)):
        return []
    per_request = disk["events_per_s"] / disk["requests_per_s"]
    bound = disk["connections"] * 1000 / ms * per_request
    share = bound / top["events_per_s"]
    return [
        f"| … its fsync-round bound: a client that waits for each reply gets one per round, so "
        f"{disk['connections']} connections × {1000 / ms:g} rounds/s (`BUFFER_FSYNC={disk['buffer_fsync']}`) allow "
        f"{_num(bound)} events/s whatever the CPU | reported | {share:.2f}× the ceiling; `BUFFER=disk` reached "
        f"{_percent(disk['events_per_s'] / bound)} of it | {_reach(share, 0.5)} at {disk['connections']} connections |"
    ]


def durability_at(disk: dict | None, memory: dict | None, top: dict | None) -> list[str]:
    """The buffer's cost where its round bound is above what the CPU allows (more connections)."""
    if not disk or not memory:
        return []
    ratio = _vs(disk, memory)
    vs_top = f"; {_vs(disk, top):.2f}× the ceiling (measured at {top.get('connections', '?')} connections)" if top else ""
    return [
        f"| … at {disk['connections']} connections, where that bound is above what the CPU allows: `BUFFER=disk` ÷ "
        f"`BUFFER=memory`, what the buffer costs in CPU | ≥ 0.85× (proposed) | {ratio:.2f}× "
        f"({_num(disk['events_per_s'])} vs {_num(memory['events_per_s'])}), p50 {disk['p50_ms']:.1f} ms against "
        f"{memory['p50_ms']:.1f} ms{vs_top} | {_verdict(ratio >= 0.85)} |"
    ]


def _against(ratio: float, target: float) -> str:
    """`ratio` to two places, or three where two would round it onto `target` (0.348 is not 0.35)."""
    return f"{ratio:.3f}" if round(ratio, 2) == target and ratio != target else f"{ratio:.2f}"


def _reach(bound: float, target: float) -> str:
    """Whether a bound on every proxy of its kind leaves room for a target."""
    return f"**{target}× out of reach**" if bound < target else f"{target}× within reach"


CONFIDENCE = 0.95  # of the interval a bound's median is settled by (`median_interval`)


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """The distribution-free confidence interval for the median of `values` (order statistics,
    the sign test's interval): the k-th smallest to the k-th largest, k as large as keeps the
    coverage 1 − 2·P(Binomial(n, ½) < k) at `confidence` or above. Few values allow no k but 1:
    the range is then the interval, at the coverage it has (3 passes: 75%, 6: 96.9%); from 9
    values on, the interval leaves the extremes out, so one stray pass no longer decides.
    Returns (low, high, coverage)."""
    ordered, n = sorted(values), len(values)

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k + 1 <= n - k and coverage(k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], coverage(k)


def _met(passes: list[float], ratio: float, target: float) -> str:
    """A proposed target's verdict on the proxy's share of a bound, by the same interval as
    the bounds' (`_settled`): met or missed with its confidence, or not settled."""
    return _settled(passes, target, "so the proxy is about on it") or _verdict(ratio >= target) + _confidence(passes)


def _settled(passes: list[float], target: float, conclusion: str = "so the target is about this bound") -> str | None:
    """None, or what to say instead of `_reach` when the confidence interval for a bound's
    median (`median_interval`) holds its target: which side the median lands on is then
    the machine's noise."""
    if not passes:
        return None
    low, high, coverage = median_interval(passes)
    if low < target <= high:
        shown = ", ".join(_places(r) for r in passes)
        return (
            f"not settled: the passes ({shown}) put the median between {_places(low)}× and {_places(high)}× "
            f"({_percent(coverage, 1)} confidence), and {target}× within that, {conclusion}"
        )
    return None


def _confidence(passes: list[float]) -> str:
    """The interval a settled verdict rests on, as a parenthesis ('' for one pass)."""
    if len(passes) < 2:
        return ""
    low, high, coverage = median_interval(passes)
    return f" (median {_places(low)}-{_places(high)}×, {_percent(coverage, 1)} confidence, {len(passes)} passes)"


def _places(ratio: float) -> str:
    return f"{ratio:.3f}" if ratio < 1 else f"{ratio:.2f}"


def hang_targets(isolation: dict) -> list[str]:
    """The hanging destination against Mixpanel only (the issue's target), the bound the same
    destination working sets on that, and the hang against it working (what the hang itself costs)."""
    iso = isolation_representatives(isolation)
    hang = isolation_ratio(isolation, "hang-batch", "baseline")
    if hang is None:
        return ["| browser batches, Mixpanel + a destination that hangs | ≥ 0.8× without it | not measured (`--isolation`) | – |"]

    def events(key: str, reference: str) -> str:
        return f"{_num(iso[key]['events_per_s'])} vs {_num(iso[reference]['events_per_s'])}"

    out = [
        f"| browser batches, Mixpanel + a destination that hangs | ≥ 0.8× the same run without it "
        f"| {_ratio_cell(hang, events('hang-batch', 'baseline'))} "
        f"| {_verdict(hang[0] >= 0.8)} |"
    ]
    healthy = isolation_ratio(isolation, "healthy-batch", "baseline")
    if healthy is not None:
        reach = "**0.8× out of reach**: " if healthy[0] < 0.8 else ""
        out.append(
            "| … the bound: the same destination working, ÷ Mixpanel only (the rows any destination takes cost this "
            f"much before it hangs) | – | {_ratio_cell(healthy, events('healthy-batch', 'baseline'))} "
            f"| {reach}{'a hang can at most match this' if reach else 'within reach'} |"
        )
    itself = isolation_ratio(isolation, "hang-batch", "healthy-batch")
    if itself is not None:
        out.append(
            f"| … the same, ÷ that destination healthy (what a hang itself costs) | ≥ 0.9× (proposed) "
            f"| {_ratio_cell(itself, events('hang-batch', 'healthy-batch'))} "
            f"| {_verdict(itself[0] >= 0.9)} |"
        )
    return out


def memory_target(runs: list[dict], isolation: dict) -> str:
    """Every proxy run's peak RSS per worker against what MAX_BUFFER_BYTES allows: the
    Mixpanel-only run (nothing buffered) plus, per buffering destination, its buffer, the
    chunk a flush holds and a spill being written (3 x MAX_BUFFER_BYTES)."""
    limit_mib = (isolation.get("defaults") or {}).get("MAX_BUFFER_BYTES", 64 << 20) / (1 << 20)
    references = ("node", *CEILING_SETS)
    measured = [(f"{r.get('set')}-{r.get('scenario')}", _peak_mib(r)) for r in runs if r.get("set") not in references]
    measured += [(f"isolation {r.get('set')}", _peak_mib(r)) for r in isolation.get("runs") or []]
    measured = [(name, mib) for name, mib in measured if mib is not None]
    base = [mib for name, mib in measured if name.startswith("mixpanel-") or name == "isolation baseline"]
    if not measured or not base:
        return "| peak RSS per worker, every proxy run | bounded by `MAX_BUFFER_BYTES` | not measured | – |"
    bound = max(base) + 3 * limit_mib
    name, worst = max(measured, key=lambda item: item[1])
    return (
        f"| peak RSS per worker, every proxy run (hanging destination and `MIXPANEL_DELIVERY=batch` included) "
        f"| ≤ Mixpanel only + 3 × `MAX_BUFFER_BYTES` ({max(base):.0f} + {3 * limit_mib:.0f} = {bound:.0f} MiB) "
        f"| worst {worst:.0f} MiB ({name}) | {_verdict(worst <= bound)} |"
    )


# --- the write-ahead buffer's cost ------------------------------------------------------------------


def _policy(run: dict) -> str:
    env = run.get("buffer_env") or {}
    if env.get("BUFFER") != "disk":
        return "`BUFFER=memory`"
    return f"`BUFFER=disk`, `BUFFER_FSYNC={env.get('BUFFER_FSYNC', 'default')}`"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _by_policy(buf: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for run in buf["runs"]:
        groups.setdefault(_policy(run), []).append(run)
    return groups


def buffer_baseline(buf: dict, field: str = "events_per_s") -> float | None:
    """The BUFFER=memory mean (every memory run of the sequence)."""
    return _mean([r[field] for r in _by_policy(buf).get("`BUFFER=memory`", [])])


def render_buffer(buf: dict) -> list[str]:
    out: list[str] = []
    w = out.append
    base, p99_base = buffer_baseline(buf), buffer_baseline(buf, "p99_ms")
    defaults = buf.get("defaults") or {}
    w("## Write-ahead buffer: what `BUFFER=disk` costs\n")
    w(
        f"`{buf.get('command')}` ({buf.get('date')}). Browser batches (50 events/request), {buf['connections']} "
        f"connections, {buf['warmup']:g} s warm-up then {buf['duration']:g} s measured, `DESTINATIONS="
        f"{buf['destinations']}`, a fresh gunicorn (`-w {buf['workers']}`, gevent) per run. The runs go in the order "
        f"listed ({buf.get('rounds', 1)} round(s); every other round reversed, or with one round `BUFFER=memory` once "
        "more at the end), so drift of this shared machine shows as the spread of the memory runs. With "
        "`BUFFER=disk` every reply waits until the request's rows are in a segment file and, unless "
        "`BUFFER_FSYNC=never`, until an fsync covering them has finished. fsync rounds: (group) fsyncs in the measured "
        "window; kernel: the share of the proxy's CPU spent in the kernel; fsync ms: their mean duration "
        "(a slow or throttled disk lengthens every reply's wait); disk MiB: what the proxy's processes caused to be "
        "written to storage in it (`/proc/<pid>/io` "
        "`write_bytes` − `cancelled_write_bytes`: segments and lake objects, less what was deleted before it reached "
        "the disk). Rows landed are counted after the drain (SIGTERM); segments left "
        f"must be 0. Defaults: `BUFFER={defaults.get('BUFFER')}`, `BUFFER_FSYNC={defaults.get('BUFFER_FSYNC')}`.\n"
    )
    w(
        "| # | run | events/s | ÷ memory | p50 ms | p99 ms | p99 ÷ memory | CPU-s / 10k events | kernel | fsync rounds/s "
        "| fsync ms | disk MiB/s | rows landed ≥ acked | segments left | other jobs CPU-s | errors |"
    )
    w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
    for r in buf["runs"]:
        seconds = r["wrk"]["seconds"]
        rows = (r.get("rows") or {}).get("files")
        ok = rows is not None and rows >= r["events_sent"]
        w(
            f"| {r.get('order', '')} | {_policy(r)}{' ⚠' if r.get('contaminated') else ''} | {_num(r['events_per_s'])} "
            f"| {_ratio(r['events_per_s'], base)} | {_num(r['p50_ms'], 1)} | {_num(r['p99_ms'], 1)} "
            f"| {_ratio(r['p99_ms'], p99_base)} | {r.get('cpu_s_per_10k_events', 0):.2f} "
            f"| {_percent(r.get('kernel_share'))} "
            f"| {_num(r.get('fsync_rounds', 0) / seconds)} | {_num(r.get('fsync_mean_ms'), 2)} "
            f"| {r.get('disk_write_bytes', 0) / 2**20 / seconds:.1f} "
            f"| {_num(rows)} ≥ {_num(r['events_sent'])}: {_verdict(ok)} "
            f"| {r.get('segments_left', '–')} | {r['machine']['other_cpu_s']:.1f} | {_errors(r)} |"
        )
    w("")
    w(
        "⚠: other jobs on this shared machine took more than 10% of it during the run (the `other jobs CPU-s` "
        "column), or the host ran slow (its speed probe, in the CPU table above), even after a repeat; read those "
        "rows as noise, not as a cost.\n"
    )
    w("Per policy (means over its runs; the last column only over undisturbed runs):\n")
    w("| policy | runs | events/s | ÷ memory | p99 ms | p99 ÷ memory | CPU-s / 10k events | undisturbed runs: events/s |")
    w("|---|---:|---:|---:|---:|---:|---:|---|")
    for policy, group in _by_policy(buf).items():
        eps, p99 = _mean([r["events_per_s"] for r in group]), _mean([r["p99_ms"] for r in group])
        cpu = _mean([r.get("cpu_s_per_10k_events", 0) for r in group]) or 0
        spread = ", ".join(_num(r["events_per_s"]) for r in group)
        clean = ", ".join(_num(r["events_per_s"]) for r in group if not r.get("contaminated")) or "none"
        w(
            f"| {policy} | {len(group)} ({spread}) | {_num(eps)} | {_ratio(eps, base)} | {_num(p99, 1)} "
            f"| {_ratio(p99, p99_base)} | {cpu:.2f} | {clean} |"
        )
    w("")
    return out


def buffer_targets(buf: dict) -> list[str]:
    if not buf.get("runs"):
        return ["| `BUFFER=disk` with the default fsync policy costs ≤ 15% events/s (browser) | not run (`--buffer`) | – |"]
    base = buffer_baseline(buf)
    default = (buf.get("defaults") or {}).get("BUFFER_FSYNC")
    group = [r for r in buf["runs"] if (r.get("buffer_env") or {}) == {"BUFFER": "disk", "BUFFER_FSYNC": default}]
    eps = _mean([r["events_per_s"] for r in group])
    if not group or not base or eps is None:
        return [f"| `BUFFER=disk` with the default fsync policy (`{default}`) costs ≤ 15% events/s | not measured | – |"]
    cost = 1 - eps / base
    memory = _by_policy(buf).get("`BUFFER=memory`", [])
    disturbed = sum(1 for r in group + memory if r.get("contaminated"))
    return [
        f"| `BUFFER=disk` with the default fsync policy (`{default}`) costs ≤ 15% events/s (browser) "
        f"| {cost * 100:.1f}% ({_num(eps)} vs {_num(base)} with `BUFFER=memory`, means; {disturbed} of "
        f"{len(group) + len(memory)} of these runs disturbed by other jobs) | {_verdict(cost <= 0.15)} |"
    ]
