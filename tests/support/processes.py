"""Start and stop real server processes for tests: each in its own process group,
bound to 127.0.0.1, ready only when a real request succeeds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - not ready yet
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout}s (last error: {last!r})")


class Server:
    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None, log: Path | None = None):
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd or ROOT
        self.log_path = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.args, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


def scratch_dir(log: Path | None, name: str) -> str:
    """A folder next to the test's log (so inside its tmp_path), never the project root."""
    import tempfile

    return str((log.parent if log else Path(tempfile.mkdtemp(prefix="mpproxy-test-"))) / name)


def gunicorn(env: dict[str, str], port: int, workers: int = 2, log: Path | None = None) -> Server:
    """The proxy under real gunicorn with gevent workers, exactly as the Procfile runs it."""
    import requests

    args = [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", "-w", str(workers), "app:app"]
    server = Server(args, env={"PYTHONUNBUFFERED": "1", "BUFFER_DIR": scratch_dir(log, "buffer"), **env}, log=log).start()
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/ping", timeout=1).ok, 30, what="gunicorn proxy")
    except TimeoutError:
        server.stop()
        raise RuntimeError(f"gunicorn did not start:\n{server.log()[-3000:]}") from None
    return server


def flask_command(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run `flask --app app <args>` (setup, replay) as an operator would, with `env` on top."""
    return subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "app", *args],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
