"""The feature contract shared by the ML marts, training, scoring and serving."""

from __future__ import annotations

ENTITY_KEY = "customer_id"
CUTOFF = "cutoff_date"
LABEL = "is_churned"

NUMERIC_FEATURES: tuple[str, ...] = (
    "recency_days",
    "frequency_90d",
    "monetary_90d",
    "frequency_365d",
    "monetary_365d",
    "avg_order_value_365d",
    "return_rate_365d",
    "tenure_days",
    "distinct_categories_365d",
)
CATEGORICAL_FEATURES: tuple[str, ...] = ("country", "loyalty_tier", "signup_channel")
FEATURES: tuple[str, ...] = NUMERIC_FEATURES + CATEGORICAL_FEATURES

CHURN_TRAINING_TABLE = "marts.ml_churn_training"
CUSTOMER_FEATURES_TABLE = "marts.ml_customer_features"
DEMAND_DAILY_TABLE = "marts.ml_demand_daily"
