"""`s3`, `gcs` and `azure` against moto, fake-gcs-server and Azurite, one bucket per run."""

from __future__ import annotations

from typing import Any, ClassVar

from tests.destinations.adapters.base import Adapter
from tests.support.emulators import Lakes
from tests.support.lakes import put_plain, read_lake

FOREIGN = ("events_archive/keep.json", "other/keep.txt", "eventsx/keep.txt")


class LakeAdapter(Adapter):
    standin = "lakes"
    bucket_variable: ClassVar[str]

    def __init__(self, standin: Lakes, unique: str) -> None:
        super().__init__(standin, unique)
        self.bucket = f"conf-{self.name}-{unique}"

    def env(self) -> dict[str, str]:
        return {**self.standin.env(), self.bucket_variable: self.bucket}

    def rows(self, table: str) -> list[dict[str, Any]]:
        try:
            objects = read_lake(self.standin, self.name, self.bucket, f"{table}/")
        except Exception as exc:  # noqa: BLE001 - a missing bucket holds no rows
            if "NoSuchBucket" in type(exc).__name__ + str(exc) or "NotFound" in type(exc).__name__ + str(exc):
                return []
            raise
        return [row for stored in objects.values() for row in stored.rows()]

    def plant_foreign(self) -> None:
        for key in FOREIGN:
            put_plain(self.standin, self.name, self.bucket, key, b"not ours")

    def foreign_intact(self) -> bool:
        stored = read_lake(self.standin, self.name, self.bucket)
        return all(stored[key].raw == b"not ours" for key in FOREIGN)


class S3Adapter(LakeAdapter):
    name = "s3"
    bucket_variable = "s3_bucket"


class GCSAdapter(LakeAdapter):
    name = "gcs"
    bucket_variable = "gcs_bucket"


class AzureAdapter(LakeAdapter):
    name = "azure"
    bucket_variable = "azure_container"


ADAPTERS = [S3Adapter, GCSAdapter, AzureAdapter]
