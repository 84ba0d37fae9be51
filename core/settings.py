"""Settings: the only place that reads the environment.

`Settings.from_env()` is called once per process. It merges `.env` (python-dotenv)
under the real environment (the real environment wins), lower-cases every name
(names are case-insensitive, as in the Node original), validates, and returns a
frozen object. Destination modules read their own variables through
`Settings.get()` from the frozen `env` mapping; nothing else touches `os.environ`.

Every error is a `ConfigError` whose message names the variable as the README spells
it (upper case), the bad value and what is allowed; `error_line()` makes the one line
that start-up prints before exiting with status 4.
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
RUNTIMES = ("LOCAL", "GCP", "AWS", "AZURE", "LAMBDA", "FUNCTIONS")
SERVERLESS_RUNTIMES = {"AWS", "GCP", "AZURE", "LAMBDA", "FUNCTIONS"}
PRODUCTION_WORDS = {"prod", "production", "live"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DELIVERY_MODES = ("batch", "sync")
# Variables a hosting platform sets in every container it runs: their presence means production.
PLATFORM_MARKERS = (
    "k_service",  # Cloud Run
    "function_target",  # Cloud Functions (2nd gen)
    "aws_lambda_function_name",  # Lambda
    "ecs_container_metadata_uri_v4",  # ECS / Fargate
    "functions_worker_runtime",  # Azure Functions
    "website_site_name",  # Azure App Service
    "container_app_name",  # Azure Container Apps
    "dyno",  # Heroku
    "render",  # Render
    "fly_app_name",  # Fly.io
    "railway_environment",  # Railway
)
# A URL (path and query) this long fits a 50-event browser batch sent with GET `?data=`.
DEFAULT_MAX_URL_BYTES = 65536
DEFAULT_BODY_READ_TIMEOUT_SECONDS = 30.0


def is_production_name(environment: str) -> bool:
    """`prod`, `production`, `prod-eu`, `production_us`, `live`: anything starting with `prod`."""
    name = environment.strip().lower()
    return name.startswith("prod") or name in PRODUCTION_WORDS


# BUFFER and BUFFER_FSYNC defaults for LOCAL and containers: see README "Delivery" for the measurements.
BUFFER_MODES = ("disk", "memory")
DEFAULT_BUFFER = "disk"
DEFAULT_FSYNC = "10"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable (upper case),
    the bad value and what is allowed."""


def error_line(exc: ConfigError) -> str:
    """The one line start-up prints for a configuration error."""
    return f"configuration error: {exc} (variable names are case-insensitive)"


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name.upper()}={raw!r} is not a boolean (use true or false)")


def _parse_number(name: str, raw: str, kind: type, minimum: float = 0, maximum: float | None = None) -> Any:
    try:
        value = kind(raw.strip())
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name.upper()}={raw!r} is not {what}") from None
    if value != value or value in (float("inf"), float("-inf")):  # nan, inf
        raise ConfigError(f"{name.upper()}={raw!r} is not a finite number")
    if maximum is not None and not minimum <= value <= maximum:
        raise ConfigError(f"{name.upper()}={raw!r} must be between {minimum} and {maximum}")
    if value < minimum:
        raise ConfigError(f"{name.upper()}={raw!r} must be at least {minimum}")
    return value


def _parse_choice(name: str, raw: str, choices: tuple[str, ...], upper: bool = False) -> str:
    value = raw.strip().upper() if upper else raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name.upper()}={raw!r} must be one of {', '.join(choices)}")
    return value


def _parse_url(name: str, raw: str, example: str) -> str:
    value = raw.strip()
    if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1].strip("/")) == 0:
        shown = raw.rsplit("@", 1)[-1] if "@" in raw else raw  # a proxy URL may carry credentials
        raise ConfigError(f"{name.upper()}={shown!r} must be a full URL such as {example}")
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
    raw = get("buffer")
    mode = _parse_choice("buffer", raw, BUFFER_MODES) if raw else "memory" if runtime in SERVERLESS_RUNTIMES else DEFAULT_BUFFER
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
    base_path: str | None = None
    #: The /demo page: on outside production unless DEMO=false; DEMO=true turns it on anywhere.
    demo: bool = True
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

        runtime = _parse_choice("runtime", get("runtime") or "LOCAL", RUNTIMES, upper=True)
        kwargs["runtime"] = runtime
        environment = (get("environment") or get("app_env") or "").strip().lower()
        if not environment:
            environment = "production" if runtime in SERVERLESS_RUNTIMES else "development"
        kwargs["environment"] = environment
        log_format = get("log_format") or ("json" if is_production_name(environment) else "text")
        kwargs["log_format"] = _parse_choice("log_format", log_format, ("json", "text"))
        level = get("log_level") or "INFO"
        level = "WARNING" if level.strip().upper() == "WARN" else level
        kwargs["log_level"] = _parse_choice("log_level", level, LOG_LEVELS, upper=True)

        for table in ("events", "users", "groups"):
            name = (get(f"{table}_table_name") or table).strip()
            if not name.replace("_", "").isalnum():
                raise ConfigError(f"{table.upper()}_TABLE_NAME={name!r} may hold only letters, digits and _")
            kwargs[f"{table}_table_name"] = name

        kwargs["mixpanel_token"] = (get("mixpanel_token") or "").strip() or None
        region = (get("mixpanel_region") or "US").strip().upper()
        if region not in REGION_HOSTS:
            raise ConfigError(f"MIXPANEL_REGION={get('mixpanel_region')!r} must be one of US, EU, IN")
        kwargs["mixpanel_region"] = region
        api_host = _parse_url("mixpanel_api_host", get("mixpanel_api_host") or REGION_HOSTS[region], "https://api.mixpanel.com")
        kwargs["mixpanel_api_host"] = api_host.rstrip("/")
        cdn = _parse_url(
            "mixpanel_cdn_url", get("mixpanel_cdn_url") or "https://cdn.mxpnl.com/libs/", "https://cdn.mxpnl.com/libs/"
        )
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
        base_path = (get("base_path") or "").strip().strip("/")
        if base_path and not all(part and all(c.isalnum() or c in "-_.~" for c in part) for part in base_path.split("/")):
            raise ConfigError(f"BASE_PATH={get('base_path')!r} must be a path such as /mp (letters, digits, - _ . ~ and /)")
        kwargs["base_path"] = f"/{base_path}" if base_path else None
        kwargs.update(_buffer_settings(get, runtime))
        if get("max_body_bytes"):
            kwargs["max_body_bytes"] = _parse_number("max_body_bytes", get("max_body_bytes"), int, 1024)
        if get("trusted_proxy_hops"):
            kwargs["trusted_proxy_hops"] = _parse_number("trusted_proxy_hops", get("trusted_proxy_hops"), int, 0)

        # Read elsewhere (delivery, /drop, gunicorn.conf.py, the egress proxy), checked here so that
        # a typo stops start-up rather than surfacing on the first request that needs it.
        for name in ("delivery", "mixpanel_delivery"):
            if (get(name) or "").strip():
                _parse_choice(name, get(name), DELIVERY_MODES)
        for name in ("access_log", "drop_allow_production"):
            _parse_bool(name, get(name) or "")
        for name in ("http_proxy", "https_proxy"):
            if (get(name) or "").strip():
                _parse_url(name, get(name), "http://user:password@proxy.internal:3128")
        production = (
            is_production_name(environment)
            or runtime in SERVERLESS_RUNTIMES
            or any((env.get(m) or "").strip() for m in PLATFORM_MARKERS)
        )
        raw_demo = get("demo") or ""
        kwargs["demo"] = _parse_bool("demo", raw_demo) if raw_demo.strip() else not production
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
            raise ConfigError(f"{name.upper()} is required by the {destination} destination")
        return value

    def get_bool(self, name: str, default: bool = False) -> bool:
        raw = self.get(name)
        return default if raw is None else _parse_bool(name, raw)

    def get_int(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        raw = self.get(name)
        return default if raw is None else _parse_number(name, raw, int, minimum, maximum)

    def get_float(self, name: str, default: float, minimum: float = 0, maximum: float | None = None) -> float:
        raw = self.get(name)
        return default if raw is None else _parse_number(name, raw, float, minimum, maximum)

    def get_choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        """One of `choices` (lower case), or `default` when unset."""
        raw = self.get(name)
        return default if raw is None else _parse_choice(name, raw, choices)

    def delivery_mode(self, name: str | None) -> str:
        """`sync` or `batch` for the destination `name` (None: a custom one, global settings only):
        <NAME>_DELIVERY, else DELIVERY, else `sync` on runtimes that freeze between requests. A
        batch of one record (BATCH_MAX_RECORDS=1) is `sync` whatever DELIVERY says."""
        scoped = (lambda key: self.get(f"{name}_{key}") or self.get(key)) if name else self.get
        raw = scoped("batch_max_records")
        single = raw is not None and _parse_number("batch_max_records", raw, int, 1) == 1
        default = "sync" if self.runtime in SERVERLESS_RUNTIMES else "batch"
        variable = f"{name}_delivery" if name and self.get(f"{name}_delivery") else "delivery"
        chosen = self.get(variable)
        mode = _parse_choice(variable, chosen, DELIVERY_MODES) if chosen and chosen.strip() else default
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
        """ENVIRONMENT starts with `prod` (or is `live`), RUNTIME is a cloud runtime, or a
        platform's marker variable is set (PLATFORM_MARKERS)."""
        return is_production_name(self.environment) or self.runtime in SERVERLESS_RUNTIMES or self.on_platform

    @property
    def on_platform(self) -> bool:
        """A hosting platform's marker variable is set (Cloud Run, Lambda, Heroku, ...)."""
        return any((self.env.get(marker) or "").strip() for marker in PLATFORM_MARKERS)

    @property
    def max_url_bytes(self) -> int:
        """MAX_URL_BYTES: the longest request target (path and query) accepted; 414 beyond."""
        return self.get_int("max_url_bytes", DEFAULT_MAX_URL_BYTES, 1024)

    @property
    def body_read_timeout_seconds(self) -> float:
        """BODY_READ_TIMEOUT_SECONDS: the whole request body must arrive within this; 408 after."""
        return self.get_float("body_read_timeout_seconds", DEFAULT_BODY_READ_TIMEOUT_SECONDS, 0.1)

    @property
    def outbound_proxies(self) -> dict[str, str]:
        """HTTP(S)_PROXY for calls to Mixpanel and its CDN, read once."""
        return {scheme: url for scheme in ("http", "https") if (url := self.get(f"{scheme}_proxy"))}

    @property
    def table_names(self) -> dict[str, str]:
        """Record kind -> table name."""
        return {"event": self.events_table_name, "user": self.users_table_name, "group": self.groups_table_name}
