"""Cleaning-run throughput: docs/s and MB/s per core for each step and the whole run.

    python benchmarks/bench_clean.py [--data DIR] [--workers 2] [--repeats 3] [--write-results]

Runs `tokenmill run` (read -> normalize -> langid -> dedup_exact -> dedup_near -> write)
on every *.jsonl.zst file of DIR (default: ../shared/data/corpus-en beside the repo, about
110 MB of text), in a fresh run root each time, on an embedded Ray cluster. Ray start-up
is measured and reported on its own line, not in the run's time (on a cluster Ray is
already up). Reports medians over the repeats; the target of issue 2 is the whole run at
>= 1 MB/s per core, and the ratio measured/target is printed beside each figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.config import parse_config  # noqa: E402
from pipelines.engines import Engine, make_engine  # noqa: E402
from pipelines.runner import run  # noqa: E402

TARGET_MB_S_PER_CORE = 1.0
SECTION = "## Cleaning run (issue 2)"


def config(data: Path, workers: int, run_root: str):
    """configs/laptop.yaml on the corpus: the cleaning steps only (read -> write)."""
    import yaml

    raw = yaml.safe_load((REPO / "configs" / "laptop.yaml").read_text())
    raw.update(run_root=run_root, progress=False)
    raw["input"].update(paths=[str(data / "*.jsonl.zst")], keep_fields=[], id_field="id", max_doc_bytes=50_000_000)
    raw["engine"].update(workers=workers)
    raw["tokenizer"]["enabled"] = raw["encode"]["enabled"] = False
    return parse_config(raw)


def one_run(data: Path, workers: int, engine: Engine) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(data, workers, str(Path(tmp) / "run"))
        t0 = time.monotonic()
        summary = run(cfg, engine=engine)
        wall = time.monotonic() - t0
    return {"wall": wall, "summary": summary}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "corpus-en")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write-results", action="store_true", help=f"replace the '{SECTION}' section of benchmarks/RESULTS.md")
    args = ap.parse_args()
    if not list(args.data.glob("*.jsonl.zst")):
        print(f"no *.jsonl.zst under {args.data}; pass --data DIR", file=sys.stderr)
        return 2

    t0 = time.monotonic()
    engine = make_engine(config(args.data, args.workers, "unused"), progress=False).started()
    ray_start = time.monotonic() - t0
    runs = [one_run(args.data, args.workers, engine) for _ in range(args.repeats)]
    engine.close()

    s = runs[0]["summary"]
    mb_in = s["bytes_read"] / 1e6
    docs_in = s["records_read"]
    cores = args.workers
    lines = [
        f"corpus: {args.data.name}, {docs_in:,} docs, {mb_in:,.1f} MB read; kept {s['kept']:,} docs, "
        f"dropped {s['dropped']}; {cores} workers (cores); {args.repeats} runs, medians",
        f"Ray start-up (not in the figures below): {ray_start:.1f} s",
        "",
        "| step | seconds | docs/s | MB/s | MB/s per core | ratio to 1 MB/s/core |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in [n for n in s["steps"] if n != "accounting"]:
        secs = statistics.median(r["summary"]["execution"][name]["seconds"] for r in runs)
        # Each step's input size: documents and bytes that reached it (read: everything).
        rows_in = s["steps"][name]["counters"].get("rows_in", docs_in)
        mbps = mb_in / secs
        lines.append(f"| {name} | {secs:.2f} | {rows_in / secs:,.0f} | {mbps:.2f} | {mbps / cores:.2f} | {mbps / cores / TARGET_MB_S_PER_CORE:.2f}x |")
    wall = statistics.median(r["wall"] for r in runs)
    whole = mb_in / wall
    lines.append(f"| **whole run (read -> write)** | {wall:.2f} | {docs_in / wall:,.0f} | {whole:.2f} | {whole / cores:.2f} | "
                 f"{whole / cores / TARGET_MB_S_PER_CORE:.2f}x |")
    lines.append("")
    lines.append("MB/s of every step are over the run's input bytes, so the rows compare directly.")
    report = "\n".join(lines)
    print(report)
    if args.write_results:
        from results_md import write_section

        cmd = f"python benchmarks/bench_clean.py --workers {args.workers} --repeats {args.repeats} --write-results"
        write_section(SECTION, f"Command: `{cmd}` (default data: `../shared/data/corpus-en`).\n\n{report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
