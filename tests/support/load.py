"""A small, bounded load generator for the delivery scenarios (127.0.0.1 only)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import requests


def browser_batch(request_no: int, size: int, run: str = "r") -> tuple[str, list[str]]:
    """A mixpanel-browser style `data=<base64>` body and the insert ids it carries."""
    ids = [f"{run}-{request_no}-{i}" for i in range(size)]
    events = [
        {
            "event": "Page View",
            "properties": {
                "distinct_id": f"user-{request_no % 97}",
                "$insert_id": insert_id,
                "time": 1700000000 + request_no + i / 1000,
                "$browser": "Chrome",
                "$current_url": "https://shop.example/p?q=a+b",
                "token": "tok",
            },
        }
        for i, insert_id in enumerate(ids)
    ]
    return "data=" + base64.b64encode(json.dumps(events).encode()).decode(), ids


@dataclass
class LoadResult:
    accepted: set[str] = field(default_factory=set)  # insert ids in requests answered 200
    refused: set[str] = field(default_factory=set)  # insert ids in requests answered otherwise
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0

    @property
    def sent_requests(self) -> int:
        return sum(self.statuses.values()) + self.errors


def run_load(
    url: str,
    requests_total: int,
    batch_size: int = 10,
    threads: int = 4,
    run: str = "r",
    on_progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> LoadResult:
    """POST `requests_total` browser batches from `threads` threads; call on_progress(n) after each."""
    result = LoadResult()
    lock = threading.Lock()
    counter = iter(range(requests_total))
    done = [0]

    def worker() -> None:
        session = requests.Session()
        while not (stop and stop.is_set()):
            with lock:
                number = next(counter, None)
            if number is None:
                return
            body, ids = browser_batch(number, batch_size, run)
            try:
                reply = session.post(url, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30)
                status = reply.status_code
            except requests.RequestException:
                status = None
            with lock:
                if status is None:
                    result.errors += 1
                    result.refused.update(ids)
                else:
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    (result.accepted if status == 200 else result.refused).update(ids)
                done[0] += 1
                progress = done[0]
            if on_progress:
                on_progress(progress)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(300)
    return result
