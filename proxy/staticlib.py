"""The Mixpanel JS library and its async modules, served from our own host.

From MIXPANEL_CDN_URL (cached in memory, refreshed hourly, served stale if the CDN
fails), or from a local folder MIXPANEL_LIB_DIR (e.g. npm mixpanel-browser's `dist/`).

Only Mixpanel's own names are served: `lib.min.js` / `lib.js` and the async modules
the library loads from `lib_base_path` (`mixpanel-recorder`, `mixpanel-targeting`, plain
or content-hashed, minified or not, and their source maps). A made-up name is a 404
without any CDN call. Content-hashed names cannot be listed in advance, so a hashed
name the cached library does not mention costs one CDN fetch from a small hourly
budget (`UNVERIFIED_FETCHES_PER_HOUR`), and a 404 is remembered: a client inventing
hashes cannot turn the proxy into a CDN load generator. The cache holds at most
`MAX_CACHED` assets and `MAX_CACHED_BYTES`, the least recently fetched leaving first.
From MIXPANEL_LIB_DIR, only regular files whose real path is inside the folder are
served (a symlink pointing out of it is not).

The CDN is reached through HTTPS_PROXY / HTTP_PROXY as Settings reads them (`.env`
included), like the calls to Mixpanel.
"""

from __future__ import annotations

import logging
import re
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import requests

log = logging.getLogger(__name__)

ALIASES = {
    "lib.min.js": ("lib.min.js", "mixpanel.min.js", "mixpanel-2-latest.min.js"),
    "lib.js": ("lib.js", "mixpanel.globals.js", "mixpanel-2-latest.js"),
}
CDN_NAMES = {"lib.min.js": "mixpanel-2-latest.min.js", "lib.js": "mixpanel-2-latest.js"}
# Async modules the library loads from lib_base_path, e.g. mixpanel-recorder-CZqK2y7C.min.js
MODULES = ("recorder", "targeting")
MODULE_NAME = re.compile(
    r"mixpanel-(?P<module>" + "|".join(MODULES) + r")(?P<hash>-[A-Za-z0-9_-]{6,16})?(?:\.min)?\.js(?:\.map)?"
)
TTL_SECONDS = 3600
MAX_CACHED = 32
MAX_CACHED_BYTES = 24 * 1024 * 1024  # one version's library, modules and source maps fit (about 8 MB)
MAX_REMEMBERED_MISSING = 256
UNVERIFIED_FETCHES_PER_HOUR = 10


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
    """One of Mixpanel's library or module names (the whole name: no trailing newline)."""
    return name in ALIASES or MODULE_NAME.fullmatch(name) is not None


def _hashed(name: str) -> bool:
    match = MODULE_NAME.fullmatch(name)
    return match is not None and match.group("hash") is not None


def _content_type(name: str) -> str:
    return "application/json" if name.endswith(".map") else "application/javascript; charset=utf-8"


def _cache_control(name: str) -> str:
    if _hashed(name):
        return "public, max-age=31536000, immutable"
    return "public, max-age=3600, stale-while-revalidate=86400"


class LibraryCache:
    def __init__(self, cdn_url: str, lib_dir: str | None, timeout: float = 10.0, proxies: dict[str, str] | None = None) -> None:
        self.cdn_url = cdn_url
        self.proxies = proxies or None
        self.lib_dir = Path(lib_dir) if lib_dir else None
        self.timeout = timeout
        self._cache: OrderedDict[str, tuple[float, Asset]] = OrderedDict()
        self._missing: OrderedDict[str, float] = OrderedDict()
        self._unverified: list[float] = []  # when recent unverified fetches happened
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
            now = time.monotonic()
            cached = self._cache.get(name)
            if cached and now - cached[0] < TTL_SECONDS:
                return cached[1]
            missing_since = self._missing.get(name)
            if missing_since is not None and now - missing_since < TTL_SECONDS:
                raise NotFound(name)
            if cached is None and not self._may_fetch(name, now):
                raise NotFound(name)
            try:
                asset = self._from_cdn(name)
            except NotFound:
                self._remember_missing(name, now)
                raise
            except Unavailable:
                if cached:
                    return cached[1]  # stale beats broken
                raise
            self._cache[name] = (now, asset)
            self._cache.move_to_end(name)
            while len(self._cache) > MAX_CACHED or (
                len(self._cache) > 1 and sum(len(a.body) for _, a in self._cache.values()) > MAX_CACHED_BYTES
            ):
                self._cache.popitem(last=False)
            return asset

    def _may_fetch(self, name: str, now: float) -> bool:
        """Whether a CDN fetch for a name not in the cache is worth it. Plain names are a
        fixed handful; a hashed name is fetched if the cached library refers to it, else
        only within the hourly budget."""
        if not _hashed(name) or self._referenced(name):
            return True
        self._unverified = [t for t in self._unverified if now - t < TTL_SECONDS]
        if len(self._unverified) >= UNVERIFIED_FETCHES_PER_HOUR:
            log.warning("library: not fetching %r: the hourly budget for unknown module hashes is spent", name[:64])
            return False
        self._unverified.append(now)
        return True

    def _referenced(self, name: str) -> bool:
        script = name.removesuffix(".map").encode()
        return any(name_ in self._cache and script in self._cache[name_][1].body for name_ in ALIASES)

    def _remember_missing(self, name: str, now: float) -> None:
        self._missing[name] = now
        self._missing.move_to_end(name)
        while len(self._missing) > MAX_REMEMBERED_MISSING:
            self._missing.popitem(last=False)

    def _from_dir(self, name: str) -> Asset:
        assert self.lib_dir is not None
        root = self.lib_dir.resolve()
        for candidate in ALIASES.get(name, (name,)):
            for path in (root / candidate, root / "async-modules" / candidate):
                try:
                    real = path.resolve(strict=True)
                    mode = real.stat().st_mode
                except OSError:
                    continue
                if not real.is_relative_to(root):
                    log.warning("library: %s points outside MIXPANEL_LIB_DIR: not served", path.name)
                    continue
                if stat.S_ISREG(mode):
                    return Asset(real.read_bytes(), _content_type(name), _cache_control(name))
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
