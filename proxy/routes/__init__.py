"""The Flask blueprint: one module per Mixpanel endpoint, registered here."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("proxy", __name__)

# Importing the modules registers their routes on `bp`.
from proxy.routes import demo, drop, engage, groups, health, import_, lib, passthrough, track  # noqa: E402,F401
