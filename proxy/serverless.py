"""Settings for the serverless entry points (main.py, lambda_handler.py, function_app.py).

Each entry point is a thin module: `create_app(platform_settings(<runtime>))` wrapped in
the platform's own maintained adapter. What differs per platform lives here, as defaults
under the environment (the environment still wins, except for RUNTIME):

- RUNTIME is the platform's, whatever the environment says: it implies `DELIVERY=sync`
  (destinations/delivery.py), because these runtimes give a process no CPU between
  requests and may freeze or discard it at any time, so rows are written inside the
  request that brought them. No background flusher is started, no gevent monkey-patching
  happens (core/green.py works unpatched), and nothing waits for `atexit`.
- DATA_DIR and DEAD_LETTER_DIR default under the temporary directory: the deployed
  code's folder is read-only on Lambda and Azure (run-from-package), and /tmp is the
  only writable place everywhere. It does not outlive the instance, so set
  `pubsub_bad_topic` for a dead letter that does.
- TRUSTED_PROXY_HOPS: on AWS the adapter puts API Gateway's or the function URL's own
  `sourceIp` into the peer address, so 0 (the peer) is right and nothing the client
  sends can change it; Google's and Azure's front ends append the client to
  X-Forwarded-For, so 1.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

from core.settings import Settings, read_environment

PLATFORM_DEFAULTS: dict[str, dict[str, str]] = {
    "GCP": {"trusted_proxy_hops": "1"},
    "AWS": {"trusted_proxy_hops": "0"},
    "AZURE": {"trusted_proxy_hops": "1"},
}


def platform_settings(
    runtime: str, environ: Mapping[str, str] | None = None, secrets: Mapping[str, str] | None = None
) -> Settings:
    """Settings for `runtime` (GCP, AWS or AZURE): platform defaults, then `secrets` (values
    the entry point read from the platform's secret store), then `.env` and the environment."""
    scratch = os.path.join(tempfile.gettempdir(), "mpproxy")
    values: dict[str, str] = {
        "data_dir": os.path.join(scratch, "data"),
        "dead_letter_dir": os.path.join(scratch, "spool"),
        **PLATFORM_DEFAULTS[runtime],
    }
    values.update({k.lower(): v for k, v in (secrets or {}).items()})
    values.update(read_environment(environ))
    values["runtime"] = runtime
    return Settings.from_mapping(values)
