"""Every Prometheus metric the proxy exports, defined once.

Under gunicorn, `gunicorn.conf.py` points PROMETHEUS_MULTIPROC_DIR at a per-server
directory so `/metrics` on any worker reports the sum over all workers.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

REQUESTS = Counter("mpproxy_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"])
RECORDS_IN = Counter("mpproxy_records_in_total", "Records accepted, per destination", ["destination"])
ROWS_OUT = Counter("mpproxy_rows_out_total", "Rows (or records) written, per destination", ["destination"])
FLUSHES = Counter("mpproxy_flushes_total", "Flushes per destination and outcome", ["destination", "outcome"])
FLUSH_SECONDS = Histogram(
    "mpproxy_flush_seconds",
    "Flush latency per destination",
    ["destination"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RETRIES = Counter("mpproxy_retries_total", "Retries of transient failures", ["destination"])
DEAD_LETTERED = Counter("mpproxy_dead_lettered_rows_total", "Rows sent to the dead letter", ["destination", "reason"])
DROPPED = Counter("mpproxy_dropped_total", "Records or rows not stored, by reason", ["destination", "reason"])
REPLAYED = Counter("mpproxy_replayed_rows_total", "Spooled rows re-driven to their destination", ["destination"])
CAST_FAILURES = Counter("mpproxy_extra_column_cast_failures_total", "Extra-column values left null", ["column"])
TRANSFORM = Counter("mpproxy_transform_total", "Transform hook outcomes", ["outcome"])
_gauge_mode = {"multiprocess_mode": "livesum"} if MULTIPROCESS else {}
BUFFER_ROWS = Gauge("mpproxy_buffer_rows", "Rows waiting in a destination's buffer", ["destination"], **_gauge_mode)
BUFFER_BYTES = Gauge("mpproxy_buffer_bytes", "Bytes waiting in a destination's buffer", ["destination"], **_gauge_mode)
_age_mode = {"multiprocess_mode": "livemax"} if MULTIPROCESS else {}
OLDEST_AGE = Gauge(
    "mpproxy_oldest_unflushed_seconds", "Age of the oldest unflushed row per destination", ["destination"], **_age_mode
)

# The write-ahead buffer (BUFFER=disk, destinations/wal): what is on disk, summed over workers.
DISK_BUFFER_BYTES = Gauge("mpproxy_disk_buffer_bytes", "Bytes of write-ahead buffer segments on disk", **_gauge_mode)
DISK_BUFFER_SEGMENTS = Gauge("mpproxy_disk_buffer_segments", "Write-ahead buffer segment files on disk", **_gauge_mode)
DISK_BUFFER_OLDEST = Gauge(
    "mpproxy_disk_buffer_oldest_seconds", "Age of the oldest write-ahead buffer segment not yet delivered", **_age_mode
)
RECOVERED_ROWS = Counter(
    "mpproxy_recovered_rows_total", "Rows re-delivered from segments a stopped process left behind", ["destination"]
)
CORRUPT_TAILS = Counter("mpproxy_disk_buffer_corrupt_tails_total", "Damaged regions found in write-ahead buffer segments")
CORRUPT_BYTES = Counter("mpproxy_disk_buffer_corrupt_bytes_total", "Bytes of damaged write-ahead buffer records skipped")
BACKPRESSURE_WAITS = Counter(
    "mpproxy_backpressure_waits_total", "Requests that waited for room in a destination's full buffer", ["destination"]
)
BACKPRESSURE_SECONDS = Counter(
    "mpproxy_backpressure_seconds_total", "Time requests waited for room in a destination's full buffer", ["destination"]
)
REFUSED = Counter("mpproxy_refused_requests_total", "Requests answered 503 because their rows could not be kept", ["reason"])
FSYNC_SECONDS = Histogram(
    "mpproxy_disk_buffer_fsync_seconds",
    "Time of one (group) fsync of the write-ahead buffer",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
# The cyclic garbage collector in each gunicorn worker (proxy/memory.py tunes it).
GC_PASSES = Counter("mpproxy_gc_collections_total", "Garbage collector passes, by oldest generation collected", ["generation"])
GC_SECONDS = Counter("mpproxy_gc_seconds_total", "Time in garbage collector passes", ["generation"])


def render() -> tuple[bytes, str]:
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
