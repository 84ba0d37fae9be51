"""Every BigQuery failure, classified once: transient (retry) or permanent (dead-letter)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from destinations.base import PermanentError, TransientError

# Reasons worth retrying, whether BigQuery reports them for a request, a job or a row.
TRANSIENT_REASONS = {
    "backendError",
    "internalError",
    "timeout",
    "rateLimitExceeded",
    "quotaExceeded",
    "stopped",
    "jobRateLimitExceeded",
    "jobBackendError",
    "jobInternalError",
}


class Missing(PermanentError):
    """The dataset or table is not there (404): set-up can make it again."""


def classify(exc: BaseException, where: str) -> Exception:
    """Transient or permanent for one failed call. BigQuery answers quota and rate limits
    with 403 and a reason, so reasons decide before statuses. gRPC errors (the Storage
    Write API) arrive as the same exception classes, with the equivalent HTTP status."""
    import requests
    from google.api_core import exceptions as gx
    from google.auth import exceptions as ax

    if isinstance(exc, gx.GoogleAPICallError):
        status = exc.code if isinstance(exc.code, int) else 0
        reasons = {str(e.get("reason")) for e in (exc.errors or []) if isinstance(e, dict)}
        label = f"{where}: HTTP {status} {'/'.join(sorted(reasons)) or type(exc).__name__}"
        if reasons & TRANSIENT_REASONS or status in (408, 429) or status >= 500 or isinstance(exc, gx.Aborted):
            return TransientError(label)
        if status == 401:
            return PermanentError(f"{where}: credentials rejected (HTTP 401)")
        if status == 403:
            return PermanentError(f"{where}: permission denied (bigquery.dataEditor, and for jobs bigquery.jobUser, are needed)")
        if status == 404:
            return Missing(f"{where}: not found (HTTP 404)")
        # The service's own text stays out: it may echo row values.
        return PermanentError(label)
    if isinstance(exc, ax.RefreshError):
        error = TransientError if getattr(exc, "retryable", False) else PermanentError
        return error(f"{where}: credentials could not be refreshed")
    if isinstance(exc, ax.TransportError):
        return TransientError(f"{where}: {type(exc).__name__}")
    if isinstance(exc, ax.GoogleAuthError):
        return PermanentError(f"{where}: {type(exc).__name__} (no usable Google credentials)")
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return TransientError(f"{where}: {type(exc).__name__}")
    if isinstance(exc, (ValueError, KeyError, OSError)):
        # A key file that is missing or not JSON, a value the client cannot encode.
        return PermanentError(f"{where}: {type(exc).__name__}")
    return TransientError(f"{where}: {type(exc).__name__}")


@contextmanager
def errors(where: str) -> Iterator[None]:
    """Run a block of SDK calls; whatever fails leaves as TransientError or PermanentError."""
    try:
        yield
    except (TransientError, PermanentError):
        raise
    except Exception as exc:  # noqa: BLE001 - every SDK failure is classified, none escapes raw
        raise classify(exc, where) from None
