"""``retailml``: one subcommand per pipeline stage, plus services, keys, serve and demo."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from typing import Any

from . import pipeline
from .config import Settings, load_settings

_START = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


def _services(settings: Settings, args: argparse.Namespace) -> None:
    from .sources import local_services

    if args.action == "up":
        endpoints = local_services.ensure_running(settings.services_dir)
        print(f"S3: {endpoints.s3_endpoint_url}\nMongoDB: {endpoints.mongo_uri}")
    elif args.action == "down":
        print("stopped" if local_services.stop(settings.services_dir) else "not running")
    else:
        endpoints = local_services.status(settings.services_dir)
        print(f"running: {endpoints}" if endpoints else "not running")


def _simulate(settings: Settings, args: argparse.Namespace) -> None:
    pipeline.simulate(
        settings,
        pipeline.SimulateOptions(
            days=args.days,
            seed=args.seed,
            start_date=args.start_date,
            initial_customers=args.customers,
            new_customers_per_day=args.new_customers_per_day,
            n_products=args.products,
            drift_start=args.drift_start,
        ),
        progress,
    )


def _retrain_check(settings: Settings, args: argparse.Namespace) -> None:
    results = pipeline.retrain_check(
        settings,
        progress,
        max_age_days=args.max_age_days,
        force=args.force,
        margin=args.margin,
        lock_wait_seconds=args.wait,
    )
    print(results["retrain"].summary())


def _keys(settings: Settings, args: argparse.Namespace) -> None:
    from .serving.auth import create_key, list_keys, revoke_key

    path = settings.api_keys_path
    if args.action == "create":
        token = create_key(path, args.name, tuple(args.scopes))
        print(token)
        progress(f"created key {args.name!r} with scopes {args.scopes}; it is shown only once")
    elif args.action == "revoke":
        revoke_key(path, args.key_id)
        progress(f"revoked key {args.key_id}")
    else:
        for key in list_keys(path):
            print(key)


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    from .serving.app import serve

    serve(settings, production=args.production)


def _demo(settings: Settings, args: argparse.Namespace) -> None:
    """Simulate a year of a small business, run the whole pipeline, then serve the API."""
    from .serving.auth import create_key

    if not (settings.data_dir / "simulator").exists():
        progress("simulating a year of a small online retailer (S3 exports + MongoDB documents)")
        pipeline.simulate(
            settings,
            pipeline.SimulateOptions(days=args.days, initial_customers=args.customers),
            progress,
        )
    else:
        progress("simulation already present: reusing it (make clean to start over)")
    pipeline.daily(settings, progress)
    token = create_key(settings.api_keys_path, "demo", ("predict",))
    customer = _some_customer(settings)
    base = f"http://{settings.api_host}:{settings.api_port}"
    print(
        "\nThe API is starting. Try:\n\n"
        f"  curl -s -X POST {base}/v1/churn/score \\\n"
        f"       -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\\n"
        f'       -d \'{{"customer_id": "{customer}", "explain": true}}\'\n\n'
        f"  curl -s '{base}/v1/demand/forecast?category=toys&horizon=7' "
        f"-H 'Authorization: Bearer {token}'\n",
        flush=True,
    )
    _serve(settings, argparse.Namespace(production=False))


def _some_customer(settings: Settings) -> str:
    from . import runtime

    warehouse = runtime.open_warehouse(settings)
    try:
        return str(
            warehouse.scalar(
                "select customer_id from marts.ml_customer_features order by customer_id limit 1"
            )
        )
    finally:
        warehouse.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retailml",
        description="Warehouse-centric analytics and ML for an online retailer. "
        "Configuration: RETAILML_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    services = sub.add_parser("services", help="local S3 and MongoDB servers (embedded default)")
    services.add_argument("action", choices=["up", "down", "status"])
    services.set_defaults(handler=_services)

    sim = sub.add_parser("simulate", help="simulate more days of the business into S3 and MongoDB")
    sim.add_argument("--days", type=int, default=365)
    # The options below shape a new business (defaults: seed 42, 2025-01-01, 2000 customers,
    # 6 signups a day, 200 products, no drift); a simulated one continues as it was.
    sim.add_argument("--seed", type=int)
    sim.add_argument("--start-date", type=date.fromisoformat)
    sim.add_argument("--customers", type=int, help="initial customers")
    sim.add_argument("--new-customers-per-day", type=float)
    sim.add_argument("--products", type=int)
    sim.add_argument("--drift-start", type=date.fromisoformat, help="drift scenario from this date")
    sim.set_defaults(handler=_simulate)

    for name, help_text in (
        ("ingest", "extract S3 exports and MongoDB documents into raw tables"),
        ("train", "train, evaluate, register and gate the churn and demand models"),
        ("materialize", "load current features and forecasts into the online store"),
        ("monitor", "drift check; move logged predictions into the warehouse"),
    ):
        stage = sub.add_parser(name, help=help_text)
        stage.set_defaults(
            handler=lambda s, a, _n=name: getattr(pipeline, _n)(s, progress=progress)
        )

    wait_help = (
        "seconds to wait for another run to release the pipeline lock (default: fail at once)"
    )
    score = sub.add_parser(
        "score", help="batch-score all customers with the production churn model"
    )
    score.add_argument(
        "--partitions",
        type=int,
        default=0,
        help="score customer_id ranges one by one (0: all at once)",
    )
    score.set_defaults(
        handler=lambda s, a: pipeline.score(s, progress=progress, partitions=a.partitions)
    )

    daily = sub.add_parser(
        "daily",
        help="ingest -> transform -> train -> score -> materialize -> monitor -> retrain check",
    )
    daily.add_argument("--wait", type=float, default=0.0, help=wait_help)
    daily.add_argument("--score-partitions", type=int, default=0)
    daily.set_defaults(
        handler=lambda s, a: pipeline.daily(
            s, progress, lock_wait_seconds=a.wait, score_partitions=a.score_partitions
        )
    )

    retrain = sub.add_parser(
        "retrain-check",
        help="monitor, then retrain the churn model through the promotion gate if drift or "
        "decay passed its thresholds",
    )
    retrain.add_argument(
        "--max-age-days", type=int, help="also retrain a production model older than this"
    )
    retrain.add_argument("--force", action="store_true", help="retrain whatever the monitor says")
    retrain.add_argument(
        "--margin", type=float, default=0.0, help="how much better a candidate must be"
    )
    retrain.add_argument("--wait", type=float, default=0.0, help=wait_help)
    retrain.set_defaults(handler=_retrain_check)

    backfill = sub.add_parser(
        "backfill", help="re-extract a range of days, replacing what it loaded before"
    )
    backfill.add_argument("--start", type=date.fromisoformat, required=True, help="first day")
    backfill.add_argument("--end", type=date.fromisoformat, required=True, help="last day")
    backfill.add_argument(
        "--source", choices=["s3", "mongo"], action="append", help="default: both"
    )
    backfill.add_argument(
        "--rebuild",
        action="store_true",
        help="then dbt build, re-score and re-materialize (what the backfill flow does)",
    )
    backfill.add_argument("--wait", type=float, default=0.0, help=wait_help)
    backfill.set_defaults(
        handler=lambda s, a: pipeline.backfill(
            s,
            a.start,
            a.end,
            progress=progress,
            sources=tuple(a.source or ("s3", "mongo")),
            rebuild=a.rebuild,
            lock_wait_seconds=a.wait,
        )
    )

    transform = sub.add_parser("transform", help="run dbt (default: build) on the warehouse")
    transform.add_argument("dbt_args", nargs="*", default=["build"])
    transform.set_defaults(
        handler=lambda s, a: pipeline.transform(s, tuple(a.dbt_args), progress=progress)
    )

    serve = sub.add_parser("serve", help="serve the prediction API")
    serve.add_argument(
        "--production", action="store_true", help="gunicorn instead of Flask's server"
    )
    serve.set_defaults(handler=_serve)

    keys = sub.add_parser("keys", help="manage API keys (stored hashed)")
    keys.add_argument("action", choices=["create", "revoke", "list"])
    keys.add_argument("--name", default="client")
    keys.add_argument("--scopes", nargs="+", default=["predict"], choices=["predict", "admin"])
    keys.add_argument("--key-id")
    keys.set_defaults(handler=_keys)

    demo = sub.add_parser("demo", help="simulate, run the whole pipeline, serve the API")
    demo.add_argument("--days", type=int, default=365)
    demo.add_argument("--customers", type=int, default=3000)
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings()
    try:
        handler: Any = args.handler
        handler(settings, args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear one-line error for the user; tracebacks with -v later
        if getattr(exc, "__module__", "").startswith("retailml") or isinstance(exc, OSError):
            progress(f"error: {type(exc).__name__}: {exc}")
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
