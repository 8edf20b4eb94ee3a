"""Same input and config give byte-identical outputs with 1 or 2 workers and on either engine."""

from __future__ import annotations

import yaml

from conftest import tokenmill
from helpers_runs import data_checksums


def _run_with(tmp_path, ref_cfg, name, overrides):
    raw = yaml.safe_load(ref_cfg.read_text())
    raw["run_root"] = str(tmp_path / name)
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    tokenmill("run", str(cfg), *[a for o in overrides for a in ("--set", o)])
    return tmp_path / name


def test_one_and_two_workers_byte_identical(tmp_path, reference_run):
    ref_root, ref_cfg, _, _ = reference_run  # 2 workers
    one = _run_with(tmp_path, ref_cfg, "one-worker", ["engine.workers=1"])
    ref, got = data_checksums(ref_root), data_checksums(one)
    assert ref and got == ref


def test_local_engine_matches_ray(tmp_path, reference_run):
    ref_root, ref_cfg, _, _ = reference_run
    local = _run_with(tmp_path, ref_cfg, "local", ["engine.kind=local"])
    assert data_checksums(local) == data_checksums(ref_root)
