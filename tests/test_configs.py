"""Every config in configs/ passes `tokenmill validate`: the laptop config with its inputs
listed, the cluster profiles (whose data lives on object stores this machine cannot reach)
with config, steps and engine checked (--no-inputs)."""

from __future__ import annotations

import pytest

from conftest import REPO, tokenmill

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


def test_there_are_cluster_profiles():
    assert {"laptop.yaml", "ray-cluster.yaml", "ray-job.yaml", "beam-flink.yaml", "beam-dataflow.yaml"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates(name):
    proc = tokenmill("validate", f"configs/{name}", "--no-inputs")
    assert proc.stdout.startswith(f"config OK: configs/{name}")
    if name == "laptop.yaml":  # its inputs are in the repo: the whole plan
        full = tokenmill("validate", "configs/laptop.yaml", "--set", "run_root=/nonexistent/never-written")
        assert "accounting" in full.stdout


def test_profiles_extend_the_laptop_config():
    from pipelines.config import load_config

    laptop = load_config(str(REPO / "configs" / "laptop.yaml"))
    job = load_config(str(REPO / "configs" / "ray-job.yaml"))  # base: ray-cluster.yaml, base: laptop.yaml
    assert job.engine.address == "auto" and job.airflow.compute == "ray_job"
    assert job.dedup_near == laptop.dedup_near and job.tokenizer.train["vocab_size"] == 65536
