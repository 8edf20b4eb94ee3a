"""One plan on three engines: the whole laptop plan over a corpus with the local engine
(1 worker), Ray (2 workers) and Beam's in-process portable runner (2 worker processes),
wall time per step side by side, outputs checked byte-identical.

    python benchmarks/bench_engines.py [--data DIR] [--repeats 3] [--write-results]

Each run is `tokenmill run` in a fresh process (its wall time includes the engine's
start-up, which is also reported apart); runs are interleaved over the repeats so load on
the shared machine hits every engine alike; medians are reported. The target: Beam's
whole-plan wall time at most 1.5x Ray's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Engines: one plan on local, Ray and Beam (issue 8)"
ENGINES = {"local": {"kind": "local", "workers": 1}, "ray": {"kind": "ray", "workers": 2},
           "beam": {"kind": "beam", "workers": 2}}
TARGET = 1.5


def config(data: Path, run_root: Path, engine: dict) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "laptop.yaml").read_text())
    raw.update(run_root=str(run_root), progress=False)
    raw["input"].update(paths=[str(data / "*.jsonl.zst")], keep_fields=[], id_field="id", max_doc_bytes=50_000_000)
    raw["engine"] = {**raw["engine"], **engine}
    raw["shards"]["target"] = 10_000_000
    path = run_root.parent / f"{run_root.name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def outputs(run_root: Path) -> dict[str, str]:
    """sha256 of every output file (timings and engine records left out)."""
    out = {}
    for success in sorted(run_root.glob("*/*/_SUCCESS.json")):
        step = success.parent
        for f in sorted(step.rglob("*")):
            rel = f.relative_to(run_root)
            if not f.is_file() or f.name in ("_SUCCESS.json", "training_stats.json"):
                continue
            body = f.read_bytes()
            if f.name == "summary.json":
                s = json.loads(body)
                s.pop("execution")
                body = json.dumps(s, sort_keys=True).encode()
            out[str(rel)] = hashlib.sha256(body).hexdigest()
    return out


def one_run(name: str, data: Path, tmp: Path, rep: int) -> dict:
    root = tmp / f"{name}-{rep}"
    cfg = config(data, root, ENGINES[name])
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", str(cfg)], cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((root / "summary.json").read_text())
    steps = {n: e["seconds"] for n, e in summary["execution"].items()}
    pipelines = {n: e.get("beam_pipelines", 0) for n, e in summary["execution"].items()}
    return {"wall": wall, "steps": steps, "pipelines": pipelines, "sums": outputs(root), "summary": summary}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "corpus-en")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write-results", action="store_true")
    a = ap.parse_args(argv)
    if not list(a.data.glob("*.jsonl.zst")):
        raise SystemExit(f"no *.jsonl.zst under {a.data}; pass --data DIR")
    runs: dict[str, list[dict]] = {k: [] for k in ENGINES}
    with tempfile.TemporaryDirectory(prefix="tokenmill-engines-") as tmp:
        for rep in range(a.repeats):
            for name in ENGINES:
                r = one_run(name, a.data, Path(tmp), rep)
                runs[name].append(r)
                print(f"  run {rep + 1}/{a.repeats} {name}: {r['wall']:.1f} s", file=sys.stderr, flush=True)
    ref = runs["local"][0]["sums"]
    identical = {k: all(r["sums"] == ref for r in v) for k, v in runs.items()}
    s = runs["local"][0]["summary"]
    med = {k: statistics.median(r["wall"] for r in v) for k, v in runs.items()}
    order = ["read", "normalize", "langid", "dedup_exact", "dedup_near", "write", "train_bpe", "encode", "write_shards"]
    step_names = sorted(runs["local"][0]["steps"], key=lambda n: order.index(n) if n in order else len(order))
    step_med = {k: {n: statistics.median(r["steps"][n] for r in v) for n in step_names} for k, v in runs.items()}
    beam_pipes = runs["beam"][0]["pipelines"]
    lines = [
        f"Command: `python benchmarks/bench_engines.py --repeats {a.repeats}` (data: `{a.data.name}`, "
        f"{s['records_read']:,} documents, {s['bytes_read'] / 1e6:.1f} MB read; configs/laptop.yaml with "
        f"shards.target 10M tokens). Each run is `tokenmill run` in a fresh process on this shared 2-core machine; "
        f"medians of {a.repeats} interleaved repeats.", "",
        "| step | local, 1 worker (s) | Ray, 2 workers (s) | Beam, 2 processes (s) | Beam pipelines | Beam / Ray |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n in step_names:
        lines.append(f"| {n} | {step_med['local'][n]:.2f} | {step_med['ray'][n]:.2f} | {step_med['beam'][n]:.2f} | "
                     f"{beam_pipes.get(n, 0)} | {step_med['beam'][n] / max(step_med['ray'][n], 1e-9):.2f} |")
    steps_total = {k: sum(v.values()) for k, v in step_med.items()}
    lines.append(f"| sum of steps | {steps_total['local']:.2f} | {steps_total['ray']:.2f} | {steps_total['beam']:.2f} | "
                 f"{sum(beam_pipes.values())} | {steps_total['beam'] / steps_total['ray']:.2f} |")
    lines.append(f"| **whole `tokenmill run` (wall, with start-up)** | {med['local']:.2f} | {med['ray']:.2f} | "
                 f"{med['beam']:.2f} | | **{med['beam'] / med['ray']:.2f}** |")
    lines += ["",
              f"- Outputs byte-identical to the local run (every file of every step, summary without timings): "
              + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in identical.items()),
              f"- Beam / Ray, whole plan: **{med['beam'] / med['ray']:.2f}** (target <= {TARGET}); "
              f"Beam ran {sum(beam_pipes.values())} pipelines (one per submission: phases whose tasks are known together share one).",
              f"- Ray's share not in its steps (start-up of the embedded cluster, planning): "
              f"{med['ray'] - steps_total['ray']:.1f} s; Beam's: {med['beam'] - steps_total['beam']:.1f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write_results:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from results_md import write_section

        write_section(SECTION, text)
    return 0 if all(identical.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
