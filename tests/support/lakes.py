"""Reading the lakes back with the official clients, and writing objects the proxy did not."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass

from tests.support.emulators import Lakes, azure_client, gcs_client, s3_client


@dataclass(frozen=True)
class StoredObject:
    key: str
    content_type: str | None
    content_encoding: str | None
    raw: bytes
    version: str = ""  # ETag / generation: changes if anything rewrites the object

    def rows(self) -> list[dict]:
        assert self.raw[:2] == b"\x1f\x8b", f"{self.key} is not stored gzip-compressed"
        assert self.content_type == "application/x-ndjson", self.key
        assert self.content_encoding == "gzip", self.key
        text = gzip.decompress(self.raw).decode("utf-8")
        assert text.endswith("\n")
        return [json.loads(line) for line in text.splitlines()]


def read_lake(lakes: Lakes, lake: str, bucket: str, prefix: str = "") -> dict[str, StoredObject]:
    out: dict[str, StoredObject] = {}
    if lake == "s3":
        client = s3_client(lakes.s3.url)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                got = client.get_object(Bucket=bucket, Key=item["Key"])
                version = f"{got['ETag']}@{got['LastModified'].isoformat()}"
                encoding = got.get("ContentEncoding")
                out[item["Key"]] = StoredObject(item["Key"], got["ContentType"], encoding, got["Body"].read(), version)
    elif lake == "gcs":
        for blob in gcs_client(lakes.gcs.url).list_blobs(bucket, prefix=prefix):
            raw = blob.download_as_bytes(raw_download=True)
            version = f"{blob.generation}/{blob.metageneration}"
            out[blob.name] = StoredObject(blob.name, blob.content_type, blob.content_encoding, raw, version)
    else:
        container = azure_client(lakes.azure.connection_string).get_container_client(bucket)
        for blob in container.list_blobs(name_starts_with=prefix):
            raw = container.download_blob(blob.name, decompress=False).readall()
            settings = blob.content_settings
            version = f"{blob.etag}@{blob.last_modified.isoformat()}"
            out[blob.name] = StoredObject(blob.name, settings.content_type, settings.content_encoding, raw, version)
    return out


def put_plain(lakes: Lakes, lake: str, bucket: str, key: str, data: bytes) -> None:
    """Write an object the proxy did not write (creating the bucket if needed)."""
    if lake == "s3":
        client = s3_client(lakes.s3.url)
        if not any(b["Name"] == bucket for b in client.list_buckets()["Buckets"]):
            client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=key, Body=data, ContentType="text/plain")
    elif lake == "gcs":
        client = gcs_client(lakes.gcs.url)
        target = client.lookup_bucket(bucket) or client.create_bucket(bucket)
        target.blob(key).upload_from_string(data, content_type="text/plain")
    else:
        container = azure_client(lakes.azure.connection_string).get_container_client(bucket)
        if not container.exists():
            container.create_container()
        container.upload_blob(key, data)


def bucket_exists(lakes: Lakes, lake: str, bucket: str) -> bool:
    if lake == "s3":
        return any(b["Name"] == bucket for b in s3_client(lakes.s3.url).list_buckets()["Buckets"])
    if lake == "gcs":
        return gcs_client(lakes.gcs.url).lookup_bucket(bucket) is not None
    return azure_client(lakes.azure.connection_string).get_container_client(bucket).exists()
