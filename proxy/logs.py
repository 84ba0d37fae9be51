"""Logging, configured once: JSON lines in production, readable lines in development.

Secrets are never logged: the formatter masks any value of a known secret setting
that appears in a message, as a last line of defence behind not logging them.

Query strings are never logged either: browser SDKs send whole payloads in them
(`GET /track?data=...`). gunicorn's access log prints paths only (gunicorn.conf.py);
the servers' own messages that quote a request line or URI (the development server's
access log under `flask run` or `python app.py`, gunicorn's "Invalid request" and
"Error handling request" lines) lose their query string through `NoQueryStrings`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable

from core.settings import Settings

SECRET_HINTS = ("secret", "password", "private_key", "key", "token", "connection_string", "credentials")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# From "?" up to the request line's " HTTP/x", else to the end: a payload may hold quotes and spaces.
_QUERY = re.compile(r"\?.*?(?=\sHTTP/\d|$)", re.DOTALL)
#: The servers' loggers whose messages quote request lines and URIs.
SERVER_LOGGERS = ("werkzeug", "gunicorn.error")


def without_query(text: str) -> str:
    return _QUERY.sub("", text)


class NoQueryStrings(logging.Filter):
    """Drop query strings from a server's messages (and their arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "?" in record.msg:
            record.msg = without_query(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(without_query(a) if isinstance(a, str) else a for a in record.args)
        return True


def secret_values(settings: Settings) -> list[str]:
    values = []
    for name, value in settings.env.items():
        if any(h in name for h in SECRET_HINTS) and value and len(value.strip()) >= 6 and name != "mixpanel_token":
            values.append(value.strip())
    return sorted(values, key=len, reverse=True)


class _Masking(logging.Formatter):
    def __init__(self, secrets: Iterable[str], json_lines: bool) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.secrets = list(secrets)
        self.json_lines = json_lines

    def _mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def format(self, record: logging.LogRecord) -> str:
        if not self.json_lines:
            extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
            line = super().format(record)
            if extras:
                line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
            return self._mask(line)
        payload = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return self._mask(json.dumps(payload, default=str))


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Masking(secret_values(settings), settings.log_format == "json"))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_mpproxy", False):
            root.removeHandler(old)
    handler._mpproxy = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for noisy in ("urllib3", "botocore", "boto3", "google", "azure", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    for name in SERVER_LOGGERS:
        server_log = logging.getLogger(name)
        if not any(isinstance(f, NoQueryStrings) for f in server_log.filters):
            server_log.addFilter(NoQueryStrings())
