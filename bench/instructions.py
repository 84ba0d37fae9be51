"""Instructions per request: what one request costs the worker's CPU, counted, not timed.

`.venv/bin/python -m bench.instructions [--scenario browser] [--set files] [--requests 200]`

Timings on a shared host move by 2x from one minute to the next (bench/RESULTS.md flags most
runs of a busy hour), so a change worth 5% cannot be told from noise by timing it. This
counts the machine instructions the proxy executes instead, with valgrind's callgrind:

* the proxy is built in one process (`app:app`, the set's environment as bench/harness.py
  gives it, the Mixpanel double of bench/procs.py as its upstream), without gunicorn or
  gevent: the request path itself, not the server;
* it serves `--warmup` requests of the scenario's bodies (bench/payloads.py, the scenario's
  path, Content-Type, Origin and Authorization) through its WSGI callable uncounted,
* then `--requests` more while callgrind counts (`callgrind_control -i on` / `-i off`);
  start-up and warm-up are not counted.

The count is the same to about 0.1% from run to run, on a busy host or a quiet one. It is a
measure of work, not of time: instructions differ in cost (a `rep movsb` copy counts each
byte), I/O waits count nothing, and background threads (flushers, the write-ahead buffer's
syncer) count what they execute meanwhile. Compare two commits with it, never two machines.
Needs valgrind (Debian package `valgrind`: installed with apt-get when missing).
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from werkzeug.test import EnvironBuilder

from bench import payloads, procs
from bench.harness import CEILING_APPS, SET_ENV, SETS, proxy_environment

READY, GO, DONE, EXIT = "ready", "go", "done", "exit"  # files the two processes signal with


def serve(args: argparse.Namespace) -> None:
    """Inside valgrind: build the app, warm up, then serve the counted requests."""
    control = Path(args.serve)
    scenario = payloads.SCENARIOS[args.scenario]
    bodies = [line.encode() for line in Path(args.bodies).read_text().splitlines() if line]
    if args.set in CEILING_APPS:  # a reference app of bench/ceiling.py, the floor the proxy is read against
        module, _, name = CEILING_APPS[args.set].partition(":")
        wsgi = getattr(importlib.import_module(module), name).wsgi_app
    else:
        import app as proxy_app  # after the environment is set: the app reads it at import

        wsgi = proxy_app.app.wsgi_app
    # What gunicorn's post_worker_init does in every worker, the ceiling's too (proxy/worker.py
    # `start`): freeze what start-up built and raise the young generation's threshold. Counted
    # without it, a request paid for collector passes a served worker does not make.
    from proxy.memory import tune_gc

    tune_gc()
    path, _, query = scenario.path.partition("?")
    headers = {"User-Agent": "bench.instructions"}
    if scenario.origin and not args.no_origin:
        headers["Origin"] = scenario.origin
    if scenario.authorization:
        headers["Authorization"] = scenario.authorization
    # The environ of each body, built once by werkzeug: a request only gets a fresh body stream.
    environs = [
        EnvironBuilder(
            path=path,
            query_string=query,
            method="POST",
            headers=headers,
            data=body,
            content_type=scenario.content_type,
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
        ).get_environ()
        for body in bodies
    ]
    statuses: list[str] = []

    def start_response(status: str, _headers: list, _exc: object = None) -> None:
        statuses.append(status)

    def request(number: int) -> None:
        index = number % len(bodies)
        # gunicorn hands the app its own body reader and says it ends where the body does
        # (`wsgi.input_terminated`), so werkzeug reads it as is, without a LimitedStream.
        environ = {**environs[index], "wsgi.input": io.BytesIO(bodies[index]), "wsgi.input_terminated": True}
        reply = wsgi(environ, start_response)
        b"".join(reply)
        getattr(reply, "close", lambda: None)()

    for number in range(args.warmup):
        request(number)
    if statuses and not statuses[-1].startswith("200"):
        raise SystemExit(f"the warm-up's last answer was {statuses[-1]}, not 200")
    (control / READY).write_text(str(os.getpid()))
    _await(control / GO)
    for number in range(args.requests):
        request(args.warmup + number)
    (control / DONE).touch()
    _await(control / EXIT)
    bad = [s for s in statuses if not s.startswith("200")]
    if bad:
        raise SystemExit(f"{len(bad)} answers were not 200: {bad[:3]}")
    os._exit(0)  # no interpreter teardown: nothing after the count matters


def _await(path: Path, timeout: float = 600.0) -> None:
    give_up = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > give_up:
            raise SystemExit(f"gave up waiting for {path.name}")
        time.sleep(0.02)


def count(args: argparse.Namespace) -> int:
    """Run `serve` under callgrind; returns the instructions counted over the requests."""
    if shutil.which("valgrind") is None:
        print("installing valgrind with apt-get", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True, env=env, stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as scratch:
        work = Path(scratch)
        nginx = procs.Nginx(work / "nginx").start()
        try:
            bodies = payloads.generate(work / "bodies")[args.scenario]["path"]
            destinations, _title = SETS[args.set]
            env = {
                **os.environ,
                # The reference apps read MIXPANEL_API_HOST only; the ceiling ignores it.
                **proxy_environment(destinations, nginx.mixpanel_port, work / "data", work / "spool", work / "buffer"),
                **SET_ENV.get(args.set, {}),
            }
            control = work / "control"
            control.mkdir()
            command = [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={args.out or os.devnull}",
                sys.executable,
                "-m",
                "bench.instructions",
                "--serve",
                str(control),
                "--bodies",
                bodies,
                *sys.argv[1:],
            ]
            log = work / "valgrind.log"
            with log.open("w") as stderr:
                child = subprocess.Popen(command, cwd=procs.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
                try:
                    _await_child(control / READY, child, log)
                    pid = (control / READY).read_text()
                    _control("on", pid)
                    (control / GO).touch()
                    _await_child(control / DONE, child, log)
                    _control("off", pid)
                    (control / EXIT).touch()
                    if child.wait(timeout=120) != 0:
                        raise SystemExit(f"the counted process failed:\n{procs.tail(log)}")
                finally:
                    if child.poll() is None:
                        child.kill()
            collected = re.search(r"Collected : (\d+)", log.read_text())
            if collected is None:
                raise SystemExit(f"callgrind reported no count:\n{procs.tail(log)}")
            return int(collected.group(1))
        finally:
            nginx.stop()


def _control(switch: str, pid: str) -> None:
    """Turn callgrind's counting on or off in the running process."""
    done = subprocess.run(["callgrind_control", "-i", switch, pid], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"callgrind_control -i {switch} failed: {done.stdout}{done.stderr}")


def _await_child(path: Path, child: subprocess.Popen, log: Path, timeout: float = 1800.0) -> None:
    give_up = time.monotonic() + timeout
    while not path.exists():
        if child.poll() is not None:
            raise SystemExit(f"the counted process exited with {child.returncode}:\n{procs.tail(log)}")
        if time.monotonic() > give_up:
            raise SystemExit(f"gave up waiting for {path.name}")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(payloads.SCENARIOS), default="browser")
    proxy_sets = sorted(k for k, (destinations, _) in SETS.items() if destinations)
    parser.add_argument(
        "--set",
        choices=[*CEILING_APPS, *proxy_sets],
        default="mixpanel",
        help="a destination set, as bench/harness.py's, or a reference app of bench/ceiling.py (ceiling, forward, ...)",
    )
    parser.add_argument("--requests", type=int, default=200, help="requests counted (default 200)")
    parser.add_argument("--warmup", type=int, default=100, help="requests served first, not counted (default 100)")
    parser.add_argument("--no-origin", action="store_true", help="leave out the Origin header browsers send")
    parser.add_argument("--out", help="keep callgrind's profile here (for callgrind_annotate)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--bodies", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    total = count(args)
    per_request = total / args.requests
    events = payloads.SCENARIOS[args.scenario].events_per_request
    origin = "" if args.no_origin or not payloads.SCENARIOS[args.scenario].origin else " + Origin"
    print(
        f"{args.scenario}{origin}, {SETS[args.set][1]}: {per_request:,.0f} instructions per request, "
        f"{per_request / events:,.0f} per event ({args.requests} requests after {args.warmup})"
    )


if __name__ == "__main__":
    main()
