"""The simulation's parameters and its summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

DRIFT_PRICE_RISE = 1.08  # every list price rises by 8 % on the drift date
# the drift scenario's social-media campaign: sign-ups at this multiple of the usual rate
# for its first days (and most of them through the new 'social' channel)
DRIFT_CAMPAIGN_SIGNUP_FACTOR = 10.0
DRIFT_CAMPAIGN_DAYS = 14


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that determines the simulated business; equal configs give equal output."""

    seed: int = 42
    start_date: date = date(2025, 1, 1)
    initial_customers: int = 2000
    new_customers_per_day: float = 6.0
    n_products: int = 200
    # from this date: a social-media campaign (sign-ups x10 for 14 days, most through the new
    # channel 'social'), 15 % of orders through 'social', an 8 % price rise, country ES
    drift_start: date | None = None
    json_share: float = 0.3  # share of daily partitions written as gzipped JSON Lines
    lines_per_part: int = 250_000  # a day's lines are split into part files of this size
    churn_horizon_days: int = 30  # horizon of the churn ground truth
    shop_timezone: str = "Europe/Amsterdam"  # order timestamps are naive local time
    key_prefix: str = "orders/"

    def __post_init__(self) -> None:
        checks = {
            "seed must be >= 0": self.seed >= 0,
            "initial_customers must be >= 0": self.initial_customers >= 0,
            "new_customers_per_day must be >= 0": self.new_customers_per_day >= 0,
            "n_products must be >= 16 (two per category)": self.n_products >= 16,
            "json_share must be in [0, 1]": 0.0 <= self.json_share <= 1.0,
            "lines_per_part must be >= 1": self.lines_per_part >= 1,
            "churn_horizon_days must be >= 1": self.churn_horizon_days >= 1,
            "key_prefix must end with '/'": self.key_prefix.endswith("/"),
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("invalid SimulationConfig: " + "; ".join(failed))

    def date_of(self, day: int) -> date:
        """The calendar date of day index ``day`` (0 = start_date)."""
        return self.start_date + timedelta(days=day)

    def drift_day(self) -> int | None:
        """Day index from which the drift scenario applies, if any."""
        if self.drift_start is None:
            return None
        return (self.drift_start - self.start_date).days

    def is_drift(self, day: int) -> bool:
        drift_day = self.drift_day()
        return drift_day is not None and day >= drift_day

    def signup_factor(self, day: int) -> float:
        """Sign-ups relative to the usual rate (the drift scenario's campaign)."""
        drift_day = self.drift_day()
        if drift_day is not None and drift_day <= day < drift_day + DRIFT_CAMPAIGN_DAYS:
            return DRIFT_CAMPAIGN_SIGNUP_FACTOR
        return 1.0

    def price_index(self, day: int) -> float:
        """Shop-wide price level relative to the start (the drift price rise)."""
        return DRIFT_PRICE_RISE if self.is_drift(day) else 1.0

    @classmethod
    def from_json_dict(cls, values: dict[str, Any]) -> SimulationConfig:
        dates = {"start_date", "drift_start"}
        return cls(
            **{k: date.fromisoformat(v) if k in dates and v else v for k, v in values.items()}
        )

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form, used to check that a saved state belongs to this config."""
        return {
            key: value.isoformat() if isinstance(value, date) else value
            for key, value in asdict(self).items()
        }


@dataclass(frozen=True)
class SimulationSummary:
    """What one :func:`~retailml.simulate.simulate_days` call wrote."""

    days: int
    first_date: date | None
    last_date: date | None
    order_lines: int
    customers_inserted: int
    customers_updated: int
    products_inserted: int
    products_updated: int
    objects_written: int
    object_keys: tuple[str, ...] = field(default=(), repr=False)
