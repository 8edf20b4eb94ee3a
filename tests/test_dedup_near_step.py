"""The sharded near-dup step equals the in-process reference of stages.dedup_near.

The step is run with many small parts and buckets, so every shuffle (bands, edges by
src and by dst, component rounds, labels, ids, keepers) routes across partitions.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import parse_config
from pipelines.runner import run
from pipelines.steps.dedup_near import params_of
from stages.dedup_near import near_duplicates_local


def _read(step_dir, kind):
    files = sorted((step_dir / kind).glob("part-*.parquet"), key=lambda f: f.name)
    return pa.concat_tables([pq.read_table(f) for f in files])


@pytest.mark.parametrize("verify", [True, False])
def test_step_matches_local_reference(tmp_path, laptop_raw, verify):
    raw = dict(laptop_raw, run_root=str(tmp_path / "run"), shuffle_rows_per_bucket=1000)
    raw["input"] = dict(raw["input"], part_bytes=60_000)
    raw["engine"] = dict(raw["engine"], kind="local")
    raw["dedup_near"] = dict(raw["dedup_near"], verify=verify)
    raw["output"] = dict(raw["output"], keep_scratch=True)  # the buckets are inspected below
    cfg = parse_config(raw)
    summary = run(cfg)
    steps = summary["steps"]
    assert summary["invariant"]["holds"]
    near_dir, exact_dir = tmp_path / "run" / steps["dedup_near"]["path"], tmp_path / "run" / steps["dedup_exact"]["path"]
    assert len(list((exact_dir / "docs").glob("*.parquet"))) > 20  # many parts
    assert len(list((near_dir / "bands").glob("bucket-*"))) > 10  # many buckets

    # Reference: the whole input of the step, part by part in part order, in one process.
    inp = _read(exact_dir, "docs")
    keep, cluster = near_duplicates_local(inp.column("id").to_pylist(), inp.column("text").to_pylist(), params_of(cfg))
    ids = inp.column("id").to_pylist()
    want_dropped = {i for i, k in zip(ids, keep) if not k}
    got_dropped = set(_read(near_dir, "dropped").column("id").to_pylist())
    assert got_dropped == want_dropped
    assert len(want_dropped) >= 6  # the seeded near duplicates at least

    out = _read(near_dir, "docs")
    want_cluster = {i: c for i, c in zip(ids, cluster)}
    for i, c in zip(out.column("id").to_pylist(), out.column("cluster_id").to_pylist()):
        assert (c or i) == want_cluster[i]
