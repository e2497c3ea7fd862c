"""The S3 order export: the Arrow schema of the contract, Parquet and gzipped JSON Lines files.

Both formats are built column-wise in Arrow (no per-line Python) and are byte-for-byte
deterministic: Parquet from the same table and library version, gzip with ``mtime=0``.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from retailml.simulate import catalog
from retailml.simulate.config import SimulationConfig
from retailml.simulate.state import DAY_SECONDS, STREAM_FORMAT, Columns, day_rng

# The contract (docs/ARCHITECTURE.md, "S3 order exports"); all fields nullable in Arrow,
# only customer_id ever holds nulls. Timestamps are naive shop-local time.
ORDER_LINE_SCHEMA = pa.schema(
    [
        ("order_id", pa.string()),
        ("line_number", pa.int64()),
        ("customer_id", pa.string()),
        ("product_id", pa.string()),
        ("quantity", pa.int64()),
        ("unit_price", pa.float64()),
        ("discount_amount", pa.float64()),
        ("currency", pa.string()),
        ("channel", pa.string()),
        ("ordered_at", pa.timestamp("us")),
        ("exported_at", pa.timestamp("us")),
    ]
)
JSON_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"  # for readers; written without strftime
EXPORT_HOUR = 4  # the export of day d runs on d + 1 at 04:00 local, one minute per part
ORDER_ID_WIDTH, CUSTOMER_ID_WIDTH, PRODUCT_ID_WIDTH = 10, 7, 5


@dataclass(eq=False)
class DayLines(Columns):
    """A day's exported order lines, in export order (duplicates included)."""

    order_no: np.ndarray  # int64
    line_number: np.ndarray  # int64
    customer: np.ndarray  # int64, -1 = guest
    product: np.ndarray  # int64, -1 = shipping fee
    quantity: np.ndarray  # int64, negative = return
    unit_price: np.ndarray  # float64
    discount: np.ndarray  # float64
    channel: np.ndarray  # int8 -> catalog.CHANNELS
    ordered_s: np.ndarray  # int64 sim seconds


def format_ids(prefix: str, index: np.ndarray, width: int) -> pa.Array:
    """Ids like ``C0000001`` from 0-based indices (negative -> null)."""
    index = np.asarray(index, dtype=np.int64)
    numbers = pa.array(index + 1, mask=index < 0)
    padded = pc.utf8_lpad(pc.cast(numbers, pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, padded, "")


def _timestamps(start: date, sim_seconds: np.ndarray) -> pa.Array:
    local = np.datetime64(start, "s") + sim_seconds.astype("timedelta64[s]")
    return pa.array(local.astype("datetime64[us]"), type=pa.timestamp("us"))


def order_lines_table(lines: DayLines, config: SimulationConfig, day: int) -> pa.Table:
    """The contract's 11 columns; ``exported_at`` is the export time of the line's part file."""
    n = len(lines)
    order_no = pa.array(lines.order_no)
    order_id = pc.binary_join_element_wise(
        "O", pc.utf8_lpad(pc.cast(order_no, pa.string()), width=ORDER_ID_WIDTH, padding="0"), ""
    )
    is_shipping = pa.array(lines.product < 0)
    product_id = pc.if_else(
        is_shipping, catalog.SHIPPING_PRODUCT_ID, format_ids("P", lines.product, PRODUCT_ID_WIDTH)
    )
    part = np.arange(n, dtype=np.int64) // config.lines_per_part
    exported_s = (day + 1) * DAY_SECONDS + EXPORT_HOUR * 3600 + 60 * part
    return pa.table(
        [
            order_id,
            pa.array(lines.line_number, pa.int64()),
            format_ids("C", lines.customer, CUSTOMER_ID_WIDTH),
            product_id,
            pa.array(lines.quantity, pa.int64()),
            pa.array(lines.unit_price, pa.float64()),
            pa.array(lines.discount, pa.float64()),
            pa.repeat(pa.scalar(catalog.CURRENCY), n),
            pa.array(catalog.CHANNELS).take(pa.array(lines.channel.astype(np.int32))),
            _timestamps(config.start_date, lines.ordered_s),
            _timestamps(config.start_date, exported_s),
        ],
        schema=ORDER_LINE_SCHEMA,
    )


def uses_json(config: SimulationConfig, day: int) -> bool:
    """Whether day ``day`` is exported as JSON Lines (deterministic from the seed)."""
    return bool(day_rng(config, STREAM_FORMAT, day).random() < config.json_share)


def object_key(config: SimulationConfig, day_date: date, part: int, as_json: bool) -> str:
    suffix = "jsonl.gz" if as_json else "parquet"
    return f"{config.key_prefix}dt={day_date.isoformat()}/part-{part:04d}.{suffix}"


def split_parts(table: pa.Table, lines_per_part: int) -> list[pa.Table]:
    """Consecutive slices of at most ``lines_per_part`` rows; one (maybe empty) at least."""
    n_parts = max(1, -(-table.num_rows // lines_per_part))
    return [table.slice(i * lines_per_part, lines_per_part) for i in range(n_parts)]


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    return sink.getvalue().to_pybytes()


def _money(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Non-negative amounts in whole cents as JSON numbers with two decimals ("4.95")."""
    cents = np.rint(column.to_numpy() * 100).astype(np.int64)
    if (cents < 0).any():
        raise ValueError("amounts must be >= 0")
    whole = pc.cast(pa.array(cents // 100), pa.string())
    fraction = pc.utf8_lpad(pc.cast(pa.array(cents % 100), pa.string()), width=2, padding="0")
    return pc.binary_join_element_wise(whole, ".", fraction, "")


@functools.cache
def _clock_texts() -> pa.Array:
    """ "HH:MM:SS" for every second of a day (built once, on first use)."""
    return pa.array(
        [f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)]
    )


def _timestamp_text(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Timestamps as "YYYY-MM-DD HH:MM:SS" (JSON_TIMESTAMP_FORMAT), faster than strftime."""
    seconds = pc.cast(pc.cast(column, pa.timestamp("s")), pa.int64()).to_numpy()
    days, second_of_day = np.divmod(seconds, DAY_SECONDS)
    unique_days, day_of_row = np.unique(days, return_inverse=True)
    day_texts = pa.array([str(np.datetime64(int(d), "D")) for d in unique_days], pa.string())
    return pc.binary_join_element_wise(
        day_texts.take(pa.array(day_of_row)), _clock_texts().take(pa.array(second_of_day)), " "
    )


def jsonl_gz_bytes(table: pa.Table) -> bytes:
    """One JSON object per line, keys in schema order, timestamps "YYYY-MM-DD HH:MM:SS"."""
    table = table.combine_chunks()

    def quoted(name: str) -> pa.Array:
        return pc.binary_join_element_wise('"', table[name], '"', "")

    def as_text(name: str) -> pa.Array:
        return pc.cast(table[name], pa.string())

    def timestamp(name: str) -> pa.Array:
        return pc.binary_join_element_wise('"', _timestamp_text(table[name]), '"', "")

    values = {
        "order_id": quoted("order_id"),
        "line_number": as_text("line_number"),
        "customer_id": pc.if_else(pc.is_null(table["customer_id"]), "null", quoted("customer_id")),
        "product_id": quoted("product_id"),
        "quantity": as_text("quantity"),
        "unit_price": _money(table["unit_price"]),
        "discount_amount": _money(table["discount_amount"]),
        "currency": quoted("currency"),
        "channel": quoted("channel"),
        "ordered_at": timestamp("ordered_at"),
        "exported_at": timestamp("exported_at"),
    }
    if list(values) != ORDER_LINE_SCHEMA.names:
        raise AssertionError("JSON keys out of step with ORDER_LINE_SCHEMA")
    pieces: list[object] = []
    for i, (name, value) in enumerate(values.items()):
        pieces += [("{" if i == 0 else ",") + f'"{name}":', value]
    pieces.append("}\n")
    if table.num_rows == 0:
        return gzip.compress(b"", mtime=0)
    rows = pc.binary_join_element_wise(*pieces, "")
    if isinstance(rows, pa.ChunkedArray):
        rows = rows.combine_chunks()
    _, offsets, data = rows.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int32)[rows.offset : rows.offset + len(rows) + 1]
    return gzip.compress(memoryview(data)[bounds[0] : bounds[-1]], compresslevel=6, mtime=0)
