"""Prints the conformance matrix (destination × check) at the end of a run that included
tests/destinations/test_conformance.py."""

from __future__ import annotations

import re

import pytest

CHECKS = {
    "test_exactly_once": "exactly_once",
    "test_round_trip": "round_trip",
    "test_close_flushes": "close_flushes",
    "test_setup_is_idempotent_and_keeps_data": "setup",
    "test_drop_removes_only_what_the_proxy_owns": "drop",
    "test_transient_error_is_retried_then_lands": "transient",
    "test_permanent_error_is_dead_lettered_then_replayed": "permanent",
    "test_one_rejected_row_is_dead_lettered_while_the_rest_land": "rejected_row",
}
_outcomes: dict[tuple[str, str], str] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    match = re.match(r"(test_\w+)\[(.+)\]$", item.name)
    if not match or match.group(1) not in CHECKS or "test_conformance" not in item.nodeid:
        return
    key = (match.group(2), CHECKS[match.group(1)])
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _outcomes[key] = {"passed": "pass", "failed": "FAIL", "skipped": "n/a"}[report.outcome]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _outcomes:
        return
    destinations = sorted({d for d, _ in _outcomes})
    checks = list(CHECKS.values())
    terminalreporter.write_sep("-", "conformance matrix")
    terminalreporter.write_line("| destination | " + " | ".join(checks) + " |")
    terminalreporter.write_line("|---|" + "---|" * len(checks))
    for destination in destinations:
        cells = [_outcomes.get((destination, check), "–") for check in checks]
        terminalreporter.write_line(f"| {destination} | " + " | ".join(cells) + " |")
