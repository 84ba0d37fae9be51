"""Fixtures for the core-proxy suites: the proxy under real gunicorn (HTTP or HTTPS),
and readers for what the `files` destination wrote. Import the fixtures you use."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.processes import VENV_BIN, Server, free_port, scratch_dir, wait_until


@dataclass
class RunningProxy:
    server: Server
    url: str
    data_dir: Path
    log_path: Path
    ca_file: str | None = None

    def log(self) -> str:
        return self.server.log()

    def stop(self) -> int | None:
        return self.server.stop()


def start_gunicorn(env: dict[str, str], log: Path, *, workers: int = 1, tls: tuple[Path, Path] | None = None) -> Server:
    """Like tests.support.processes.gunicorn, optionally with TLS (the Node SDK sends secrets over HTTPS only)."""
    port = free_port()
    args = [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", "-w", str(workers)]
    if tls:
        args += ["--certfile", str(tls[0]), "--keyfile", str(tls[1])]
    env = {"PYTHONUNBUFFERED": "1", "BUFFER_DIR": scratch_dir(log, "buffer"), **env}
    server = Server([*args, "app:app"], env=env, log=log).start()
    server.port = port  # type: ignore[attr-defined]
    scheme = "https" if tls else "http"
    try:
        wait_until(
            lambda: requests.get(f"{scheme}://127.0.0.1:{port}/ping", timeout=1, verify=str(tls[0]) if tls else True).ok,
            30,
            what="gunicorn proxy",
        )
    except TimeoutError:
        server.stop()
        raise RuntimeError(f"gunicorn did not start:\n{server.log()[-3000:]}") from None
    return server


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def run_proxy(tmp_path: Path) -> Iterator[Callable[..., RunningProxy]]:
    """Start the proxy under gunicorn with the given environment; stopped after the test."""
    started: list[RunningProxy] = []

    def start(*, tls: bool = False, workers: int = 1, **env: str) -> RunningProxy:
        n = len(started)
        data_dir = tmp_path / f"data{n}"
        values = {"DATA_DIR": str(data_dir), "DEAD_LETTER_DIR": str(tmp_path / f"spool{n}"), "DELIVERY": "sync"}
        # Idle keep-alive connections (SDK sessions) hold a gevent worker for the whole graceful timeout.
        values["GRACEFUL_TIMEOUT"] = "5"
        values.update({k.upper(): str(v) for k, v in env.items()})
        pair = self_signed_cert(tmp_path) if tls else None
        log = tmp_path / f"gunicorn{n}.log"
        server = start_gunicorn(values, log, workers=workers, tls=pair)
        scheme = "https" if tls else "http"
        proxy = RunningProxy(server, f"{scheme}://127.0.0.1:{server.port}", data_dir, log, str(pair[0]) if pair else None)  # type: ignore[attr-defined]
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def read_rows(data_dir: Path, table: str) -> list[dict[str, Any]]:
    """Every row the files destination wrote for `table`, checking the Hive-style layout."""
    rows: list[dict[str, Any]] = []
    for path in sorted((data_dir / table).rglob("*.json.gz")):
        parts = path.relative_to(data_dir / table).parts
        assert len(parts) == 3 and parts[0].startswith("dt=") and parts[1].startswith("hr="), path
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle if line.strip())
    return rows


def b64(value: Any) -> str:
    return base64.b64encode(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()).decode()


def b64_with(value: Any, *chars: str) -> str:
    """Base64 of `value`, checked to contain each of `chars` (the characters form parsers break)."""
    encoded = b64(value)
    missing = [c for c in chars if c not in encoded]
    assert not missing, f"test payload's base64 lacks {missing}: pick another payload"
    return encoded
