"""Processes the harness starts (nginx, gunicorn, moto, wrk, py-spy) and what it reads from /proc.

Every process is started in its own session and remembered; `stop_all()` ends exactly
those, by pid/process group id, and is called from a `finally` and from signal handlers.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.support.processes import free_port, wait_until  # noqa: F401 - shared with the test suite

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
CLK_TCK = os.sysconf("SC_CLK_TCK")
_started: list[subprocess.Popen] = []


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - 127.0.0.1 only
        return response.status == 200


def http_answers(url: str) -> bool:
    """Any HTTP answer at all (the Node original answers GET /track with 404)."""
    try:
        return http_ok(url)
    except urllib.error.HTTPError:
        return True


def start(args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.Popen:
    handle = open(log, "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        args, cwd=cwd, env={**os.environ, **(env or {})}, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    handle.close()
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 40.0) -> None:
    """Signal the process (it leads its own session), wait, then SIGKILL its process group."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of this group only (pgid == our child's pid)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(10)
    if proc in _started:
        _started.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(_started)):
        stop(proc, timeout=10)


# --- tools --------------------------------------------------------------------------------


def ensure_tools(log: Callable[[str], None]) -> None:
    """nginx and wrk from Debian; py-spy into the venv (bench/requirements.txt)."""
    missing = [pkg for pkg, binary in (("nginx-light", "nginx"), ("wrk", "wrk")) if shutil.which(binary) is None]
    if missing:
        log(f"installing {' '.join(missing)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdout=subprocess.DEVNULL)
    if not (VENV_BIN / "py-spy").exists():
        log("installing py-spy into .venv (bench/requirements.txt)")
        subprocess.run([str(VENV_BIN / "pip"), "install", "-q", "-r", str(ROOT / "bench" / "requirements.txt")], check=True)


# --- nginx: the Mixpanel double and the pass-through baseline --------------------------------

NGINX_CONF = """
worker_processes 2;
user root root;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 32m;
    client_body_buffer_size 16m;
    keepalive_requests 1000000;
    keepalive_timeout 75s;

    # The Mixpanel double: Mixpanel's answers, nothing else.
    server {{
        listen 127.0.0.1:{mixpanel_port};
        location ~ ^/(track|engage|groups)/?$ {{
            default_type text/plain;
            if ($arg_verbose ~ ^(1|true)$) {{ rewrite ^ /_verbose last; }}
            return 200 "1";
        }}
        location = /_verbose {{
            internal;
            default_type application/json;
            return 200 '{{"status":1,"error":null}}';
        }}
        location ~ ^/import/?$ {{
            default_type application/json;
            return 200 '{{"code":200,"num_records_imported":2000,"status":"OK"}}';
        }}
        location / {{ return 404; }}
    }}

    # The baseline: Mixpanel's own nginx tracking-proxy pattern, keepalive upstream.
    upstream mixpanel_double {{
        server 127.0.0.1:{mixpanel_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{passthrough_port};
        location / {{
            proxy_pass http://mixpanel_double;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.mixpanel_port = free_port()
        self.passthrough_port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> Nginx:
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(prefix=self.prefix, mixpanel_port=self.mixpanel_port, passthrough_port=self.passthrough_port)
        )
        self.proc = start(["nginx", "-p", str(self.prefix), "-c", str(conf)], self.prefix / "stdout.log")
        wait_until(lambda: http_ok(f"http://127.0.0.1:{self.mixpanel_port}/track?verbose=1"), 15, what="nginx Mixpanel double")
        wait_until(lambda: http_ok(f"http://127.0.0.1:{self.passthrough_port}/track?verbose=1"), 15, what="nginx pass-through")
        return self

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)] if self.proc else []

    def stop(self) -> None:
        stop(self.proc, signal.SIGQUIT, timeout=10)  # graceful shutdown of master + workers


# --- gunicorn ----------------------------------------------------------------------------------


class Gunicorn:
    """`gunicorn -c gunicorn.conf.py` on a free port; `app` is the WSGI spec (bench.ceiling:app for the ceiling)."""

    def __init__(self, env: dict[str, str], log: Path, workers: int = 2, app: str = "app:app") -> None:
        self.port = free_port()
        self.workers = workers
        self.env = env
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.command = [
            ".venv/bin/gunicorn",
            "-c",
            "gunicorn.conf.py",
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{self.port}",
            app,
        ]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Gunicorn:
        self.proc = start(self.command, self.log, env={"PYTHONUNBUFFERED": "1", **self.env})

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}: {tail(self.log)}")
            return len(self.worker_pids()) == self.workers and http_ok(self.url + "/ping")

        try:
            wait_until(ready, 60, what="gunicorn")
        except TimeoutError as exc:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}: {tail(self.log)}") from None
            raise RuntimeError(str(exc)) from None
        return self

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid) if self.proc else []

    def all_pids(self) -> list[int]:
        return [self.proc.pid, *self.worker_pids()] if self.proc else []

    def stop(self) -> int | None:
        stop(self.proc, signal.SIGTERM, timeout=45)  # workers drain their buffers on SIGTERM
        return self.proc.returncode if self.proc else None


class NodeOriginal:
    """The seed's Node proxy as an anchor: DIR is copied (never modified), the hard-coded
    `https://api.mixpanel.com` in middleware/mixpanel.js is pointed at the double, its npm
    dependencies are installed, and `node server.js` runs with DESTINATIONS=mixpanel.
    Nothing of it is committed here."""

    def __init__(self, source: Path, work: Path, mixpanel_url: str, log: Path) -> None:
        self.source = source
        self.work = work
        self.mixpanel_url = mixpanel_url
        self.log = log
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        if not (self.work / "node_modules").is_dir():
            shutil.rmtree(self.work, ignore_errors=True)
            shutil.copytree(self.source, self.work, ignore=shutil.ignore_patterns(".git", "node_modules"))
            npm = ["npm", "install", "--omit=dev", "--no-audit", "--no-fund"]
            subprocess.run(npm, cwd=self.work, check=True, capture_output=True)
        module = self.work / "middleware" / "mixpanel.js"
        text = module.read_text()
        text = re.sub(r"const BASE_URL = [^;\n]+;?", f"const BASE_URL = {json.dumps(self.mixpanel_url)};", text, count=1)
        module.write_text(text)

    def start(self) -> NodeOriginal:
        self.prepare()
        env = {"PORT": str(self.port), "NODE_ENV": "prod", "DESTINATIONS": "mixpanel", "RUNTIME": "LOCAL"}
        self.proc = start(["node", "server.js"], self.log, env=env, cwd=self.work)
        wait_until(lambda: http_answers(self.url + "/track?verbose=1"), 60, what="the Node original")
        return self

    def all_pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)] if self.proc else []

    def stop(self) -> None:
        stop(self.proc, signal.SIGTERM, timeout=15)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- /proc ------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """(utime + stime, stime) of the given processes, all their threads, not their reaped children."""
    total = kernel = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5): utime, stime
        kernel += int(fields[12])
    return total / CLK_TCK, kernel / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes (not of their reaped children)."""
    return cpu_times(pids)[0]


def speed_probe() -> float:
    """Milliseconds a fixed piece of pure-Python work takes here (the best of three). A
    neighbour on the same host (this is a VM) slows every process down without showing in
    /proc/stat; this shows it: the same work simply takes longer."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(300_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return best * 1000


def machine_busy_seconds() -> float:
    """Busy CPU time of the whole machine so far (all CPUs), from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU of this process's reaped children (wrk), from getrusage."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def io_write_bytes(pids: list[int]) -> int:
    """Bytes the given processes caused to be written to storage: /proc/<pid>/io `write_bytes`
    (counted when a page is dirtied) minus `cancelled_write_bytes` (dirty pages of files deleted
    or truncated before they were written back, as most write-ahead segments are)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/io") as handle:
                for line in handle:
                    if line.startswith("write_bytes:"):
                        total += int(line.split()[1])
                    elif line.startswith("cancelled_write_bytes:"):
                        total -= int(line.split()[1])
        except OSError:
            continue
    return total


def status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
