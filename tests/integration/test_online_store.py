"""Both online stores against their real backends (SQLite file, Redis db 15), and materialisation
from a DuckDB warehouse."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import redis

from retailml.features.materialize import (
    DEMAND_FORECASTS_TABLE,
    materialize_online_features,
)
from retailml.features.online_store import (
    EmbeddedOnlineStore,
    OnlineStore,
    OnlineStoreError,
    RedisOnlineStore,
)
from retailml.features.spec import CUSTOMER_FEATURES_TABLE, FEATURES, NUMERIC_FEATURES
from retailml.warehouse.base import WarehouseError
from retailml.warehouse.duckdb import DuckDBWarehouse

AS_OF = dt.date(2024, 3, 31)


def customers(ids: list[str], recency: float = 10.0) -> pa.Table:
    n = len(ids)
    columns: dict[str, list] = {"customer_id": ids, "as_of_date": [AS_OF] * n}
    for i, name in enumerate(NUMERIC_FEATURES):
        columns[name] = [recency + i] * n
    columns["country"] = ["NL"] * n
    columns["loyalty_tier"] = ["gold"] * n
    columns["signup_channel"] = ["web"] * n
    return pa.table(columns)


def forecasts(category: str, days: int, model_version: int, level: float) -> pa.Table:
    return pa.table(
        {
            "category": [category] * days,
            "forecast_date": [AS_OF + dt.timedelta(days=d) for d in range(1, days + 1)],
            "horizon_day": list(range(1, days + 1)),
            "units_forecast": [level + d for d in range(1, days + 1)],
            "lower_95": [level - 10.0] * days,
            "upper_95": [level + 50.0] * days,
            "model_version": [model_version] * days,
        }
    )


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own: the Redis server is shared, nothing else is touched."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_client(redis_url: str, redis_prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {redis_url} does not answer: {exc}", pytrace=False)
    yield client
    for key in client.scan_iter(f"{redis_prefix}:*"):
        client.delete(key)
    client.close()


@pytest.fixture
def redis_store(
    redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> Iterator[RedisOnlineStore]:
    store = RedisOnlineStore(redis_url, prefix=redis_prefix, chunk_rows=3)
    yield store
    store.close()


@pytest.fixture
def embedded_store(tmp_path: Path) -> Iterator[EmbeddedOnlineStore]:
    store = EmbeddedOnlineStore(tmp_path / "online" / "store.sqlite3")
    yield store
    store.close()


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> OnlineStore:
    return request.getfixturevalue(f"{request.param}_store")


# -- behaviour common to both stores -------------------------------------------------------
def test_store_is_an_online_store(store):
    assert isinstance(store, OnlineStore)
    assert store.ping() is True


def test_empty_store_answers_none(store):
    assert store.get_customer_features("C1") is None
    assert store.get_many(["C1", "C2"]) == [None, None]
    assert store.get_many([]) == []
    assert store.get_forecast("books", 7) == []


def test_customer_features_roundtrip(store):
    ids = [f"C{i:07d}" for i in range(10)]
    assert store.put_customer_features(customers(ids)) == 10
    row = store.get_customer_features("C0000003")
    assert row is not None
    assert row["customer_id"] == "C0000003"
    assert row["as_of_date"] == AS_OF.isoformat()
    assert set(FEATURES) <= set(row)
    assert row["recency_days"] == 10.0
    assert row["country"] == "NL"
    many = store.get_many(["C0000009", "nobody", "C0000000", "C0000009"])
    assert [r and r["customer_id"] for r in many] == ["C0000009", None, "C0000000", "C0000009"]


def test_put_replaces_the_whole_set(store):
    store.put_customer_features(customers(["A", "B", "C"], recency=1.0))
    store.put_customer_features(customers(["B", "D"], recency=2.0))
    assert store.get_customer_features("A") is None
    assert store.get_customer_features("B")["recency_days"] == 2.0
    assert store.get_customer_features("D") is not None


def test_put_accepts_record_batches(store):
    batches = customers(["A", "B", "C", "D", "E"]).to_batches(max_chunksize=2)
    assert len(batches) == 3
    assert store.put_customer_features(iter(batches)) == 5
    assert all(r is not None for r in store.get_many(["A", "C", "E"]))


def test_failed_put_keeps_the_previous_set(store):
    store.put_customer_features(customers(["A", "B"], recency=1.0))

    def batches() -> Iterator[pa.RecordBatch]:
        yield from customers(["X", "Y", "Z", "W"], recency=5.0).to_batches()
        yield customers([None], recency=5.0).to_batches()[0]  # no id: invalid

    with pytest.raises(OnlineStoreError, match="without customer_id"):
        store.put_customer_features(batches())
    assert store.get_customer_features("A")["recency_days"] == 1.0
    assert store.get_customer_features("X") is None


def test_nan_features_are_stored_as_null(store):
    table = customers(["A"]).set_column(
        2, NUMERIC_FEATURES[0], pa.array([float("nan")], pa.float64())
    )
    store.put_customer_features(table)
    assert store.get_customer_features("A")[NUMERIC_FEATURES[0]] is None


def test_forecasts(store):
    table = pa.concat_tables([forecasts("books", 14, 3, 100.0), forecasts("toys", 5, 3, 10.0)])
    assert store.put_forecasts(table) == 19
    week = store.get_forecast("books", 7)
    assert [r["horizon_day"] for r in week] == list(range(1, 8))
    assert week[0]["forecast_date"] == (AS_OF + dt.timedelta(days=1)).isoformat()
    assert week[0]["units_forecast"] == 101.0
    assert week[0]["model_version"] == 3
    assert len(store.get_forecast("toys", 30)) == 5
    assert store.get_forecast("garden", 7) == []
    store.put_forecasts(forecasts("toys", 2, 4, 1.0))
    assert store.get_forecast("books", 7) == []
    assert [r["model_version"] for r in store.get_forecast("toys", 7)] == [4, 4]


def test_forecasts_need_their_columns(store):
    with pytest.raises(OnlineStoreError, match="missing columns"):
        store.put_forecasts(forecasts("books", 3, 1, 1.0).drop_columns(["upper_95"]))


def test_readers_see_the_old_or_the_new_set_during_a_replace(store):
    old_ids = [f"O{i:05d}" for i in range(3000)]
    new_ids = [f"N{i:05d}" for i in range(3000)]
    store.put_customer_features(customers(old_ids, recency=1.0))
    probe = [old_ids[0], old_ids[-1], new_ids[0], new_ids[-1]]
    seen: list[tuple[bool, ...]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(tuple(r is not None for r in store.get_many(probe)))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        store.put_customer_features(customers(new_ids, recency=2.0))
    finally:
        stop.set()
        thread.join(10)
    assert seen
    assert set(seen) <= {(True, True, False, False), (False, False, True, True)}
    assert [r is not None for r in store.get_many(probe)] == [False, False, True, True]


# -- Redis specifics ---------------------------------------------------------------------
@pytest.mark.redis
def test_redis_swaps_versions_and_retires_the_old_one(redis_store, redis_client, redis_prefix):
    redis_store.put_customer_features(customers(["A"]))
    first = redis_store.current_version("features")
    redis_store.put_customer_features(customers(["B"]))
    second = redis_store.current_version("features")
    assert first != second
    assert redis_client.ttl(f"{redis_prefix}:features:{second}") == -1  # live: no expiry
    assert 0 < redis_client.ttl(f"{redis_prefix}:features:{first}") <= redis_store.retire_s
    assert redis_client.hget(f"{redis_prefix}:features:{first}", "A") is not None  # readable


@pytest.mark.redis
def test_redis_readers_cache_the_pointer_and_see_a_new_set_soon(
    redis_url, redis_store, redis_client, redis_prefix
):
    """Another process (a second API worker) reads with one round trip per lookup and sees
    a new materialisation within ``pointer_ttl_s``; an id only the new set has is found
    at once (a miss re-reads the pointer)."""
    redis_store.put_customer_features(customers(["A"], recency=1.0))
    reader = RedisOnlineStore(redis_url, prefix=redis_prefix, pointer_ttl_s=30.0)
    try:
        assert reader.get_customer_features("A")["recency_days"] == 1.0
        redis_store.put_customer_features(customers(["A", "B"], recency=2.0))
        # the cached pointer still serves the previous set (retired, not yet expired) ...
        assert reader.get_customer_features("A")["recency_days"] == 1.0
        # ... and a miss looks for a newer set before answering "unknown"
        assert reader.get_customer_features("B")["recency_days"] == 2.0
        assert reader.get_customer_features("A")["recency_days"] == 2.0
        assert reader.get_customer_features("nobody") is None
    finally:
        reader.close()
    with pytest.raises(ValueError, match="retire_s"):
        RedisOnlineStore(redis_url, pointer_ttl_s=500.0)


@pytest.mark.redis
def test_redis_failed_write_leaves_only_an_expiring_staging_hash(
    redis_store, redis_client, redis_prefix
):
    redis_store.put_customer_features(customers(["A"]))
    live = redis_store.current_version("features")

    def batches() -> Iterator[pa.RecordBatch]:
        yield from customers(["X", "Y", "Z", "W"]).to_batches()
        raise RuntimeError("warehouse went away mid-stream")

    with pytest.raises(RuntimeError, match="mid-stream"):
        redis_store.put_customer_features(batches())
    assert redis_store.current_version("features") == live
    staging = [
        k.decode()
        for k in redis_client.scan_iter(f"{redis_prefix}:features:v*")
        if k.decode() != f"{redis_prefix}:features:{live}"
    ]
    assert staging, "the partial write should be visible as a staging hash"
    assert all(0 < redis_client.ttl(k) <= redis_store.staging_ttl_s for k in staging)


@pytest.mark.redis
def test_redis_unreachable(redis_client):
    store = RedisOnlineStore("redis://:secret@127.0.0.1:1/0", timeout_s=0.5)
    assert store.ping() is False
    with pytest.raises(OnlineStoreError) as info:
        store.get_customer_features("A")
    assert "secret" not in str(info.value)  # the password is not echoed


# -- materialisation ---------------------------------------------------------------------
@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[DuckDBWarehouse]:
    warehouse = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    yield warehouse
    warehouse.close()


def test_materialize_requires_the_mart(warehouse, embedded_store):
    with pytest.raises(WarehouseError, match="dbt build"):
        materialize_online_features(warehouse, embedded_store)


def test_materialize_names_missing_feature_columns(warehouse, embedded_store):
    warehouse.replace_arrow(CUSTOMER_FEATURES_TABLE, customers(["A"]).drop_columns(["country"]))
    with pytest.raises(WarehouseError, match="country"):
        materialize_online_features(warehouse, embedded_store)


def test_materialize_without_forecasts(warehouse, store):
    ids = [f"C{i:07d}" for i in range(25)]
    warehouse.replace_arrow(CUSTOMER_FEATURES_TABLE, customers(ids))
    assert materialize_online_features(warehouse, store, batch_rows=10) == 25
    assert store.get_customer_features("C0000024")["as_of_date"] == AS_OF.isoformat()
    assert store.get_forecast("books", 7) == []


def test_materialize_takes_the_latest_forecast_run(warehouse, store):
    ids = ["C1", "C2"]
    warehouse.replace_arrow(CUSTOMER_FEATURES_TABLE, customers(ids))
    older = forecasts("books", 7, 1, 50.0)
    newer = forecasts("books", 7, 2, 80.0)
    shifted = newer.set_column(
        1,
        "forecast_date",
        pa.array([d + dt.timedelta(days=1) for d in newer["forecast_date"].to_pylist()]),
    )
    warehouse.replace_arrow(
        DEMAND_FORECASTS_TABLE, pa.concat_tables([older, shifted, forecasts("toys", 3, 1, 5.0)])
    )
    assert materialize_online_features(warehouse, store) == 2
    books = store.get_forecast("books", 7)
    assert [r["model_version"] for r in books] == [2] * 7
    assert books[0]["units_forecast"] == 81.0
    assert len(store.get_forecast("toys", 7)) == 3


def test_materialize_replaces_customers_that_left_the_mart(warehouse, store):
    warehouse.replace_arrow(CUSTOMER_FEATURES_TABLE, customers(["C1", "C2"]))
    materialize_online_features(warehouse, store)
    warehouse.replace_arrow(CUSTOMER_FEATURES_TABLE, customers(["C2", "C3"]))
    materialize_online_features(warehouse, store)
    assert [r is not None for r in store.get_many(["C1", "C2", "C3"])] == [False, True, True]
