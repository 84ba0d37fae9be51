"""The Mixpanel JS library and its async modules, served from our own host.

From MIXPANEL_CDN_URL (cached in memory, refreshed hourly, served stale if the CDN
fails), or from a local folder MIXPANEL_LIB_DIR (e.g. npm mixpanel-browser's `dist/`).
The CDN is reached through HTTPS_PROXY / HTTP_PROXY as Settings reads them (`.env`
included), like the calls to Mixpanel.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ALIASES = {
    "lib.min.js": ("lib.min.js", "mixpanel.min.js", "mixpanel-2-latest.min.js"),
    "lib.js": ("lib.js", "mixpanel.globals.js", "mixpanel-2-latest.js"),
}
CDN_NAMES = {"lib.min.js": "mixpanel-2-latest.min.js", "lib.js": "mixpanel-2-latest.js"}
# Async modules the library loads from lib_base_path, e.g. mixpanel-recorder-CZqK2y7C.min.js
MODULE_NAME = re.compile(r"^mixpanel-[a-z0-9-]+(?:-[A-Za-z0-9_]{6,12})?(?:\.min)?\.js(?:\.map)?$")
HASHED = re.compile(r"-[A-Za-z0-9_]{6,12}(?:\.min)?\.js(?:\.map)?$")
TTL_SECONDS = 3600


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    cache_control: str


class NotFound(Exception):
    pass


class Unavailable(Exception):
    pass


def is_servable(name: str) -> bool:
    return name in ALIASES or bool(MODULE_NAME.match(name))


def _content_type(name: str) -> str:
    return "application/json" if name.endswith(".map") else "application/javascript; charset=utf-8"


def _cache_control(name: str) -> str:
    if name not in ALIASES and HASHED.search(name):
        return "public, max-age=31536000, immutable"
    return "public, max-age=3600, stale-while-revalidate=86400"


class LibraryCache:
    def __init__(self, cdn_url: str, lib_dir: str | None, timeout: float = 10.0, proxies: dict[str, str] | None = None) -> None:
        self.cdn_url = cdn_url
        self.proxies = proxies or None
        self.lib_dir = Path(lib_dir) if lib_dir else None
        self.timeout = timeout
        self._cache: dict[str, tuple[float, Asset]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Asset:
        if not is_servable(name):
            raise NotFound(name)
        if self.lib_dir is not None:
            return self._from_dir(name)
        cached = self._cache.get(name)
        if cached and time.monotonic() - cached[0] < TTL_SECONDS:
            return cached[1]
        with self._lock:  # single flight: one CDN fetch per asset at a time
            cached = self._cache.get(name)
            if cached and time.monotonic() - cached[0] < TTL_SECONDS:
                return cached[1]
            try:
                asset = self._from_cdn(name)
            except Unavailable:
                if cached:
                    return cached[1]  # stale beats broken
                raise
            self._cache[name] = (time.monotonic(), asset)
            return asset

    def _from_dir(self, name: str) -> Asset:
        assert self.lib_dir is not None
        for candidate in ALIASES.get(name, (name,)):
            for path in (self.lib_dir / candidate, self.lib_dir / "async-modules" / candidate):
                if path.is_file():
                    return Asset(path.read_bytes(), _content_type(name), _cache_control(name))
        raise NotFound(name)

    def _from_cdn(self, name: str) -> Asset:
        url = self.cdn_url + CDN_NAMES.get(name, name)
        try:
            response = requests.get(url, timeout=self.timeout, proxies=self.proxies)
        except requests.RequestException as exc:
            raise Unavailable(f"library CDN unreachable: {type(exc).__name__}") from None
        if response.status_code == 404:
            raise NotFound(name)
        if response.status_code != 200:
            raise Unavailable(f"library CDN answered {response.status_code}")
        return Asset(response.content, _content_type(name), _cache_control(name))
