"""`tokenmill inspect PREFIX`: look inside Megatron shards written by tokenmill.

PREFIX is one shard (the path without ``.bin``/``.idx``) or a shard directory holding
``manifest.json`` (then every shard of the manifest is counted and the documents shown come
from the first one). Prints document and token counts, a histogram of document lengths
(power-of-two bins) and decodes a few documents back to text. Decoding needs the tokenizer:
``--tokenizer PATH``, or the manifest beside the shard (its ``tokenizer.path``).
"""
from __future__ import annotations

import argparse
import json
import sys
from itertools import pairwise
from pathlib import PurePosixPath

import numpy as np

from stages import megatron, shards, storage


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenmill inspect",
        description="Counts, length histogram and decoded documents of Megatron shards.",
    )
    parser.add_argument("prefix", help="shard prefix (no extension) or a shard directory")
    parser.add_argument("--tokenizer", help="tokenizer.json used to decode (default: manifest)")
    parser.add_argument("--pattern", help="split pattern, when --tokenizer is a tiktoken ranks file (default: manifest)")
    parser.add_argument("--docs", type=int, default=3, help="documents to decode (default 3)")
    parser.add_argument("--doc", type=int, action="append", default=[],
                        help="decode this document index (repeatable)")
    parser.add_argument("--chars", type=int, default=400,
                        help="characters shown per decoded document (default 400)")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON only")
    return parser


def _parent(prefix: str) -> str:
    stripped = prefix.rstrip("/")
    return stripped.rsplit("/", 1)[0] if "/" in stripped else "."


def _manifest_dir(prefix: str) -> tuple[str, dict | None]:
    """(shard directory, its manifest or None) for a shard prefix or a shard directory."""
    for candidate in (prefix, _parent(prefix)):
        try:
            return candidate, shards.read_manifest(candidate)
        except (OSError, ValueError):  # missing, not a directory, or not JSON
            continue
    return _parent(prefix), None


def _histogram(lengths: np.ndarray, width: int = 40) -> list[str]:
    if lengths.size == 0:
        return ["  (no documents)"]
    edges = 2 ** np.arange(0, int(np.log2(max(int(lengths.max()), 1))) + 2)
    labels = ["0"] + [f"[{a}, {b})" for a, b in pairwise(edges)]
    counts = [int((lengths == 0).sum())] + [
        int(((lengths >= a) & (lengths < b)).sum()) for a, b in pairwise(edges)
    ]
    used = [i for i, c in enumerate(counts) if c]
    labels, counts = labels[used[0] : used[-1] + 1], counts[used[0] : used[-1] + 1]
    top = max(counts)
    pad = max(len(label) for label in labels)
    return [
        f"  {label:>{pad}} {count:>9,} {'#' * max(1, round(width * count / top)) if count else ''}"
        for label, count in zip(labels, counts)
    ]


def _tokenizer_path(args, base: str, manifest: dict | None) -> str | None:
    if args.tokenizer:
        return args.tokenizer
    if manifest and manifest.get("tokenizer", {}).get("path"):
        path = manifest["tokenizer"]["path"]
        if "://" not in path and not path.startswith("/"):
            # relative to the run root, which the manifest names relative to its own folder
            path = storage.join(base, manifest.get("run_root", "."), path)
        return path
    return None


def _doc_ids(base: str, shard_name: str) -> dict[int, str]:
    try:
        index = shards.read_doc_index(base)
    except (FileNotFoundError, OSError):
        return {}
    names = index.column("shard").to_pylist()
    rows = [i for i, n in enumerate(names) if n == shard_name]
    ids = index.column("doc_id").to_pylist()
    pos = index.column("doc_index").to_pylist()
    return {pos[i]: ids[i] for i in rows}


def _expand(prefix: str) -> str:
    """A prefix with a wildcard (as the README's example gives it, quoted or not matched by
    the shell) names the one shard it matches."""
    if not any(c in prefix for c in "*?["):
        return prefix
    fs, path = storage.filesystem(prefix)
    found = sorted(fs.glob(path + ".idx")) or sorted(p.rstrip("/") for p in fs.glob(path) if fs.isdir(p))
    if len(found) != 1:
        return prefix  # none or several: reported below as not found
    return storage.url_of(found[0][:-4] if found[0].endswith(".idx") else found[0], storage.protocol_of(prefix))


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    args.prefix = _expand(args.prefix)
    base, manifest = _manifest_dir(args.prefix)
    fs, path = storage.filesystem(args.prefix)
    if fs.exists(f"{path}.idx"):
        prefixes = [args.prefix]
    elif manifest is not None and base == args.prefix:
        prefixes = [f"{base.rstrip('/')}/{s['name']}" for s in manifest["shards"]]
    else:
        print(f"error: no shard {args.prefix}.idx and no manifest.json there", file=sys.stderr)
        return 2
    wanted = list(args.doc) or list(range(max(args.docs, 0)))
    tok_path = _tokenizer_path(args, base, manifest)
    if wanted and not args.json and tok_path is None:
        print("error: cannot decode without a tokenizer: pass --tokenizer PATH, keep "
              "manifest.json beside the shard, or use --docs 0", file=sys.stderr)
        return 2

    readers = []
    try:
        for prefix in prefixes:
            readers.append(megatron.MegatronReader(prefix))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lengths = np.concatenate([np.asarray(r.lengths, dtype=np.int64) for r in readers])
    summary = {
        "shards": len(readers),
        "dtype": sorted({r.dtype.name for r in readers}),
        "documents": int(lengths.size),
        "tokens": int(lengths.sum()),
        "min_length": int(lengths.min()) if lengths.size else 0,
        "median_length": float(np.median(lengths)) if lengths.size else 0.0,
        "mean_length": float(lengths.mean()) if lengths.size else 0.0,
        "max_length": int(lengths.max()) if lengths.size else 0,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.prefix}: {summary['shards']} shard(s), dtype {', '.join(summary['dtype'])}")
    print(f"documents {summary['documents']:,}  tokens {summary['tokens']:,}  "
          f"length min {summary['min_length']:,} / median {summary['median_length']:,.0f} / "
          f"mean {summary['mean_length']:,.1f} / max {summary['max_length']:,}")
    print("tokens per document:")
    print("\n".join(_histogram(lengths)))
    if not wanted:
        return 0

    from stages.encode import Encoder, is_tiktoken_ranks  # only when decoding: builds a tokenizer

    recorded = (manifest or {}).get("tokenizer", {})
    if is_tiktoken_ranks(tok_path):  # decoding needs only the ranks, but the encoder wants a pattern
        encoder = Encoder.from_file(tok_path, pattern=args.pattern or recorded.get("pattern") or "gpt2",
                                    special_tokens=recorded.get("special_tokens") or None, eod=None)
    else:
        encoder = Encoder.from_file(tok_path, eod=None)
    first = readers[0]
    ids_of = _doc_ids(base, PurePosixPath(prefixes[0]).name)
    for i in wanted:
        if not -len(first) <= i < len(first):
            print(f"error: document {i} out of range (shard has {len(first)})", file=sys.stderr)
            return 2
        ids = first[i]
        text = encoder.decode(ids)
        shown = text if len(text) <= args.chars else text[: args.chars] + " [...]"
        source = f", id {ids_of[i]}" if i in ids_of else ""
        print(f"\n--- document {i} ({ids.size:,} tokens{source}) ---")
        print(shown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
