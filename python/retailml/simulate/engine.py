"""Run the simulation: advance the saved state day by day and write what the shop's systems
would write (S3 order exports, MongoDB documents) plus the ground truth (Parquet files).

A call is the unit of work: the state in ``state_dir`` only advances once every object,
document and truth file of the call is written. Re-running an interrupted call rewrites the
same bytes and the same documents, so it is safe.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from retailml.simulate.config import SimulationConfig, SimulationSummary
from retailml.simulate.day import CHURN_TRUTH_SCHEMA, DEMAND_TRUTH_SCHEMA, simulate_day
from retailml.simulate.documents import customer_documents, product_documents
from retailml.simulate.export import (
    jsonl_gz_bytes,
    object_key,
    order_lines_table,
    parquet_bytes,
    split_parts,
    uses_json,
)
from retailml.simulate.state import initial_state, load_state, save_state
from retailml.sources.object_store import ObjectStore

CUSTOMERS = "customers"
PRODUCTS = "products"
CHURN_TRUTH = "churn_truth"
DEMAND_TRUTH = "demand_truth"
DUPLICATE_KEY = 11000
DOCUMENT_BATCH = 10_000  # documents built and inserted at a time
_PART_NAME = re.compile(r"^part-(\d{4}-\d{2}-\d{2})_(\d{4}-\d{2}-\d{2})\.parquet$")


def simulate_days(
    config: SimulationConfig,
    days: int,
    *,
    objects: ObjectStore,
    db: Database,
    truth_dir: Path,
    state_dir: Path,
    progress: Callable[[str], None] | None = None,
) -> SimulationSummary:
    """Simulate ``days`` more days after the state saved in ``state_dir`` (or from
    ``config.start_date`` when there is none). Splitting a run into several calls gives
    exactly the same objects, documents and truth as one call."""
    if days < 0:
        raise ValueError("days must be >= 0")
    state = load_state(Path(state_dir), config)
    if days == 0:
        return SimulationSummary(0, None, None, 0, 0, 0, 0, 0, 0)
    fresh = state is None
    if state is None:
        state = initial_state(config)
    first_day = state.next_day
    first_date, last_date = config.date_of(first_day), config.date_of(first_day + days - 1)
    report = progress or (lambda _message: None)
    customers, products = db[CUSTOMERS], db[PRODUCTS]
    counts: Counter[str] = Counter()
    keys: list[str] = []

    with _truth_writer(Path(truth_dir), first_date, last_date) as write_truth:
        if fresh:  # the business as it stands at the start, in batches (memory stays flat)
            for batch in _batches(len(state.products)):
                docs = product_documents(state.products, batch, config)
                counts["products_inserted"] += _insert(products, docs)
            for batch in _batches(len(state.customers)):
                docs = customer_documents(state.customers, batch, config)
                counts["customers_inserted"] += _insert(customers, docs)
            report(f"start: {len(state.customers)} customers, {len(state.products)} products")
        for day in range(first_day, first_day + days):
            out = simulate_day(state, config, day)
            counts["products_updated"] += _replace(
                products, product_documents(state.products, out.product_updates, config)
            )
            counts["customers_inserted"] += _insert(
                customers, customer_documents(state.customers, out.customer_inserts, config)
            )
            counts["customers_updated"] += _replace(
                customers, customer_documents(state.customers, out.customer_updates, config)
            )
            table = order_lines_table(out.lines, config, day)
            as_json = uses_json(config, day)
            parts = split_parts(table, config.lines_per_part)
            for part, piece in enumerate(parts):
                key = object_key(config, out.date, part, as_json)
                objects.put(key, jsonl_gz_bytes(piece) if as_json else parquet_bytes(piece))
                keys.append(key)
            counts["lines"] += table.num_rows
            write_truth(out.churn_truth, out.demand_truth)
            report(
                f"{out.date}: {table.num_rows} order lines in {len(parts)} "
                f"{'jsonl.gz' if as_json else 'parquet'} object(s), "
                f"{len(out.customer_inserts)} signups, {len(out.customer_updates)} customer "
                f"and {len(out.product_updates)} product updates"
            )
    save_state(Path(state_dir), state, config)
    return SimulationSummary(
        days=days,
        first_date=first_date,
        last_date=last_date,
        order_lines=counts["lines"],
        customers_inserted=counts["customers_inserted"],
        customers_updated=counts["customers_updated"],
        products_inserted=counts["products_inserted"],
        products_updated=counts["products_updated"],
        objects_written=len(keys),
        object_keys=tuple(keys),
    )


def _batches(n: int) -> Iterator[np.ndarray]:
    for first in range(0, n, DOCUMENT_BATCH):
        yield np.arange(first, min(first + DOCUMENT_BATCH, n))


def _insert(collection: Collection, docs: list[dict[str, Any]]) -> int:
    """``insert_many``; documents already there (an interrupted earlier run) are replaced."""
    if not docs:
        return 0
    try:
        collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if not errors or any(error.get("code") != DUPLICATE_KEY for error in errors):
            raise
        _replace(collection, [docs[error["index"]] for error in errors])
    return len(docs)


def _replace(collection: Collection, docs: list[dict[str, Any]]) -> int:
    """Full-document ``replace_one`` by ``_id``, never upsert (nx-27017 loses custom ids)."""
    for doc in docs:
        result = collection.replace_one({"_id": doc["_id"]}, doc)
        if result.matched_count != 1:
            raise RuntimeError(
                f"{collection.full_name}: document {doc['_id']!r} to update does not exist; "
                "the database does not belong to this simulation state"
            )
    return len(docs)


@contextlib.contextmanager
def _truth_writer(
    truth_dir: Path, first: date, last: date
) -> Iterator[Callable[[pa.Table | None, pa.Table], None]]:
    """Stream truth tables into one Parquet file per kind for the chunk ``first..last``.

    Files are written under a temporary name and renamed on success, replacing any earlier
    file whose date range overlaps the chunk.
    """
    name = f"part-{first.isoformat()}_{last.isoformat()}.parquet"
    schemas = {CHURN_TRUTH: CHURN_TRUTH_SCHEMA, DEMAND_TRUTH: DEMAND_TRUTH_SCHEMA}
    writers: dict[str, pq.ParquetWriter] = {}
    tmp_paths = {kind: truth_dir / kind / f".{name}.tmp" for kind in schemas}

    def write(churn: pa.Table | None, demand: pa.Table) -> None:
        for kind, table in ((CHURN_TRUTH, churn), (DEMAND_TRUTH, demand)):
            if table is None or table.num_rows == 0:
                continue
            if kind not in writers:
                tmp_paths[kind].parent.mkdir(parents=True, exist_ok=True)
                writers[kind] = pq.ParquetWriter(tmp_paths[kind], schemas[kind])
            writers[kind].write_table(table)

    try:
        yield write
    except BaseException:
        for writer in writers.values():
            writer.close()
        for path in tmp_paths.values():
            path.unlink(missing_ok=True)
        raise
    for kind in schemas:
        folder = truth_dir / kind
        if folder.is_dir():
            for old in folder.iterdir():
                match = _PART_NAME.match(old.name)
                if match and match[1] <= last.isoformat() and match[2] >= first.isoformat():
                    old.unlink()
        if kind in writers:
            writers[kind].close()
            tmp_paths[kind].rename(folder / name)
