"""The Flask blueprint: one module per Mixpanel endpoint, registered on import."""

from __future__ import annotations

from proxy.routes import demo, drop, engage, groups, health, import_, lib, passthrough, track  # noqa: F401 - registers routes
from proxy.routes.blueprint import bp

__all__ = ["bp"]
