"""One typed settings object, read from ``RETAILML_*`` environment variables (and ``.env``).

The CLI, the Prefect flows, the Flask app and the dbt profiles all read the same variables.
Nothing here opens a connection: :func:`load_settings` only builds the object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "RETAILML_"


class Settings(BaseSettings):
    """Every setting of the system. Field ``x`` is read from ``RETAILML_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    # -- where local state lives (embedded warehouse, local servers, models, truth)
    data_dir: Path = Field(Path(".retailml"), description="Folder for all local state.")

    # -- warehouse
    warehouse: Literal["duckdb", "postgres", "bigquery"] = "duckdb"
    duckdb_path: Path | None = Field(None, description="Default: <data_dir>/warehouse.duckdb")
    duckdb_memory_limit: str | None = Field(
        None, description="DuckDB's buffer pool (it lives in the Python process), e.g. 512MB"
    )
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_user: str = "postgres"
    pg_password: SecretStr = SecretStr("")
    pg_database: str = "retailml"
    bq_project: str | None = None
    bq_dataset: str = "retailml"
    bq_location: str = "EU"
    bq_keyfile: Path | None = None

    # -- sources
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint. Unset: a local S3 server (moto) the tool starts."
    )
    s3_bucket: str = "retail-landing"
    s3_prefix: str = "orders/"
    aws_region: str = "eu-west-1"
    mongo_uri: str | None = Field(
        None, description="MongoDB URI. Unset: a local wire-protocol server (nx-27017)."
    )
    mongo_database: str = "shop"

    # -- transforms
    dbt_project_dir: Path | None = Field(
        None, description="Default: the repository's dbt_project/ (profiles in profiles/)"
    )

    # -- business
    shop_timezone: str = "Europe/Amsterdam"
    pii_salt: SecretStr = Field(
        SecretStr("retailml-dev-salt"),
        description="Salt of the hashed identities in the marts: set a secret one in production",
    )
    churn_horizon_days: int = 30
    churn_max_fairness_gap: float | None = Field(
        0.10,
        description="Largest AUC gap between customer groups a churn candidate may show to be "
        "promoted (unset: no fairness gate)",
    )

    # -- monitoring
    drift_bins: int = Field(
        10, ge=2, le=100, description="Quantile bins of the drift reference stored with a model"
    )
    drift_alpha: float = Field(
        0.01, gt=0, lt=1, description="False discovery rate of the drift verdict (BH)"
    )
    drift_psi_threshold: float = Field(0.2, gt=0, description="PSI from which a feature drifts")
    drift_wasserstein_threshold: float = Field(
        0.2, gt=0, description="Wasserstein distance over the reference sd from which it drifts"
    )
    drift_js_threshold: float = Field(
        0.1, gt=0, description="Jensen-Shannon distance from which a categorical drifts"
    )
    drift_new_category_share: float = Field(
        0.005, gt=0, description="Share of rows in categories unseen in training that drifts"
    )
    drift_prediction_window_days: int = Field(
        7, ge=1, description="Days of logged predictions compared with the scores' reference"
    )
    performance_max_auc_drop: float = Field(
        0.05, gt=0, description="Realized AUC this far below training AUC is decay"
    )

    # -- models and serving
    model_store: str | None = Field(
        None,
        description="Folder or s3://bucket/prefix for model artifacts. Default: <data_dir>/models",
    )
    model_encryption_key: SecretStr | None = None
    online_store: Literal["embedded", "redis"] = "embedded"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = Field(
        "retailml", description="Key prefix of the online store in Redis (one per deployment)"
    )
    api_keys_file: Path | None = Field(None, description="Default: <data_dir>/api_keys.json")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_model_refresh_s: float = Field(
        30.0, description="How often the API checks the registry for a new production model"
    )
    prediction_log_flush_s: float | None = Field(
        None,
        description="How often the API moves its spooled predictions to the warehouse "
        "(0: never, `retailml monitor` does; default: 60 s, or 0 on embedded DuckDB)",
    )
    prediction_log_fsync: bool = Field(
        False,
        description="fsync every spooled batch of predictions (survives power loss, costs CPU)",
    )

    # -- derived locations ------------------------------------------------------------
    @property
    def duckdb_file(self) -> Path:
        return self.duckdb_path or self.data_dir / "warehouse.duckdb"

    @property
    def model_store_uri(self) -> str:
        return self.model_store or str(self.data_dir / "models")

    @property
    def api_keys_path(self) -> Path:
        return self.api_keys_file or self.data_dir / "api_keys.json"

    @property
    def dbt_dir(self) -> Path:
        if self.dbt_project_dir:
            return self.dbt_project_dir
        here = Path(__file__).resolve()
        for parent in here.parents:
            if (parent / "dbt_project" / "dbt_project.yml").exists():
                return parent / "dbt_project"
        raise FileNotFoundError(
            "cannot find dbt_project/ above the installed package: set RETAILML_DBT_PROJECT_DIR"
        )

    @property
    def truth_dir(self) -> Path:
        """Simulator ground truth: for evaluation only, never read by the pipeline."""
        return self.data_dir / "truth"

    @property
    def services_dir(self) -> Path:
        """State of the local S3 and MongoDB servers of the embedded default."""
        return self.data_dir / "services"

    def dbt_env(self) -> dict[str, str]:
        """Environment variables the dbt profiles in ``profiles/`` read."""
        env = {
            "RETAILML_WAREHOUSE": self.warehouse,
            "RETAILML_DUCKDB_PATH": str(self.duckdb_file.resolve()),
            "RETAILML_PG_HOST": self.pg_host,
            "RETAILML_PG_PORT": str(self.pg_port),
            "RETAILML_PG_USER": self.pg_user,
            "RETAILML_PG_PASSWORD": self.pg_password.get_secret_value(),
            "RETAILML_PG_DATABASE": self.pg_database,
            "RETAILML_BQ_DATASET": self.bq_dataset,
            "RETAILML_BQ_LOCATION": self.bq_location,
            "RETAILML_SHOP_TIMEZONE": self.shop_timezone,
            "RETAILML_PII_SALT": self.pii_salt.get_secret_value(),
            "RETAILML_CHURN_HORIZON_DAYS": str(self.churn_horizon_days),
        }
        if self.bq_project:
            env["RETAILML_BQ_PROJECT"] = self.bq_project
        if self.bq_keyfile:
            env["RETAILML_BQ_KEYFILE"] = str(self.bq_keyfile)
        return env


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (and ``.env``), with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
