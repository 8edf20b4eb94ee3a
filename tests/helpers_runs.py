"""Reading a finished run back: outputs, dropped and quarantined records, checksums."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def summary(run_root: Path) -> dict:
    return json.loads((run_root / "summary.json").read_text())


def step_dirs(run_root: Path) -> dict[str, Path]:
    s = summary(run_root)
    return {name: run_root / info["path"] for name, info in s["steps"].items()}


def read_kind(step_dir: Path, kind: str) -> pa.Table:
    files = sorted((step_dir / kind).glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else pa.table({})


def output_docs(run_root: Path) -> pa.Table:
    return read_kind(step_dirs(run_root)["write"], "docs")


def all_dropped(run_root: Path) -> pa.Table:
    tables = [read_kind(d, "dropped") for n, d in step_dirs(run_root).items() if (d / "dropped").exists()]
    return pa.concat_tables([t for t in tables if t.num_rows])


def quarantine(run_root: Path) -> pa.Table:
    return read_kind(step_dirs(run_root)["read"], "quarantine")


def summary_without_execution(path: Path) -> dict:
    s = json.loads(path.read_text())
    s.pop("execution")
    return s


def data_checksums(run_root: Path) -> dict[str, str]:
    """sha256 of every output file of every step: Parquet parts, shuffle scratch (Arrow IPC), tokenizer files, shards,
    doc index, manifest, and the summary without its `execution` section (engines and timings).
    Left out: task records, _SUCCESS.json and training_stats.json (they hold timings)."""
    out = {}
    wanted = {".parquet", ".arrow", ".bin", ".idx", ".txt", ".tiktoken"}
    for name, d in step_dirs(run_root).items():
        for f in sorted(d.rglob("*")):
            rel = f.relative_to(d)
            if not f.is_file() or rel.parts[0] == "_tasks":
                continue
            if (f.suffix in wanted or f.name in ("tokenizer.json", "vocab.json", "tiktoken.json", "manifest.json")
                    or f.name.endswith(".done.json")):
                out[f"{name}/{rel}"] = hashlib.sha256(f.read_bytes()).hexdigest()
            elif f.name == "summary.json":
                body = json.dumps(summary_without_execution(f), sort_keys=True).encode()
                out[f"{name}/{rel}"] = hashlib.sha256(body).hexdigest()
    return out


def finished_steps(run_root: Path) -> dict[str, Path]:
    """Folders of the finished steps under a run root (for runs that stopped early)."""
    return {p.parent.parent.name: p.parent for p in run_root.glob("*/*/_SUCCESS.json")}


def step_checksums(run_root: Path, names: list[str]) -> dict[str, str]:
    """data_checksums restricted to the given finished steps (no summary needed)."""
    dirs = finished_steps(run_root)
    out = {}
    for name in names:
        d = dirs[name]
        for f in sorted(d.rglob("*")):
            rel = f.relative_to(d)
            if f.is_file() and rel.parts[0] != "_tasks" and f.name != "_SUCCESS.json":
                out[f"{name}/{rel}"] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out
