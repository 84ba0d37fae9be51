"""Google credentials, built one way for every Google destination (gcs, bigquery, pubsub).

A keyfile (a path, or the JSON itself), or a service-account e-mail with its private key
(pasted keys may carry literal `\\n`); with neither, Application Default Credentials.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.settings import ConfigError, Settings

TOKEN_URI = "https://oauth2.googleapis.com/token"


@dataclass(frozen=True)
class GoogleAuth:
    keyfile: str | None = field(default=None, repr=False)
    email: str | None = None
    private_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, prefix: str, email_key: str = "service_account_email") -> GoogleAuth:
        """`<prefix>_keyfile`, or `<prefix>_<email_key>` with `<prefix>_service_account_private_key`."""
        auth = cls(
            keyfile=settings.get(f"{prefix}_keyfile"),
            email=settings.get(f"{prefix}_{email_key}"),
            private_key=settings.get(f"{prefix}_service_account_private_key"),
        )
        if bool(auth.email) != bool(auth.private_key):
            raise ConfigError(
                f"{prefix.upper()}_{email_key.upper()} and {prefix.upper()}_SERVICE_ACCOUNT_PRIVATE_KEY must be set together"
            )
        keyfile = auth.keyfile or ""
        if keyfile.lstrip().startswith("{"):
            try:
                json.loads(keyfile)
            except ValueError:  # the value is a secret: never print it
                raise ConfigError(f"{prefix.upper()}_KEYFILE holds invalid JSON (give a key file's path or its JSON)") from None
        elif keyfile and not Path(keyfile).is_file():
            raise ConfigError(f"{prefix.upper()}_KEYFILE={keyfile!r} is not a file (give a key file's path or its JSON)")
        return auth

    @property
    def configured(self) -> bool:
        return bool(self.keyfile or (self.email and self.private_key))

    def info(self) -> dict[str, Any] | None:
        """The service-account JSON, or None for Application Default Credentials."""
        if self.email and self.private_key:
            return {
                "type": "service_account",
                "client_email": self.email,
                "private_key": self.private_key.replace("\\n", "\n"),
                "token_uri": TOKEN_URI,
            }
        if self.keyfile:
            if self.keyfile.lstrip().startswith("{"):
                return json.loads(self.keyfile)
            with open(self.keyfile, encoding="utf-8") as handle:
                return json.load(handle)
        return None

    def credentials(self) -> Any:
        """google-auth credentials, or None (the client then applies ADC, or an emulator's anonymity)."""
        info = self.info()
        if info is None:
            return None
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_info(info)

    def project(self) -> str | None:
        info = self.info()
        return info.get("project_id") if info else None
