"""The Airflow DAG built from the plan, on a real Airflow 3 (`airflow dags test` against a
migrated SQLite metadata database in a temporary AIRFLOW_HOME; no scheduler is needed)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, require_airflow, tokenmill

require_airflow()

from helpers_airflow import Airflow  # noqa: E402
from helpers_runs import data_checksums  # noqa: E402
from pipelines.config import parse_config  # noqa: E402
from pipelines.lease import LEASE  # noqa: E402
from pipelines.plan import build_steps  # noqa: E402


@pytest.fixture(scope="module")
def af(tmp_path_factory) -> Airflow:
    return Airflow(tmp_path_factory.mktemp("airflow-home"))


def _raw(laptop_raw: dict, root: Path, dag_id: str, **sections) -> dict:
    raw = copy.deepcopy(laptop_raw)
    raw["run_root"] = str(root)
    raw["engine"]["kind"] = "local"
    raw["airflow"] = {"dag_id": dag_id, "retries": 2, "retry_delay_seconds": 1, "max_retry_delay_seconds": 2}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


SHAPE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = {"errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {
        "tasks": {t.task_id: {"upstream": sorted(t.upstream_task_ids), "retries": t.retries, "pool": t.pool,
                              "backoff": t.retry_exponential_backoff, "timeout": t.execution_timeout.total_seconds()
                              if t.execution_timeout else None, "outlets": [o.uri for o in t.outlets]}
                  for t in dag.tasks},
        "max_active_runs": dag.max_active_runs, "catchup": dag.catchup, "params": sorted(dag.params.keys()),
        "schedule": str(getattr(dag.timetable, "expression", None))}
print(json.dumps(out))
"""


def test_dag_shape_is_the_plan(af, laptop_raw, tmp_path):
    full = af.config("shape_full", _raw(laptop_raw, tmp_path / "a", "shape_full"))
    part = af.config("shape_part", _raw(laptop_raw, tmp_path / "b", "shape_part", normalize={"enabled": False},
                                        dedup_near={"enabled": False}, encode={"enabled": False},
                                        airflow={"dag_id": "shape_part", "schedule": "@daily", "pool": "ray",
                                                 "compute": "ray_job", "ray_job": {"address": "http://head:8265"},
                                                 "step_timeouts": {"train_bpe": 7200}}))
    env = dict(af.env, TOKENMILL_DAG_CONFIGS=f"{full},{part}")
    proc = subprocess.run([sys.executable, "-c", SHAPE, str(REPO / "dags")], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shape = json.loads(proc.stdout.strip().splitlines()[-1])
    assert shape["errors"] == {}
    for dag_id, cfg_path in (("shape_full", full), ("shape_part", part)):
        import yaml

        steps = build_steps(parse_config(yaml.safe_load(cfg_path.read_text())))
        dag = shape["dags"][dag_id]
        assert set(dag["tasks"]) == {"plan"} | {s.name for s in steps}
        for s in steps:
            assert dag["tasks"][s.name]["upstream"] == sorted(s.inputs or ["plan"]), s.name
        assert dag["max_active_runs"] == 1 and dag["catchup"] is False
        assert dag["params"] == ["overrides", "step_overrides"]
        assert all(t["retries"] == 2 and t["backoff"] == 2.0 for t in dag["tasks"].values())
        assert dag["tasks"]["accounting"]["outlets"] == [f"tokenmill://{dag_id}/shards"]
    part_tasks = shape["dags"]["shape_part"]["tasks"]
    assert "normalize" not in part_tasks and "write_shards" not in part_tasks
    assert part_tasks["train_bpe"]["timeout"] == 7200 and part_tasks["read"]["timeout"] == 86400
    assert part_tasks["read"]["pool"] == "ray" and part_tasks["plan"]["pool"] == "default_pool"  # cluster steps only
    assert shape["dags"]["shape_part"]["schedule"] in ("@daily", "0 0 * * *")


def test_dags_test_runs_the_whole_plan_byte_identical(af, laptop_raw, tmp_path, reference_run):
    root = tmp_path / "run"
    cfg = af.config("whole", _raw(laptop_raw, root, "whole"))
    proc = af.dags_test(cfg, "whole")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    states = af.task_instances("whole")
    assert set(states) == {"plan"} | {s.name for s in build_steps(parse_config(_raw(laptop_raw, root, "whole")))}
    assert all(v == (1, "success") for v in states.values()), states
    assert data_checksums(root) == data_checksums(reference_run[0])
    (event,) = af.asset_events("tokenmill://whole/shards")
    manifest = Path(event["manifest"])
    assert event["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert event["shards"] and all(Path(p + ".bin").exists() and Path(p + ".idx").exists() for p in event["shards"])
    assert event["run_root"] == str(root)


def _kill_after_first_record(root: Path, step: str, done: dict) -> None:
    """SIGKILL the run-step process of `step` (found through its lease) once its first task
    record exists: part-way through the step, in the task's first try."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        records = list(root.glob(f"{step}/*/_tasks/*-?????.json"))
        leases = list(root.glob(f"{step}/*/{LEASE}"))
        if records and leases:
            try:
                pid = json.loads(leases[0].read_text())["pid"]
            except (ValueError, FileNotFoundError):
                continue
            os.kill(pid, signal.SIGKILL)
            done.update(pid=pid, records=len(records))
            return
        time.sleep(0.01)


def test_a_killed_step_task_is_retried_and_reuses_its_task_records(af, laptop_raw, tmp_path):
    root = tmp_path / "run"
    # small parts: the normalize step has many tasks, so the kill lands part-way
    raw = _raw(laptop_raw, root, "killed", input={"part_bytes": 20_000})
    cfg = af.config("killed", raw)
    killed: dict = {}
    watcher = threading.Thread(target=_kill_after_first_record, args=(root, "normalize", killed), daemon=True)
    watcher.start()
    proc = af.dags_test(cfg, "killed")
    watcher.join(5)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert killed, "the normalize step was never seen running"
    states = af.task_instances("killed")
    assert states["normalize"] == (2, "success") and states["read"] == (1, "success")
    record = json.loads(next(root.glob("normalize/*/_SUCCESS.json")).read_text())
    phase = record["execution"]["phases"]["map"]
    assert 1 <= killed["records"] <= phase["resumed"] < phase["tasks"], (killed, phase)  # shown, not assumed
    # the same config run by `tokenmill run` in one go gives the same bytes
    plain = dict(raw, run_root=str(tmp_path / "plain"))
    plain_cfg = af.config("killed_plain", plain)
    tokenmill("run", str(plain_cfg))
    assert data_checksums(root) == data_checksums(tmp_path / "plain")


def test_a_step_failing_with_exit_2_is_not_retried(af, laptop_raw, tmp_path):
    root = tmp_path / "run"
    cfg = af.config("refused", _raw(laptop_raw, root, "refused"))
    # a run-step setting that would change a step's version: run-step refuses it (exit 2)
    proc = af.dags_test(cfg, "refused", conf={"step_overrides": ["dedup_near.threshold=0.9"]})
    assert proc.returncode != 0
    states = af.task_instances("refused")
    assert states["plan"] == (1, "success")
    assert states["read"] == (1, "failed"), states  # retries: 2, yet tried once
    assert "tokenmill exited 2" in proc.stdout + proc.stderr
    assert not list(root.glob("read/*/_SUCCESS.json"))


def test_every_config_in_configs_builds_its_dag(af):
    """The cluster profiles' DAGs take their shape from the config alone: no data is touched."""
    configs = sorted((REPO / "configs").glob("*.yaml"))
    env = dict(af.env, TOKENMILL_DAG_CONFIGS=",".join(str(p) for p in configs))
    proc = subprocess.run([sys.executable, "-c", SHAPE, str(REPO / "dags")], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shape = json.loads(proc.stdout.strip().splitlines()[-1])
    assert shape["errors"] == {}
    assert {"tokenmill_laptop", "tokenmill_ray_cluster", "tokenmill_ray_jobs", "tokenmill_beam_flink",
            "tokenmill_beam_dataflow"} <= set(shape["dags"])
    assert shape["dags"]["tokenmill_ray_cluster"]["tasks"]["read"]["pool"] == "ray_cluster"
