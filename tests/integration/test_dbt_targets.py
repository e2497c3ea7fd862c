"""The dbt project parses for every target, BigQuery included, with no credentials; the
BigQuery target also compiles offline to SQL that parses as BigQuery's dialect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlglot

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


# What PostgreSQL or DuckDB spellings would look like in compiled BigQuery SQL: each must
# have gone through a cross-database macro (adapter.dispatch) instead.
NOT_BIGQUERY = {
    "::": "PostgreSQL cast",
    "#>>": "PostgreSQL JSON path",
    "double precision": "type name",
    "timestamp with time zone": "type name",
    " at time zone ": "PostgreSQL time zone conversion",
    "epoch_us(": "DuckDB function",
    "json_extract_string(": "DuckDB function",
    "generate_series(": "PostgreSQL/DuckDB function",
    "convert_to(": "PostgreSQL function",
    "bit(60)": "PostgreSQL type",
}


def _dummy_service_account(path: Path) -> Path:
    """A service-account key file in the real format, with a fresh RSA key nobody knows."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "retailml-offline",
                "private_key_id": "0" * 40,
                "private_key": pem,
                "client_email": "dbt@retailml-offline.iam.gserviceaccount.com",
                "client_id": "100000000000000000000",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    return path


def test_bigquery_target_compiles_offline_to_bigquery_sql(tmp_path: Path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path,
        warehouse="bigquery",
        bq_project="retailml-offline",
        bq_keyfile=_dummy_service_account(tmp_path / "key.json"),
        _env_file=None,
    )
    summary = run_dbt(settings, ["compile", "--no-populate-cache", "--no-introspect"])
    assert summary.statuses and set(summary.statuses) == {"success"}, summary

    compiled = sorted((tmp_path / "dbt" / "target" / "compiled" / "retailml").rglob("*.sql"))
    # data tests compile to <folder>/<properties file>.yml/<test>.sql
    tests = [p for p in compiled if p.parent.name.endswith(".yml")]
    models = [p for p in compiled if p not in tests]
    names = {p.stem for p in models}
    for expected in ("fct_order_lines", "dim_customers", "int_churn_training", "ml_churn_training"):
        assert expected in names
    assert len(tests) > 100
    for path in compiled:
        sql = path.read_text()
        parsed = sqlglot.parse(sql, read="bigquery")
        assert parsed and all(statement is not None for statement in parsed), path
        lowered = sql.lower()
        for spelling, what in NOT_BIGQUERY.items():
            assert spelling not in lowered, f"{path.name}: {what} {spelling!r} in BigQuery SQL"
