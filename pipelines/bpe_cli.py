"""`tokenmill train-bpe`: train a BPE tokenizer on files, as a plan of its own.

The plan is the pipeline's: its read step (the same reader, which quarantines bad records
with their reason instead of skipping them), the train_bpe step (the same trainer) and
the accounting check, with every cleaning step off. It runs under `--run-root` (default
`<out>/_run`), so a rerun with the same settings reuses what is done; the tokenizer files
are then copied to `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipelines.config import ConfigError, parse_config
from stages import storage
from stages.bpe import BpeConfig, BpeConfigError
from stages.pretokenize import DIGIT_MODES, PRESETS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokenmill train-bpe",
                                description="Train a byte-level BPE tokenizer (HF-identical merges).")
    p.add_argument("--input", action="append", required=True,
                   help="file, directory, glob or fsspec URL (JSONL/Parquet/text, .gz/.zst); repeatable")
    p.add_argument("--format", default="auto", choices=["auto", "jsonl", "parquet", "text"],
                   help="auto: Parquet by .parquet/.pq, text by .txt, else JSONL; text: every line is a sequence")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--preset", default="gpt2", choices=list(PRESETS))
    p.add_argument("--pattern", default=None, help="custom split regex (overrides --preset)")
    p.add_argument("--digits", default="native", choices=list(DIGIT_MODES))
    p.add_argument("--out", required=True, help="output directory (local path or fsspec URL)")
    p.add_argument("--run-root", default=None, help="where the run's steps write (default <out>/_run)")
    p.add_argument("--workers", type=int, default=0, help="0: this process (engine local); N: N parallel tasks")
    p.add_argument("--engine", default=None, choices=["local", "ray", "beam"],
                   help="default: local with --workers 0, else ray")
    p.add_argument("--text-field", default="text")
    p.add_argument("--max-doc-bytes", type=int, default=1_000_000, help="longer records are quarantined as too_long")
    p.add_argument("--min-frequency", type=int, default=0)
    p.add_argument("--max-token-length", type=int, default=None)
    p.add_argument("--special-token", action="append", default=[], help="repeatable, in id order")
    p.add_argument("--limit-alphabet", type=int, default=None)
    p.add_argument("--initial-alphabet", default="bytelevel",
                   help="'bytelevel' (all 256 bytes), 'seen', or the characters themselves")
    p.add_argument("--prune-below", type=int, default=1, help="drop words seen fewer times after the reduce")
    p.add_argument("--merge-mode", default="single", choices=["single", "sharded"])
    p.add_argument("--partitions", type=int, default=None, help="hash partitions of the word table (default: from the data)")
    p.add_argument("--superbpe-transition", type=int, default=None)
    p.add_argument("--superbpe-max-words", type=int, default=4)
    p.add_argument("--max-partition-mb", type=int, default=8192)
    p.add_argument("--export-merge-free", action="store_true")
    p.add_argument("--record-mixture", action="store_true")
    p.add_argument("--config", default=None, help="JSON/YAML file of bpe keys (flags given override it)")
    p.add_argument("--no-progress", action="store_true")
    return p


def bpe_settings(args: argparse.Namespace) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if args.config:
        text = storage.read_bytes(args.config).decode("utf-8")
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
                     ("limit_alphabet", args.limit_alphabet), ("partitions", args.partitions)):
        if val is not None:
            raw[key] = val
    if args.special_token:
        raw["special_tokens"] = args.special_token
    if args.superbpe_transition is not None:
        raw["superbpe"] = {"transition": args.superbpe_transition, "max_words": args.superbpe_max_words}
    return BpeConfig.from_dict(raw).to_dict()


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline config of this command: read -> train_bpe -> accounting."""
    engine = args.engine or ("local" if args.workers == 0 else "ray")
    return {
        "run_root": args.run_root or storage.join(args.out, "_run"),
        "input": {"paths": list(args.input), "format": args.format, "text_field": args.text_field,
                  "max_doc_bytes": args.max_doc_bytes},
        "engine": {"kind": engine, "workers": max(1, args.workers)},
        "normalize": {"enabled": False}, "langid": {"enabled": False},
        "dedup_exact": {"enabled": False}, "dedup_near": {"enabled": False},
        "tokenizer": {"enabled": True, "train": bpe_settings(args)},
        "encode": {"enabled": False},
        "output": {"documents": False},
        "progress": not args.no_progress,
    }


def main(argv: list[str]) -> int:
    from pipelines.plan import make_plan, write_plan
    from pipelines.runner import log, run_plan
    from pipelines.steps.accounting import AccountingError

    args = build_parser().parse_args(argv)
    try:
        plan = make_plan(parse_config(run_config(args)))
    except (BpeConfigError, ConfigError, ValueError) as e:
        print(f"train-bpe: {e}", file=sys.stderr)
        return 2
    log(f"plan {write_plan(plan)}")
    try:
        finished = {f.name: f for f in run_plan(plan)}
    except ConfigError as e:
        print(f"train-bpe: {e}", file=sys.stderr)
        return 2
    except AccountingError as e:
        print(f"train-bpe: {e}", file=sys.stderr)
        return 3
    trained = finished["train_bpe"]
    storage.makedirs(args.out)
    for name in trained.record["files"]:
        storage.atomic_write_bytes(storage.join(args.out, name), storage.read_bytes(storage.join(trained.url, name)))
    read = finished["read"].record["counters"]
    quarantined = {k.split(":", 1)[1]: v for k, v in read.items() if k.startswith("quarantined:")}
    r = trained.record
    print(f"train-bpe: {r['vocab']} tokens, {r['merges']} merges, {r['counters']['words']} distinct words, "
          f"{read.get('documents', 0):,} sequences -> {args.out} ({', '.join(r['files'])})")
    if quarantined:
        print(f"train-bpe: quarantined {sum(quarantined.values()):,} records "
              f"({', '.join(f'{k} {v:,}' for k, v in sorted(quarantined.items()))}); see "
              f"{storage.join(finished['read'].url, 'quarantine')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
