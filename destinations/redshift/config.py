"""The redshift destination's settings, read once (see the package docstring for the names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.settings import ConfigError, Settings
from destinations.redshift.sql import identifier


@dataclass(frozen=True)
class RedshiftConfig:
    mode: str  # "data_api" | "direct"
    schema: str = "public"
    database: str | None = None
    # Data API
    workgroup: str | None = None
    cluster_identifier: str | None = None
    db_user: str | None = None
    secret_arn: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    poll_initial_seconds: float = 0.05
    poll_max_seconds: float = 2.0
    poll_timeout_seconds: float = 100.0
    # direct
    host: str | None = None
    port: int = 5439
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    sslmode: str = "require"
    max_connections: int = 8
    statement_timeout_seconds: float = 50.0

    @property
    def where(self) -> str:
        """Where rows go, for messages (never a secret)."""
        if self.mode == "direct":
            return f"{self.host}:{self.port}/{self.database}"
        return f"{'workgroup ' + self.workgroup if self.workgroup else 'cluster ' + str(self.cluster_identifier)}/{self.database}"

    @classmethod
    def from_settings(cls, settings: Settings) -> RedshiftConfig:
        get = settings.get
        schema = (get("redshift_schema_name") or "public").lower()
        try:
            identifier(schema, "schema")
        except ValueError as exc:
            raise ConfigError(f"redshift_schema_name: {exc}") from None
        timeout = settings.get_float("redshift_statement_timeout_seconds", 50.0, 1)
        common: dict[str, Any] = {"schema": schema, "statement_timeout_seconds": timeout}
        if get("redshift_host"):
            return cls(
                mode="direct",
                database=settings.require("redshift_database", "redshift (direct connection)"),
                host=get("redshift_host"),
                port=settings.get_int("redshift_port", 5439, 1),
                user=settings.require("redshift_user", "redshift (direct connection)"),
                password=get("redshift_password"),
                sslmode=(get("redshift_sslmode") or "require").lower(),
                max_connections=settings.get_int("redshift_max_connections", 8, 1),
                **common,
            )
        workgroup, cluster = get("redshift_workgroup"), get("redshift_cluster_identifier")
        if not workgroup and not cluster:
            raise ConfigError(
                "redshift needs redshift_workgroup (serverless), redshift_cluster_identifier (provisioned) "
                "or redshift_host (direct connection)"
            )
        if workgroup and cluster:
            raise ConfigError("redshift: set redshift_workgroup or redshift_cluster_identifier, not both")
        if cluster and not (get("redshift_db_user") or get("redshift_secret_arn")):
            raise ConfigError("redshift_cluster_identifier needs redshift_db_user or redshift_secret_arn")
        return cls(
            mode="data_api",
            database=settings.require("redshift_database", "redshift"),
            workgroup=workgroup,
            cluster_identifier=cluster,
            db_user=get("redshift_db_user"),
            secret_arn=get("redshift_secret_arn"),
            region=get("redshift_region"),
            endpoint_url=get("redshift_endpoint_url") or get("aws_endpoint_url_redshift_data"),
            access_key_id=get("redshift_access_key_id"),
            secret_access_key=get("redshift_secret_access_key"),
            session_token=get("redshift_session_token"),
            poll_timeout_seconds=settings.get_float("redshift_poll_timeout_seconds", 100.0, 1),
            **common,
        )
