"""Settings: the only place that reads the environment.

`Settings.from_env()` is called once per process. It merges `.env` (python-dotenv)
under the real environment (the real environment wins), lower-cases every name
(names are case-insensitive, as in the Node original), validates, and returns a
frozen object. Destination modules read their own variables through
`Settings.get()` from the frozen `env` mapping; nothing else touches `os.environ`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

DEFAULT_DESTINATIONS = ("files",)
REGION_HOSTS = {
    "US": "https://api.mixpanel.com",
    "EU": "https://api-eu.mixpanel.com",
    "IN": "https://api-in.mixpanel.com",
}
SERVERLESS_RUNTIMES = {"AWS", "GCP", "AZURE", "LAMBDA", "FUNCTIONS"}
PRODUCTION_WORDS = {"prod", "production", "live"}
# BUFFER and BUFFER_FSYNC defaults for LOCAL and containers: see README "Delivery" for the measurements.
DEFAULT_BUFFER = "disk"
DEFAULT_FSYNC = "10"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name.upper()}={raw!r} is not a boolean (use true or false)")


def _parse_number(name: str, raw: str, kind: type, minimum: float = 0) -> Any:
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ConfigError(f"{name.upper()}={raw!r} is not a {kind.__name__}") from None
    if value < minimum:
        raise ConfigError(f"{name.upper()}={raw!r} must be at least {minimum}")
    return value


def parse_fsync(raw: str) -> float | None:
    """BUFFER_FSYNC: `always` (0), `never` (None) or a group-commit interval in ms (`100`, `100ms`)."""
    value = raw.strip().lower()
    if value == "always":
        return 0.0
    if value == "never":
        return None
    number = _parse_number("buffer_fsync", value.removesuffix("ms").strip(), float, 0) if value else None
    if number is None:
        raise ConfigError("BUFFER_FSYNC is empty (use always, never or milliseconds such as 100)")
    return number


def _buffer_settings(get: Any, runtime: str) -> dict[str, Any]:
    # Serverless runtimes write inside the request (DELIVERY=sync): nothing waits in a buffer.
    mode = (get("buffer") or ("memory" if runtime in SERVERLESS_RUNTIMES else DEFAULT_BUFFER)).strip().lower()
    if mode not in {"disk", "memory"}:
        raise ConfigError(f"BUFFER={mode!r} must be disk or memory")
    out: dict[str, Any] = {"buffer": mode, "buffer_dir": (get("buffer_dir") or "./buffer").strip()}
    out["buffer_fsync_ms"] = parse_fsync(get("buffer_fsync") or DEFAULT_FSYNC)
    if get("buffer_max_bytes"):
        out["buffer_max_bytes"] = _parse_number("buffer_max_bytes", get("buffer_max_bytes"), int, 64 * 1024)
    return out


def read_environment(environ: Mapping[str, str] | None = None, dotenv_path: str | None = ".env") -> dict[str, str]:
    """Lower-cased view of `.env` overlaid by the real environment."""
    merged: dict[str, str] = {}
    if dotenv_path and Path(dotenv_path).is_file():
        from dotenv import dotenv_values

        merged.update({k.lower(): v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    source = os.environ if environ is None else environ
    merged.update({k.lower(): v for k, v in source.items()})
    return merged


@dataclass(frozen=True)
class Settings:
    destinations: tuple[str, ...] = DEFAULT_DESTINATIONS
    destinations_defaulted: bool = True
    port: int = 8080
    frontend_url: str | None = None
    runtime: str = "LOCAL"
    environment: str = "development"
    log_format: str = "text"
    log_level: str = "INFO"
    events_table_name: str = "events"
    users_table_name: str = "users"
    groups_table_name: str = "groups"
    mixpanel_token: str | None = None
    mixpanel_region: str = "US"
    mixpanel_api_host: str = REGION_HOSTS["US"]
    mixpanel_cdn_url: str = "https://cdn.mxpnl.com/libs/"
    mixpanel_lib_dir: str | None = None
    mixpanel_timeout_seconds: float = 10.0
    data_dir: str = "./data"
    max_body_bytes: int = 10 * 1024 * 1024
    trusted_proxy_hops: int = 1
    destination_timeout_seconds: float = 15.0
    # The write-ahead buffer (destinations/wal): `disk` or `memory`, where, how often to fsync
    # (None: never; 0: before every reply; else a group commit at most every that many ms).
    buffer: str = "disk"
    buffer_dir: str = "./buffer"
    buffer_fsync_ms: float | None = 10.0
    buffer_max_bytes: int = 1 << 30
    # Everything else (destination variables, secrets) lives here, lower-cased, out of repr.
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False, compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, dotenv_path: str | None = ".env") -> Settings:
        return cls.from_mapping(read_environment(environ, dotenv_path))

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> Settings:
        env = {k.lower(): v for k, v in values.items()}
        get = env.get
        kwargs: dict[str, Any] = {"env": MappingProxyType(env)}

        raw_destinations = (get("destinations") or "").strip()
        if raw_destinations:
            names = tuple(dict.fromkeys(n.strip().lower() for n in raw_destinations.split(",") if n.strip()))
            if not names:
                raise ConfigError("DESTINATIONS is set but names no destination")
            kwargs["destinations"] = names
            kwargs["destinations_defaulted"] = False

        if get("port"):
            kwargs["port"] = _parse_number("port", get("port"), int, 1)
        frontend = (get("frontend_url") or "").strip()
        kwargs["frontend_url"] = frontend or None

        runtime = (get("runtime") or "LOCAL").strip().upper()
        kwargs["runtime"] = runtime
        environment = (get("environment") or get("app_env") or "").strip().lower()
        if not environment:
            environment = "production" if runtime in SERVERLESS_RUNTIMES else "development"
        kwargs["environment"] = environment
        log_format = (get("log_format") or ("json" if environment in PRODUCTION_WORDS else "text")).lower()
        if log_format not in {"json", "text"}:
            raise ConfigError(f"LOG_FORMAT={log_format!r} must be json or text")
        kwargs["log_format"] = log_format
        kwargs["log_level"] = (get("log_level") or "INFO").upper()

        for table in ("events", "users", "groups"):
            name = (get(f"{table}_table_name") or table).strip()
            if not name.replace("_", "").isalnum():
                raise ConfigError(f"{table.upper()}_TABLE_NAME={name!r} may hold only letters, digits and _")
            kwargs[f"{table}_table_name"] = name

        kwargs["mixpanel_token"] = (get("mixpanel_token") or "").strip() or None
        region = (get("mixpanel_region") or "US").strip().upper()
        if region not in REGION_HOSTS:
            raise ConfigError(f"MIXPANEL_REGION={region!r} must be one of US, EU, IN")
        kwargs["mixpanel_region"] = region
        api_host = (get("mixpanel_api_host") or REGION_HOSTS[region]).strip().rstrip("/")
        if not api_host.startswith(("http://", "https://")):
            raise ConfigError(f"MIXPANEL_API_HOST={api_host!r} must be a full base URL such as https://api.mixpanel.com")
        kwargs["mixpanel_api_host"] = api_host
        cdn = (get("mixpanel_cdn_url") or "https://cdn.mxpnl.com/libs/").strip()
        kwargs["mixpanel_cdn_url"] = cdn if cdn.endswith("/") else cdn + "/"
        lib_dir = (get("mixpanel_lib_dir") or "").strip() or None
        if lib_dir and not Path(lib_dir).is_dir():
            raise ConfigError(f"MIXPANEL_LIB_DIR={lib_dir!r} is not a directory")
        kwargs["mixpanel_lib_dir"] = lib_dir
        if get("mixpanel_timeout_seconds"):
            kwargs["mixpanel_timeout_seconds"] = _parse_number(
                "mixpanel_timeout_seconds", get("mixpanel_timeout_seconds"), float, 0.1
            )
        if get("destination_timeout_seconds"):
            kwargs["destination_timeout_seconds"] = _parse_number(
                "destination_timeout_seconds", get("destination_timeout_seconds"), float, 0.1
            )

        kwargs["data_dir"] = (get("data_dir") or "./data").strip()
        kwargs.update(_buffer_settings(get, runtime))
        if get("max_body_bytes"):
            kwargs["max_body_bytes"] = _parse_number("max_body_bytes", get("max_body_bytes"), int, 1024)
        if get("trusted_proxy_hops"):
            kwargs["trusted_proxy_hops"] = _parse_number("trusted_proxy_hops", get("trusted_proxy_hops"), int, 0)
        return cls(**kwargs)

    # -- helpers for destination modules -------------------------------------------------
    def get(self, name: str, default: str | None = None) -> str | None:
        value = self.env.get(name.lower())
        if value is None or not value.strip():
            return default
        return value.strip()

    def require(self, name: str, destination: str) -> str:
        value = self.get(name)
        if value is None:
            raise ConfigError(f"{name} is required by the {destination} destination")
        return value

    def get_bool(self, name: str, default: bool = False) -> bool:
        raw = self.get(name)
        return default if raw is None else _parse_bool(name, raw)

    def get_int(self, name: str, default: int, minimum: int = 0) -> int:
        raw = self.get(name)
        return default if raw is None else _parse_number(name, raw, int, minimum)

    def get_float(self, name: str, default: float, minimum: float = 0) -> float:
        raw = self.get(name)
        return default if raw is None else _parse_number(name, raw, float, minimum)

    def delivery_mode(self, name: str | None) -> str:
        """`sync` or `batch` for the destination `name` (None: a custom one, global settings only):
        <NAME>_DELIVERY, else DELIVERY, else `sync` on runtimes that freeze between requests. A
        batch of one record (BATCH_MAX_RECORDS=1) is `sync` whatever DELIVERY says."""
        scoped = (lambda key: self.get(f"{name}_{key}") or self.get(key)) if name else self.get
        raw = scoped("batch_max_records")
        single = raw is not None and _parse_number("batch_max_records", raw, int, 1) == 1
        default = "sync" if self.runtime in SERVERLESS_RUNTIMES else "batch"
        mode = (scoped("delivery") or default).lower()
        if mode not in {"sync", "batch"}:
            raise ConfigError(f"DELIVERY={mode!r} must be batch or sync")
        return "sync" if single else mode

    @property
    def buffers_rows(self) -> bool:
        """Whether any configured destination keeps rows after the reply (what BUFFER=disk protects).
        Mixpanel does only with MIXPANEL_DELIVERY=batch; its default forwarding answers in the request."""
        for name in self.destinations:
            if name == "mixpanel" and (self.get("mixpanel_delivery") or "sync").lower() != "batch":
                continue
            if self.delivery_mode(None if ":" in name else name) == "batch":
                return True
        return False

    @property
    def is_production(self) -> bool:
        """ENVIRONMENT says so, RUNTIME is a cloud runtime, or a platform's marker variable is set."""
        markers = ("k_service", "aws_lambda_function_name", "website_site_name", "dyno", "render", "function_target")
        return (
            self.environment in PRODUCTION_WORDS or self.runtime in SERVERLESS_RUNTIMES or any(self.env.get(m) for m in markers)
        )

    @property
    def outbound_proxies(self) -> dict[str, str]:
        """HTTP(S)_PROXY for calls to Mixpanel and its CDN, read once."""
        return {scheme: url for scheme in ("http", "https") if (url := self.get(f"{scheme}_proxy"))}

    @property
    def table_names(self) -> dict[str, str]:
        """Record kind -> table name."""
        return {"event": self.events_table_name, "user": self.users_table_name, "group": self.groups_table_name}
