"""The online feature store: the latest customer features and demand forecasts, by key.

Serving reads one customer (or a batch) per request, so the store is a key-value lookup, not
a warehouse query. Two implementations behind one interface:

- :class:`EmbeddedOnlineStore` — a SQLite file under ``data_dir`` (the embedded default);
- :class:`RedisOnlineStore` — Redis (production), with a versioned key namespace.

Both replace the whole customer set (and the whole forecast set) in one step: readers see
either the previous materialisation or the new one, never a mix.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pyarrow as pa

from .spec import ENTITY_KEY

if TYPE_CHECKING:
    import redis

    from ..config import Settings

ArrowData = pa.Table | Iterable[pa.RecordBatch]

FORECAST_COLUMNS: tuple[str, ...] = (
    "category",
    "forecast_date",
    "horizon_day",
    "units_forecast",
    "lower_95",
    "upper_95",
    "model_version",
)


class OnlineStoreError(RuntimeError):
    """The online store could not be read or written (unreachable, corrupt, bad input)."""


@runtime_checkable
class OnlineStore(Protocol):
    """What materialisation writes and serving reads."""

    def put_customer_features(self, table: ArrowData) -> int:
        """Replace the whole customer set with ``table`` (keyed by ``customer_id``)."""
        ...

    def get_customer_features(self, customer_id: str) -> dict[str, Any] | None: ...

    def get_many(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """One entry per id, in order; ``None`` for an unknown customer."""
        ...

    def put_forecasts(self, table: ArrowData) -> int:
        """Replace the whole forecast set (columns :data:`FORECAST_COLUMNS`)."""
        ...

    def get_forecast(self, category: str, horizon_days: int) -> list[dict[str, Any]]:
        """Forecast rows of ``category`` with ``horizon_day <= horizon_days``, by horizon day."""
        ...

    def ping(self) -> bool:
        """True when the store answers; never raises."""
        ...

    def close(self) -> None: ...


# -- row encoding (shared by both implementations) ---------------------------------------
def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def _encode(row: dict[str, Any]) -> str:
    return json.dumps(
        {k: _json_value(v) for k, v in row.items()}, separators=(",", ":"), allow_nan=False
    )


def _batches(data: ArrowData) -> Iterator[pa.RecordBatch]:
    if isinstance(data, pa.Table):
        yield from data.to_batches()
    elif isinstance(data, pa.RecordBatch):
        yield data
    else:
        yield from data


def _customer_rows(data: ArrowData) -> Iterator[tuple[str, str]]:
    """(customer_id, JSON payload) per row; rows without a customer id are an error."""
    for batch in _batches(data):
        if ENTITY_KEY not in batch.schema.names:
            raise OnlineStoreError(f"customer features need a {ENTITY_KEY!r} column")
        for row in batch.to_pylist():
            key = row.get(ENTITY_KEY)
            if key is None or key == "":
                raise OnlineStoreError(f"customer features contain a row without {ENTITY_KEY}")
            yield str(key), _encode(row)


def _forecast_groups(data: ArrowData) -> dict[str, list[dict[str, Any]]]:
    """Forecast rows grouped by category, each group sorted by horizon day."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for batch in _batches(data):
        missing = [c for c in FORECAST_COLUMNS if c not in batch.schema.names]
        if missing:
            raise OnlineStoreError(f"forecasts are missing columns {missing}")
        for row in batch.select(list(FORECAST_COLUMNS)).to_pylist():
            if row["category"] is None or row["horizon_day"] is None:
                raise OnlineStoreError("forecasts contain a row without category or horizon_day")
            groups.setdefault(str(row["category"]), []).append(
                {k: _json_value(v) for k, v in row.items()}
            )
    for rows in groups.values():
        rows.sort(key=lambda r: r["horizon_day"])
    return groups


def _within(rows: list[dict[str, Any]], horizon_days: int) -> list[dict[str, Any]]:
    return [r for r in rows if r["horizon_day"] <= horizon_days]


# -- embedded: SQLite --------------------------------------------------------------------
_SQLITE_SCHEMA = """
create table if not exists customer_features (
    customer_id text primary key,
    payload text not null
) without rowid;
create table if not exists forecasts (
    category text primary key,
    payload text not null
) without rowid;
"""


class EmbeddedOnlineStore:
    """SQLite file in WAL mode: a replace is one transaction, readers keep their snapshot.

    One connection per thread and process (opened lazily), so the store is safe to share
    across Flask threads and to create before a gunicorn fork.
    """

    def __init__(self, path: Path | str, *, timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._initialised = False
        self._init_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is not None and getattr(self._local, "pid", None) == os.getpid():
            return con
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
            con.execute("pragma journal_mode=wal")
            con.execute("pragma synchronous=normal")
            with self._init_lock:
                if not self._initialised:
                    con.executescript(_SQLITE_SCHEMA)
                    self._initialised = True
        except (sqlite3.Error, OSError) as exc:
            raise OnlineStoreError(f"cannot open online store {self.path}: {exc}") from exc
        self._local.con, self._local.pid = con, os.getpid()
        return con

    def _replace(self, table: str, rows: Iterable[tuple[str, str]]) -> int:
        con = self._connect()
        count = 0
        try:
            con.execute("begin immediate")
            con.execute(f"delete from {table}")
            cursor = con.cursor()
            chunk: list[tuple[str, str]] = []
            for row in rows:
                chunk.append(row)
                if len(chunk) >= 5_000:
                    cursor.executemany(f"insert or replace into {table} values (?, ?)", chunk)
                    count += len(chunk)
                    chunk.clear()
            if chunk:
                cursor.executemany(f"insert or replace into {table} values (?, ?)", chunk)
                count += len(chunk)
            con.execute("commit")
        except BaseException as exc:
            if con.in_transaction:
                con.execute("rollback")
            if isinstance(exc, sqlite3.Error):
                raise OnlineStoreError(f"writing {table} to {self.path} failed: {exc}") from exc
            raise
        return count

    def put_customer_features(self, table: ArrowData) -> int:
        return self._replace("customer_features", _customer_rows(table))

    def get_customer_features(self, customer_id: str) -> dict[str, Any] | None:
        return self.get_many([customer_id])[0]

    def get_many(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        ids = list(ids)
        if not ids:
            return []
        found: dict[str, str] = {}
        try:
            con = self._connect()
            for start in range(0, len(ids), 500):
                chunk = list(dict.fromkeys(ids[start : start + 500]))
                marks = ",".join("?" * len(chunk))
                found.update(
                    con.execute(
                        "select customer_id, payload from customer_features "
                        f"where customer_id in ({marks})",
                        chunk,
                    ).fetchall()
                )
        except sqlite3.Error as exc:
            raise OnlineStoreError(f"reading {self.path} failed: {exc}") from exc
        return [json.loads(found[i]) if i in found else None for i in ids]

    def put_forecasts(self, table: ArrowData) -> int:
        groups = _forecast_groups(table)
        self._replace(
            "forecasts",
            ((cat, json.dumps(rows, separators=(",", ":"))) for cat, rows in groups.items()),
        )
        return sum(len(rows) for rows in groups.values())

    def get_forecast(self, category: str, horizon_days: int) -> list[dict[str, Any]]:
        try:
            row = (
                self._connect()
                .execute("select payload from forecasts where category = ?", [category])
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise OnlineStoreError(f"reading {self.path} failed: {exc}") from exc
        return [] if row is None else _within(json.loads(row[0]), horizon_days)

    def ping(self) -> bool:
        try:
            self._connect().execute("select 1 from customer_features limit 1").fetchall()
        except (OnlineStoreError, sqlite3.Error):
            return False
        return True

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


# -- production: Redis -------------------------------------------------------------------
class RedisOnlineStore:
    """Redis with a versioned namespace: each materialisation writes a new hash and swaps.

    Layout under ``prefix`` (default ``retailml``), for ``kind`` in ``features``/``forecasts``:
    ``<prefix>:<kind>:current`` holds the live version; ``<prefix>:<kind>:v<N>`` is a hash
    (customer_id or category -> JSON). A new version is written with a TTL (so a crashed
    writer leaves nothing behind), then one MULTI/EXEC points ``current`` at it, removes its
    TTL and gives the previous version ``retire_s`` seconds to live, so readers that fetched
    the old pointer just before the swap still find their data.

    Readers cache the pointer for ``pointer_ttl_s`` (well below ``retire_s``), so a lookup
    is one ``HMGET`` round trip; a lookup that finds nothing re-reads the pointer once
    before answering "unknown", and a new materialisation is seen within ``pointer_ttl_s``.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "retailml",
        timeout_s: float = 2.0,
        chunk_rows: int = 2_000,
        staging_ttl_s: int = 6 * 3600,
        retire_s: int = 120,
        pointer_ttl_s: float = 1.0,
        client: redis.Redis | None = None,
    ) -> None:
        if not 0 <= pointer_ttl_s < retire_s:
            raise ValueError("pointer_ttl_s must be at least 0 and below retire_s")
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.chunk_rows = chunk_rows
        self.staging_ttl_s = staging_ttl_s
        self.retire_s = retire_s
        self.pointer_ttl_s = pointer_ttl_s
        self._client = client
        self._client_lock = threading.Lock()
        self._pointers: dict[str, tuple[str | None, float]] = {}
        self._generation = 0  # bumped by every put: a pointer read before it is not cached
        self._local = threading.local()
        self._readers: list[Any] = []

    @property
    def client(self) -> redis.Redis:
        """The Redis client, created on first use (connections open lazily, fork-safe pool)."""
        if self._client is None:
            import redis

            with self._client_lock:
                if self._client is None:
                    self._client = redis.Redis.from_url(
                        self.url,
                        socket_timeout=self.timeout_s,
                        socket_connect_timeout=self.timeout_s,
                        health_check_interval=30,
                    )
        return self._client

    def _key(self, kind: str, suffix: str) -> str:
        return f"{self.prefix}:{kind}:{suffix}"

    def current_version(self, kind: str) -> str | None:
        """The live version of ``features`` or ``forecasts`` (``None`` before the first put)."""
        value = self._call(self.client.get, self._key(kind, "current"))
        return None if value is None else value.decode()

    def _call(self, fn: Any, *args: Any) -> Any:
        import redis

        try:
            return fn(*args)
        except redis.RedisError as exc:
            raise OnlineStoreError(f"Redis online store {self._safe_url()}: {exc}") from exc

    def _safe_url(self) -> str:
        scheme, sep, rest = self.url.partition("://")
        return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else self.url

    def _publish(self, kind: str, items: Iterable[tuple[str, str]]) -> int:
        import redis

        try:
            version = f"v{self.client.incr(self._key(kind, 'seq'))}"
            staging = self._key(kind, version)
            count = 0
            chunk: dict[str, str] = {}

            def write(mapping: dict[str, str]) -> None:
                pipe = self.client.pipeline(transaction=False)
                pipe.hset(staging, mapping=mapping)
                pipe.expire(staging, self.staging_ttl_s)
                pipe.execute()

            for key, payload in items:
                chunk[key] = payload
                if len(chunk) >= self.chunk_rows:
                    write(chunk)
                    count += len(chunk)
                    chunk = {}
            if chunk:
                write(chunk)
                count += len(chunk)

            pointer = self._key(kind, "current")
            with self.client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(pointer)
                        previous = pipe.get(pointer)
                        pipe.multi()
                        pipe.set(pointer, version)
                        pipe.persist(staging)
                        if previous is not None and previous.decode() != version:
                            pipe.expire(self._key(kind, previous.decode()), self.retire_s)
                        pipe.execute()
                        break
                    except redis.WatchError:
                        continue
        except redis.RedisError as exc:
            raise OnlineStoreError(f"Redis online store {self._safe_url()}: {exc}") from exc
        return count

    def _pointer(self, kind: str, *, fresh: bool = False) -> tuple[str | None, bool]:
        """(live version, whether it was read just now) of ``kind``, cached briefly."""
        cached = self._pointers.get(kind)
        now = time.monotonic()
        if not fresh and cached is not None and now - cached[1] < self.pointer_ttl_s:
            return cached[0], False
        generation = self._generation
        version = self.current_version(kind)
        with self._client_lock:
            if generation == self._generation:
                self._pointers[kind] = (version, now)
        return version, True

    def _forget_pointer(self, kind: str) -> None:
        with self._client_lock:
            self._generation += 1
            self._pointers.pop(kind, None)

    def _reader(self) -> Any:
        """This thread's own connection for lookups (created on first use, again after a fork).

        A lookup is one command on a connection nobody else uses, so it skips the client's
        pool and per-command bookkeeping (about a third of the client CPU per request).
        """
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            pool = self.client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._client_lock:
                self._readers.append(conn)
        return conn

    def _hmget(self, key: str, fields: Sequence[str]) -> list[bytes | None]:
        import redis

        for attempt in (1, 2):
            conn = self._reader()
            try:
                conn.send_command("HMGET", key, *fields)
                return conn.read_response()
            except redis.ConnectionError as exc:
                conn.disconnect()  # a dropped connection (server restart): one fresh try
                if attempt == 2:
                    raise OnlineStoreError(f"Redis online store {self._safe_url()}: {exc}") from exc
            except redis.RedisError as exc:
                conn.disconnect()
                raise OnlineStoreError(f"Redis online store {self._safe_url()}: {exc}") from exc
        raise AssertionError("unreachable")

    def _read(self, kind: str, fields: Sequence[str]) -> list[bytes | None]:
        version, fresh = self._pointer(kind)
        values = (
            [None] * len(fields)
            if version is None
            else self._hmget(self._key(kind, version), fields)
        )
        if not fresh and all(v is None for v in values):
            # Nothing found under a cached pointer: a newer set may have been published.
            latest, _ = self._pointer(kind, fresh=True)
            if latest is not None and latest != version:
                values = self._hmget(self._key(kind, latest), fields)
        return values

    def put_customer_features(self, table: ArrowData) -> int:
        count = self._publish("features", _customer_rows(table))
        self._forget_pointer("features")
        return count

    def get_customer_features(self, customer_id: str) -> dict[str, Any] | None:
        return self.get_many([customer_id])[0]

    def get_many(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        ids = list(ids)
        if not ids:
            return []
        return [None if v is None else json.loads(v) for v in self._read("features", ids)]

    def put_forecasts(self, table: ArrowData) -> int:
        groups = _forecast_groups(table)
        self._publish(
            "forecasts",
            ((cat, json.dumps(rows, separators=(",", ":"))) for cat, rows in groups.items()),
        )
        self._forget_pointer("forecasts")
        return sum(len(rows) for rows in groups.values())

    def get_forecast(self, category: str, horizon_days: int) -> list[dict[str, Any]]:
        (payload,) = self._read("forecasts", [category])
        return [] if payload is None else _within(json.loads(payload), horizon_days)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception:
            return False

    def close(self) -> None:
        with self._client_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.disconnect()
        self._local = threading.local()
        if self._client is not None:
            self._client.close()


def embedded_store_path(settings: Settings) -> Path:
    return settings.data_dir / "online_store.sqlite3"


def open_online_store(settings: Settings) -> OnlineStore:
    """The online store chosen by ``settings.online_store`` (no connection is made yet)."""
    if settings.online_store == "redis":
        return RedisOnlineStore(settings.redis_url, prefix=settings.redis_prefix)
    return EmbeddedOnlineStore(embedded_store_path(settings))


__all__ = [
    "FORECAST_COLUMNS",
    "EmbeddedOnlineStore",
    "OnlineStore",
    "OnlineStoreError",
    "RedisOnlineStore",
    "open_online_store",
]
