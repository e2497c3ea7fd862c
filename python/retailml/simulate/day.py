"""One simulated day: catalogue changes, returns, churn, purchases, profile changes, signups.

:func:`simulate_day` advances a :class:`~retailml.simulate.state.SimState` in place and
returns what the production systems would have written that day (order lines, Mongo
documents) plus the ground truth. It does no I/O. Everything is vectorised over customers
and lines; the only Python loops run over the day's few changed documents.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa

from retailml.simulate import catalog
from retailml.simulate.churn import (
    base_log_hazard,
    daily_hazard,
    no_order_probability,
    order_probability,
    return_decay,
)
from retailml.simulate.config import DRIFT_PRICE_RISE, SimulationConfig
from retailml.simulate.export import DayLines, format_ids
from retailml.simulate.seasonality import category_mix, demand_intensity
from retailml.simulate.state import (
    DAY_SECONDS,
    STREAM_DAY,
    Columns,
    Customers,
    PendingReturns,
    Products,
    SimState,
    day_rng,
    draw_customers,
    round_price,
    sample_codes,
    tier_for_spend,
)

# -- order behaviour ----------------------------------------------------------------------
GUEST_ORDER_RATIO = 0.12  # expected guest orders per expected member order
EXTRA_LINES = 1.1  # product lines per order: 1 + Poisson(EXTRA_LINES)
PREFERRED_CATEGORY_SHARE = 0.4  # a member's line is from their favourite category
OWN_CHANNEL_SHARE = 0.75  # a member orders through their signup channel
GUEST_CHANNEL_SHARE: tuple[float, ...] = (0.6, 0.3, 0.1)
SOCIAL_SHARE = 0.15  # drift: share of orders through 'social'
PROMO_BASE, PROMO_PER_SENSITIVITY = 0.05, 0.25
DISCOUNT_STEPS: tuple[float, ...] = (0.05, 0.10, 0.15, 0.20)
RETURN_DELAY_P = 0.12  # return after 1 + Geometric(p) days ...
MAX_RETURN_DELAY = 45  # ... at most this many
DUPLICATE_PROB = 0.002  # an exported line appears twice
# order time of day: share per local hour 0..23
HOUR_WEIGHTS: tuple[float, ...] = (
    0.6, 0.35, 0.2, 0.15, 0.15, 0.25, 0.6, 1.2, 1.8, 2.2, 2.5, 2.7,
    2.9, 2.8, 2.7, 2.7, 2.8, 3.0, 3.3, 3.8, 4.2, 4.0, 3.0, 1.6,
)  # fmt: skip
EXPORT_HOUR = 4  # the order export of day d runs on d + 1 at 04:00 local
# -- profile and catalogue changes --------------------------------------------------------
MOVE_PROB = 1 / 1000  # per active customer per day
OPT_IN_TOGGLE_PROB = 1 / 1500
TIER_UPDATE_DELAY_S = 120  # loyalty tier is recomputed two minutes after an order
PRICE_CHANGE_PROB = 0.01  # per product per day
PRICE_CHANGE_SIGMA = 0.1
DISCONTINUE_PROB = 0.0007
RELAUNCH_PROB = 0.02
MIN_ACTIVE_PER_CATEGORY = 2
CATALOGUE_UPDATE_HOURS = (3, 6)  # catalogue jobs run between 03:00 and 06:00

CHURN_TRUTH_SCHEMA = pa.schema(
    [
        ("customer_id", pa.string()),
        ("cutoff_date", pa.date32()),
        ("horizon_days", pa.int32()),
        ("p_no_order", pa.float64()),
        ("is_latent_churned", pa.bool_()),
    ]
)
DEMAND_TRUTH_SCHEMA = pa.schema(
    [
        ("category", pa.string()),
        ("order_date", pa.date32()),
        ("expected_units", pa.float64()),
        ("expected_revenue", pa.float64()),
    ]
)


@dataclass(frozen=True)
class DayOutput:
    day: int
    date: date
    lines: DayLines
    customer_inserts: np.ndarray  # customer indices signed up today
    customer_updates: np.ndarray  # customer indices changed today, by update time
    product_updates: np.ndarray  # product indices changed today, by update time
    churn_truth: pa.Table | None  # on cutoff days (Mondays)
    demand_truth: pa.Table


@dataclass(eq=False)
class _Orders(Columns):
    customer: np.ndarray  # int64, -1 = guest
    channel: np.ndarray  # int8
    ordered_s: np.ndarray  # int64


@dataclass(eq=False)
class _Lines(Columns):
    order: np.ndarray  # int64 index into the matching _Orders
    line_number: np.ndarray
    product: np.ndarray
    quantity: np.ndarray
    unit_price: np.ndarray
    discount: np.ndarray


def nonexistent_hours(day_date: date, timezone: str) -> np.ndarray:
    """Boolean per local hour 0..23: True where the hour is skipped (spring DST change)."""
    tz = ZoneInfo(timezone)
    gap = np.zeros(24, dtype=bool)
    for hour in range(24):
        local = datetime(day_date.year, day_date.month, day_date.day, hour, 30, tzinfo=tz)
        back = local.astimezone(UTC).astimezone(tz)
        gap[hour] = back.replace(tzinfo=None) != local.replace(tzinfo=None)
    return gap


def local_times(
    rng: np.random.Generator,
    n: int,
    day: int,
    gap: np.ndarray,
    hours: tuple[int, int] | None = None,
) -> np.ndarray:
    """``n`` sim-second timestamps on ``day`` (diurnal profile, or uniform within ``hours``)."""
    if hours is None:
        hour = sample_codes(rng, HOUR_WEIGHTS, n)
    else:
        hour = rng.integers(hours[0], hours[1], n)
    seconds = hour * 3600 + rng.integers(0, 3600, n)
    seconds = np.where(gap[hour], seconds + 3600, seconds)  # a clock shop never shows 02:30
    return day * DAY_SECONDS + np.minimum(seconds, DAY_SECONDS - 1)


def sample_products(
    rng: np.random.Generator, products: Products, category: np.ndarray
) -> np.ndarray:
    """One active product per line of the given category, by popularity."""
    weight = np.where(products.is_active, products.popularity, 0.0)
    by_category = np.argsort(products.category, kind="stable")
    cumulative = np.cumsum(weight[by_category])
    n_categories = len(catalog.CATEGORIES)
    counts = np.bincount(products.category, minlength=n_categories)
    ends = np.cumsum(counts)  # exclusive end position of each category in by_category
    high = cumulative[ends - 1]
    low = np.where(ends - counts > 0, cumulative[np.maximum(ends - counts - 1, 0)], 0.0)
    target = low[category] + rng.random(len(category)) * (high - low)[category]
    position = np.searchsorted(cumulative, target, side="right")
    # rounding at the top of a category: fall back to its last active product
    last_active = np.asarray(
        [
            np.flatnonzero(weight[by_category][: ends[k]] > 0).max(initial=0)
            for k in range(n_categories)
        ]
    )
    position = np.minimum(position, last_active[category])
    return by_category[position].astype(np.int64)


def expected_category_units(
    member_order_expectation: np.ndarray,
    preferred_category: np.ndarray,
    guest_orders: float,
    mix: np.ndarray,
) -> np.ndarray:
    """Expected product units per category given each member's expected purchase count."""
    n_categories = len(catalog.CATEGORIES)
    member_total = member_order_expectation.sum()
    by_preference = np.bincount(
        preferred_category, weights=member_order_expectation, minlength=n_categories
    )
    lines = (1.0 + EXTRA_LINES) * (
        PREFERRED_CATEGORY_SHARE * by_preference
        + (1.0 - PREFERRED_CATEGORY_SHARE) * member_total * mix
        + guest_orders * mix
    )
    return lines * (1.0 + np.asarray(catalog.CATEGORY_EXTRA_QUANTITY))


def mean_category_price(products: Products) -> np.ndarray:
    """Popularity-weighted mean list price of the active products of each category."""
    weight = np.where(products.is_active, products.popularity, 0.0)
    n_categories = len(catalog.CATEGORIES)
    total = np.bincount(products.category, weights=weight, minlength=n_categories)
    priced = np.bincount(products.category, weights=weight * products.price, minlength=n_categories)
    return np.divide(priced, total, out=np.zeros(n_categories), where=total > 0)


def churn_truth_at_cutoff(state: SimState, config: SimulationConfig, day: int) -> pa.Table:
    """Exact P(no purchase on days ``day .. day+H-1``) for every customer at the cutoff."""
    customers, horizon = state.customers, config.churn_horizon_days
    existing = np.flatnonzero(customers.signup_day < day)
    churned = customers.churned[existing]
    probability = np.ones(len(existing))
    live = existing[~churned]
    if len(live):
        probability[~churned] = no_order_probability(
            _horizon_days(customers, state.returns, live, config, day, horizon)
        )
    return pa.table(
        {
            "customer_id": format_ids("C", existing, 7),
            "cutoff_date": pa.array(
                np.full(len(existing), config.date_of(day), dtype="datetime64[D]")
            ),
            "horizon_days": pa.array(np.full(len(existing), horizon, dtype=np.int32)),
            "p_no_order": probability,
            "is_latent_churned": churned,
        },
        schema=CHURN_TRUTH_SCHEMA,
    )


def _horizon_days(
    customers: Customers,
    returns: PendingReturns,
    live: np.ndarray,
    config: SimulationConfig,
    day: int,
    horizon: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(hazard, order probability) per horizon day on the paths without a purchase."""
    position = np.full(len(customers), -1)
    position[live] = np.arange(len(live))
    pending = position[returns.customer]
    keep = pending >= 0
    pending, due_day = pending[keep], returns.due_day[keep]
    base = base_log_hazard(
        customers.tier[live],
        customers.signup_channel[live],
        customers.country[live],
        customers.sensitivity[live],
        customers.frailty[live],
    )
    sensitivity, rate = customers.sensitivity[live], customers.rate[live]
    signup_day = customers.signup_day[live]
    score = customers.return_score[live].copy()
    decay = return_decay()
    dates = np.datetime64(config.start_date, "D") + np.arange(day, day + horizon)
    intensity = demand_intensity(dates)
    for offset in range(horizon):
        today = day + offset
        score = score * decay + np.bincount(pending[due_day == today], minlength=len(live))
        hazard = daily_hazard(
            base, score, today - signup_day, sensitivity, config.price_index(today)
        )
        yield hazard, order_probability(rate, float(intensity[offset]))


def simulate_day(state: SimState, config: SimulationConfig, day: int) -> DayOutput:
    """Advance ``state`` by day ``day`` (must equal ``state.next_day``)."""
    if day != state.next_day:
        raise ValueError(f"state is at day {state.next_day}, cannot simulate day {day}")
    rng = day_rng(config, STREAM_DAY, day)
    day_date = config.date_of(day)
    today = np.datetime64(day_date, "D")
    gap = nonexistent_hours(day_date, config.shop_timezone)
    drift = config.is_drift(day)
    country_share = catalog.COUNTRY_SHARE_DRIFT if drift else catalog.COUNTRY_SHARE

    churn_truth = churn_truth_at_cutoff(state, config, day) if day_date.weekday() == 0 else None
    product_updates = _update_catalogue(rng, state.products, config, day, gap)

    # -- returns due today, then churn, then purchases -----------------------------------
    customers, n = state.customers, len(state.customers)
    due_mask = state.returns.due_day == day
    due = state.returns.take(due_mask)
    state.returns = state.returns.take(~due_mask)
    customers.return_score *= return_decay()
    customers.return_score += np.bincount(due.customer, minlength=n)

    # only customers who signed up before today and have not churned take part
    active = np.flatnonzero((customers.signup_day < day) & ~customers.churned)
    sensitivity = customers.sensitivity[active]
    base = base_log_hazard(
        customers.tier[active],
        customers.signup_channel[active],
        customers.country[active],
        sensitivity,
        customers.frailty[active],
    )
    hazard = daily_hazard(
        base,
        customers.return_score[active],
        day - customers.signup_day[active],
        sensitivity,
        config.price_index(day),
    )
    intensity = float(demand_intensity(today))
    order_prob = order_probability(customers.rate[active], intensity)
    churn_now = rng.random(len(active)) < hazard
    buys = ~churn_now & (rng.random(len(active)) < order_prob)
    buyers, alive = active[buys], active[~churn_now]
    customers.churned[active[churn_now]] = True

    member_expectation = (1.0 - hazard) * order_prob
    guest_expectation = GUEST_ORDER_RATIO * float(member_expectation.sum())
    mix = category_mix(today)[0]
    units = expected_category_units(
        member_expectation, customers.preferred_category[active], guest_expectation, mix
    )
    demand_truth = pa.table(
        {
            "category": list(catalog.CATEGORIES),
            "order_date": pa.array(np.full(len(units), today)),
            "expected_units": units,
            "expected_revenue": units * mean_category_price(state.products),
        },
        schema=DEMAND_TRUTH_SCHEMA,
    )

    orders, lines, new_returns, order_subtotal = _purchases(
        rng, state, day, buyers, int(rng.poisson(guest_expectation)), mix, gap, drift
    )
    state.returns = state.returns.concat(new_returns)
    return_orders, return_lines = _return_orders(rng, due, day, gap)

    # -- profile changes: tier upgrades after spend, moves, opt-in toggles ---------------
    change_s = np.full(n, -1, dtype=np.int64)
    customers.spend[buyers] += order_subtotal[: len(buyers)]
    new_tier = tier_for_spend(customers.spend[buyers])
    upgraded = new_tier > customers.tier[buyers]
    customers.tier[buyers[upgraded]] = new_tier[upgraded]
    change_s[buyers[upgraded]] = np.minimum(
        orders.ordered_s[: len(buyers)][upgraded] + TIER_UPDATE_DELAY_S, (day + 1) * DAY_SECONDS - 1
    )
    movers = alive[rng.random(len(alive)) < MOVE_PROB]
    _move(rng, customers, movers)
    change_s[movers] = np.maximum(change_s[movers], local_times(rng, len(movers), day, gap))
    togglers = alive[rng.random(len(alive)) < OPT_IN_TOGGLE_PROB]
    customers.opt_in[togglers] = ~customers.opt_in[togglers]
    change_s[togglers] = np.maximum(change_s[togglers], local_times(rng, len(togglers), day, gap))
    changed = np.flatnonzero(change_s >= 0)
    changed = changed[np.argsort(change_s[changed], kind="stable")]
    customers.updated_s[changed] = change_s[changed]

    # -- signups (they order from tomorrow) ----------------------------------------------
    n_new = int(rng.poisson(config.new_customers_per_day * intensity * config.signup_factor(day)))
    signup_s = np.sort(local_times(rng, n_new, day, gap))
    channel_share = catalog.SIGNUP_CHANNEL_SHARE_DRIFT if drift else catalog.SIGNUP_CHANNEL_SHARE
    state.customers = customers.concat(
        draw_customers(rng, signup_s, country_share, backdated=False, channel_share=channel_share)
    )

    day_lines = _number_and_export_lines(rng, state, (orders, lines), (return_orders, return_lines))
    state.next_day = day + 1
    return DayOutput(
        day=day,
        date=day_date,
        lines=day_lines,
        customer_inserts=np.arange(n, n + n_new),
        customer_updates=changed,
        product_updates=product_updates,
        churn_truth=churn_truth,
        demand_truth=demand_truth,
    )


def _update_catalogue(
    rng: np.random.Generator,
    products: Products,
    config: SimulationConfig,
    day: int,
    gap: np.ndarray,
) -> np.ndarray:
    """Price changes, discontinued and relaunched products; indices changed, by time."""
    m = len(products)
    old_price = products.price.copy()
    repriced = rng.random(m) < PRICE_CHANGE_PROB
    products.price[repriced] = round_price(
        products.price[repriced] * np.exp(rng.normal(0.0, PRICE_CHANGE_SIGMA, int(repriced.sum())))
    )
    if day == config.drift_day():
        products.price = round_price(products.price * DRIFT_PRICE_RISE)
    discontinue = np.flatnonzero(products.is_active & (rng.random(m) < DISCONTINUE_PROB))
    relaunch = np.flatnonzero(~products.is_active & (rng.random(m) < RELAUNCH_PROB))
    products.is_active[relaunch] = True
    active_count = np.bincount(
        products.category[products.is_active], minlength=len(catalog.CATEGORIES)
    )
    for index in discontinue:  # a few per day at most
        if active_count[products.category[index]] > MIN_ACTIVE_PER_CATEGORY:
            products.is_active[index] = False
            active_count[products.category[index]] -= 1
    changed = np.zeros(m, dtype=bool)
    changed[discontinue] = ~products.is_active[discontinue]
    changed[relaunch] = True
    changed |= products.price != old_price
    times = local_times(rng, m, day, gap, hours=CATALOGUE_UPDATE_HOURS)
    indices = np.flatnonzero(changed)
    indices = indices[np.argsort(times[indices], kind="stable")]
    products.updated_s[indices] = times[indices]
    return indices


def _purchases(
    rng: np.random.Generator,
    state: SimState,
    day: int,
    buyers: np.ndarray,
    n_guests: int,
    mix: np.ndarray,
    gap: np.ndarray,
    drift: bool,
) -> tuple[_Orders, _Lines, PendingReturns, np.ndarray]:
    """Member orders (``buyers``, in that order) then guest orders: orders, lines (product
    and shipping), the returns they will cause, and each order's net product subtotal."""
    customers, products = state.customers, state.products
    n_members = len(buyers)
    n_orders = n_members + n_guests
    country_share = catalog.COUNTRY_SHARE_DRIFT if drift else catalog.COUNTRY_SHARE
    customer = np.concatenate([buyers, np.full(n_guests, -1)]).astype(np.int64)
    country = np.concatenate(
        [customers.country[buyers], sample_codes(rng, country_share, n_guests)]
    )
    preferred = np.concatenate([customers.preferred_category[buyers], np.full(n_guests, -1)])
    sensitivity = np.concatenate([customers.sensitivity[buyers], np.full(n_guests, 0.5)])
    member_channel = np.where(
        rng.random(n_members) < OWN_CHANNEL_SHARE,
        customers.signup_channel[buyers],
        sample_codes(rng, catalog.SIGNUP_CHANNEL_SHARE, n_members),
    )
    channel = np.concatenate(
        [member_channel, sample_codes(rng, GUEST_CHANNEL_SHARE, n_guests)]
    ).astype(np.int8)
    if drift:
        channel[rng.random(n_orders) < SOCIAL_SHARE] = catalog.CHANNELS.index("social")
    orders = _Orders(
        customer=customer, channel=channel, ordered_s=local_times(rng, n_orders, day, gap)
    )

    n_lines = 1 + rng.poisson(EXTRA_LINES, n_orders)
    order = np.repeat(np.arange(n_orders), n_lines)
    n = len(order)
    line_number = np.arange(n) - np.repeat(np.cumsum(n_lines) - n_lines, n_lines) + 1
    use_preferred = (preferred[order] >= 0) & (rng.random(n) < PREFERRED_CATEGORY_SHARE)
    category = np.where(use_preferred, preferred[order], sample_codes(rng, mix, n))
    product = sample_products(rng, products, category)
    quantity = 1 + rng.poisson(np.asarray(catalog.CATEGORY_EXTRA_QUANTITY)[category])
    unit_price = products.price[product]
    line_sensitivity = sensitivity[order]
    promo = rng.random(n) < PROMO_BASE + PROMO_PER_SENSITIVITY * line_sensitivity
    step = np.asarray(DISCOUNT_STEPS)[rng.integers(0, len(DISCOUNT_STEPS), n)]
    discount = np.where(promo, np.round(unit_price * quantity * step, 2), 0.0)
    subtotal = np.bincount(order, weights=unit_price * quantity - discount, minlength=n_orders)

    shipped = np.flatnonzero(subtotal < catalog.FREE_SHIPPING_FROM)
    lines = _Lines(
        order=np.concatenate([order, shipped]),
        line_number=np.concatenate([line_number, n_lines[shipped] + 1]),
        product=np.concatenate([product, np.full(len(shipped), -1)]),
        quantity=np.concatenate([quantity, np.ones(len(shipped), dtype=np.int64)]),
        unit_price=np.concatenate([unit_price, np.asarray(catalog.SHIPPING_FEE)[country[shipped]]]),
        discount=np.concatenate([discount, np.zeros(len(shipped))]),
    )

    return_prob = np.asarray(catalog.CATEGORY_RETURN_PROB)[category] * (
        0.6 + 0.8 * line_sensitivity
    )
    returned = np.flatnonzero((customer[order] >= 0) & (rng.random(n) < return_prob))
    delay = np.minimum(1 + rng.geometric(RETURN_DELAY_P, len(returned)), MAX_RETURN_DELAY)
    new_returns = PendingReturns(
        customer=customer[order[returned]],
        product=product[returned],
        quantity=quantity[returned].astype(np.int64),
        unit_price=unit_price[returned],
        channel=channel[order[returned]],
        due_day=(day + delay).astype(np.int32),
    )
    return orders, lines, new_returns, subtotal


def _return_orders(
    rng: np.random.Generator, due: PendingReturns, day: int, gap: np.ndarray
) -> tuple[_Orders, _Lines]:
    """One return order per customer with returns due today; quantities negative."""
    by_customer = np.argsort(due.customer, kind="stable")
    due = due.take(by_customer)
    first = np.ones(len(due), dtype=bool)
    first[1:] = due.customer[1:] != due.customer[:-1]
    order = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    orders = _Orders(
        customer=due.customer[starts],
        channel=due.channel[starts],
        ordered_s=local_times(rng, len(starts), day, gap),
    )
    lines = _Lines(
        order=order,
        line_number=np.arange(len(due)) - starts[order] + 1,
        product=due.product,
        quantity=-due.quantity,
        unit_price=due.unit_price,
        discount=np.zeros(len(due)),
    )
    return orders, lines


def _move(rng: np.random.Generator, customers: Customers, movers: np.ndarray) -> None:
    """New address in the same country (so the churn hazard does not change)."""
    country = customers.country[movers]
    n_cities = np.asarray([len(c) for c in catalog.CITIES])[country]
    n_streets = np.asarray([len(s) for s in catalog.STREETS])[country]
    customers.city[movers] = (rng.random(len(movers)) * n_cities).astype(np.int16)
    customers.street[movers] = (rng.random(len(movers)) * n_streets).astype(np.int16)
    customers.house_number[movers] = rng.integers(1, 250, len(movers)).astype(np.int16)
    customers.postcode[movers] = rng.integers(
        0, catalog.POSTCODE_SPREAD * catalog.POSTCODE_LETTERS, len(movers)
    ).astype(np.int32)


def _number_and_export_lines(
    rng: np.random.Generator,
    state: SimState,
    purchases: tuple[_Orders, _Lines],
    returns: tuple[_Orders, _Lines],
) -> DayLines:
    """Order numbers follow order time; lines sorted by order and line; a few duplicated."""
    orders = purchases[0].concat(returns[0])
    lines = purchases[1].concat(returns[1])
    order = np.concatenate([purchases[1].order, returns[1].order + len(purchases[0])])
    by_time = np.argsort(orders.ordered_s, kind="stable")
    order_no = np.empty(len(orders), dtype=np.int64)
    order_no[by_time] = state.next_order_no + np.arange(len(orders))
    state.next_order_no += len(orders)
    day_lines = DayLines(
        order_no=order_no[order],
        line_number=lines.line_number.astype(np.int64),
        customer=orders.customer[order].astype(np.int64),
        product=lines.product.astype(np.int64),
        quantity=lines.quantity.astype(np.int64),
        unit_price=lines.unit_price.astype(np.float64),
        discount=lines.discount.astype(np.float64),
        channel=orders.channel[order].astype(np.int8),
        ordered_s=orders.ordered_s[order].astype(np.int64),
    )
    in_order = np.lexsort((day_lines.line_number, day_lines.order_no))
    duplicated = np.flatnonzero(rng.random(len(in_order)) < DUPLICATE_PROB)
    return day_lines.take(in_order[np.sort(np.concatenate([np.arange(len(in_order)), duplicated]))])
