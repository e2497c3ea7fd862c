"""The simulator against real protocol servers: a moto S3 server and an nx-27017 MongoDB
wire-protocol server, both started here on free ports. What the servers give back must be
exactly what the simulator meant to write (compared with a run into in-memory fakes)."""

from __future__ import annotations

import gzip
import io
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pymongo
import pytest

from retailml.simulate import SimulationConfig, simulate_days
from retailml.simulate.export import ORDER_LINE_SCHEMA
from retailml.sources.object_store import S3ObjectStore

CONFIG = SimulationConfig(
    seed=11,
    initial_customers=300,
    new_customers_per_day=4.0,
    n_products=30,
    json_share=0.5,
    drift_start=date(2025, 1, 6),
)
DAYS = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private nx-27017 server; fails (does not skip) if it cannot be started."""
    executable = Path(sys.executable).with_name("nx-27017")
    if not executable.exists():
        pytest.fail(f"nx-27017 not found next to the interpreter ({executable}); install nx-27017")
    folder = tmp_path_factory.mktemp("nx")
    port = _free_port()
    pid_file = folder / "nx.pid"
    common = ["--pid-file", str(pid_file)]
    subprocess.run(
        [str(executable), "--db", str(folder / "mongo.db"), "--host", "127.0.0.1", "--port", str(port),
         "--log-file", str(folder / "nx.log"), *common, "-d"],
        check=True, timeout=60,
    )  # fmt: skip
    uri = f"mongodb://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with pymongo.MongoClient(uri, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                break
            except pymongo.errors.PyMongoError:
                if time.monotonic() > deadline:
                    log = (folder / "nx.log").read_text(errors="replace")[-2000:]
                    pytest.fail(f"nx-27017 did not answer on {uri}; log tail:\n{log}")
                time.sleep(0.2)
        yield uri
    finally:
        subprocess.run([str(executable), "--stop", *common], check=False, timeout=60)


class _DictStore:
    bucket = "reference"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, key: str, body: bytes) -> str:
        self.objects[key] = body
        return "etag"


class _Collection:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def insert_many(self, docs: list[dict[str, Any]], ordered: bool = True) -> None:
        self.docs.update({doc["_id"]: doc for doc in docs})

    def replace_one(self, selector: dict[str, Any], doc: dict[str, Any]) -> Any:
        self.docs[selector["_id"]] = doc
        return type("Result", (), {"matched_count": 1})()


class _Database(dict):
    def __missing__(self, name: str) -> _Collection:
        self[name] = _Collection()
        return self[name]


@pytest.fixture(scope="module")
def written(
    s3_endpoint: str, mongo_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The same simulation into the real servers (in two calls) and into plain dicts."""
    store = S3ObjectStore.connect(
        "retail-landing",
        endpoint_url=s3_endpoint,
        region="eu-west-1",
        create_bucket=True,
        access_key="test",
        secret_key="test",
    )
    client = pymongo.MongoClient(mongo_uri, tz_aware=False)
    db = client["shop"]
    root = tmp_path_factory.mktemp("real")
    summaries = [
        simulate_days(CONFIG, n, objects=store, db=db, truth_dir=root / "truth", state_dir=root / "state")
        for n in (5, DAYS - 5)
    ]  # fmt: skip
    reference_root = tmp_path_factory.mktemp("reference")
    reference_store, reference_db = _DictStore(), _Database()
    simulate_days(
        CONFIG,
        DAYS,
        objects=reference_store,
        db=reference_db,  # type: ignore[arg-type]
        truth_dir=reference_root / "truth",
        state_dir=reference_root / "state",
    )
    yield {
        "store": store,
        "db": db,
        "summaries": summaries,
        "reference_store": reference_store,
        "reference_db": reference_db,
    }
    client.close()


def test_s3_objects_round_trip(written: dict[str, Any]) -> None:
    store, reference = written["store"], written["reference_store"]
    listed = {info.key: info for info in store.list("orders/")}
    assert set(listed) == set(reference.objects)
    assert sum(s.objects_written for s in written["summaries"]) == len(listed)
    suffixes = {key.rsplit("/", 1)[1].split(".", 1)[1] for key in listed}
    assert suffixes == {"parquet", "jsonl.gz"}, "both export formats must occur"
    for key in listed:
        body = store.get(key)
        assert body == reference.objects[key]
        if key.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(body))
            assert table.schema.equals(ORDER_LINE_SCHEMA)
        else:
            first = json.loads(gzip.decompress(body).decode().splitlines()[0])
            assert list(first) == ORDER_LINE_SCHEMA.names


@pytest.mark.parametrize("collection", ["customers", "products"])
def test_mongo_documents_round_trip(written: dict[str, Any], collection: str) -> None:
    stored = {doc["_id"]: doc for doc in written["db"][collection].find()}
    expected = written["reference_db"][collection].docs
    assert set(stored) == set(expected)  # every _id kept
    for key, doc in expected.items():
        as_stored = {
            name: value.astimezone(UTC).replace(tzinfo=None) if hasattr(value, "tzinfo") else value
            for name, value in doc.items()
        }
        assert stored[key] == as_stored
    flag = "marketing_opt_in" if collection == "customers" else "is_active"
    values = {type(doc[flag]) for doc in stored.values()}
    assert values == {bool}
    assert {doc[flag] for doc in stored.values()} == {True, False}


def test_updates_were_applied_in_place(written: dict[str, Any]) -> None:
    db, summaries = written["db"], written["summaries"]
    start = datetime(2025, 1, 1)  # naive UTC, as pymongo returns BSON dates
    customers = list(db["customers"].find())
    assert len(customers) == sum(s.customers_inserted for s in summaries)
    changed = [c for c in customers if c["created_at"] < start < c["updated_at"]]
    assert len(changed) > 0 and sum(s.customers_updated for s in summaries) >= len(changed)
    products = list(db["products"].find())
    assert sum(s.products_updated for s in summaries) >= CONFIG.n_products
    assert all(p["updated_at"] >= datetime(2025, 1, 6) for p in products)  # drift price rise
    assert all(
        isinstance(p["attributes"], dict) and "weight_g" in p["attributes"] for p in products
    )
