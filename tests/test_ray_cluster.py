"""The plan on a real multi-node Ray cluster started by the test on this machine: through
`engine.address`, as Ray jobs (`tokenmill submit-step`), with a worker node killed while a
step runs, and from Airflow as Ray jobs, with a retry that re-attaches to the running job.
Every run gives the bytes of the embedded run."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, require_airflow, tokenmill
from helpers_airflow import Airflow
from helpers_ray import LocalRayCluster
from helpers_runs import data_checksums


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalRayCluster(tmp_path_factory.mktemp("ray-cluster"), workers=1, cpus_per_node=1)
    try:
        yield c.start()
    finally:
        c.stop()


def _config(tmp_path: Path, laptop_raw: dict, name: str, **sections) -> tuple[Path, Path]:
    raw = copy.deepcopy(laptop_raw)
    raw["run_root"] = str(tmp_path / name)
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, tmp_path / name


def test_plan_through_engine_address_on_two_nodes(cluster, tmp_path, laptop_raw, reference_run):
    assert cluster.alive_nodes() == 2
    cfg, root = _config(tmp_path, laptop_raw, "attached", engine={"address": cluster.address})
    proc = tokenmill("run", str(cfg), env=cluster.env)
    assert "running on ray" in proc.stderr
    assert data_checksums(root) == data_checksums(reference_run[0])
    record = json.loads(next(root.glob("normalize/*/_SUCCESS.json")).read_text())
    assert record["execution"]["workers"] == 2  # the cluster's CPUs, not engine.workers of an embedded one


def test_plan_as_ray_jobs(cluster, tmp_path, laptop_raw, reference_run):
    cfg, root = _config(tmp_path, laptop_raw, "jobs")
    plan = tokenmill("plan", str(cfg), env=cluster.env).stdout.strip().splitlines()[-1]
    names = [s["name"] for s in json.loads(Path(plan).read_text())["steps"]]
    for name in names:
        proc = tokenmill("submit-step", plan, name, "--address", cluster.dashboard, "--poll", "0.5", env=cluster.env)
        assert f"{name}: submitted Ray job" in proc.stderr and "running on ray" in proc.stderr
    assert data_checksums(root) == data_checksums(reference_run[0])
    again = tokenmill("submit-step", plan, "read", "--address", cluster.dashboard, env=cluster.env)
    assert "succeeded already" in again.stderr  # the same submission id: not run twice


def test_killing_a_worker_node_mid_step_still_ends_correct(cluster, tmp_path, laptop_raw, reference_run):
    # small parts: many tasks per step, so the node dies while tasks are placed on it
    cfg, root = _config(tmp_path, laptop_raw, "node-lost", engine={"address": cluster.address},
                        input={"part_bytes": 20_000})
    ref_cfg, ref_root = _config(tmp_path, laptop_raw, "node-lost-ref", engine={"kind": "local"},
                                input={"part_bytes": 20_000})
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", str(cfg)], cwd=REPO, env=cluster.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list(root.glob("normalize/*/_tasks/*-?????.json")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cluster.kill_worker(0)  # the node and every task on it are gone
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.add_worker()  # for the tests after this one
    assert proc.returncode == 0, err[-3000:]
    tokenmill("run", str(ref_cfg))
    assert data_checksums(root) == data_checksums(ref_root)


def _job_ids(dashboard: str) -> list[tuple[str, str]]:
    from ray.job_submission import JobSubmissionClient

    return [(j.submission_id, str(j.status)) for j in JobSubmissionClient(dashboard).list_jobs() if j.submission_id]


def _kill_submitter_once_running(cluster: LocalRayCluster, dag_id: str, step: str, killed: dict) -> None:
    """SIGKILL the Airflow task's `submit-step` process of `step` once its Ray job runs: the
    worker dies, the job goes on."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            jobs = _job_ids(cluster.dashboard)
        except Exception:  # the job API busy or restarting: look again
            time.sleep(0.2)
            continue
        running = [j for j, s in jobs if dag_id in j and j.endswith(step) and "RUNNING" in s]
        if running:
            ps = subprocess.run(["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True).stdout
            for line in ps.splitlines():
                pid, _, args = line.strip().partition(" ")
                if "submit-step" in args and running[0] in args:
                    os.kill(int(pid), signal.SIGKILL)
                    killed.update(job=running[0], pid=int(pid))
                    return
        time.sleep(0.2)


def test_airflow_ray_jobs_and_a_retry_that_reattaches(cluster, tmp_path, laptop_raw):
    require_airflow()
    (tmp_path / "airflow").mkdir()
    af = Airflow(tmp_path / "airflow")
    dag_id = "rayjobs"
    sections = dict(normalize={"enabled": False}, langid={"enabled": False}, dedup_exact={"enabled": False},
                    dedup_near={"enabled": False}, encode={"enabled": False})
    cfg, root = _config(tmp_path, laptop_raw, "airflow-jobs", airflow={
        "dag_id": dag_id, "retries": 2, "retry_delay_seconds": 1, "max_retry_delay_seconds": 2,
        "compute": "ray_job", "ray_job": {"address": cluster.dashboard, "poll_seconds": 0.5}}, **sections)
    killed: dict = {}
    watcher = threading.Thread(target=_kill_submitter_once_running, args=(cluster, dag_id, "train_bpe", killed),
                               daemon=True)
    watcher.start()
    proc = af.dags_test(cfg, dag_id, env={"RAY_AUTH_MODE": "disabled"})
    watcher.join(5)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert killed, "the train_bpe job was never seen running"
    states = af.task_instances(dag_id)
    assert states["train_bpe"] == (2, "success") and all(v[1] == "success" for v in states.values())
    assert f"re-attaching to Ray job {killed['job']}" in proc.stdout + proc.stderr
    jobs = [(j, s) for j, s in _job_ids(cluster.dashboard) if dag_id in j and "train_bpe" in j]
    assert len(jobs) == 1 and "SUCCEEDED" in jobs[0][1], jobs  # re-attached, not submitted twice
    ref_cfg, ref_root = _config(tmp_path, laptop_raw, "airflow-jobs-ref", engine={"kind": "local"}, **sections)
    tokenmill("run", str(ref_cfg))
    assert data_checksums(root) == data_checksums(ref_root)
