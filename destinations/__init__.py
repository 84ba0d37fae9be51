"""The destination registry: name -> factory. `DESTINATIONS` selects.

A name of the form `package.module:factory` loads a custom destination (a callable
taking `(settings, context)` and returning a Destination or a RowSink), which is how
the test suite injects failures and how users add their own.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from destinations.base import Destination
from destinations.deadletter import DeadLetter
from destinations.delivery import DeliveryConfig, RowDestination
from destinations.schema import TableSchema, build_schemas
from proxy.records import Kind
from proxy.settings import ConfigError, Settings


@dataclass(frozen=True)
class BuildContext:
    schemas: dict[Kind, TableSchema]
    dead_letter: DeadLetter


def _mixpanel(settings: Settings, ctx: BuildContext) -> Any:
    from destinations.mixpanel import MixpanelDestination

    return MixpanelDestination(settings)


def _files(settings: Settings, ctx: BuildContext) -> Any:
    from destinations.files import FilesSink

    return FilesSink(settings)


def _lake(module: str, cls: str) -> Callable[[Settings, BuildContext], Any]:
    def factory(settings: Settings, ctx: BuildContext) -> Any:
        try:
            mod = importlib.import_module(f"destinations.{module}")
        except ImportError as exc:
            raise ConfigError(f"the {module} destination needs its SDK installed: {exc.name}") from None
        return getattr(mod, cls)(settings)

    return factory


REGISTRY: dict[str, Callable[[Settings, BuildContext], Any]] = {
    "mixpanel": _mixpanel,
    "files": _files,
    "s3": _lake("s3", "S3Sink"),
    "gcs": _lake("gcs", "GCSSink"),
    "azure": _lake("azure", "AzureSink"),
}
PLANNED = {"bigquery", "snowflake", "redshift", "pubsub"}


def _load_custom(spec: str) -> Callable[[Settings, BuildContext], Any]:
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"DESTINATIONS: cannot load custom destination {spec!r}: {exc}") from None


def build_destinations(settings: Settings, schemas: dict[Kind, TableSchema] | None = None) -> list[Destination]:
    schemas = schemas or build_schemas(settings)
    ctx = BuildContext(schemas, DeadLetter.from_settings(settings))
    built: list[Destination] = []
    for name in settings.destinations:
        if ":" in name:
            factory = _load_custom(name)
        elif name in REGISTRY:
            factory = REGISTRY[name]
        elif name in PLANNED:
            raise ConfigError(f"DESTINATIONS: {name} is not available in this version yet (available: {', '.join(REGISTRY)})")
        else:
            raise ConfigError(f"DESTINATIONS: unknown destination {name!r} (choose from {', '.join(REGISTRY)})")
        made = factory(settings, ctx)
        if hasattr(made, "write_rows"):
            config = DeliveryConfig.from_settings(settings, made.name)
            made = RowDestination(made, schemas, config, ctx.dead_letter, settings.destination_timeout_seconds)
        built.append(made)
    return built
