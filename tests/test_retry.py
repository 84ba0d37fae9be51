"""core/retry.py's backoff: within its bounds, and drawn without touching the random module's
shared state (retries run on background threads beside code that seeds it)."""

from __future__ import annotations

import random

from core.retry import RetryPolicy


def test_the_backoff_keeps_its_bounds_and_leaves_the_shared_random_state_alone() -> None:
    policy = RetryPolicy(base_seconds=0.2, max_delay_seconds=10.0)
    random.seed(1234)
    seeded = random.getstate()
    for attempt in range(1, 12):
        backoff = min(0.2 * 2 ** (attempt - 1), 10.0)
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(0.5 * backoff <= d < 1.5 * backoff for d in delays)
        assert len(set(delays)) > 100  # jittered, not one fixed pause
        assert policy.delay(attempt, retry_after=60.0) == 60.0  # never shorter than the server's hint
    assert random.getstate() == seeded
