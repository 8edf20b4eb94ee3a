"""The whole plan runs on fsspec's memory:// filesystem (inputs and run root), local engine."""

from __future__ import annotations

import fsspec
import pytest

from conftest import SAMPLE
from pipelines.config import ConfigError, parse_config
from pipelines.plan import check_config
from pipelines.runner import run


def test_run_on_memory_filesystem(laptop_raw):
    fs = fsspec.filesystem("memory")
    for name in ("en.jsonl.zst", "broken.jsonl", "udhr.parquet"):
        fs.pipe(f"/in/{name}", (SAMPLE / name).read_bytes())
    raw = dict(laptop_raw, run_root="memory://runs/test")
    raw["input"] = dict(raw["input"], paths=["memory://in/*.jsonl*", "memory://in/*.parquet"])
    raw["engine"] = dict(raw["engine"], kind="local")
    summary = run(parse_config(raw))
    assert summary["invariant"]["holds"]
    assert summary["kept"] > 300
    assert summary["output"].startswith("write/")  # relative to the run root
    assert fs.exists(f"/runs/test/{summary['output']}")
    assert fs.exists("/runs/test/summary.json")
    # ids are relative to the input root, not to the memory filesystem
    assert summary["quarantined"]["bad_json"] == 2


def test_memory_with_ray_fails_fast(laptop_raw):
    raw = dict(laptop_raw, run_root="memory://runs/x")
    with pytest.raises(ConfigError, match="engine.kind=local"):
        check_config(parse_config(raw))
