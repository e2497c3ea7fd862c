"""The dbt project parses for every target, BigQuery included, with no credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from retailml.config import Settings
from retailml.transforms.dbt import DbtError, run_dbt


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres", "bigquery"])
def test_dbt_parse_for_every_target(warehouse: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, warehouse=warehouse, pg_port=1, _env_file=None)  # type: ignore[call-arg]
    summary = run_dbt(settings, ["parse"])
    assert summary.command == "parse"
    assert (tmp_path / "dbt" / "target" / "manifest.json").exists()


def test_a_failing_dbt_command_names_what_failed(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(DbtError, match="dbt build"):
        run_dbt(settings, ["build", "--select", "stg_shop__order_lines"])  # no raw tables
