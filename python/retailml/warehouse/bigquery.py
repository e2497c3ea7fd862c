"""BigQuery warehouse over google-cloud-bigquery: appends are Parquet load jobs.

Table names are ``dataset.table`` in the client's project (``raw.order_lines`` is dataset
``raw``, as the dbt sources expect). SQL uses ``?`` placeholders like the other warehouses;
they become named query parameters, and double-quoted identifiers become backticks.

Appends stream the record batches into a local Parquet file (flat memory), load it into a
staging table with a load job, and move the rows with ``INSERT ... SELECT``.

:meth:`BigQueryWarehouse.transaction` gives the all-or-nothing the loaders rely on: inside it,
appends are loaded into staging tables at once, while every write statement (the moves out of
staging included) is deferred and runs at the end as one multi-statement query between
``BEGIN TRANSACTION`` and ``COMMIT TRANSACTION``. Reads inside the transaction therefore see
the state before it. DDL (creating tables, adding columns) is not transactional in BigQuery
and runs at once.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .base import Params, WarehouseError, split_name, sql_type

_BIGQUERY_TYPES = {
    "json": "JSON",
    "decimal": "NUMERIC",
    "timestamp": "DATETIME",
    "timestamptz": "TIMESTAMP",
    "boolean": "BOOL",
    "integer": "INT64",
    "float": "FLOAT64",
    "date": "DATE",
    "string": "STRING",
    "binary": "BYTES",
}
STAGING_DATASET = "_retailml_staging"
STAGING_HOURS = 24  # staging tables expire by themselves if a run dies before dropping them


def bigquery_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return sql_type(arrow_type, _BIGQUERY_TYPES, "BigQuery")


def to_bigquery_sql(sql: str, params: Params) -> tuple[str, list[Any]]:
    """``?`` placeholders -> ``@p0, @p1, ...`` parameters; ``"ident"`` -> ```ident```."""
    values = list(params or [])
    counter = iter(range(len(values)))
    out = re.sub(r"\?", lambda _: f"@p{next(counter)}", sql)
    out = re.sub(r'"([^"]+)"', r"`\1`", out)
    return out, values


def _parameter(name: str, value: Any) -> Any:
    from google.cloud import bigquery

    if isinstance(value, bool):
        kind = "BOOL"
    elif isinstance(value, int):
        kind = "INT64"
    elif isinstance(value, float):
        kind = "FLOAT64"
    elif isinstance(value, datetime):
        kind = "TIMESTAMP" if value.tzinfo else "DATETIME"
    elif isinstance(value, date):
        kind = "DATE"
    else:
        kind = "STRING"
        value = None if value is None else str(value)
    return bigquery.ScalarQueryParameter(name, kind, value)


@dataclass
class _Deferred:
    statements: list[tuple[str, list[Any]]] = field(default_factory=list)
    staging: list[str] = field(default_factory=list)


class BigQueryWarehouse:
    kind = "bigquery"

    def __init__(self, client: Any, *, location: str | None = None) -> None:
        self._client = client
        self.location = location
        self._tx: _Deferred | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> BigQueryWarehouse:
        from google.cloud import bigquery

        if not settings.bq_project:
            raise WarehouseError("RETAILML_BQ_PROJECT is not set: BigQuery needs a project")
        credentials = None
        if settings.bq_keyfile:
            from google.oauth2 import service_account

            credentials = service_account.Credentials.from_service_account_file(
                str(settings.bq_keyfile)
            )
        client = bigquery.Client(
            project=settings.bq_project, credentials=credentials, location=settings.bq_location
        )
        return cls(client, location=settings.bq_location)

    # -- names ----------------------------------------------------------------------
    def _table_id(self, table: str) -> str:
        dataset, name = split_name(table)
        return f"{self._client.project}.{dataset}.{name}"

    # -- queries --------------------------------------------------------------------
    def _run(self, sql: str, params: list[Any]) -> Any:
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(
            query_parameters=[_parameter(f"p{i}", v) for i, v in enumerate(params)]
        )
        return self._client.query(sql, job_config=config, location=self.location)

    def execute(self, sql: str, params: Params = None) -> None:
        statement, values = to_bigquery_sql(sql, params)
        if self._tx is not None and not _is_ddl(statement):
            self._tx.statements.append((statement, values))
            return
        self._run(statement, values).result()

    def query_arrow(self, sql: str, params: Params = None) -> pa.Table:
        statement, values = to_bigquery_sql(sql, params)
        return self._run(statement, values).to_arrow(create_bqstorage_client=False)

    def iter_arrow(
        self, sql: str, params: Params = None, batch_rows: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        statement, values = to_bigquery_sql(sql, params)
        rows = self._run(statement, values).result(page_size=batch_rows)
        yield from rows.to_arrow_iterable(bqstorage_client=None)

    def scalar(self, sql: str, params: Params = None) -> Any:
        table = self.query_arrow(sql, params)
        return table.column(0)[0].as_py() if table.num_rows else None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._tx is not None:  # nested: part of the outer transaction
            yield
            return
        self._tx = deferred = _Deferred()
        try:
            yield
            if deferred.statements:
                script = "BEGIN TRANSACTION;\n"
                params: list[Any] = []
                for statement, values in deferred.statements:
                    script += _renumber(statement, len(params)) + ";\n"
                    params.extend(values)
                script += "COMMIT TRANSACTION;"
                self._tx = None
                self._run(script, params).result()
        finally:
            self._tx = None
            for staging in deferred.staging:
                self._client.delete_table(staging, not_found_ok=True)

    # -- tables ---------------------------------------------------------------------
    def table_exists(self, table: str) -> bool:
        from google.api_core.exceptions import NotFound

        try:
            self._client.get_table(self._table_id(table))
        except NotFound:
            return False
        return True

    def columns(self, table: str) -> dict[str, str]:
        from google.api_core.exceptions import NotFound

        try:
            schema = self._client.get_table(self._table_id(table)).schema
        except NotFound:
            return {}
        return {f.name: f.field_type.lower() for f in schema}

    def _schema(self, schema: pa.Schema, *, json_as_string: bool = False) -> list[Any]:
        from google.cloud import bigquery

        fields = []
        for f in schema:
            kind = bigquery_type(f.type)
            if json_as_string and kind == "JSON":
                kind = "STRING"
            fields.append(bigquery.SchemaField(f.name, kind, mode="NULLABLE"))
        return fields

    def create_table(self, table: str, schema: pa.Schema) -> None:
        from google.cloud import bigquery

        dataset, _ = split_name(table)
        self._client.create_dataset(f"{self._client.project}.{dataset}", exists_ok=True)
        self._client.create_table(
            bigquery.Table(self._table_id(table), schema=self._schema(schema)), exists_ok=True
        )

    def add_columns(self, table: str, schema: pa.Schema) -> None:
        current = self._client.get_table(self._table_id(table))
        names = {f.name for f in current.schema}
        new = [f for f in self._schema(schema) if f.name not in names]
        if new:
            current.schema = [*current.schema, *new]
            self._client.update_table(current, ["schema"])

    def _stage(self, data: pa.Table | Iterable[pa.RecordBatch]) -> tuple[str, pa.Schema, int]:
        """Load ``data`` into a new staging table with a Parquet load job."""
        from google.cloud import bigquery

        batches = data.to_batches() if isinstance(data, pa.Table) else data
        rows = 0
        schema: pa.Schema | None = data.schema if isinstance(data, pa.Table) else None
        with tempfile.TemporaryFile(prefix="retailml-bq-", suffix=".parquet") as spool:
            writer: pq.ParquetWriter | None = None
            for batch in batches:
                batch = _parquet_ready(batch)
                if writer is None:
                    schema = batch.schema
                    writer = pq.ParquetWriter(spool, schema)
                elif not batch.schema.equals(schema):
                    batch = batch.select(schema.names).cast(schema)
                writer.write_batch(batch)
                rows += batch.num_rows
            if writer is None:
                return "", _parquet_schema(schema) if schema else pa.schema([]), 0
            writer.close()
            spool.seek(0)
            self._client.create_dataset(f"{self._client.project}.{STAGING_DATASET}", exists_ok=True)
            staging = f"{self._client.project}.{STAGING_DATASET}.load_{uuid.uuid4().hex[:16]}"
            table = bigquery.Table(staging, schema=self._schema(schema, json_as_string=True))
            table.expires = datetime.now(UTC) + timedelta(hours=STAGING_HOURS)
            self._client.create_table(table)
            config = bigquery.LoadJobConfig(
                source_format=bigquery.SourceFormat.PARQUET,
                write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
                schema=self._schema(schema, json_as_string=True),
            )
            self._client.load_table_from_file(
                spool, staging, job_config=config, location=self.location
            ).result()
        return staging, schema, rows

    def append_arrow(self, table: str, data: pa.Table | Iterable[pa.RecordBatch]) -> int:
        staging, schema, rows = self._stage(data)
        if not rows:
            return 0
        types = self.columns(table)
        missing = [n for n in schema.names if n not in types]
        if missing:
            self._client.delete_table(staging, not_found_ok=True)
            raise WarehouseError(f"{table} has no column(s) {missing}")
        columns = ", ".join(f"`{n}`" for n in schema.names)
        values = ", ".join(
            f"PARSE_JSON(`{n}`)" if types[n] == "json" else f"`{n}`" for n in schema.names
        )
        dataset, name = split_name(table)
        move = f"INSERT INTO `{dataset}.{name}` ({columns}) SELECT {values} FROM `{staging}`"
        if self._tx is not None:
            self._tx.staging.append(staging)
            self._tx.statements.append((move, []))
        else:
            try:
                self._run(move, []).result()
            finally:
                self._client.delete_table(staging, not_found_ok=True)
        return rows

    def replace_arrow(self, table: str, data: pa.Table) -> int:
        self.create_table(table, data.schema)
        staging, _, rows = self._stage(data)
        dataset, name = split_name(table)
        try:
            if not rows:
                self._run(f"TRUNCATE TABLE `{dataset}.{name}`", []).result()
                return 0
            columns = ", ".join(
                f"PARSE_JSON(`{f.name}`) AS `{f.name}`"
                if bigquery_type(f.type) == "JSON"
                else f"`{f.name}`"
                for f in data.schema
            )
            self._run(
                f"CREATE OR REPLACE TABLE `{dataset}.{name}` AS SELECT {columns} FROM `{staging}`",
                [],
            ).result()
        finally:
            if staging:
                self._client.delete_table(staging, not_found_ok=True)
        return rows

    def close(self) -> None:
        self._client.close()


def _renumber(statement: str, offset: int) -> str:
    """Shift ``@pN`` parameters by ``offset`` (statements joined into one script)."""
    return re.sub(r"@p(\d+)", lambda m: f"@p{int(m.group(1)) + offset}", statement)


def _is_ddl(statement: str) -> bool:
    return statement.lstrip()[:6].lower() in ("create", "alter ", "drop t", "drop s")


def _parquet_ready(batch: pa.RecordBatch) -> pa.RecordBatch:
    """JSON extension -> its text; dictionaries decoded (BigQuery reads plain columns)."""
    arrays, fields = [], []
    for f, column in zip(batch.schema, batch.columns, strict=True):
        if isinstance(f.type, pa.BaseExtensionType):
            column = column.storage
        if pa.types.is_dictionary(column.type):
            column = column.dictionary.take(column.indices)
        arrays.append(column)
        fields.append(pa.field(f.name, column.type))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _parquet_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema(
        pa.field(
            f.name, f.type.storage_type if isinstance(f.type, pa.BaseExtensionType) else f.type
        )
        for f in schema
    )
