"""BPE training: tokenizers' BpeTrainer vs tokenmill, side by side, on the same machine.

    python benchmarks/bench_bpe.py [--data DIR] [--vocab-size 32000] [--repeats 3]
                                   [--no-superbpe] [--write-results]

Every measurement runs in a fresh subprocess, so peak memory (ru_maxrss) is its own:
  hf          tokenizers.Tokenizer.train_from_iterator (Split(gpt2 regex) + ByteLevel), reading
              the JSONL.zst files with a plain zstandard + json loop
  hf-mem      the same with the documents loaded into a list first (reading not timed)
  ours-w0     `tokenmill train-bpe` in one process (engine local): its plan reads the files
              into Parquet documents (quarantining bad records), counts words in tasks,
              reduces them in hash-partition tasks, and merges in one task
  ours-w1/w2  the same on an embedded Ray cluster with 1 / 2 workers (the reduce in 2
              partition actors); Ray start-up is timed apart and left out of the time
  sharded-w2  as ours-w2 but merging on the 2 partition actors (per-merge overhead)
All runs must produce HF's merges exactly. Medians over the repeats are reported; the
machine is shared, so ratios matter more than absolute times.

The SuperBPE part trains BPE and SuperBPE (transition at 3/4 of the vocabulary) on 90% of
the documents and reports tokens per byte on the held-out 10%.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SECTION = "## BPE training (issue 3)"
GPT2 = "gpt2"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _files(data: str) -> list[str]:
    files = sorted(str(p) for p in Path(data).glob("*.jsonl.zst"))
    if not files:
        raise SystemExit(f"no *.jsonl.zst under {data}")
    return files


# ---- one measurement (runs in its own process) ----------------------------------------

def read_texts(path: str):
    """The documents of one JSONL.zst file (HF's input: a plain reading loop)."""
    import io

    import zstandard

    with open(path, "rb") as fh:
        for line in io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8"):
            if line.strip():
                yield json.loads(line)["text"]


def run_one(kind: str, data: str, vocab_size: int, out: str) -> dict:
    from stages.bpe import BpeConfig

    files = _files(data)
    cfg = BpeConfig.from_dict({"vocab_size": vocab_size, "preset": GPT2, "initial_alphabet": "seen",
                               "merge_mode": "sharded" if kind.startswith("sharded") else "single"})
    res: dict = {"kind": kind}
    if kind in ("hf", "hf-mem"):
        from tokenizers import Tokenizer, models, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = cfg.pretok().hf_pre_tokenizer()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, initial_alphabet=[])
        texts = (t for f in files for t in read_texts(f))
        if kind == "hf-mem":  # documents already in memory: HF's time without reading
            texts = list(texts)
        t0 = time.perf_counter()
        tok.train_from_iterator(texts, trainer)
        res["seconds"] = time.perf_counter() - t0
        model = json.loads(tok.to_str())["model"]
        merges = [" ".join(m) for m in model["merges"]]
    else:
        from pipelines.bpe_cli import build_parser, run_config
        from pipelines.config import parse_config
        from pipelines.engines import make_engine
        from pipelines.plan import make_plan
        from pipelines.runner import run_plan

        workers = int(kind.rsplit("w", 1)[1])
        flags = ["--input", *files, "--out", out, "--vocab-size", str(vocab_size), "--preset", GPT2,
                 "--initial-alphabet", "seen", "--workers", str(workers), "--no-progress"]
        if workers:  # as many word partitions (reduce actors, merge shards) as workers
            flags += ["--partitions", str(workers), "--merge-mode", "sharded" if kind.startswith("sharded") else "single"]
        plan = make_plan(parse_config(run_config(build_parser().parse_args(flags))))
        t0 = time.perf_counter()
        engine = make_engine(plan.cfg, progress=False).started()
        res["ray_startup"] = time.perf_counter() - t0 if workers else 0.0
        t0 = time.perf_counter()
        finished = {f.name: f for f in run_plan(plan, engine=engine)}
        res["seconds"] = time.perf_counter() - t0
        engine.close()
        step = Path(finished["train_bpe"].url)
        s = json.loads((step / "training_stats.json").read_text())
        res["read_seconds"] = finished["read"].record["seconds"]
        res["merge_seconds"] = s["merge_seconds"]
        res["count_seconds"] = finished["train_bpe"].record["seconds"] - s["train_seconds"]
        res["merges"] = s["merges_total"]
        res["rounds"] = s.get("rounds")
        res["words"] = s["counting"]["distinct_words"]
        res["worker_peak_mb"] = max(s["counting"].get("peak_rss_mb_count_tasks", 0.0),
                                    s["counting"].get("peak_rss_mb_partitions", 0.0),
                                    max(s.get("peak_rss_mb_shards", [0.0])))
        merges = (step / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    res["peak_mb"] = _peak_mb()
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "merges.list").write_text("\n".join(merges))
    return res


def run_superbpe(data: str, vocab_size: int) -> dict:
    from stages.bpe import BpeConfig, WordTable, superword_violations, train_bpe

    docs = [t for f in _files(data) for t in read_texts(f)]
    train_docs = [d for i, d in enumerate(docs) if i % 10]
    held = [d for i, d in enumerate(docs) if i % 10 == 0]

    def count(spec, prune):
        c = spec.counter()
        c.add_many(train_docs)
        return WordTable.from_counter(c, prune), {}

    transition = vocab_size * 3 // 4
    t0 = time.perf_counter()
    bpe = train_bpe(count, BpeConfig.from_dict({"vocab_size": vocab_size}))
    t1 = time.perf_counter()
    sup = train_bpe(count, BpeConfig.from_dict({"vocab_size": vocab_size, "superbpe": {"transition": transition}}))
    t2 = time.perf_counter()
    nbytes = sum(len(d.encode()) for d in held)
    n_bpe = sum(len(e.ids) for e in bpe.hf_tokenizer().encode_batch(held))
    n_sup = sum(len(e.ids) for e in sup.hf_tokenizer().encode_batch(held))
    return {"vocab": vocab_size, "transition": transition, "held_docs": len(held), "held_bytes": nbytes,
            "bpe_tpb": n_bpe / nbytes, "superbpe_tpb": n_sup / nbytes, "reduction": 1 - n_sup / n_bpe,
            "bpe_seconds": t1 - t0, "superbpe_seconds": t2 - t1,
            "violations": len(superword_violations(sup, transition, 4)),
            "examples": [t for t in sup.vocab[transition:transition + 12]]}


# ---- driver ----------------------------------------------------------------------------

def _sub(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _write_results(text: str) -> None:
    from results_md import write_section  # benchmarks/ is on sys.path when run as a script

    write_section(SECTION, text.split("\n", 1)[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "corpus-en"))
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kinds", default="hf,hf-mem,ours-w0,ours-w1,ours-w2,sharded-w2")
    ap.add_argument("--no-superbpe", action="store_true")
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--superbpe-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.run_one:
        print(json.dumps(run_one(a.run_one, a.data, a.vocab_size, a.out)))
        return 0
    if a.superbpe_only:
        print(json.dumps(run_superbpe(a.data, a.vocab_size)))
        return 0

    files = _files(a.data)
    mb = sum(os.path.getsize(f) for f in files) / 1e6
    kinds = a.kinds.split(",")
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    merges: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for k in kinds:  # interleaved, so load changes hit every kind alike
                out = os.path.join(tmp, f"{k}-{r}")
                res = _sub(["--run-one", k, "--data", a.data, "--vocab-size", str(a.vocab_size), "--out", out])
                runs[k].append(res)
                merges[k] = (Path(out) / "merges.list").read_text()
                print(f"  run {r + 1}/{a.repeats} {k}: {res['seconds']:.2f}s peak {res['peak_mb']:.0f} MB", file=sys.stderr)
    med = {k: {f: statistics.median(x[f] for x in v) for f in v[0] if isinstance(v[0][f], (int, float))}
           for k, v in runs.items()}
    ref = "hf" if "hf" in merges else ("hf-mem" if "hf-mem" in merges else None)
    same = {k: merges[k] == merges[ref] for k in kinds} if ref else {}
    n_merges = len(merges[kinds[0]].splitlines())

    lines = [SECTION, "",
             f"Command: `python benchmarks/bench_bpe.py --repeats {a.repeats}` (corpus-en, {len(files)} files, "
             f"{mb:.1f} MB compressed; vocab {a.vocab_size}, preset gpt2, initial alphabet = bytes seen, as HF's default). "
             f"Shared 2-core machine: medians of {a.repeats} interleaved runs, each in a fresh process "
             f"(peak memory = that process's ru_maxrss; Ray workers listed apart).", "",
             "| run | wall s (median) | reading s | counting s | merging s | peak MB (driver) | peak MB (Ray worker) | merges identical to HF |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"hf": "HF tokenizers BpeTrainer, reading the files", "hf-mem": "HF tokenizers BpeTrainer, documents preloaded (reading not timed)", "ours-w0": "tokenmill, in-process", "ours-w1": "tokenmill, Ray 1 worker",
             "ours-w2": "tokenmill, Ray 2 workers", "sharded-w2": "tokenmill, Ray 2 workers, sharded merge"}
    for k in kinds:
        m = med[k]
        cnt = f"{m['count_seconds']:.2f}" if "count_seconds" in m else "-"
        mrg = f"{m['merge_seconds']:.2f}" if "merge_seconds" in m else "-"
        rd = f"{m['read_seconds']:.2f}" if "read_seconds" in m else "-"
        lines.append(f"| {names.get(k, k)} | {m['seconds']:.2f} | {rd} | {cnt} | {mrg} | {m['peak_mb']:.0f} | "
                     f"{m.get('worker_peak_mb', 0):.0f} | {'yes' if same.get(k) else 'NO'} |")
    lines.append("")
    for ref in ("hf", "hf-mem"):
        if ref in med:
            for k in kinds:
                if not k.startswith("hf"):
                    lines.append(f"- {names.get(k, k)} / {names[ref]}: **{med[k]['seconds'] / med[ref]['seconds']:.2f}** "
                                 f"(target <= 0.5)")
    for k in kinds:
        if med[k].get("ray_startup"):
            lines.append(f"- Ray start-up ({k}, not in the times above): {med[k]['ray_startup']:.2f} s")
    if "ours-w0" in med:
        lines.append(f"- merge loop alone (single-node kernel, {n_merges} merges): "
                     f"{n_merges / med['ours-w0']['merge_seconds']:,.0f} merges/s")
    if "sharded-w2" in med and "ours-w2" in med:
        sh, single = med["sharded-w2"], med["ours-w2"]
        over = (sh["merge_seconds"] - single["merge_seconds"]) / max(1, n_merges)
        lines.append(f"- sharded merge over 2 actors: {sh['merge_seconds']:.2f} s for {n_merges} merges in "
                     f"{sh['rounds']:.0f} round trips ({n_merges / sh['rounds']:.1f} merges per round by guessing ahead); "
                     f"overhead vs single-node {1000 * over:.3f} ms per merge, "
                     f"{1000 * sh['merge_seconds'] / sh['rounds']:.2f} ms per round trip")
    if "ours-w1" in med and "ours-w2" in med:
        lines.append(f"- counting, Ray 1 vs 2 workers: {med['ours-w1']['count_seconds']:.2f} s vs "
                     f"{med['ours-w2']['count_seconds']:.2f} s")
    if not a.no_superbpe:
        sb = _sub(["--superbpe-only", "--data", a.data, "--vocab-size", str(a.vocab_size)])
        lines += ["", f"SuperBPE (vocab {sb['vocab']}, transition {sb['transition']}, max 4 words; trained on 90% of "
                  f"the documents, measured on the held-out {sb['held_docs']} documents, {sb['held_bytes'] / 1e6:.1f} MB):", "",
                  "| tokenizer | tokens per byte |", "|---|---|",
                  f"| BPE | {sb['bpe_tpb']:.4f} |", f"| SuperBPE | {sb['superbpe_tpb']:.4f} |", "",
                  f"- reduction in tokens: **{sb['reduction']:.1%}**; superword tokens breaking a ban: {sb['violations']}",
                  f"- training time BPE {sb['bpe_seconds']:.1f} s, SuperBPE {sb['superbpe_seconds']:.1f} s (one process)",
                  "- first superwords: " + ", ".join(f"`{t}`" for t in sb["examples"])]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write_results:
        _write_results(text)
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
