"""Calendar effects on demand: weekday pattern, yearly cycle, per-category seasons.

All functions take ``numpy.datetime64[D]`` arrays (or anything ``np.asarray`` turns into one)
and are pure. The overall intensity multiplies every customer's order rate; the category mix
says which categories the product lines of an order come from on that date.
"""

from __future__ import annotations

import numpy as np

from retailml.simulate.catalog import CATEGORIES, CATEGORY_SHARE

# Monday .. Sunday, mean 1: a dip on Friday and Saturday, the peak on Sunday evening.
WEEKDAY_FACTORS: tuple[float, ...] = (1.08, 1.02, 1.00, 0.98, 0.92, 0.85, 1.15)
YEAR_DAYS = 365.25

# (centre day of year, width in days, amplitude) bumps on top of 1, per category.
CATEGORY_SEASONS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "electronics": ((332.0, 6.0, 1.0), (350.0, 12.0, 0.6)),  # Black Friday, Christmas
    "home": ((290.0, 45.0, 0.3),),  # autumn nesting
    "garden": ((130.0, 40.0, 1.2),),  # spring / early summer
    "toys": ((348.0, 14.0, 2.0),),  # December
    "fashion": ((90.0, 25.0, 0.4), (275.0, 25.0, 0.4)),  # new collections
    "beauty": ((350.0, 12.0, 0.7),),  # gift sets
    "sports": ((10.0, 15.0, 0.6), (180.0, 40.0, 0.3)),  # resolutions, summer
    "books": ((210.0, 30.0, 0.3), (350.0, 12.0, 0.3)),  # holidays, Christmas
}


def as_days(dates: object) -> np.ndarray:
    """Dates as ``datetime64[D]``."""
    return np.asarray(dates, dtype="datetime64[D]")


def weekday(dates: object) -> np.ndarray:
    """Monday = 0 .. Sunday = 6."""
    return (as_days(dates).astype(np.int64) + 3) % 7


def day_of_year(dates: object) -> np.ndarray:
    """1 .. 366."""
    days = as_days(dates)
    return (days - days.astype("datetime64[Y]")).astype(np.int64) + 1


def _bump(doy: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A Gaussian bump on the circular year (December wraps to January)."""
    distance = (doy - centre + YEAR_DAYS / 2) % YEAR_DAYS - YEAR_DAYS / 2
    return np.exp(-0.5 * (distance / width) ** 2)


def weekday_factor(dates: object) -> np.ndarray:
    return np.asarray(WEEKDAY_FACTORS)[weekday(dates)]


def yearly_factor(dates: object) -> np.ndarray:
    """Winter high, a December peak (Black Friday, Christmas), a summer dip, January low."""
    doy = day_of_year(dates).astype(np.float64)
    return (
        0.92
        + 0.12 * np.cos(2 * np.pi * (doy - 350.0) / YEAR_DAYS)
        + 0.45 * _bump(doy, 346.0, 10.0)
        + 0.30 * _bump(doy, 332.0, 3.0)
        - 0.10 * _bump(doy, 205.0, 25.0)
        - 0.15 * _bump(doy, 8.0, 6.0)
    )


def demand_intensity(dates: object) -> np.ndarray:
    """Multiplier of every customer's daily order rate."""
    return weekday_factor(dates) * yearly_factor(dates)


def category_factors(dates: object) -> np.ndarray:
    """Seasonal multiplier per category, shape ``(len(dates), len(CATEGORIES))``."""
    doy = np.atleast_1d(day_of_year(dates)).astype(np.float64)
    factors = np.ones((doy.size, len(CATEGORIES)))
    for code, name in enumerate(CATEGORIES):
        for centre, width, amplitude in CATEGORY_SEASONS[name]:
            factors[:, code] += amplitude * _bump(doy, centre, width)
    return factors


def category_mix(dates: object) -> np.ndarray:
    """Probability that a (non-preferred) product line is from each category; rows sum to 1."""
    weights = np.asarray(CATEGORY_SHARE) * category_factors(dates)
    return weights / weights.sum(axis=1, keepdims=True)
