"""Conformance adapters, one module per destination (see base.py). Every module here that
defines `ADAPTERS` joins tests/destinations/test_conformance.py."""
