"""The simulator's ground truth (``<truth_dir>/churn_truth``, ``<truth_dir>/demand_truth``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds


class TruthError(RuntimeError):
    """The ground truth is missing or does not cover what is evaluated."""


def _read(
    folder: Path, keys: list[str], date_column: str, dates: Sequence[date] | None
) -> pd.DataFrame:
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        raise TruthError(f"no ground truth under {folder} (simulate a business first)")
    dataset = ds.dataset(str(folder), format="parquet")  # skips '.'-prefixed temp files
    where = None
    if dates is not None:
        where = pc.field(date_column).isin(pa.array(list(dates), pa.date32()))
    frame = dataset.to_table(filter=where).to_pandas()
    frame[date_column] = pd.to_datetime(frame[date_column]).dt.date
    # A chunk written twice (re-run of an interrupted simulation) holds the same rows.
    return frame.drop_duplicates(keys, keep="last").reset_index(drop=True)


def read_churn_truth(truth_dir: Path, cutoff_dates: Sequence[date] | None = None) -> pd.DataFrame:
    """customer_id, cutoff_date, horizon_days, p_no_order, is_latent_churned."""
    folder = Path(truth_dir) / "churn_truth"
    return _read(folder, ["customer_id", "cutoff_date"], "cutoff_date", cutoff_dates)


def read_demand_truth(truth_dir: Path, dates: Sequence[date] | None = None) -> pd.DataFrame:
    """category, order_date, expected_units, expected_revenue."""
    return _read(Path(truth_dir) / "demand_truth", ["category", "order_date"], "order_date", dates)
