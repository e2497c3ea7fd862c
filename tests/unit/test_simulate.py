"""Unit tests of the simulator: pure logic, and whole runs against in-memory fakes of the
object store and of a pymongo database (the real servers are in tests/integration)."""

from __future__ import annotations

import copy
import gzip
import io
import json
import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pymongo.errors import BulkWriteError

from retailml.simulate import SimulationConfig, StateMismatchError, catalog, simulate_days
from retailml.simulate.churn import (
    MAX_DAILY_HAZARD,
    base_log_hazard,
    daily_hazard,
    no_order_probability,
    order_probability,
)
from retailml.simulate.day import churn_truth_at_cutoff, nonexistent_hours, simulate_day
from retailml.simulate.export import (
    ORDER_LINE_SCHEMA,
    jsonl_gz_bytes,
    object_key,
    parquet_bytes,
    split_parts,
)
from retailml.simulate.seasonality import (
    category_mix,
    demand_intensity,
    weekday,
    weekday_factor,
    yearly_factor,
)
from retailml.simulate.state import PendingReturns, initial_state

SMALL = SimulationConfig(seed=7, initial_customers=400, new_customers_per_day=3.0, n_products=40)
CUSTOMER_KEYS = [
    "_id",
    "email",
    "name",
    "address",
    "loyalty_tier",
    "signup_channel",
    "marketing_opt_in",
    "created_at",
    "updated_at",
]
PRODUCT_KEYS = [
    "_id",
    "name",
    "category",
    "attributes",
    "price",
    "currency",
    "is_active",
    "created_at",
    "updated_at",
]


# -- fakes ----------------------------------------------------------------------------------
class FakeObjectStore:
    """The part of ObjectStore the simulator uses; fails on the n-th put if asked to."""

    bucket = "test"

    def __init__(self, fail_on_put: int | None = None) -> None:
        self.objects: dict[str, bytes] = {}
        self._puts = 0
        self._fail_on_put = fail_on_put

    def put(self, key: str, body: bytes) -> str:
        self._puts += 1
        if self._puts == self._fail_on_put:
            raise ConnectionError("simulated S3 outage")
        self.objects[key] = bytes(body)
        return f"etag-{len(body)}"


class _Result:
    def __init__(self, matched: int) -> None:
        self.matched_count = matched


class FakeCollection:
    """insert_many (duplicate keys fail like MongoDB) and replace_one (upsert refused)."""

    def __init__(self, name: str) -> None:
        self.full_name = f"shop.{name}"
        self.docs: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []

    def insert_many(self, docs: list[dict[str, Any]], ordered: bool = True) -> None:
        self.calls.append("insert_many")
        errors = []
        for index, doc in enumerate(docs):
            if doc["_id"] in self.docs:
                errors.append({"index": index, "code": 11000, "errmsg": "duplicate key"})
                if ordered:
                    break
                continue
            self.docs[doc["_id"]] = copy.deepcopy(doc)
        if errors:
            raise BulkWriteError({"writeErrors": errors, "nInserted": len(docs) - len(errors)})

    def replace_one(self, selector: dict[str, Any], doc: dict[str, Any], **kwargs: Any) -> _Result:
        assert not kwargs.get("upsert"), "the simulator must not upsert (nx-27017 loses _id)"
        self.calls.append("replace_one")
        if selector["_id"] not in self.docs:
            return _Result(0)
        assert doc["_id"] == selector["_id"]
        self.docs[selector["_id"]] = copy.deepcopy(doc)
        return _Result(1)


class FakeDatabase(dict):
    def __missing__(self, name: str) -> FakeCollection:
        self[name] = FakeCollection(name)
        return self[name]


class Run:
    """One simulation target: fake S3, fake Mongo, truth and state folders."""

    def __init__(self, root: Path, config: SimulationConfig, store: FakeObjectStore | None = None):
        self.root, self.config = root, config
        self.objects = store or FakeObjectStore()
        self.db = FakeDatabase()
        self.summaries: list[Any] = []

    def simulate(self, days: int) -> Any:
        summary = simulate_days(
            self.config,
            days,
            objects=self.objects,
            db=self.db,  # type: ignore[arg-type]
            truth_dir=self.root / "truth",
            state_dir=self.root / "state",
        )
        self.summaries.append(summary)
        return summary

    def docs(self, collection: str) -> dict[str, dict[str, Any]]:
        return self.db[collection].docs

    def truth(self, kind: str) -> pa.Table:
        table = pq.read_table(self.root / "truth" / kind)
        keys = [
            name
            for name in table.column_names
            if name in ("customer_id", "cutoff_date", "category", "order_date")
        ]
        return table.sort_by([(k, "ascending") for k in keys])

    def lines(self) -> pa.Table:
        return pa.concat_tables(read_object(k, v) for k, v in sorted(self.objects.objects.items()))


def read_object(key: str, body: bytes) -> pa.Table:
    """Parse an export object into the contract schema (as an ingest would)."""
    if key.endswith(".parquet"):
        return pq.read_table(io.BytesIO(body))
    rows = [json.loads(line) for line in gzip.decompress(body).decode("utf-8").splitlines()]
    for row in rows:
        for name in ("ordered_at", "exported_at"):
            row[name] = datetime.strptime(row[name], "%Y-%m-%d %H:%M:%S")
    return pa.Table.from_pylist(rows, schema=ORDER_LINE_SCHEMA)


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Five weeks of a small shop with the drift scenario in the last week."""
    config = replace(SMALL, initial_customers=1500, json_share=0.5, drift_start=date(2025, 1, 29))
    run = Run(tmp_path_factory.mktemp("month"), config)
    run.simulate(35)
    return run


# -- seasonality ----------------------------------------------------------------------------
def test_weekday_factor_has_mean_one_and_a_sunday_peak() -> None:
    week = np.datetime64("2025-01-06") + np.arange(7)  # Monday .. Sunday
    factors = weekday_factor(week)
    assert weekday(week).tolist() == list(range(7))
    assert factors.mean() == pytest.approx(1.0, abs=1e-9)
    assert factors.argmax() == 6
    assert factors.argmin() == 5


@pytest.mark.parametrize(
    ("high", "low"),
    [("2025-12-12", "2025-06-15"), ("2025-11-28", "2025-09-15"), ("2025-12-20", "2025-01-10")],
)
def test_yearly_factor_peaks_in_december(high: str, low: str) -> None:
    assert yearly_factor(np.datetime64(high)) > yearly_factor(np.datetime64(low)) * 1.1


@pytest.mark.parametrize(
    ("category", "peak", "off_peak"),
    [
        ("garden", "2025-05-10", "2025-12-10"),
        ("toys", "2025-12-14", "2025-06-14"),
        ("electronics", "2025-11-28", "2025-03-01"),
        ("sports", "2025-01-10", "2025-10-10"),
    ],
)
def test_category_seasons(category: str, peak: str, off_peak: str) -> None:
    code = catalog.CATEGORIES.index(category)
    mix = category_mix(np.asarray([peak, off_peak], dtype="datetime64[D]"))
    assert mix[0, code] > 1.3 * mix[1, code]


def test_category_mix_is_a_distribution_every_day() -> None:
    year = np.datetime64("2025-01-01") + np.arange(365)
    mix = category_mix(year)
    assert mix.shape == (365, len(catalog.CATEGORIES))
    np.testing.assert_allclose(mix.sum(axis=1), 1.0)
    assert (mix > 0).all()
    assert (demand_intensity(year) > 0.5).all()


# -- churn process --------------------------------------------------------------------------
def _monte_carlo_no_order(hazard: np.ndarray, order_prob: np.ndarray, paths: int) -> np.ndarray:
    """Brute force: simulate the daily churn-then-order process along many paths."""
    rng = np.random.default_rng(0)
    horizon, n = hazard.shape
    active = np.ones((paths, n), dtype=bool)
    ordered = np.zeros((paths, n), dtype=bool)
    for day in range(horizon):
        active &= rng.random((paths, n)) >= hazard[day]
        ordered |= active & (rng.random((paths, n)) < order_prob[day])
    return (~ordered).mean(axis=0)


@pytest.mark.parametrize("case", range(4))
def test_no_order_probability_matches_monte_carlo(case: int) -> None:
    rng = np.random.default_rng(case)
    horizon, n = [(5, 3), (10, 4), (30, 2), (3, 5)][case]
    hazard = rng.uniform(0.0, 0.3, (horizon, n))
    order_prob = rng.uniform(0.0, 0.4, (horizon, n))
    paths = 200_000
    exact = no_order_probability(zip(hazard, order_prob, strict=True))
    simulated = _monte_carlo_no_order(hazard, order_prob, paths)
    standard_error = np.sqrt(exact * (1 - exact) / paths) + 1e-12
    assert np.all(np.abs(simulated - exact) < 5 * standard_error), (exact, simulated)


@pytest.mark.parametrize(
    ("hazard", "order_prob", "expected"),
    [(0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (0.0, 1.0, 0.0), (0.5, 0.0, 1.0)],
)
def test_no_order_probability_edge_cases(hazard: float, order_prob: float, expected: float) -> None:
    days = [(np.full(2, hazard), np.full(2, order_prob))] * 4
    np.testing.assert_allclose(no_order_probability(days), expected)


def test_no_order_probability_closed_form_for_constant_rates() -> None:
    h, p, horizon = 0.02, 0.05, 30
    stay = (1 - h) * (1 - p)
    closed = stay**horizon + sum(h * stay**k for k in range(horizon))
    days = [(np.asarray([h]), np.asarray([p]))] * horizon
    assert no_order_probability(days)[0] == pytest.approx(closed, rel=1e-12)


def test_no_order_probability_needs_a_day() -> None:
    with pytest.raises(ValueError, match="at least one day"):
        no_order_probability([])


def test_hazard_depends_on_observable_traits() -> None:
    tiers = np.asarray([0, 2])  # bronze, gold
    zeros = np.zeros(2, dtype=int)
    base = base_log_hazard(tiers, zeros, zeros, np.full(2, 0.4), np.zeros(2))
    assert base[0] > base[1]  # gold customers churn less
    channel = base_log_hazard(zeros, np.asarray([1, 2]), zeros, np.full(2, 0.4), np.zeros(2))
    assert channel[1] > channel[0]  # marketplace signups churn more than app signups
    one, low = np.zeros(1), np.full(1, np.log(0.004))
    plain = daily_hazard(low, one, np.asarray([400]), np.asarray([0.8]), 1.0)
    assert daily_hazard(low, one + 2, np.asarray([400]), np.asarray([0.8]), 1.0) > plain
    assert daily_hazard(low, one, np.asarray([400]), np.asarray([0.8]), 1.08) > plain
    assert daily_hazard(low, one, np.asarray([5]), np.asarray([0.8]), 1.0) > plain
    assert (
        daily_hazard(one + 10, one + 10, np.asarray([0]), np.asarray([1.0]), 2.0)
        == MAX_DAILY_HAZARD
    )


def test_order_probability_is_a_probability_increasing_in_rate() -> None:
    probs = order_probability(np.asarray([0.0, 0.01, 0.1, 5.0]), 1.2)
    assert probs[0] == 0.0
    assert np.all(np.diff(probs) > 0)
    assert probs[-1] < 1.0


# -- export format --------------------------------------------------------------------------
def _sample_table() -> pa.Table:
    config = SMALL
    state = initial_state(config)
    out = simulate_day(state, config, 0)
    from retailml.simulate.export import order_lines_table

    return order_lines_table(out.lines, config, 0)


def test_parquet_export_has_exactly_the_contract_schema() -> None:
    table = pq.read_table(io.BytesIO(parquet_bytes(_sample_table())))
    assert table.schema.names == [
        "order_id",
        "line_number",
        "customer_id",
        "product_id",
        "quantity",
        "unit_price",
        "discount_amount",
        "currency",
        "channel",
        "ordered_at",
        "exported_at",
    ]
    assert table.schema.equals(ORDER_LINE_SCHEMA)
    assert table.schema.field("ordered_at").type == pa.timestamp("us")  # naive, no tz
    assert table.num_rows > 0


def test_jsonl_export_lines_are_contract_records() -> None:
    table = _sample_table()
    body = jsonl_gz_bytes(table)
    assert body == jsonl_gz_bytes(table)  # gzip without a timestamp: deterministic
    lines = gzip.decompress(body).decode("utf-8").splitlines()
    assert len(lines) == table.num_rows
    timestamp = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
    for line, expected in zip(lines, table.to_pylist(), strict=True):
        record = json.loads(line)
        assert list(record) == ORDER_LINE_SCHEMA.names
        assert timestamp.match(record["ordered_at"]) and timestamp.match(record["exported_at"])
        assert record["ordered_at"] == expected["ordered_at"].strftime("%Y-%m-%d %H:%M:%S")
        assert record["customer_id"] == expected["customer_id"]
        assert isinstance(record["unit_price"], float)
        assert record["unit_price"] == pytest.approx(expected["unit_price"])
        assert isinstance(record["quantity"], int)
    assert read_object("x.jsonl.gz", body).equals(table)


@pytest.mark.parametrize(
    ("rows", "per_part", "parts"), [(0, 10, 1), (10, 10, 1), (11, 10, 2), (25, 5, 5)]
)
def test_split_parts(rows: int, per_part: int, parts: int) -> None:
    table = pa.table({"x": np.arange(rows)})
    pieces = split_parts(table, per_part)
    assert len(pieces) == parts
    assert sum(p.num_rows for p in pieces) == rows
    assert all(p.num_rows <= per_part for p in pieces)


def test_object_key_layout() -> None:
    assert object_key(SMALL, date(2025, 3, 9), 2, True) == "orders/dt=2025-03-09/part-0002.jsonl.gz"
    assert object_key(SMALL, date(2025, 3, 9), 0, False) == "orders/dt=2025-03-09/part-0000.parquet"


def test_no_order_times_in_the_spring_dst_gap() -> None:
    gap = nonexistent_hours(date(2025, 3, 30), "Europe/Amsterdam")
    assert gap.tolist() == [h == 2 for h in range(24)]
    assert not nonexistent_hours(date(2025, 3, 31), "Europe/Amsterdam").any()
    config = replace(SMALL, start_date=date(2025, 3, 30), initial_customers=3000)
    state = initial_state(config)
    out = simulate_day(state, config, 0)
    hours = (out.lines.ordered_s % 86_400) // 3600
    assert len(hours) > 100 and not (hours == 2).any()


# -- whole runs -----------------------------------------------------------------------------
def test_runs_are_deterministic_and_depend_on_the_seed(tmp_path: Path) -> None:
    first, second = Run(tmp_path / "a", SMALL), Run(tmp_path / "b", SMALL)
    other = Run(tmp_path / "c", replace(SMALL, seed=8))
    for run in (first, second, other):
        run.simulate(8)
    assert first.objects.objects == second.objects.objects
    assert first.docs("customers") == second.docs("customers")
    assert first.truth("churn_truth").equals(second.truth("churn_truth"))
    assert len(first.objects.objects) == len(other.objects.objects) == 8
    assert set(first.objects.objects.values()).isdisjoint(other.objects.objects.values())
    assert first.docs("customers") != other.docs("customers")


def test_continuation_equals_one_run(tmp_path: Path) -> None:
    whole, split = Run(tmp_path / "whole", SMALL), Run(tmp_path / "split", SMALL)
    whole.simulate(10)
    split.simulate(6)
    summary = split.simulate(4)
    assert summary.first_date == date(2025, 1, 7) and summary.last_date == date(2025, 1, 10)
    assert split.objects.objects == whole.objects.objects
    for collection in ("customers", "products"):
        assert split.docs(collection) == whole.docs(collection)
    for kind in ("churn_truth", "demand_truth"):
        assert split.truth(kind).equals(whole.truth(kind))
    assert sum(s.order_lines for s in split.summaries) == whole.summaries[0].order_lines
    assert sorted((tmp_path / "split" / "truth" / "demand_truth").iterdir())[-1].name == (
        "part-2025-01-07_2025-01-10.parquet"
    )


def test_interrupted_call_can_be_rerun(tmp_path: Path) -> None:
    clean = Run(tmp_path / "clean", SMALL)
    clean.simulate(9)
    broken = Run(tmp_path / "broken", SMALL, store=FakeObjectStore(fail_on_put=7))
    broken.simulate(3)
    with pytest.raises(ConnectionError):
        broken.simulate(6)  # fails on day 7 after writing documents of days 4..7
    assert not list((tmp_path / "broken" / "truth" / "demand_truth").glob(".*.tmp"))
    broken.objects._fail_on_put = None
    broken.simulate(6)
    assert broken.objects.objects == clean.objects.objects
    assert broken.docs("customers") == clean.docs("customers")
    assert broken.truth("demand_truth").equals(clean.truth("demand_truth"))


def test_state_of_another_config_is_refused(tmp_path: Path) -> None:
    run = Run(tmp_path, SMALL)
    run.simulate(2)
    run.config = replace(SMALL, seed=99)
    with pytest.raises(StateMismatchError, match="seed"):
        run.simulate(1)


def test_zero_days_writes_nothing(tmp_path: Path) -> None:
    run = Run(tmp_path, SMALL)
    summary = run.simulate(0)
    assert summary.days == 0 and summary.objects_written == 0
    assert not run.objects.objects and not (tmp_path / "state").exists()
    with pytest.raises(ValueError, match="days"):
        run.simulate(-1)


@pytest.mark.parametrize(
    "field", ["json_share", "lines_per_part", "n_products", "churn_horizon_days"]
)
def test_invalid_config_is_rejected(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        replace(SMALL, **{field: -1})


def test_large_days_are_split_into_parts(tmp_path: Path) -> None:
    run = Run(tmp_path, replace(SMALL, lines_per_part=10, json_share=0.0))
    summary = run.simulate(2)
    keys = sorted(run.objects.objects)
    assert summary.objects_written == len(keys) > 4
    day_one = [k for k in keys if "dt=2025-01-01/" in k]
    assert day_one == [f"orders/dt=2025-01-01/part-{i:04d}.parquet" for i in range(len(day_one))]
    tables = [read_object(k, run.objects.objects[k]) for k in day_one]
    assert all(t.num_rows <= 10 for t in tables)
    exported = [t["exported_at"][0].as_py() for t in tables]
    assert exported == sorted(exported) and len(set(exported)) == len(exported)


@pytest.mark.parametrize(("share", "suffixes"), [(0.0, {"parquet"}), (1.0, {"jsonl.gz"})])
def test_json_share_extremes(tmp_path: Path, share: float, suffixes: set[str]) -> None:
    run = Run(tmp_path, replace(SMALL, json_share=share))
    run.simulate(4)
    assert {key.split(".", 1)[1] for key in run.objects.objects} == suffixes


def test_both_formats_occur_and_follow_the_key_layout(month: Run) -> None:
    keys = list(month.objects.objects)
    pattern = re.compile(r"^orders/dt=(\d{4}-\d{2}-\d{2})/part-\d{4}\.(parquet|jsonl\.gz)$")
    assert all(pattern.match(key) for key in keys)
    assert {pattern.match(key)[2] for key in keys} == {"parquet", "jsonl.gz"}
    assert len({pattern.match(key)[1] for key in keys}) == 35


def test_order_lines_contain_the_mess(month: Run) -> None:
    lines = month.lines()
    assert lines.schema.equals(ORDER_LINE_SCHEMA)
    rows = lines.to_pandas()
    guests = rows["customer_id"].isna()
    shipping = rows["product_id"] == catalog.SHIPPING_PRODUCT_ID
    returns = rows["quantity"] < 0
    assert 0.03 < guests.mean() < 0.2
    assert 0.02 < shipping.mean() < 0.3
    assert set(rows.loc[shipping, "unit_price"]) <= set(catalog.SHIPPING_FEE)
    assert 0.01 < returns.mean() < 0.15
    assert rows.duplicated().sum() > 0
    assert (rows["discount_amount"] >= 0).all() and (rows["unit_price"] > 0).all()
    assert set(rows["currency"]) == {"EUR"}
    # every return refers to a product the same customer bought earlier
    purchases = rows[~returns & ~guests & ~shipping]
    first_bought = purchases.groupby(["customer_id", "product_id"])["ordered_at"].min()
    returned = rows[returns].set_index(["customer_id", "product_id"])
    assert not returned.index.get_level_values(0).isna().any()
    bought_at = first_bought.reindex(returned.index)
    assert bought_at.notna().all()
    assert (bought_at.to_numpy() < returned["ordered_at"].to_numpy()).all()
    # order lines are numbered 1.. within each order, and each order has one customer and time
    distinct = rows.drop_duplicates()
    numbers = distinct.groupby("order_id")["line_number"].agg(["min", "max", "count"])
    assert (numbers["min"] == 1).all() and (numbers["max"] == numbers["count"]).all()
    assert (distinct.groupby("order_id")["ordered_at"].nunique() == 1).all()
    # every day's lines are in that day's partition
    for key, body in month.objects.objects.items():
        day = key.split("dt=")[1][:10]
        ordered = read_object(key, body)["ordered_at"]
        assert pc.all(pc.equal(pc.strftime(ordered, format="%Y-%m-%d"), day)).as_py() is True


def test_drift_scenario(month: Run) -> None:
    rows = month.lines().to_pandas()
    drift = rows["ordered_at"] >= datetime(2025, 1, 29)
    assert set(rows.loc[~drift, "channel"]) == {"web", "app", "marketplace"}
    assert "social" in set(rows.loc[drift, "channel"])
    customers = month.docs("customers").values()
    spanish = [c for c in customers if c["address"]["country"] == "ES"]
    assert spanish and all(c["created_at"].date() >= date(2025, 1, 28) for c in spanish)
    drift_morning = datetime(2025, 1, 29, tzinfo=UTC)  # every price rises before 06:00 local
    assert all(p["updated_at"] >= drift_morning for p in month.docs("products").values())


def test_documents_follow_the_contract(month: Run) -> None:
    customers, products = month.docs("customers"), month.docs("products")
    summary = month.summaries[0]
    assert len(customers) == summary.customers_inserted and len(products) == 40
    for doc in customers.values():
        assert list(doc) == CUSTOMER_KEYS
        assert re.fullmatch(r"C\d{7}", doc["_id"])
        assert set(doc["name"]) == {"first", "last"}
        assert set(doc["address"]) == {"street", "city", "postcode", "country"}
        assert doc["loyalty_tier"] in catalog.LOYALTY_TIERS
        assert doc["signup_channel"] in catalog.SIGNUP_CHANNELS
        assert type(doc["marketing_opt_in"]) is bool
        assert doc["created_at"].tzinfo is not None and doc["updated_at"] >= doc["created_at"]
    for doc in products.values():
        assert list(doc) == PRODUCT_KEYS
        assert re.fullmatch(r"P\d{5}", doc["_id"])
        assert set(doc["attributes"]) == {"color", "size", "weight_g"}
        assert type(doc["is_active"]) is bool and type(doc["price"]) is float
        assert doc["category"] in catalog.CATEGORIES and doc["currency"] == "EUR"
    assert len({doc["email"] for doc in customers.values()}) == len(customers)
    # updates happened in place, through replace_one, and bumped updated_at
    assert summary.customers_updated > 0 and summary.products_updated > 0
    assert "replace_one" in month.db["customers"].calls
    start = datetime(2025, 1, 1, tzinfo=UTC)
    updated = [d for d in customers.values() if d["updated_at"] > start and d["created_at"] < start]
    assert len(updated) > 0
    tiers = {d["loyalty_tier"] for d in customers.values()}
    assert tiers == set(catalog.LOYALTY_TIERS)


def test_churn_truth(month: Run) -> None:
    truth = month.truth("churn_truth").to_pandas()
    cutoffs = sorted(set(truth["cutoff_date"]))
    assert cutoffs == [date(2025, 1, 6) + timedelta(weeks=w) for w in range(5)]
    assert truth["p_no_order"].between(0.0, 1.0).all()
    assert (truth.loc[truth["is_latent_churned"], "p_no_order"] == 1.0).all()
    assert (truth["horizon_days"] == 30).all()
    live = truth.loc[~truth["is_latent_churned"], "p_no_order"]
    assert 0.1 < live.mean() < 0.9 and live.std() > 0.1
    churned_share = truth.groupby("cutoff_date")["is_latent_churned"].mean()
    assert churned_share.is_monotonic_increasing
    # once churned, always churned
    per_customer = truth.sort_values("cutoff_date").groupby("customer_id")["is_latent_churned"]
    assert (per_customer.apply(lambda s: s.is_monotonic_increasing)).all()
    # only customers that existed before the cutoff
    created = {k: d["created_at"].date() for k, d in month.docs("customers").items()}
    assert all(
        created[c] < cutoff
        for c, cutoff in zip(truth["customer_id"], truth["cutoff_date"], strict=True)
    )


def test_churn_truth_matches_realised_outcomes(month: Run) -> None:
    """The probabilities are calibrated against what the simulator then did: the 35-day run
    covers the full 30-day horizon of the first cutoff (Monday 2025-01-06)."""
    truth = month.truth("churn_truth").to_pandas()
    first = truth[truth["cutoff_date"] == date(2025, 1, 6)]
    rows = month.lines().to_pandas()
    purchases = rows[(rows["quantity"] > 0) & rows["customer_id"].notna()]
    window = (purchases["ordered_at"] >= datetime(2025, 1, 6)) & (
        purchases["ordered_at"] < datetime(2025, 2, 5)
    )
    no_order = ~first["customer_id"].isin(set(purchases.loc[window, "customer_id"]))
    p = first["p_no_order"]
    z = (no_order.sum() - p.sum()) / np.sqrt((p * (1 - p)).sum())
    assert abs(z) < 4, z
    # and informative: customers without an order had a much higher probability
    assert p[no_order].mean() > p[~no_order].mean() + 0.2


@pytest.mark.slow
def test_churn_truth_is_exact_under_replay() -> None:
    """Replay a horizon from the same cutoff state with many random streams (pending returns
    and the drift price rise fall inside it): per customer, the share of replays without a
    purchase converges to the truth."""
    config = replace(
        SMALL, initial_customers=500, churn_horizon_days=6, drift_start=date(2025, 1, 15)
    )
    state = initial_state(config)
    for day in range(12):
        simulate_day(state, config, day)
    # make the latent effects large: many returns due inside the horizon for half of the
    # customers, and everybody maximally price sensitive when the drift price rise comes
    half = np.arange(0, len(state.customers), 2)
    extra = 6
    state.returns = state.returns.concat(
        PendingReturns(
            customer=np.repeat(half, extra),
            product=np.zeros(len(half) * extra, dtype=np.int64),
            quantity=np.ones(len(half) * extra, dtype=np.int64),
            unit_price=np.full(len(half) * extra, 9.99),
            channel=np.zeros(len(half) * extra, dtype=np.int8),
            due_day=np.full(len(half) * extra, 13, dtype=np.int32),
        )
    )
    state.customers.sensitivity[:] = 1.0
    truth = churn_truth_at_cutoff(state, config, 12)  # Monday 2025-01-13
    p = truth["p_no_order"].to_numpy()
    n, replays = len(p), 150
    no_order = np.zeros(n)
    for replay in range(replays):
        replayed = copy.deepcopy(state)
        other = replace(config, seed=5000 + replay)
        bought = np.zeros(n, dtype=bool)
        for day in range(12, 18):
            lines = simulate_day(replayed, other, day).lines
            buyer = lines.customer[(lines.quantity > 0) & (lines.customer >= 0)]
            bought[buyer[buyer < n]] = True
        no_order += ~bought
    observed = no_order / replays
    z_total = (observed.sum() - p.sum()) / np.sqrt((p * (1 - p)).sum() / replays)
    assert abs(z_total) < 4, z_total
    uncertain = (p > 0.05) & (p < 0.95)
    z = (observed - p)[uncertain] / np.sqrt(p * (1 - p) / replays)[uncertain]
    assert 0.8 < z.std() < 1.25, z.std()


def test_churn_truth_sees_a_coming_price_rise() -> None:
    """Same latent state, a drift price rise inside the horizon: higher churn truth."""
    state = initial_state(SMALL)
    for day in range(5):
        simulate_day(state, SMALL, day)
    calm = churn_truth_at_cutoff(state, SMALL, 5).to_pandas()
    drift = churn_truth_at_cutoff(state, replace(SMALL, drift_start=date(2025, 1, 10)), 5)
    live = ~calm["is_latent_churned"]
    assert live.sum() > 100
    assert (drift["p_no_order"].to_numpy()[live] > calm["p_no_order"].to_numpy()[live]).all()


def test_demand_truth_is_the_expectation_of_the_units_sold() -> None:
    """Replay one day from the same state with many random streams: the mean of the units
    sold per category converges to the demand truth."""
    config = replace(SMALL, initial_customers=1000)
    state = initial_state(config)
    for day in range(4):
        simulate_day(state, config, day)
    replays = 400
    units = np.zeros((replays, len(catalog.CATEGORIES)))
    for replay in range(replays):
        replayed = copy.deepcopy(state)
        out = simulate_day(replayed, replace(config, seed=1000 + replay), 4)
        lines = out.lines
        first = np.ones(len(lines), dtype=bool)  # duplicates are adjacent copies
        first[1:] = (np.diff(lines.order_no) != 0) | (np.diff(lines.line_number) != 0)
        sold = first & (lines.quantity > 0) & (lines.product >= 0)
        category = replayed.products.category[lines.product[sold]]
        units[replay] = np.bincount(category, weights=lines.quantity[sold], minlength=8)
    expected = out.demand_truth["expected_units"].to_numpy()
    assert out.demand_truth["category"].to_pylist() == list(catalog.CATEGORIES)
    z = (units.mean(axis=0) - expected) / (units.std(axis=0) / np.sqrt(replays))
    assert np.all(np.abs(z) < 4.5), z


def test_demand_truth_follows_the_run(month: Run) -> None:
    demand = month.truth("demand_truth").to_pandas()
    assert len(demand) == 35 * len(catalog.CATEGORIES)
    assert (demand["expected_units"] > 0).all() and (demand["expected_revenue"] > 0).all()
    rows = month.lines().to_pandas().drop_duplicates()
    sold = rows[(rows["quantity"] > 0) & (rows["product_id"] != catalog.SHIPPING_PRODUCT_ID)]
    assert sold["quantity"].sum() == pytest.approx(demand["expected_units"].sum(), rel=0.1)
    revenue = (sold["quantity"] * sold["unit_price"]).sum()
    assert revenue == pytest.approx(demand["expected_revenue"].sum(), rel=0.15)


@pytest.mark.parametrize(
    "day", [date(2025, 3, 30), date(2025, 10, 26), date(2024, 7, 1), date(2023, 1, 9)]
)
def test_sim_times_to_utc_matches_zoneinfo(day: date) -> None:
    from zoneinfo import ZoneInfo

    from retailml.simulate.documents import sim_times_to_utc

    midnight = datetime(2025, 1, 1)
    offset = (datetime.combine(day, datetime.min.time()) - midnight).days * 86_400
    seconds = offset + np.arange(0, 86_400, 600)
    converted = sim_times_to_utc(SMALL, seconds)
    tz = ZoneInfo("Europe/Amsterdam")
    expected = [
        (midnight + timedelta(seconds=int(s))).replace(tzinfo=tz).astimezone(UTC) for s in seconds
    ]
    assert converted == expected
    assert all(value.tzinfo == UTC for value in converted)


def test_initial_documents_are_inserted_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retailml.simulate import engine

    monkeypatch.setattr(engine, "DOCUMENT_BATCH", 150)
    run = Run(tmp_path, SMALL)
    summary = run.simulate(1)
    assert run.db["customers"].calls[:3] == ["insert_many"] * 3  # 400 customers
    assert len(run.docs("customers")) == summary.customers_inserted
    assert sorted(run.docs("customers"))[:400] == [f"C{i:07d}" for i in range(1, 401)]
