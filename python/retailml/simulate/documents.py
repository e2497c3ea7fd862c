"""MongoDB documents (database ``shop``) built from the state columns, as in the contract.

``created_at`` / ``updated_at`` are BSON dates in UTC (whole seconds), converted from the
shop-local simulation clock. All values are plain Python types (``bool``, ``int``, ``float``,
``str``, ``datetime``), never numpy scalars.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from retailml.simulate import catalog
from retailml.simulate.config import SimulationConfig
from retailml.simulate.state import Customers, Products


def sim_times_to_utc(config: SimulationConfig, sim_seconds: np.ndarray) -> list[datetime]:
    """Sim-second timestamps (shop-local) as aware UTC datetimes.

    The UTC offset is looked up once per distinct local hour (DST changes fall on whole
    hours); a repeated autumn hour takes its first (summer time) meaning, like ``fold=0``.
    """
    seconds = np.asarray(sim_seconds, dtype=np.int64)
    hours, of_hour = np.unique(seconds // 3600, return_inverse=True)
    tz = ZoneInfo(config.shop_timezone)
    midnight = datetime.combine(config.start_date, time())
    offsets = np.asarray(
        [
            (midnight + timedelta(hours=int(h))).replace(tzinfo=tz).utcoffset().total_seconds()  # type: ignore[union-attr]
            for h in hours
        ],
        dtype=np.int64,
    )
    utc_midnight = midnight.replace(tzinfo=UTC)
    return [
        utc_midnight + timedelta(seconds=s) for s in (seconds - offsets[of_hour.ravel()]).tolist()
    ]


def customer_documents(
    customers: Customers, index: np.ndarray, config: SimulationConfig
) -> list[dict[str, Any]]:
    index = np.asarray(index, dtype=np.int64)
    created = sim_times_to_utc(config, customers.created_s[index])
    updated = sim_times_to_utc(config, customers.updated_s[index])
    docs = []
    for row, i in enumerate(index.tolist()):
        country = int(customers.country[i])
        first = catalog.FIRST_NAMES[country][customers.first_name[i]]
        last = catalog.LAST_NAMES[country][customers.last_name[i]]
        city = int(customers.city[i])
        docs.append(
            {
                "_id": catalog.customer_id(i),
                "email": catalog.email_address(first, last, i + 1, country),
                "name": {"first": first, "last": last},
                "address": {
                    "street": catalog.format_street(
                        country, int(customers.street[i]), int(customers.house_number[i])
                    ),
                    "city": catalog.CITIES[country][city][0],
                    "postcode": catalog.format_postcode(country, city, int(customers.postcode[i])),
                    "country": catalog.COUNTRIES[country],
                },
                "loyalty_tier": catalog.LOYALTY_TIERS[customers.tier[i]],
                "signup_channel": catalog.SIGNUP_CHANNELS[customers.signup_channel[i]],
                "marketing_opt_in": bool(customers.opt_in[i]),
                "created_at": created[row],
                "updated_at": updated[row],
            }
        )
    return docs


def product_documents(
    products: Products, index: np.ndarray, config: SimulationConfig
) -> list[dict[str, Any]]:
    index = np.asarray(index, dtype=np.int64)
    created = sim_times_to_utc(config, products.created_s[index])
    updated = sim_times_to_utc(config, products.updated_s[index])
    docs = []
    for row, i in enumerate(index.tolist()):
        category = int(products.category[i])
        size = int(products.size[i])
        adjective = catalog.PRODUCT_ADJECTIVES[products.adjective[i]]
        noun = catalog.PRODUCT_NOUNS[category][products.noun[i]]
        docs.append(
            {
                "_id": catalog.product_id(i),
                "name": f"{adjective} {noun}",
                "category": catalog.CATEGORIES[category],
                "attributes": {
                    "color": catalog.COLORS[products.color[i]],
                    "size": catalog.SIZES[size] if size >= 0 else None,
                    "weight_g": int(products.weight_g[i]),
                },
                "price": float(products.price[i]),
                "currency": catalog.CURRENCY,
                "is_active": bool(products.is_active[i]),
                "created_at": created[row],
                "updated_at": updated[row],
            }
        )
    return docs
