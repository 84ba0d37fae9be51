"""The end-to-end suite's fixtures: one proxy under real gunicorn with every destination at
once (Mixpanel forwarded synchronously to the double, every other destination through the
delivery layer into its stand-in), and the matrix printed at the end of the run."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.destinations import Landing, land, merged_env
from tests.e2e.matrix import MATRIX
from tests.e2e.page import LIB_DIR
from tests.fixtures_core import self_signed_cert, start_gunicorn
from tests.support.mixpanel_double import MixpanelDouble
from tests.support.processes import Server

GRACEFUL_SECONDS = 15


@dataclass
class E2EProxy:
    server: Server
    url: str
    env: dict[str, str]
    landings: list[Landing]
    missing: dict[str, str]
    spool: Path
    started_at: float = field(default_factory=time.time)
    ca_file: str | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> int | None:
        return self.server.stop(timeout=GRACEFUL_SECONDS + 10)

    def log(self) -> str:
        return self.server.log()

    def dead_lettered(self) -> list[Path]:
        return sorted(p for p in self.spool.rglob("*") if p.is_file()) if self.spool.exists() else []


@pytest.fixture(scope="session", autouse=True)
def _matrix_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    MATRIX.path = tmp_path_factory.getbasetemp() / "e2e-matrix.md"
    yield


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = MATRIX.lines()
    if not lines:
        return
    terminalreporter.write_sep("-", "end to end: client × operation × destination (landed/sent)")
    for line in lines:
        terminalreporter.write_line(line)
    if MATRIX.path:
        terminalreporter.write_line(f"(written to {MATRIX.path})")


@pytest.fixture
def e2e_proxy(request: pytest.FixtureRequest, tmp_path: Path, mp: MixpanelDouble) -> Iterator[Callable[..., E2EProxy]]:
    """Start the proxy with Mixpanel and every destination; stopped (and the destinations
    cleaned up) after the test. Keyword arguments are extra proxy variables."""
    started: list[E2EProxy] = []

    def start(*, tls: bool = False, **extra: str) -> E2EProxy:
        n = len(started)
        unique = "e" + uuid.uuid4().hex[:10]
        landings, missing = land(request, unique)
        spool = tmp_path / f"spool{n}"
        env = {
            "DATA_DIR": str(tmp_path / f"data{n}"),
            **merged_env(landings),
            "DESTINATIONS": ",".join(["mixpanel", *(landing.name for landing in landings)]),
            "MIXPANEL_API_HOST": mp.url,
            "MIXPANEL_LIB_DIR": str(LIB_DIR),
            "DEAD_LETTER_DIR": str(spool),
            "DELIVERY": "batch",
            "BATCH_MAX_SECONDS": "1",
            "GRACEFUL_TIMEOUT": str(GRACEFUL_SECONDS),
            "ENVIRONMENT": "development",
            **{k.upper(): str(v) for k, v in extra.items()},
        }
        pair = self_signed_cert(tmp_path) if tls else None
        server = start_gunicorn(env, tmp_path / f"proxy{n}.log", workers=2, tls=pair)
        url = f"{'https' if tls else 'http'}://127.0.0.1:{server.port}"  # type: ignore[attr-defined]
        proxy = E2EProxy(server, url, env, landings, missing, spool, ca_file=str(pair[0]) if pair else None)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
        for landing in proxy.landings:
            landing.cleanup()
