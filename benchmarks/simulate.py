"""Measure the simulator: order lines per second and memory while it runs.

    .venv/bin/python benchmarks/simulate.py --days 60 --initial-customers 50000

Objects go to a local folder (so memory stays flat, unlike an in-memory S3), documents to a
MongoDB server if ``--mongo-uri`` is given, otherwise they are built and discarded.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from retailml.simulate.config import SimulationConfig
from retailml.simulate.engine import simulate_days


class DirectoryStore:
    """``ObjectStore.put`` into a folder."""

    bucket = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, body: bytes) -> str:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        return str(len(body))


class _DiscardResult:
    matched_count = 1


class _DiscardCollection:
    full_name = "discard"

    def insert_many(self, docs: list[dict[str, Any]], ordered: bool = True) -> None:
        return None

    def replace_one(self, selector: dict[str, Any], doc: dict[str, Any]) -> _DiscardResult:
        return _DiscardResult()


class _DiscardDatabase(dict):
    def __missing__(self, name: str) -> _DiscardCollection:
        return _DiscardCollection()


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--initial-customers", type=int, default=50_000)
    parser.add_argument("--new-customers-per-day", type=float, default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--chunk-days", type=int, default=0, help="days per call (0: one call)")
    parser.add_argument("--mongo-uri", default=None)
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)

    per_day = args.new_customers_per_day
    if per_day is None:  # keep the customer base roughly stable: 0.3 % of it per day
        per_day = max(6.0, 0.003 * args.initial_customers)
    config = replace(
        SimulationConfig(),
        seed=args.seed,
        initial_customers=args.initial_customers,
        new_customers_per_day=per_day,
    )
    with tempfile.TemporaryDirectory(prefix="retailml-sim-") as tmp:
        root = args.out or Path(tmp)
        db: Any = _DiscardDatabase()
        client = None
        if args.mongo_uri:
            import pymongo

            client = pymongo.MongoClient(args.mongo_uri)
            client.drop_database("retailml_benchmark")
            db = client["retailml_benchmark"]
        rss: list[float] = []
        start = time.perf_counter()
        lines = objects = 0
        chunk = args.chunk_days or args.days
        done = 0
        while done < args.days:
            days = min(chunk, args.days - done)
            summary = simulate_days(
                config,
                days,
                objects=DirectoryStore(root / "s3"),
                db=db,
                truth_dir=root / "truth",
                state_dir=root / "state",
                progress=lambda _message: rss.append(_rss_mib()),
            )
            lines += summary.order_lines
            objects += summary.objects_written
            done += days
        elapsed = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size = sum(p.stat().st_size for p in (root / "s3").rglob("*") if p.is_file())
        if client is not None:
            client.close()
    tenth = rss[min(len(rss) - 1, max(1, len(rss) // 10))]
    print(
        f"days                 {args.days} ({'one call' if chunk >= args.days else f'calls of {chunk}'})"
    )
    print(f"initial customers    {args.initial_customers} (+{per_day:g}/day)")
    print(
        f"mongo                {'nx/mongo at ' + args.mongo_uri if args.mongo_uri else 'discarded'}"
    )
    print(f"order lines          {lines:,} in {objects} objects ({size / 2**20:.1f} MiB)")
    print(f"elapsed              {elapsed:.1f} s")
    print(f"throughput           {lines / elapsed:,.0f} lines/s")
    print(f"RSS at 10% / end     {tenth:.0f} MiB / {rss[-1]:.0f} MiB")
    print(f"peak RSS             {peak:.0f} MiB")
    # flat memory: RSS at the end over RSS after the first tenth of the run stays near 1
    print(
        f"lines={lines} lines_per_s={lines / elapsed:.0f} peak_rss_mb={peak:.0f} "
        f"rss_end_over_early={rss[-1] / tenth:.2f}"
    )


if __name__ == "__main__":
    main()
