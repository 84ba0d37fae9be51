"""`python -m proxy.healthcheck`: exit 0 if this container's proxy answers /ping, else 1.

The Dockerfile's HEALTHCHECK. It reads the same settings as the server (PORT, BIND,
BASE_PATH, `.env`), so it probes where gunicorn listens; the slim image has no curl.
"""

from __future__ import annotations

import sys
import urllib.request

from core.settings import ConfigError, Settings


def ping_url(settings: Settings) -> str:
    port = settings.port
    bind = settings.get("bind")
    if bind and not bind.startswith("unix:") and bind.rsplit(":", 1)[-1].isdigit():
        port = int(bind.rsplit(":", 1)[-1])
    base = (settings.get("base_path") or "").rstrip("/")
    return f"http://127.0.0.1:{port}{base}/ping"


def main() -> int:
    try:
        url = ping_url(Settings.from_env())
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=4) as reply:  # noqa: S310 - our own loopback URL
            return 0 if reply.status == 200 else 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
