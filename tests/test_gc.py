"""proxy.memory.tune_gc: a gunicorn worker keeps CPython's garbage collector off the request path.

In a fresh interpreter, what tune_gc promises: the objects that exist are frozen, the young
generation's threshold is raised (never lowered), and garbage cycles are still collected,
each pass counted in /metrics. Under real gunicorn with 32 connections at once: a worker
serves browser batches with (almost) no passes, and the master, which imports the worker
class, has not loaded the metrics. What that saves is measured in bench/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.fixtures_core import run_proxy  # noqa: F401
from tests.support.load import browser_batch
from tests.support.metrics import metric_sum

PROBE = """
import gc, json, sys
from prometheus_client import REGISTRY
from proxy.memory import GC_YOUNG_THRESHOLD, publish_gc_passes, tune_gc

if sys.argv[1] == "higher":
    gc.set_threshold(GC_YOUNG_THRESHOLD * 5, 10, 10)
tune_gc()
frozen, threshold = gc.get_freeze_count(), gc.get_threshold()


class Node:
    pass


for _ in range(GC_YOUNG_THRESHOLD):  # garbage cycles: only the collector can free them
    a, b = Node(), Node()
    a.other, b.other = b, a
del a, b
publish_gc_passes()
passes = REGISTRY.get_sample_value("mpproxy_gc_collections_total", {"generation": "0"})
seconds = REGISTRY.get_sample_value("mpproxy_gc_seconds_total", {"generation": "0"})
print(json.dumps({"frozen": frozen, "threshold": threshold, "passes": passes, "seconds": seconds,
                  "young": gc.get_count()[0], "nodes": sum(isinstance(o, Node) for o in gc.get_objects())}))
"""


def probe(mode: str) -> dict:
    # The probe reads the counters from its own registry: single-process metrics.
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


def test_tune_gc_freezes_what_exists_and_still_collects_garbage_cycles():
    result = probe("default")
    assert result["frozen"] > 10_000  # the imports: never scanned again
    assert result["threshold"][0] == 10_000
    assert result["passes"] >= 1 and result["seconds"] > 0  # 20,000 objects in cycles started a counted pass ...
    assert result["nodes"] < 10_000  # ... which freed them (what is left came after it)


def test_tune_gc_never_lowers_a_higher_threshold():
    assert probe("higher")["threshold"][0] == 50_000


@pytest.mark.slow
def test_a_worker_serves_concurrent_batches_without_collector_passes(run_proxy, mp):  # noqa: F811
    proxy = run_proxy(destinations="mixpanel,files", mixpanel_api_host=mp.url, delivery="batch")
    bodies = [browser_batch(n, 50, "gc")[0] for n in range(320)]

    def send(body: str) -> int:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return requests.post(f"{proxy.url}/track/?verbose=1", data=body, headers=headers, timeout=30).status_code

    # 32 at once: each request's objects are alive while the others' are (the upstream round
    # trip yields), which with CPython's default threshold starts a pass every few requests.
    with ThreadPoolExecutor(32) as pool:
        assert set(pool.map(send, bodies)) == {200}
    young = metric_sum(proxy.url, "mpproxy_gc_collections_total", generation="0")
    older = metric_sum(proxy.url, "mpproxy_gc_collections_total", generation="1")
    older += metric_sum(proxy.url, "mpproxy_gc_collections_total", generation="2")
    assert young <= len(bodies) / 50 and older == 0, (young, older)


def test_the_gunicorn_master_does_not_load_the_metrics():
    # The master imports proxy.worker for its worker class before on_starting sets
    # PROMETHEUS_MULTIPROC_DIR; metrics loaded then would count per worker, not in the
    # shared directory, and /metrics would show one worker's numbers.
    code = "import sys, proxy.worker; print('core.metrics' in sys.modules, 'prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
