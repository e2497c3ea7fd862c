"""Copy the latest customer features and demand forecasts from the warehouse to the online store."""

from __future__ import annotations

import logging

from ..warehouse.base import Warehouse, WarehouseError, qualified, quote_ident
from .online_store import FORECAST_COLUMNS, OnlineStore
from .spec import CUSTOMER_FEATURES_TABLE, ENTITY_KEY, FEATURES

log = logging.getLogger(__name__)

DEMAND_FORECASTS_TABLE = "mlops.demand_forecasts"
AS_OF = "as_of_date"


def customer_features_sql(available: dict[str, str]) -> str:
    """Select the online columns of the customer-feature mart (``as_of_date`` if present)."""
    wanted = [ENTITY_KEY, *FEATURES]
    missing = [c for c in wanted if c not in available]
    if missing:
        raise WarehouseError(f"{CUSTOMER_FEATURES_TABLE} is missing columns {missing}")
    if AS_OF in available:
        wanted.insert(1, AS_OF)
    cols = ", ".join(quote_ident(c) for c in wanted)
    return (
        f"select {cols} from {qualified(CUSTOMER_FEATURES_TABLE)} "
        f"where {quote_ident(ENTITY_KEY)} is not null"
    )


def latest_forecasts_sql() -> str:
    """The newest forecast row per (category, horizon_day).

    Ordering by ``forecast_date`` then ``model_version`` picks the latest run whether
    ``forecast_date`` is the date forecast or the date the forecast was made.
    """
    cols = ", ".join(quote_ident(c) for c in FORECAST_COLUMNS)
    return (
        f"select {cols} from ("
        f"select {cols}, row_number() over ("
        "partition by category, horizon_day order by forecast_date desc, model_version desc"
        f") as rn from {qualified(DEMAND_FORECASTS_TABLE)}"
        ") as ranked where rn = 1"
    )


def materialize_online_features(
    warehouse: Warehouse, store: OnlineStore, *, batch_rows: int = 50_000
) -> int:
    """Replace the store's customer features (and forecasts, if any); return customers written.

    Rows stream from the warehouse in batches; the store swaps the new set in at the end.
    """
    available = warehouse.columns(CUSTOMER_FEATURES_TABLE)  # empty when the table is missing
    if not available:
        raise WarehouseError(
            f"{CUSTOMER_FEATURES_TABLE} does not exist: run the transforms (dbt build) first"
        )
    sql = customer_features_sql(available)
    customers = store.put_customer_features(warehouse.iter_arrow(sql, batch_rows=batch_rows))
    log.info("materialised %d customers into the online store", customers)

    if warehouse.columns(DEMAND_FORECASTS_TABLE):
        forecasts = store.put_forecasts(
            warehouse.iter_arrow(latest_forecasts_sql(), batch_rows=batch_rows)
        )
        log.info("materialised %d forecast rows into the online store", forecasts)
    else:
        log.info("%s does not exist yet: no forecasts materialised", DEMAND_FORECASTS_TABLE)
    return customers
