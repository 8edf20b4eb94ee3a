"""One plan on every engine: the same bytes in every output file of every step.

The reference run (conftest) is Ray with 2 workers. Compared with it, file by file (documents,
dropped, quarantine, tokenizer files, shards, documents.parquet, manifest, and the summary
without its execution section): the local engine, Ray with 1 worker, Beam's in-process
portable runner with 2 worker processes, and Beam's PortableRunner against Beam's own job
service with an EXTERNAL worker pool (the job API of the Flink and Spark job servers).
"""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import tokenmill
from helpers_engines import beam_job_service
from helpers_runs import data_checksums, step_checksums, summary


def _config(tmp_path, ref_cfg, name, engine: dict):
    raw = yaml.safe_load(ref_cfg.read_text())
    raw["run_root"] = str(tmp_path / name)
    raw["engine"] = {**raw["engine"], **engine}
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    return cfg, tmp_path / name


@pytest.mark.parametrize("engine", [
    {"kind": "local"},
    {"kind": "ray", "workers": 1},
    {"kind": "beam", "workers": 2},
], ids=["local", "ray-1-worker", "beam-2-processes"])
def test_whole_plan_is_byte_identical_on_every_engine(tmp_path, reference_run, engine):
    ref_root, ref_cfg, _, _ = reference_run
    cfg, root = _config(tmp_path, ref_cfg, "run", engine)
    tokenmill("run", str(cfg))
    ref, got = data_checksums(ref_root), data_checksums(root)
    assert len(ref) > 100 and got == ref
    s = summary(root)
    assert s["invariant"]["holds"]
    assert {e["engine"] for e in s["execution"].values()} == {engine["kind"]}
    if engine["kind"] == "beam":
        # Beam's cost is visible: pipelines and seconds per step. Phases whose tasks are all
        # known at once share a pipeline, so there are fewer pipelines than phases.
        for name, e in s["execution"].items():
            assert 1 <= e["beam_pipelines"] <= len(e["phases"]), name
            assert e["beam_pipeline_seconds"] > 0
        assert s["execution"]["dedup_exact"]["beam_pipelines"] == 1  # keys, reduce and filter in one
        assert sum(e["beam_pipelines"] for e in s["execution"].values()) < sum(len(e["phases"]) for e in s["execution"].values())


def test_beam_portable_runner_with_external_workers(tmp_path, reference_run):
    ref_root, ref_cfg, _, _ = reference_run
    with beam_job_service(tmp_path) as flags:
        cfg, root = _config(tmp_path, ref_cfg, "portable", {"kind": "beam", "beam": {"options": flags}})
        proc = tokenmill("run", str(cfg), "--until", "dedup_exact")
    steps = ["read", "normalize", "langid", "dedup_exact"]
    assert step_checksums(root, steps) == step_checksums(ref_root, steps)
    record = json.loads(next((root / "dedup_exact").glob("*/_SUCCESS.json")).read_text())
    assert record["execution"]["engine"] == "beam" and record["execution"]["beam_pipelines"] == 1
    assert "running on beam" in proc.stderr
