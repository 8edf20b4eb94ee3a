"""The train-bpe job: inputs -> word counts -> merges -> tokenizer files.

Two entry points share one implementation:
* ``main(argv)``: the standalone ``tokenmill train-bpe`` CLI over JSONL / Parquet / plain
  text (fsspec URLs or globs, .gz/.zst);
* ``train_bpe_step(...)``: the pipeline step over the cleaned Parquet documents.

workers = 0 counts and merges in this process; workers >= 1 counts on Ray (map tasks +
hash-partitioned reducer actors) and merges either in the driver (merge_mode: single) or
on the partitions (merge_mode: sharded). All give the same tokenizer.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from typing import Any, Iterator, Sequence

from stages.bpe import BpeConfig, BpeConfigError, BpeModel, WordTable, train_bpe, train_from_table
from stages.pretokenize import DIGIT_MODES, PRESETS, PreTokSpec

_COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}


# --------------------------------------------------------------------------------------
# Reading sequences
# --------------------------------------------------------------------------------------

def input_format(url: str) -> tuple[str, str | None]:
    """(format, compression) from the name: jsonl, parquet or text; gzip/zstd or None."""
    name = url.lower()
    comp = None
    for suffix, codec in _COMPRESSION.items():
        if name.endswith(suffix):
            comp = codec
            name = name[: -len(suffix)]
            break
    if name.endswith((".parquet", ".pq")):
        return "parquet", comp
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl", comp
    return "text", comp


def iter_sequences(url: str, text_field: str = "text", stride: int = 1, phase: int = 0) -> Iterator[str]:
    """The sequences of one input: a JSONL record's or Parquet row's text field, or one
    line (with its newline) of a plain-text file, as HF's file trainer reads them.
    Records whose field is missing or not a string are skipped. With stride > 1 only
    records i with i % stride == phase are read (a large file split over map tasks)."""
    import fsspec

    if not (stride >= 1 and 0 <= phase < stride):
        raise ValueError(f"bad stride/phase {stride}/{phase}")

    fmt, comp = input_format(url)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with fsspec.open(url, "rb", compression=comp) as f:
            pf = pq.ParquetFile(f)
            if text_field not in pf.schema_arrow.names:
                raise KeyError(f"{url}: no column {text_field!r} (columns: {pf.schema_arrow.names})")
            row = 0
            for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
                for t in batch.column(0).to_pylist():
                    if row % stride == phase and isinstance(t, str):
                        yield t
                    row += 1
        return
    with fsspec.open(url, "rb", compression=comp) as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        if fmt == "text":
            for i, line in enumerate(stream):
                if i % stride == phase:
                    yield line
            return
        loads = json.loads
        for i, line in enumerate(stream):
            if i % stride != phase or not line.strip():
                continue
            try:
                rec = loads(line)
            except ValueError:
                continue
            t = rec.get(text_field) if isinstance(rec, dict) else None
            if isinstance(t, str):
                yield t


def expand(patterns: Sequence[str], text_field: str):
    from pipelines.bpe_ray import Source
    from pipelines.io import expand_inputs

    return [Source(f.url, f.rel, f.size, text_field) for f in expand_inputs(list(patterns))]


def count_local(sources, spec: PreTokSpec, prune_below: int) -> tuple[WordTable, dict[str, Any]]:
    """Count every source in this process (workers = 0)."""
    t0 = time.perf_counter()
    counter = spec.counter()
    per_source = []
    for src in sources:
        s0, b0, t = counter.n_sequences, counter.n_bytes, time.perf_counter()
        for text in iter_sequences(src.url, src.text_field, src.stride, src.phase):
            counter.add(text)
        per_source.append({"source": src.rel, "sequences": counter.n_sequences - s0,
                           "bytes": counter.n_bytes - b0, "seconds": time.perf_counter() - t})
    table = WordTable.from_counter(counter, prune_below)
    stats = {"engine": "local", "workers": 0, "count_seconds": time.perf_counter() - t0,
             "distinct_words": len(table), "word_occurrences": table.total, "sources": per_source}
    return table, stats


def _mixture(sources_stats: list[dict]) -> dict[str, Any]:
    total = sum(s["bytes"] for s in sources_stats) or 1
    return {s["source"]: {"sequences": s["sequences"], "bytes": s["bytes"], "fraction": s["bytes"] / total}
            for s in sources_stats}


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------

def ensure_ray(workers: int) -> float:
    """Start an embedded Ray cluster if none is up; returns the start-up seconds."""
    import ray

    if ray.is_initialized():
        return 0.0
    t0 = time.perf_counter()
    ray.init(num_cpus=max(1, min(workers, os.cpu_count() or 1)), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    return time.perf_counter() - t0


def train(sources, cfg: BpeConfig, workers: int = 0, progress: bool = False) -> BpeModel:
    """Train from sources with the chosen engine; stats say what ran and how long."""
    if workers < 0:
        raise BpeConfigError("workers must be >= 0")
    if cfg.merge_mode == "sharded" and workers < 1:
        raise BpeConfigError("merge_mode 'sharded' needs workers >= 1 (it runs on Ray actors)")
    ray_startup = 0.0
    if workers == 0:
        model = train_bpe(lambda spec, prune: count_local(sources, spec, prune), cfg, progress=progress)
    else:
        import ray

        from pipelines import bpe_ray

        ray_startup = ensure_ray(workers)
        holder: dict[str, Any] = {}

        def count(spec, prune):
            for old in holder.pop("parts", []):
                ray.kill(old)  # a second count (SuperBPE stage 2) replaces the partitions
            parts, stats = bpe_ray.count_with_ray(sources, spec, workers, prune, cfg.max_partition_mb)
            holder["parts"], holder["hist"] = parts, stats.pop("byte_hist")
            if cfg.merge_mode == "single":
                t = time.perf_counter()
                table = bpe_ray.gather_table(parts)
                stats["gather_seconds"] = time.perf_counter() - t
                return table, stats
            return WordTable.empty(), stats

        def merge(table, c, vocab_size):
            if c.merge_mode == "sharded":
                return bpe_ray.sharded_merge(holder["parts"], holder["hist"], c, vocab_size, progress=progress)
            return train_from_table(table, c, progress=progress, vocab_size=vocab_size)

        try:
            if cfg.superbpe and cfg.merge_mode == "sharded":
                raise BpeConfigError("superbpe runs with merge_mode 'single' (stage 2 starts from stage 1's words)")
            model = train_bpe(count, cfg, progress=progress, merge=merge)
        finally:
            for p in holder.get("parts", []):
                ray.kill(p)
        model.stats["ray_startup_seconds"] = ray_startup
    counting = model.stats.get("counting", {})
    if cfg.record_mixture:
        model.stats["mixture"] = _mixture(counting.get("sources", []))
        model.stats["mixture_note"] = ("merge order leaks these proportions (Data Mixture Inference); "
                                       "release the merge-free export if they must stay private")
    else:
        counting.pop("sources", None)
    return model


def write_outputs(model: BpeModel, out_dir: str, export_merge_free: bool) -> list[str]:
    from pipelines.io import atomic_write_bytes, join, makedirs

    makedirs(out_dir)
    written = []
    for name, data in model.artifacts(export_merge_free).items():
        atomic_write_bytes(join(out_dir, name), data)
        written.append(name)
    return written


def train_bpe_step(doc_urls: list[str], text_field: str, bpe_cfg: dict, out_dir: str, workers: int) -> dict:
    """Pipeline step: train on the cleaned documents (Parquet with a text column)."""
    cfg = BpeConfig.from_dict(bpe_cfg)
    from pipelines.bpe_ray import Source
    from pipelines.io import filesystem

    sources = []
    for url in doc_urls:
        fs, path = filesystem(url)
        sources.append(Source(url, os.path.basename(path), int(fs.size(path) or 0), text_field))
    model = train(sources, cfg, workers=workers, progress=False)
    files = write_outputs(model, out_dir, cfg.export_merge_free)
    return {"files": files, "vocab": len(model.vocab), "merges": model.stats.get("merges_total"),
            "words": model.stats.get("counting", {}).get("distinct_words"),
            "seconds": model.stats.get("total_seconds"), "stats": model.stats}


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokenmill train-bpe",
                                description="Train a byte-level BPE tokenizer (HF-identical merges).")
    p.add_argument("--input", action="append", required=True,
                   help="file, directory, glob or fsspec URL (JSONL/Parquet/text, .gz/.zst); repeatable")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--preset", default="gpt2", choices=list(PRESETS))
    p.add_argument("--pattern", default=None, help="custom split regex (overrides --preset)")
    p.add_argument("--digits", default="native", choices=list(DIGIT_MODES))
    p.add_argument("--out", required=True, help="output directory (local path or fsspec URL)")
    p.add_argument("--workers", type=int, default=0, help="0: this process; N: Ray with N workers")
    p.add_argument("--text-field", default="text")
    p.add_argument("--min-frequency", type=int, default=0)
    p.add_argument("--max-token-length", type=int, default=None)
    p.add_argument("--special-token", action="append", default=[], help="repeatable, in id order")
    p.add_argument("--limit-alphabet", type=int, default=None)
    p.add_argument("--initial-alphabet", default="bytelevel",
                   help="'bytelevel' (all 256 bytes), 'seen', or the characters themselves")
    p.add_argument("--prune-below", type=int, default=1, help="drop words seen fewer times after the reduce")
    p.add_argument("--merge-mode", default="single", choices=["single", "sharded"])
    p.add_argument("--superbpe-transition", type=int, default=None)
    p.add_argument("--superbpe-max-words", type=int, default=4)
    p.add_argument("--max-partition-mb", type=int, default=8192)
    p.add_argument("--export-merge-free", action="store_true")
    p.add_argument("--record-mixture", action="store_true")
    p.add_argument("--config", default=None, help="JSON/YAML file of bpe keys (flags given override it)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _cfg_from_args(args: argparse.Namespace) -> BpeConfig:
    raw: dict[str, Any] = {}
    if args.config:
        from pipelines.io import read_bytes

        text = read_bytes(args.config).decode("utf-8")
        if args.config.endswith((".yaml", ".yml")):
            import yaml

            raw = yaml.safe_load(text) or {}
        else:
            raw = json.loads(text)
        raw = dict(raw.get("bpe", raw))
    ia: Any = args.initial_alphabet
    if ia not in ("bytelevel", "seen"):
        ia = list(ia)
    raw.update({
        "vocab_size": args.vocab_size, "preset": args.preset, "digits": args.digits,
        "min_frequency": args.min_frequency, "prune_below": args.prune_below,
        "merge_mode": args.merge_mode, "max_partition_mb": args.max_partition_mb,
        "initial_alphabet": ia, "export_merge_free": args.export_merge_free or raw.get("export_merge_free", False),
        "record_mixture": args.record_mixture or raw.get("record_mixture", False),
    })
    for key, val in (("pattern", args.pattern), ("max_token_length", args.max_token_length),
                     ("limit_alphabet", args.limit_alphabet)):
        if val is not None:
            raw[key] = val
    if args.special_token:
        raw["special_tokens"] = args.special_token
    if args.superbpe_transition is not None:
        raw["superbpe"] = {"transition": args.superbpe_transition, "max_words": args.superbpe_max_words}
    return BpeConfig.from_dict(raw)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = _cfg_from_args(args)
        sources = expand(args.input, args.text_field)
    except (BpeConfigError, FileNotFoundError, ValueError) as e:
        print(f"train-bpe: {e}", file=sys.stderr)
        return 2
    model = train(sources, cfg, workers=args.workers, progress=not args.no_progress)
    files = write_outputs(model, args.out, cfg.export_merge_free)
    s = model.stats
    print(f"train-bpe: {len(model.vocab)} tokens, {s.get('merges_total')} merges, "
          f"{s.get('counting', {}).get('distinct_words')} distinct words, "
          f"{s.get('total_seconds', 0):.1f}s -> {args.out} ({', '.join(files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
