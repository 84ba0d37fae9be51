"""core/green.py in a process gevent never patched: what Lambda, Cloud Functions and Azure
Functions run (the last two call handlers from a thread pool). Runs in a fresh interpreter,
so nothing the test process imported can have patched it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support.processes import ROOT

SCRIPT = textwrap.dedent(
    """
    import threading, time
    from concurrent.futures import ThreadPoolExecutor

    import gevent
    from core import green
    from core.retry import RetryPolicy, TransientError

    assert not green.patched()

    # run_all from many threads at once, each with its own gevent hub; calls block for real.
    def one_thread(i):
        out = []
        for j in range(20):
            out.append(green.run_all([lambda: (time.sleep(0.001), i)[1], lambda: i * 100 + j, lambda: "x"]))
        return out
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one_thread, range(16)))
    for i, out in enumerate(results):
        assert out == [[i, i * 100 + j, "x"] for j in range(20)], out

    # A deadline whose block returns in time leaves no timer behind to fire later.
    with green.deadline(0.05):
        value = sum(range(1000))
    time.sleep(0.1)
    gevent.sleep(0)  # let the hub run: a stray timer would raise here
    assert value == 499500

    # A block that yields to gevent is still cut off by its deadline, in any thread.
    def cut_off():
        try:
            with green.deadline(0.05):
                gevent.sleep(5)
        except green.DeadlineExceeded:
            return "cut"
        return "not cut"
    with ThreadPoolExecutor(max_workers=2) as pool:
        assert list(pool.map(lambda _: cut_off(), range(2))) == ["cut", "cut"]

    # Retries sleep with time.sleep when unpatched, and still return the first success.
    attempts = []
    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise TransientError("try again")
        return "ok"
    assert RetryPolicy(max_attempts=5, base_seconds=0.01).run(flaky) == "ok" and len(attempts) == 3

    assert green.off_loop(lambda a, b: a + b, 2, b=3) == 5
    assert not green.patched()
    assert [t.name for t in threading.enumerate()] == ["MainThread"]
    print("unpatched ok")
    """
)


def test_green_works_unpatched_from_threads() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "unpatched ok"
