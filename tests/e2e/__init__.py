"""End to end, the way a user sees it: the real SDKs (mixpanel-browser in headless Chromium,
the Python and Node SDKs) through the proxy under gunicorn into Mixpanel (the test double)
and every destination's stand-in at once.

Run: `.venv/bin/python -m pytest -q tests/e2e` (scripts/test.d/browser.sh installs Debian's
chromium, and npm playwright-core under .standins/browser/). The run ends with the matrix client × operation ×
destination, each cell landed/sent, also written to `e2e-matrix.md` in pytest's base temp
directory.

A destination joins by joining the conformance suite: its adapter in
tests/destinations/adapters/ (`env()`, `rows(table)`, its stand-in fixture) is picked up
by tests/e2e/destinations.py, and the proxy here runs with every destination at once.
"""
