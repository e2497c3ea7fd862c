"""Reading export objects (Parquet, CSV, JSON Lines; gzipped or not) as conformed batches.

Pure: a reader gets the object's bytes (in memory or a memory-mapped spool file) and yields
record batches conformed to the raw table (:mod:`.conform`), collecting what it quarantined
and the schema drift it saw. Parquet and CSV (gzipped or not) are decoded batch by batch, so
memory holds the object's bytes plus a batch; JSON Lines objects are parsed whole (their
columns are only known once every line is read), so they hold their decoded rows too.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .conform import DriftNote, conform_batch
from .ledger import QuarantinedRecord

BATCH_ROWS = 32_768
_RECORD_CHARS = 10_000  # a quarantined record is kept up to this many characters

FORMATS = (
    (".parquet", "parquet"),
    (".csv.gz", "csv.gz"),
    (".csv", "csv"),
    (".jsonl.gz", "jsonl.gz"),
    (".jsonl", "jsonl"),
)


class BadObjectError(ValueError):
    """The object cannot be read at all (corrupt file, unknown format, broken header)."""


def object_format(key: str) -> str:
    for suffix, name in FORMATS:
        if key.endswith(suffix):
            return name
    expected = ", ".join(suffix for suffix, _ in FORMATS)
    raise BadObjectError(f"unknown file format for {key!r} (expected one of {expected})")


@dataclass
class ObjectReader:
    """The conformed batches of one object, plus what reading it quarantined and noticed.

    ``target`` maps the raw table's columns to Arrow types; ``contract`` lists the export
    contract's columns (first, in order, null when missing)."""

    key: str
    source: pa.Buffer | pa.NativeFile
    target: dict[str, pa.DataType]
    contract: tuple[str, ...]
    contract_schema: pa.Schema
    batch_rows: int = BATCH_ROWS
    quarantined: list[QuarantinedRecord] = field(default_factory=list)
    drift: dict[tuple[str, str], DriftNote] = field(default_factory=dict)
    rows: int = 0

    def __post_init__(self) -> None:
        self.format = object_format(self.key)
        if isinstance(self.source, pa.NativeFile):  # a memory map: zero-copy buffer
            self.source = self.source.read_buffer()

    # -- reading ------------------------------------------------------------------------
    def open(self) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """The columns the object yields (known before the load starts, for DDL) and its
        conformed, non-empty batches. Raises BadObjectError when the object is unreadable,
        here or while iterating."""
        batches = self._batches()
        first = next(batches, None)
        if first is None:
            empty = conform_batch(
                self.contract_schema.empty_table(), self.target, contract=self.contract
            )
            return empty.batch.schema, iter(())

        def chained() -> Iterator[pa.RecordBatch]:
            yield first
            yield from batches

        return first.schema, chained()

    def _batches(self) -> Iterator[pa.RecordBatch]:
        for batch, typed, report_missing in self._raw_batches():
            conformed = conform_batch(
                batch,
                self.target,
                contract=self.contract,
                typed_source=typed,
                report_missing=report_missing,
            )
            for note in conformed.notes:
                self._note(note)
            if conformed.batch.num_rows:
                self.rows += conformed.batch.num_rows
                yield conformed.batch

    def _note(self, note: DriftNote) -> None:
        key = (note.column, note.change)
        seen = self.drift.get(key)
        if seen is None:
            self.drift[key] = note
        elif note.rows_as_text:
            self.drift[key] = DriftNote(
                note.column,
                note.change,
                note.expected_type,
                note.found_type,
                seen.rows_as_text + note.rows_as_text,
            )

    # -- formats ------------------------------------------------------------------------
    def _raw_batches(self) -> Iterator[tuple[pa.RecordBatch, bool, bool]]:
        if self.format == "parquet":
            yield from ((b, True, True) for b in self._parquet())
        elif self.format.startswith("csv"):
            yield from ((b, False, True) for b in self._csv())
        else:
            yield from self._jsonl()

    def _parquet(self) -> Iterator[pa.RecordBatch]:
        try:
            reader = pq.ParquetFile(pa.BufferReader(self.source))
            yield from reader.iter_batches(batch_size=self.batch_rows, use_threads=False)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise BadObjectError(f"corrupt Parquet file: {exc}") from exc

    def _stream(self) -> pa.NativeFile:
        """The object's (decompressed) bytes as a stream."""
        raw = pa.BufferReader(self.source)
        return pa.CompressedInputStream(raw, "gzip") if self.format.endswith(".gz") else raw

    def _text(self) -> bytes:
        try:
            return self._stream().read()
        except (OSError, pa.ArrowInvalid, EOFError) as exc:
            raise BadObjectError(f"corrupt gzip stream: {exc}") from exc

    def _header(self) -> list[str] | None:
        """The CSV header's column names (None for an empty object), read on its own."""
        stream, head = self._stream(), b""
        try:
            while b"\n" not in head and (chunk := stream.read(64 << 10)):
                head += chunk
        except (OSError, pa.ArrowInvalid, EOFError) as exc:
            raise BadObjectError(f"corrupt gzip stream: {exc}") from exc
        if not head.strip():
            return None
        line = head.split(b"\n", 1)[0].decode("utf-8", "replace").strip("\r")
        if not line.strip():
            raise BadObjectError("CSV file has no header line")
        names = next(csv.reader([line]))
        if len(set(names)) != len(names) or any(not n.strip() for n in names):
            raise BadObjectError(f"CSV header has empty or repeated column names: {names}")
        return names

    def _csv(self) -> Iterator[pa.RecordBatch]:
        names = self._header()
        if names is None:
            return

        def bad_row(row: pacsv.InvalidRow) -> str:
            self.quarantined.append(
                QuarantinedRecord(
                    f"{self.key}#row",
                    f"CSV row has {row.actual_columns} fields, header has {row.expected_columns}",
                    row.text[:_RECORD_CHARS],
                )
            )
            return "skip"

        try:
            reader = pacsv.open_csv(
                self._stream(),
                read_options=pacsv.ReadOptions(block_size=8 << 20, use_threads=False),
                parse_options=pacsv.ParseOptions(invalid_row_handler=bad_row),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.string()),
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                ),
            )
            yield from reader
        except (pa.ArrowInvalid, OSError, EOFError) as exc:
            raise BadObjectError(f"unreadable CSV: {exc}") from exc

    def _jsonl(self) -> Iterator[tuple[pa.RecordBatch, bool, bool]]:
        text = self._text()
        options = pajson.ParseOptions(
            explicit_schema=self.contract_schema, unexpected_field_behavior="infer"
        )
        try:
            table = pajson.read_json(
                io.BytesIO(text),
                read_options=pajson.ReadOptions(use_threads=False, block_size=8 << 20),
                parse_options=options,
            )
        except pa.ArrowInvalid:
            table = None
        if table is not None:  # fast path: every line parsed with the contract's types
            for batch in table.to_batches(self.batch_rows):
                yield batch, True, False
            return
        yield from self._jsonl_line_by_line(text)

    def _jsonl_line_by_line(self, text: bytes) -> Iterator[tuple[pa.RecordBatch, bool, bool]]:
        """Slow path for a file with bad lines or changed types: every line on its own; a
        line that is not a JSON object is quarantined, values are conformed from text.

        Two passes (columns first, then rows in batches) keep memory flat."""
        columns: dict[str, None] = dict.fromkeys(self.contract)
        good: list[int] = []
        lines = text.splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"a JSON {type(record).__name__}, not an object")
            except ValueError as exc:
                self.quarantined.append(
                    QuarantinedRecord(
                        f"{self.key}#line={number}",
                        f"unparsable JSON line: {exc}",
                        line.decode("utf-8", "replace")[:_RECORD_CHARS],
                    )
                )
                continue
            good.append(number - 1)
            columns.update(dict.fromkeys(record))
        for start in range(0, len(good), self.batch_rows):
            rows = [json.loads(lines[i]) for i in good[start : start + self.batch_rows]]
            yield _text_batch(rows, columns), False, False


def _text_batch(rows: list[dict[str, object]], columns: dict[str, None]) -> pa.RecordBatch:
    """Rows of decoded JSON as a batch of text columns (scalars as JSON text, strings as is)."""

    def text(value: object) -> str | None:
        if value is None:
            return None
        if isinstance(value, str):
            return value
        return json.dumps(value)

    arrays = [pa.array([text(r.get(name)) for r in rows], pa.string()) for name in columns]
    return pa.RecordBatch.from_arrays(arrays, names=list(columns))
