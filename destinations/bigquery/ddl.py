"""BigQuery tables derived from the one schema (destinations/schema.py): create what is
missing, add the columns an existing table lacks, never drop, replace or re-type."""

from __future__ import annotations

import logging
from typing import Any

from destinations.base import TransientError
from destinations.bigquery.config import HTTP_TIMEOUT, LEGACY_TYPES, BigQueryConfig
from destinations.bigquery.errors import errors
from destinations.schema import TableSchema

log = logging.getLogger(__name__)


def schema_fields(table: TableSchema) -> list[Any]:
    from google.cloud import bigquery

    return [bigquery.SchemaField(c.name, LEGACY_TYPES.get(c.type, c.type), mode=c.mode) for c in table.columns]


def table_definition(config: BigQueryConfig, table: TableSchema) -> Any:
    """A new table: day partitions on the schema's partition column, its clustering columns."""
    from google.cloud import bigquery

    definition = bigquery.Table(config.table_id(table.name), schema=schema_fields(table))
    if table.partition_by:
        day = bigquery.TimePartitioningType.DAY
        definition.time_partitioning = bigquery.TimePartitioning(type_=day, field=table.partition_by)
    if table.cluster_by:
        definition.clustering_fields = list(table.cluster_by)
    definition.description = f"Mixpanel {table.kind} rows written by mixpanel-dwh-proxy"
    return definition


def missing_fields(existing: list[Any], table: TableSchema) -> list[Any]:
    """Columns the schema has and the table lacks, as NULLABLE fields (BigQuery adds no other)."""
    from google.cloud import bigquery

    have = {f.name.lower(): f for f in existing}
    added = []
    for column in table.columns:
        current = have.get(column.name.lower())
        if current is None:
            added.append(bigquery.SchemaField(column.name, LEGACY_TYPES.get(column.type, column.type), mode="NULLABLE"))
        elif current.field_type.upper() not in {column.type, LEGACY_TYPES.get(column.type, column.type)}:
            log.warning(
                "bigquery: %s.%s is %s in BigQuery but %s here; kept as it is (rows it cannot take are rejected)",
                table.name, column.name, current.field_type, column.type,
            )  # fmt: skip
    return added


def ensure_dataset(client: Any, config: BigQueryConfig) -> None:
    from google.api_core import exceptions as gx
    from google.cloud import bigquery

    dataset_id = f"{config.project}.{config.dataset}"
    with errors(f"bigquery set-up of dataset {dataset_id}"):
        try:
            client.get_dataset(dataset_id, retry=None, timeout=HTTP_TIMEOUT)
        except gx.NotFound:
            dataset = bigquery.Dataset(dataset_id)
            if config.location:
                dataset.location = config.location
            client.create_dataset(dataset, exists_ok=True, retry=None, timeout=HTTP_TIMEOUT)


def ensure_table(client: Any, config: BigQueryConfig, table: TableSchema) -> None:
    from google.api_core import exceptions as gx

    table_id = config.table_id(table.name)
    with errors(f"bigquery set-up of table {table_id}"):
        for _ in range(3):  # two workers adding the same column: read again and retry
            try:
                existing = client.get_table(table_id, retry=None, timeout=HTTP_TIMEOUT)
            except gx.NotFound:
                client.create_table(table_definition(config, table), exists_ok=True, retry=None, timeout=HTTP_TIMEOUT)
                return
            added = missing_fields(list(existing.schema), table)
            if not added:
                return
            existing.schema = list(existing.schema) + added
            try:
                # The table's etag makes this a compare-and-set: a concurrent change fails it.
                client.update_table(existing, ["schema"], retry=None, timeout=HTTP_TIMEOUT)
            except (gx.PreconditionFailed, gx.BadRequest, gx.Conflict):
                continue
            log.info("bigquery: added %s to %s", ", ".join(f.name for f in added), table_id)
            return
        raise TransientError(f"bigquery set-up of table {table_id}: its schema kept changing underneath")
