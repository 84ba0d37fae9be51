"""AWS clients, built one way for every AWS destination (s3, redshift).

Explicit keys when configured, else boto3's standard credential chain (environment,
profile, SSO, container or instance role). One attempt per call: the delivery layer
owns retries and their deadline.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config


def client(
    service: str,
    *,
    region: str | None,
    endpoint_url: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    session_token: str | None,
    **config: Any,
) -> Any:
    session = boto3.session.Session(
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
        region_name=region,
    )
    options = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        max_pool_connections=50,
        **config,
    )
    return session.client(service, endpoint_url=endpoint_url, config=options)
