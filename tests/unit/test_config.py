from __future__ import annotations

from pathlib import Path

import pytest

from retailml.config import Settings


def test_defaults_are_the_embedded_warehouse(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RETAILML_WAREHOUSE", "RETAILML_DATA_DIR", "RETAILML_DUCKDB_PATH"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.warehouse == "duckdb"
    assert settings.duckdb_file == Path(".retailml/warehouse.duckdb")
    assert settings.s3_endpoint_url is None and settings.mongo_uri is None


def test_environment_variables_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETAILML_WAREHOUSE", "postgres")
    monkeypatch.setenv("RETAILML_PG_PORT", "6543")
    monkeypatch.setenv("RETAILML_PG_PASSWORD", "s3cret")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.pg_port == 6543
    assert "s3cret" not in repr(settings)
    env = settings.dbt_env()
    assert env["RETAILML_PG_PORT"] == "6543" and env["RETAILML_PG_PASSWORD"] == "s3cret"


def test_a_bad_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETAILML_WAREHOUSE", "oracle")
    with pytest.raises(ValueError, match="warehouse"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_dbt_project_is_found_from_the_package() -> None:
    assert (Settings(_env_file=None).dbt_dir / "dbt_project.yml").exists()  # type: ignore[call-arg]
