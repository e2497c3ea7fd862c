"""The churn model against the simulator's truth: on the version's own held-out rows, the
model's ROC AUC next to the oracle's (the true P(no order in the horizon) as the score) and
the recency rule's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.metrics import brier_score_loss, roc_auc_score

from ..features.spec import CHURN_TRAINING_TABLE, CUTOFF, ENTITY_KEY, LABEL
from ..registry import ModelRegistry
from ..training.churn import CHURN_COLUMNS, SORT_KEYS, positive_scores, recency_scores
from ..training.common import cast_table, feature_frame, select_sql, table_sha256
from ..warehouse.base import Warehouse
from .truth import TruthError, read_churn_truth


@dataclass(frozen=True)
class ChurnEvaluation:
    model_name: str
    model_version: int
    rows: int
    cutoff_dates: list[str]
    holdout_matches: bool  # the rows hash as they did at training time
    auc: float
    oracle_auc: float
    baseline_auc: float
    brier: float
    oracle_brier: float
    rank_correlation_with_truth: float

    @property
    def auc_over_oracle(self) -> float:
        return self.auc / self.oracle_auc

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "auc_over_oracle": self.auc_over_oracle}


def evaluate_churn(
    warehouse: Warehouse,
    registry: ModelRegistry,
    truth_dir: Path,
    *,
    model_name: str = "churn",
    version: int | str = "production",
) -> ChurnEvaluation:
    """Score the version's held-out rows (re-read from the mart, checked against the hash
    recorded at training) with the stored model, and compare with the truth."""
    loaded = registry.load(model_name, version)
    holdout = loaded.version.metrics["holdout"]
    dates = [date.fromisoformat(d) for d in holdout["cutoff_dates"]]
    placeholders = ", ".join("?" * len(dates))
    sql = f"{select_sql(CHURN_TRAINING_TABLE, list(CHURN_COLUMNS))} where {CUTOFF} in ({placeholders})"
    rows = cast_table(warehouse.query_arrow(sql, dates), CHURN_COLUMNS, what="held-out rows")
    rows = rows.sort_by([(k, "ascending") for k in SORT_KEYS])
    matches = table_sha256(rows, SORT_KEYS) == holdout["sha256"]

    frame = rows.select([ENTITY_KEY, CUTOFF, LABEL, "recency_days"]).to_pandas()
    frame[CUTOFF] = pd.to_datetime(frame[CUTOFF]).dt.date
    frame["score"] = positive_scores(loaded.model, feature_frame(rows))
    truth = read_churn_truth(truth_dir, dates)
    joined = frame.merge(truth, on=[ENTITY_KEY, CUTOFF], how="left", validate="one_to_one")
    missing = int(joined["p_no_order"].isna().sum())
    if missing:
        raise TruthError(f"{missing} of {len(joined)} held-out rows have no churn truth")
    y = joined[LABEL].astype(int).to_numpy()
    truth_p = joined["p_no_order"].to_numpy()
    score = joined["score"].to_numpy()
    return ChurnEvaluation(
        model_name=model_name,
        model_version=loaded.version.version,
        rows=len(joined),
        cutoff_dates=[str(d) for d in dates],
        holdout_matches=matches,
        auc=float(roc_auc_score(y, score)),
        oracle_auc=float(roc_auc_score(y, truth_p)),
        baseline_auc=float(roc_auc_score(y, recency_scores(joined["recency_days"].to_numpy()))),
        brier=float(brier_score_loss(y, score)),
        oracle_brier=float(brier_score_loss(y, truth_p)),
        rank_correlation_with_truth=float(
            pd.Series(score).corr(pd.Series(truth_p), method="spearman")
        ),
    )
