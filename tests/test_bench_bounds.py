"""The row-model ceiling (bench/ceiling.py `rowmodel`) bounds this proxy only if it does the
same row work: its stored lines must be the proxy's rows, byte for byte, and the body it sends
Mixpanel the one the proxy sends, for the bench's own bodies."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import ceiling, payloads
from core.records import normalize, sent_as_is
from core.settings import Settings
from destinations.rows import encode_lines, to_rows
from destinations.schema import build_schemas
from proxy.payloads import decode

RECEIVED = 1_796_518_608.25
IP = "203.0.113.9"
QUERY = {"verbose": "1", "ip": "1"}


@pytest.fixture(scope="module")
def bodies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[bytes]]:
    info = payloads.generate(tmp_path_factory.mktemp("bodies"))
    return {name: [line.encode() for line in Path(info[name]["path"]).read_text().splitlines()] for name in ("browser", "single")}


def proxy_lines(body: bytes) -> bytes:
    records = normalize("track", decode(body, QUERY).items, client_ip=IP, ip_enabled=True, token=None, received_at=RECEIVED)
    batch = to_rows(records, build_schemas(Settings.from_mapping({})))
    assert list(batch.tables) == ["events"] and not batch.dropped
    return b"".join(line + b"\n" for _, line in encode_lines(batch.tables["events"]))


@pytest.mark.parametrize("scenario", ["browser", "single"])
def test_the_row_model_ceiling_stores_the_proxys_rows_and_forwards_its_body(bodies: dict, scenario: str) -> None:
    for body in bodies[scenario]:
        decoded = decode(body, QUERY)
        # The proxy forwards these bodies as the SDK sent them (lever 3), as the bound does.
        assert decoded.raw is not None and sent_as_is("track", decoded.items, None)
        lines = ceiling.row_lines(decoded.items, IP, RECEIVED)
        assert lines == proxy_lines(body)
        assert lines.count(b"\n") == len(decoded.items) == payloads.SCENARIOS[scenario].events_per_request
