"""Batch scoring keeps memory flat: scoring four times as many customers must not need
(much) more memory. Each run is a fresh process (peak RSS is per process); the customers are
generated inside DuckDB so the test process never holds them either. No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sklearn.linear_model import LogisticRegression

from retailml.features.spec import CUSTOMER_FEATURES_TABLE
from retailml.registry import LocalArtifactStore, ModelRegistry
from retailml.training.churn import build_pipeline
from retailml.training.common import feature_frame
from retailml.training.synthetic import make_churn_training
from retailml.warehouse.duckdb import DuckDBWarehouse

FEATURES_SQL = """
select
    printf('C%09d', i) as customer_id,
    date '2026-01-01' as as_of_date,
    cast(floor(random() * 300) as bigint) as recency_days,
    cast(floor(random() * 6) as bigint) as frequency_90d,
    random() * 400 as monetary_90d,
    cast(floor(random() * 20) as bigint) as frequency_365d,
    random() * 1500 as monetary_365d,
    random() * 120 as avg_order_value_365d,
    random() * 0.3 as return_rate_365d,
    cast(floor(random() * 1500) as bigint) as tenure_days,
    cast(floor(random() * 8) as bigint) as distinct_categories_365d,
    (['NL', 'DE', 'BE', 'FR'])[1 + cast(floor(random() * 4) as int)] as country,
    (['bronze', 'silver', 'gold'])[1 + cast(floor(random() * 3) as int)] as loyalty_tier,
    (['web', 'app', 'marketplace'])[1 + cast(floor(random() * 3) as int)] as signup_channel
from range(?) as t(i)
"""

SCORER = textwrap.dedent(
    """
    import json, resource, sys
    from retailml.registry import LocalArtifactStore, ModelRegistry
    from retailml.training.scoring import score_customers
    from retailml.warehouse.duckdb import DuckDBWarehouse

    def rss_mib():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize() / 2**20

    warehouse = DuckDBWarehouse(sys.argv[1])
    warehouse.execute("SET threads TO 1")
    # DuckDB caches the pages it scans up to its memory limit (default: 80% of RAM); bound
    # it so what is measured is the scoring path's own memory.
    warehouse.execute("SET memory_limit = '30MB'")
    registry = ModelRegistry(warehouse, LocalArtifactStore(sys.argv[2]), code_version="t")
    registry.load("churn", "production")  # imports and model loaded before the baseline
    before = rss_mib()
    result = score_customers(warehouse, registry, batch_rows=20_000, spool_dir=sys.argv[3])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": result.rows, "before": before, "peak": peak}))
    """
)


def _score_in_a_fresh_process(tmp_path: Path, customers: int) -> dict[str, float]:
    folder = tmp_path / str(customers)
    folder.mkdir()
    warehouse = DuckDBWarehouse(folder / "wh.duckdb")
    try:
        warehouse.execute("select setseed(0.42)")
        warehouse.execute("create schema if not exists marts")
        warehouse.execute(f"create table {CUSTOMER_FEATURES_TABLE} as {FEATURES_SQL}", [customers])
        registry = ModelRegistry(warehouse, LocalArtifactStore(folder / "models"), code_version="t")
        data = make_churn_training(500, 2, seed=1)
        y = data.column("is_churned").to_numpy(zero_copy_only=False).astype(int)
        model = build_pipeline(LogisticRegression(max_iter=500)).fit(feature_frame(data), y)
        version = registry.register(
            "churn", model, kind="sklearn", params={}, metrics={"roc_auc": 0.7}, fingerprint={}
        )
        registry.promote("churn", version.version, metric="roc_auc")
    finally:
        warehouse.close()
    done = subprocess.run(
        [sys.executable, "-c", SCORER, str(folder / "wh.duckdb"), str(folder / "models"),
         str(folder)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_scoring_memory_does_not_grow_with_the_number_of_customers(tmp_path: Path) -> None:
    small = _score_in_a_fresh_process(tmp_path, 100_000)
    large = _score_in_a_fresh_process(tmp_path, 400_000)
    assert (small["rows"], large["rows"]) == (100_000, 400_000)
    growth_small = small["peak"] - small["before"]
    growth_large = large["peak"] - large["before"]
    # Measured: streaming in 20,000-row batches, the larger run's peak grows 20-45 MiB more
    # (DuckDB's insert buffers; noisier on a loaded machine); scoring everything in one batch
    # grows it ~240 MiB more. The margin sits between the two.
    assert growth_large - growth_small < 100, (small, large)
