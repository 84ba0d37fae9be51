"""`BIGQUERY_WRITE=storage_write`: the Storage Write API's default stream, over gRPC.

Rows are serialised as protocol buffers whose descriptor is derived from the table's
schema (TIMESTAMP as microseconds, JSON as text) and appended in requests of at most
9 MB to `<table>/streams/_default`, where they are committed at once. gRPC cooperates
with gevent (core.green.init_grpc) inside gunicorn's workers.

A request BigQuery refuses stores nothing. When its answer names the bad rows
(`row_errors`) those are rejected and the rest appended again; when it does not, the
request is halved until the bad rows stand alone (a bounded number of appends), so one
bad row never sinks a batch. The default stream is at-least-once: a retry after a lost
reply stores the rows twice (there is no insertId here), see docs/bigquery.md.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from core import green
from destinations.base import Capabilities, PermanentError, Rejection, SinkResult, TransientError
from destinations.bigquery.config import BigQueryConfig, json_text
from destinations.bigquery.errors import Missing, errors
from destinations.rows import Row, text
from destinations.schema import TableSchema

REQUEST_BYTES = 9 * 1024 * 1024  # BigQuery's AppendRows limit is 10 MB
APPEND_TIMEOUT = 60.0
MAX_FAILED_APPENDS = 32  # appends one write may spend isolating rows BigQuery refused
CAPABILITIES = Capabilities(takes="rows", max_rows=10_000, max_bytes=8 * 1024 * 1024, attempt_timeout=90.0, idempotent=False)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# gRPC status codes that mean "this data", not "this call": isolate the bad rows.
DATA_CODES = {3, 11}  # INVALID_ARGUMENT, OUT_OF_RANGE
# CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE: try again.
TRANSIENT_CODES = {1, 2, 4, 8, 10, 13, 14}


def micros(value: str) -> int:
    """An RFC 3339 timestamp as microseconds since the epoch (BigQuery's TIMESTAMP in protos)."""
    moment = datetime.fromisoformat(value.replace("z", "Z"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


class RowCodec:
    """One table's row message: its descriptor (sent as the writer schema) and its encoder."""

    SCALARS = {"STRING": "TYPE_STRING", "JSON": "TYPE_STRING", "INT64": "TYPE_INT64", "TIMESTAMP": "TYPE_INT64"}
    SCALARS.update({"FLOAT64": "TYPE_DOUBLE", "BOOL": "TYPE_BOOL"})

    def __init__(self, table: TableSchema) -> None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        field = descriptor_pb2.FieldDescriptorProto
        self.descriptor = descriptor_pb2.DescriptorProto(name="Row")
        for number, column in enumerate(table.columns, 1):
            kind = getattr(field, self.SCALARS[column.type])
            self.descriptor.field.add(name=column.name, number=number, type=kind, label=field.LABEL_OPTIONAL)
        source = descriptor_pb2.FileDescriptorProto(name=f"mpproxy_{table.name}.proto", syntax="proto2")
        source.message_type.add().CopyFrom(self.descriptor)
        pool = descriptor_pool.DescriptorPool()
        pool.Add(source)
        self.message = message_factory.GetMessageClass(pool.FindMessageTypeByName("Row"))
        self.types = {c.name: c.type for c in table.columns}

    def encode(self, row: Row) -> bytes:
        """The row as a serialised message; raises ValueError/TypeError for a value it cannot hold."""
        values: dict[str, Any] = {}
        for name, value in row.items():
            kind = self.types.get(name)
            if value is None or kind is None:
                continue
            if kind == "JSON":
                values[name] = json_text(value)
            elif kind == "TIMESTAMP":
                values[name] = micros(value)
            elif kind == "STRING":
                values[name] = value if isinstance(value, str) else text(value)
            else:
                values[name] = value
        return self.message(**values).SerializeToString()


class StorageWriter:
    def __init__(self, config: BigQueryConfig) -> None:
        self.config = config
        self._codecs: dict[str, RowCodec] = {}
        self._lock = threading.Lock()
        self._client: Any = None

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                with errors("bigquery storage write client"):
                    self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        green.init_grpc()
        import grpc
        from google.api_core.client_options import ClientOptions
        from google.cloud.bigquery_storage_v1 import BigQueryWriteClient
        from google.cloud.bigquery_storage_v1.services.big_query_write.transports import BigQueryWriteGrpcTransport

        endpoint = self.config.storage_endpoint
        credentials = self.config.auth.credentials()
        if endpoint and endpoint.startswith("http://"):
            # Plaintext, as emulators speak it; anonymous unless credentials are configured.
            return BigQueryWriteClient(transport=BigQueryWriteGrpcTransport(channel=grpc.insecure_channel(endpoint[7:])))
        options = ClientOptions(api_endpoint=endpoint.removeprefix("https://")) if endpoint else None
        return BigQueryWriteClient(credentials=credentials, client_options=options)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.transport.close()

    def codec(self, table: TableSchema) -> RowCodec:
        with self._lock:
            if table.name not in self._codecs:
                self._codecs[table.name] = RowCodec(table)
            return self._codecs[table.name]

    def write(self, table: TableSchema, items: list[Row]) -> SinkResult:
        codec = self.codec(table)
        rejected: dict[int, str] = {}
        encoded: list[tuple[int, bytes]] = []
        for index, row in enumerate(items):
            try:
                data = codec.encode(row)
            except (ValueError, TypeError, OverflowError) as exc:
                rejected[index] = f"not a value for its column: {type(exc).__name__}"
                continue
            if len(data) > REQUEST_BYTES:
                rejected[index] = f"row is {len(data)} bytes, over BigQuery's 10 MB AppendRows limit"
                continue
            encoded.append((index, data))
        budget = [MAX_FAILED_APPENDS]
        for piece in _pieces(encoded):
            self._append_all(table, codec, piece, rejected, budget)
        return SinkResult(len(items) - len(rejected), tuple(Rejection(i, r) for i, r in sorted(rejected.items())))

    def _append_all(
        self, table: TableSchema, codec: RowCodec, rows: list[tuple[int, bytes]], rejected: dict[int, str], budget: list[int]
    ) -> None:
        """Append rows; isolate and reject the ones BigQuery refuses, store the others."""
        pending = [rows]
        while pending:
            rows = pending.pop()
            refused, named = self._append(table, codec, [data for _, data in rows])
            if refused is None:
                continue
            budget[0] -= 1
            if named:  # BigQuery named the bad rows: reject them, append the rest again
                rejected.update({rows[i][0]: reason for i, reason in named.items()})
                rest = [row for i, row in enumerate(rows) if i not in named]
                if rest:
                    pending.append(rest)
            elif len(rows) == 1 or budget[0] <= 0:
                rejected.update({index: refused for index, _ in rows})
            else:
                half = len(rows) // 2
                pending += [rows[half:], rows[:half]]

    def _append(self, table: TableSchema, codec: RowCodec, rows: list[bytes]) -> tuple[str | None, dict[int, str]]:
        """One AppendRows request on the default stream. (None, {}) when stored; else BigQuery's
        reason and the rows it named, when the request was refused for its data."""
        from google.cloud.bigquery_storage_v1 import types

        stream = f"projects/{self.config.project}/datasets/{self.config.dataset}/tables/{table.name}/streams/_default"
        request = types.AppendRowsRequest(
            write_stream=stream,
            proto_rows=types.AppendRowsRequest.ProtoData(
                writer_schema=types.ProtoSchema(proto_descriptor=codec.descriptor),
                rows=types.ProtoRows(serialized_rows=rows),
            ),
        )
        where = f"bigquery storage write into {table.name}"
        with errors(where):
            replies = self.client().append_rows(
                iter([request]), metadata=(("x-goog-request-params", f"write_stream={stream}"),), timeout=APPEND_TIMEOUT
            )
            try:
                reply = next(iter(replies))
            finally:
                cancel = getattr(replies, "cancel", None)
                if cancel is not None:
                    cancel()
        code = reply.error.code if "error" in reply else 0
        if not code:
            return None, {}
        message = " ".join(str(reply.error.message).split())[:300] or f"gRPC status {code}"
        if code in TRANSIENT_CODES:
            raise TransientError(f"{where}: gRPC status {code}")
        if code == 5:
            raise Missing(f"{where}: table not found")
        if code not in DATA_CODES:
            raise PermanentError(f"{where}: gRPC status {code}")
        named = {e.index: " ".join(str(e.message).split())[:300] for e in reply.row_errors if 0 <= e.index < len(rows)}
        return message, named


def _pieces(rows: list[tuple[int, bytes]]) -> list[list[tuple[int, bytes]]]:
    pieces: list[list[tuple[int, bytes]]] = []
    size = 0
    for row in rows:
        if not pieces or size + len(row[1]) + 8 > REQUEST_BYTES:
            pieces.append([])
            size = 0
        pieces[-1].append(row)
        size += len(row[1]) + 8
    return pieces
