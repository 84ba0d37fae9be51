"""The destination registry: name -> factory. `DESTINATIONS` selects.

A factory takes `(settings, context)` and returns a `Destination`. Row sinks are
wrapped by the delivery layer with `context.deliver(sink)`, so every factory says
what it builds and nothing probes the result. A name of the form
`package.module:factory` loads a custom factory the same way (that is how the test
suite injects failures, and how users add their own destination).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from core.records import Kind
from core.settings import DELIVERY_MODES, ConfigError, Settings
from destinations.base import Destination, RowSink
from destinations.deadletter import DeadLetter
from destinations.delivery import DeliveryConfig, RowDestination
from destinations.mixpanel import MixpanelClient
from destinations.schema import TableSchema, build_schemas


@dataclass(frozen=True)
class BuildContext:
    settings: Settings
    schemas: dict[Kind, TableSchema]
    dead_letter: DeadLetter
    #: The worker's one connection pool to Mixpanel, shared with the pass-through routes.
    upstream: MixpanelClient

    def deliver(self, sink: RowSink) -> RowDestination:
        """Wrap a row sink into a Destination: buffered, split, retried and dead-lettered."""
        config = DeliveryConfig.from_settings(self.settings, sink.name, sink.capabilities)
        return RowDestination(sink, self.schemas, config, self.dead_letter, self.settings.destination_timeout_seconds)


Factory = Callable[[Settings, BuildContext], Destination]


#: Row sinks by name: (module under destinations/, class). The module (and its cloud SDK)
#: is imported only when the destination is configured.
SINKS: dict[str, tuple[str, str]] = {
    "files": ("files", "FilesSink"),
    "s3": ("s3", "S3Sink"),
    "gcs": ("gcs", "GCSSink"),
    "azure": ("azure", "AzureSink"),
    "redshift": ("redshift", "RedshiftSink"),
    "snowflake": ("snowflake", "SnowflakeSink"),
    "pubsub": ("pubsub.sink", "PubSubSink"),
    "bigquery": ("bigquery", "BigQuerySink"),
}


def make_sink(name: str, settings: Settings) -> RowSink:
    """The bare row sink registered under `name` (not yet wrapped by the delivery layer)."""
    if name == "mixpanel":
        from destinations.mixpanel import MixpanelSink

        return MixpanelSink(settings, upstream_client(settings))
    module, cls = SINKS[name]
    try:
        mod = importlib.import_module(f"destinations.{module}")
    except ImportError as exc:
        raise ConfigError(f"DESTINATIONS: the {name} destination needs its SDK installed (missing module {exc.name})") from None
    return getattr(mod, cls)(settings)


def _sink(name: str) -> Factory:
    return lambda settings, ctx: ctx.deliver(make_sink(name, settings))


def _mixpanel(settings: Settings, ctx: BuildContext) -> Destination:
    from destinations.mixpanel import MixpanelDestination, MixpanelSink

    if settings.get_choice("mixpanel_delivery", DELIVERY_MODES, "sync") == "batch":
        return ctx.deliver(MixpanelSink(settings, ctx.upstream))
    return MixpanelDestination(settings, ctx.upstream)


REGISTRY: dict[str, Factory] = {"mixpanel": _mixpanel, **{name: _sink(name) for name in SINKS}}
PLANNED: set[str] = set()


def _load_custom(spec: str) -> Factory:
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"DESTINATIONS: cannot load custom destination {spec!r} ({type(exc).__name__}: {exc})") from None


def _choices() -> str:
    return ", ".join(REGISTRY) + " or package.module:factory"


def build_dead_letter(settings: Settings) -> DeadLetter:
    """The local spool, or with `pubsub_bad_topic` set, the topic (spooling when it fails)."""
    if settings.get("pubsub_bad_topic"):
        from destinations.pubsub import topic_dead_letter

        return topic_dead_letter(settings)
    return DeadLetter.from_settings(settings)


def upstream_client(settings: Settings) -> MixpanelClient:
    return MixpanelClient(settings.mixpanel_api_host, settings.mixpanel_timeout_seconds, settings.outbound_proxies)


def build_destinations(
    settings: Settings, schemas: dict[Kind, TableSchema] | None = None, upstream: MixpanelClient | None = None
) -> list[Destination]:
    schemas = schemas or build_schemas(settings)
    ctx = BuildContext(settings, schemas, build_dead_letter(settings), upstream or upstream_client(settings))
    built: list[Destination] = []
    for name in settings.destinations:
        if ":" in name:
            factory = _load_custom(name)
        elif name in REGISTRY:
            factory = REGISTRY[name]
        elif name in PLANNED:
            raise ConfigError(f"DESTINATIONS: {name} is not available in this version yet (available: {_choices()})")
        else:
            raise ConfigError(f"DESTINATIONS: unknown destination {name!r} (choose from {_choices()})")
        built.append(factory(settings, ctx))
    return built
