"""Records: what the SDK sent, normalised once, then never mutated.

Normalisation is the only change the proxy makes to a record (docs/architecture.md):
the client IP (unless `ip=0`), the configured `MIXPANEL_TOKEN`, and a receive time
for events without `time`. Everything else is passed on exactly as decoded.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, NamedTuple

Kind = Literal["event", "user", "group"]
ENDPOINT_KINDS: dict[str, Kind] = {"track": "event", "import": "event", "engage": "user", "groups": "group"}


class Record(NamedTuple):
    """One SDK record. `payload` is shared by every destination: treat it as read-only.

    A named tuple, immutable as a frozen dataclass is, but built in a third of the time
    (0.6 against 1.5 µs: a frozen dataclass sets each field through `object.__setattr__`),
    and a browser batch builds 50 of them per request."""

    kind: Kind
    payload: Any  # normally a dict; odd items (e.g. `null`) are kept so Mixpanel can judge them
    received_at: float  # epoch seconds
    client_ip: str | None = None


@dataclass(frozen=True, slots=True)
class Ingest:
    """One decoded request, as every destination sees it."""

    endpoint: str  # track | engage | groups | import
    records: tuple[Record, ...]
    client_ip: str | None = None
    # Forwarded upstream as is (Mixpanel /import auth); never logged.
    authorization: str | None = None
    # Query parameters Mixpanel understands for this endpoint (project_id, strict, ...).
    upstream_params: tuple[tuple[str, str], ...] = ()
    # The row model of `records`, computed once per request for every row destination
    # (destinations.rows.RowBatch; typed loosely so records stay free of destination imports).
    rows: Any = None
    # Where the request's rows sit in the write-ahead buffer (destinations.wal.Ticket), when
    # BUFFER=disk: the delivery layer acknowledges them against it once they are delivered.
    ticket: Any = None
    # The records' NDJSON lines (bytes), encoded once per request when a destination buffers
    # SDK-shaped records (Mixpanel with MIXPANEL_DELIVERY=batch) for it and the write-ahead buffer.
    record_lines: tuple[bytes, ...] | None = None
    # The SDK's own JSON array, when its records went through unchanged but for the client IP
    # (`sent_as_is`): what Mixpanel is sent, forwarded synchronously, instead of re-encoding them.
    sent_json: bytes | None = None


def _valid_ip(text: str) -> str | None:
    # The same clients and proxies send request after request: parsed once each. Only what
    # can be an address is remembered, so hostile headers cannot fill the cache with long keys.
    return _address(text) if len(text) <= 64 else _parse_address(text)


@lru_cache(maxsize=4096)
def _address(text: str) -> str | None:
    return _parse_address(text)


def _parse_address(text: str) -> str | None:
    candidate = text.strip()
    if candidate.startswith("[") and "]" in candidate:  # [v6]:port
        candidate = candidate[1 : candidate.index("]")]
    elif candidate.count(":") == 1:  # v4:port
        candidate = candidate.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def client_ip(forwarded_for: str | None, remote_addr: str | None, trusted_hops: int) -> str | None:
    """The client address: `trusted_hops` proxies in front of us each appended one entry to
    X-Forwarded-For, so the client is the entry that many places from the right. Entries left
    of it are client-supplied and cannot be trusted; with no usable header, the peer address."""
    if trusted_hops > 0 and forwarded_for:
        hops = [h for h in forwarded_for.split(",") if h.strip()]
        if hops:
            chosen = hops[-trusted_hops] if len(hops) >= trusted_hops else hops[0]
            ip = _valid_ip(chosen)
            if ip:
                return ip
    return _valid_ip(remote_addr) if remote_addr else None


def _normalize_profile(item: dict, ip: str | None, token: str | None, with_ip: bool) -> dict:
    if token:
        item["$token"] = token
    if with_ip and ip and "$ip" not in item:
        item["$ip"] = ip
    return item


def sent_as_is(endpoint: str, items: Iterable[Any], token: str | None) -> bool:
    """Whether normalize() would change these items only by adding the client IP. Mixpanel
    also gets that IP in X-Forwarded-For with `ip=1`, as its own tracking proxy sends it, so
    the SDK's JSON can then go to Mixpanel as it came. Ask before normalising, which completes
    the items in place. Never for /import (no `ip=1` there: its events keep their `ip`) nor
    with `MIXPANEL_TOKEN` (it rewrites every record); events must carry `properties` with a
    `time`, as mixpanel-browser's do. A TRANSFORM is the caller's to rule out."""
    if token or endpoint not in _SENT_AS_IS:
        return False
    if ENDPOINT_KINDS[endpoint] != "event":
        return True  # a profile update only gets `$ip`
    for item in items:
        if isinstance(item, dict):
            props = item.get("properties")
            if props is None or (isinstance(props, dict) and "time" not in props):
                return False  # normalize adds `properties` or `time`
    return True


# The endpoints whose upstream call carries the client IP in X-Forwarded-For with `ip=1`
# (destinations/mixpanel.py), so that an `ip` added to the records changes nothing upstream.
_SENT_AS_IS = frozenset(("track", "engage", "groups"))


def normalize(
    endpoint: str,
    items: Iterable[Any],
    *,
    client_ip: str | None,
    ip_enabled: bool,
    token: str | None,
    received_at: float,
) -> list[Record]:
    """The records of one request. `items` are the decoder's own, fresh from the JSON
    parser and referenced nowhere else: they are completed in place, which spares two
    dict copies per record (a browser batch's 50 events hold about 30 properties each).
    Nothing else may hold them."""
    kind = ENDPOINT_KINDS[endpoint]
    ip = client_ip if ip_enabled else None
    now_ms = int(received_at * 1000)
    records: list[Record] = []
    append = records.append
    new = tuple.__new__  # Record(...) without its generated __new__: a frame less per record
    for item in items:
        if isinstance(item, dict):
            if kind == "event":  # inline: a browser batch has 50
                props = item.get("properties")
                if props is None:
                    props = item["properties"] = {}
                if isinstance(props, dict):  # otherwise Mixpanel judges it; nothing safe to add
                    if ip and "ip" not in props:
                        props["ip"] = ip
                    if token:
                        props["token"] = token
                    if "time" not in props:
                        props["time"] = now_ms
            else:
                item = _normalize_profile(item, ip, token, with_ip=kind == "user")
        append(new(Record, (kind, item, received_at, client_ip)))
    return records
