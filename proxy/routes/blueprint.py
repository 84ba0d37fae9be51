"""The Flask blueprint every route module registers on."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("proxy", __name__)
