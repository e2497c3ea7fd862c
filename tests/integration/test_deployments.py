"""prefect.yaml against a real Prefect server (the session's test harness, a local API
server): ``prefect deploy --all`` registers every deployment with the schedules, limits and
parameters the file says, and a process worker runs one of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from retailml import runtime
from retailml.config import Settings
from retailml.sources import local_services

REPO = Path(__file__).resolve().parents[2]


def _prefect(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_prefect_yaml_deploys_and_a_process_worker_runs_a_deployment(
    prefect_harness: str, settings: Settings, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client

    import flows.pipeline as flows

    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_harness,
        "PREFECT_HOME": str(tmp_path / "prefect-cli"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": str(REPO),
    }
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    for pool in sorted({d["work_pool"]["name"] for d in spec}):
        _prefect(["work-pool", "create", pool, "--type", "process"], env)
    _prefect(["--no-prompt", "deploy", "--all"], env, timeout=600)

    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
        for expected in spec:
            name = expected["name"]
            flow = getattr(flows, expected["entrypoint"].split(":")[1])
            deployment = deployments[name]
            assert client.read_flow(deployment.flow_id).name == flow.name, name
            assert deployment.entrypoint == expected["entrypoint"]
            assert deployment.work_pool_name == expected["work_pool"]["name"]
            assert deployment.parameters == (expected.get("parameters") or {}), name
            assert set(deployment.tags) == set(expected["tags"])
            # the schedules the file says, each a cron in the shop's time zone
            schedules = [
                (s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules
            ]
            wanted = [
                (s["cron"], s["timezone"], s["active"]) for s in expected.get("schedules", [])
            ]
            assert schedules == wanted, name
            limit = expected.get("concurrency_limit")
            if limit:
                assert deployment.global_concurrency_limit.limit == limit["limit"] == 1
                assert deployment.concurrency_options.collision_strategy == "ENQUEUE"
            # the worker runs the code of this checkout
            assert deployment.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
            ]
        scheduled = {n for n, d in deployments.items() if any(s.active for s in d.schedules)}
        assert scheduled == {"daily", "weekly-retrain-check"}

        # a process worker picks up a run of the ingest deployment and runs the flow in a
        # subprocess configured by its environment (RETAILML_*)
        runtime.open_object_store(settings, create_bucket=True)
        run = client.create_flow_run_from_deployment(deployments["ingest"].id)
    worker_env = {
        **env,
        "RETAILML_DATA_DIR": str(settings.data_dir),
        "RETAILML_S3_ENDPOINT_URL": str(settings.s3_endpoint_url),
        "RETAILML_S3_BUCKET": settings.s3_bucket,
        "RETAILML_MONGO_URI": str(settings.mongo_uri),
        "RETAILML_MONGO_DATABASE": settings.mongo_database,
        "AWS_ACCESS_KEY_ID": local_services.LOCAL_AWS_KEY,
        "AWS_SECRET_ACCESS_KEY": local_services.LOCAL_AWS_KEY,
    }
    output = _prefect(
        ["worker", "start", "--pool", "retailml", "--run-once", "--limit", "1"],
        worker_env,
        timeout=600,
    )
    with get_client(sync_client=True) as client:
        finished: Any = client.read_flow_run(run.id)
    assert finished.state.is_completed(), (finished.state, output)
    # it ran against this test's data dir: the pipeline lock's history names the flow run
    history = (settings.data_dir / "locks" / "pipeline.history.jsonl").read_text()
    assert f"({run.id})" in history and "flow run ingest/" in history
