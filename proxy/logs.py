"""Logging, configured once: JSON lines in production, readable lines in development.

Secrets are never logged: the formatter masks any value of a known secret setting
that appears in a message, as a last line of defence behind not logging them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable

from core.settings import Settings

SECRET_HINTS = ("secret", "password", "private_key", "key", "token", "connection_string", "credentials")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


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
