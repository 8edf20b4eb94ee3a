"""Encode + shard throughput: HF `tokenizers` encode_batch alone vs tokenmill's path.

    python benchmarks/bench_encode.py [--data DIR] [--repeats 3] [--vocab 32000] [--write-results]

Reads every ``*.jsonl.zst`` of --data (default: corpus-en in the shared folder beside the
repository), trains a byte-level BPE with Hugging Face on a slice of it (GPT-2 regex, the
vocabulary size given), then times, interleaved, `--repeats` times:

  hf             Tokenizer.encode_batch(texts) on the whole corpus (ids only, nothing written)
  pipeline       what `tokenmill run` does: the `encode` and `write_shards` steps, run by the
                 runner on an embedded Ray cluster of --workers CPUs (started once, not
                 timed), from the documents the `write` step stored (cleaning steps off; read
                 and write run once beforehand, not timed): Parquet in, Megatron shards,
                 seeded global shuffle, documents.parquet and manifest.json out. Timed as the
                 sum of the two steps' seconds. StochasTok off, then mode `expand` (the
                 paper's default: the expanded stream replaces the plain one) at p = 0.1, and
                 mode `both` for information.
  library        the same text -> shards through the stages API in one process:
                 Encoder.submit in 8 MB batches (the next batch encodes in the background),
                 EOD framing, InOrderShardWriter, documents.parquet, manifest.json; StochasTok
                 off and p = 0.1

Reports medians, throughput in MB of UTF-8 text per second and the ratio to HF; the
StochasTok cost as the median of per-repeat paired ratios next to the ratio of medians.
Checks that the ids in the pipeline's shards equal HF `encode` (+ EOD) for every document,
found through documents.parquet. Text loading and tokenizer training are not timed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zstandard

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stages import megatron, shards
from stages.encode import Encoder
from stages.stochastok import SplitTable, document_keys, expand_flat

SECTION = "## Encode and shards (issue 4)"
BATCH_BYTES = 8 << 20  # text per encode batch, like one partition of the encode step
SHARD_TOKENS = 8 << 20  # about 16 MB .bin per uint16 shard


def load(data: Path) -> tuple[list[str], list[str]]:
    texts, ids = [], []
    for path in sorted(data.glob("*.jsonl.zst")):
        with open(path, "rb") as handle:
            raw = zstandard.ZstdDecompressor().stream_reader(handle).read()
        for n, line in enumerate(raw.splitlines()):
            record = json.loads(line)
            texts.append(record["text"])
            ids.append(str(record.get("id", f"{path.name}:{n}")))
    return texts, ids


def train(texts: list[str], vocab: int, path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.save(str(path))


def batches(texts: list[str]):
    start, size = 0, 0
    for i, text in enumerate(texts):
        size += len(text)
        if size >= BATCH_BYTES:
            yield start, i + 1
            start, size = i + 1, 0
    if start < len(texts):
        yield start, len(texts)


def library_path(tok_path: Path, texts, ids, out_dir: Path, p: float | None):
    """Text -> shards + manifest through the stages API; returns [(plain ids, lengths)] per
    batch for the parity check, and the encoder's backend."""
    enc = Encoder.from_tokenizer_json(str(tok_path))
    table = SplitTable.build(enc.token_bytes) if p else None
    writer = shards.InOrderShardWriter(
        str(out_dir), megatron.dtype_for_vocab(enc.vocab_size), SHARD_TOKENS,
        vocab_size=enc.vocab_size)
    plain = []
    todo = list(batches(texts))
    pending = enc.submit(texts[todo[0][0] : todo[0][1]], frame=False)
    for n, (a, b) in enumerate(todo):
        # the next batch encodes in the background while this one is expanded and written
        tokens, lengths = pending.result()
        if n + 1 < len(todo):
            pending = enc.submit(texts[todo[n + 1][0] : todo[n + 1][1]], frame=False)
        plain.append((tokens, lengths))
        attempts = expanded = None
        if table is not None:
            ex = expand_flat(tokens, lengths, document_keys(1, ids[a:b]), table, p)
            tokens, lengths, attempts, expanded = ex.tokens, ex.lengths, ex.attempts, ex.expanded
        tokens, lengths = enc.frame(tokens, lengths)
        writer.add(tokens, lengths, ids[a:b], stochastok_attempts=attempts,
                   stochastok_expanded=expanded)
    records = writer.close()
    shards.write_doc_index(str(out_dir), writer.shard_docs)
    shards.write_manifest(str(out_dir), shards.build_manifest(
        records, tokenizer=shards.tokenizer_info(str(tok_path), vocab_size=enc.vocab_size),
        config_hash="bench"))
    enc.close()
    return plain, enc.backend


def pipeline_config(tok_path: Path, data: Path, run_root: Path, workers: int, mode: str):
    """configs/laptop.yaml on the corpus, cleaning off, the given tokenizer and StochasTok mode."""
    import yaml

    from pipelines.config import parse_config

    raw = yaml.safe_load((REPO / "configs" / "laptop.yaml").read_text())
    raw.update(run_root=str(run_root), progress=False)
    raw["input"].update(paths=[str(data / "*.jsonl.zst")], keep_fields=[], id_field="id",
                        max_doc_bytes=50_000_000)
    for step in ("normalize", "langid", "dedup_exact", "dedup_near"):
        raw[step]["enabled"] = False
    raw["engine"].update(kind="ray", workers=workers)
    raw["tokenizer"]["path"] = str(tok_path)
    raw["encode"]["stochastok"].update(mode=mode, p=0.1)
    raw["shards"].update(target=SHARD_TOKENS, unit="tokens")
    return parse_config(raw)


def pipeline_path(cfg, engine) -> tuple[float, Path]:
    """Run encode + write_shards afresh (read and write are done already); returns their
    seconds and the write_shards output folder."""
    from pipelines.runner import run

    for step in ("encode", "write_shards"):
        shutil.rmtree(Path(cfg.run_root) / step, ignore_errors=True)
    summary = run(cfg, engine=engine)
    if summary["quarantined"]:
        raise SystemExit(f"benchmark input had quarantined records: {summary['quarantined']}")
    out = next((Path(cfg.run_root) / "write_shards").iterdir())
    secs = summary["execution"]
    return secs["encode"]["seconds"] + secs["write_shards"]["seconds"], out


def pipeline_parity(out: Path, ids: list[str], hf_ids: list[np.ndarray], eod: int) -> int:
    """Documents whose ids in the shards equal HF encode + EOD (found via documents.parquet)."""
    index = shards.read_doc_index(str(out))
    want = dict(zip(ids, hf_ids))
    same = 0
    readers: dict[str, megatron.MegatronReader] = {}
    for name, pos, doc_id in zip(index.column("shard").to_pylist(), index.column("doc_index").to_pylist(),
                                 index.column("doc_id").to_pylist()):
        reader = readers.get(name) or readers.setdefault(name, megatron.MegatronReader(str(out / name)))
        got = np.asarray(reader[pos], dtype=np.int64)
        same += got.size and got[-1] == eod and np.array_equal(got[:-1], want[doc_id])
    for reader in readers.values():
        reader.close()
    return int(same)


def expansion_backends(batches, ids: list[str], table: SplitTable, repeats: int) -> dict:
    """ns per token of expand_flat at p = 0.1 with each backend, over the corpus in its
    8 MB batches (medians), after checking that both give the same ids."""
    keyed, start = [], 0
    for tokens, lengths in batches:
        keyed.append((tokens, lengths, document_keys(1, ids[start : start + lengths.size])))
        start += lengths.size
    n_tokens = sum(t.size for t, _, _ in keyed)
    out: dict = {"tokens": n_tokens}
    for backend in ("native", "numpy"):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            got = [expand_flat(t, ln, k, table, 0.1, backend=backend).tokens for t, ln, k in keyed]
            times.append(time.perf_counter() - t0)
        out[backend] = 1e9 * statistics.median(times) / n_tokens
        out[f"ids_{backend}"] = got
    if not all(np.array_equal(a, b) for a, b in zip(out.pop("ids_native"), out.pop("ids_numpy"))):
        raise SystemExit("the native and numpy StochasTok backends disagree")
    return out


def paired(a: list[float], b: list[float]) -> float:
    """Median over repeats of a / b - 1 (each pair ran back to back)."""
    return statistics.median(x / y - 1 for x, y in zip(a, b))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared/data/corpus-en")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="Ray workers of the pipeline path")
    parser.add_argument("--write-results", action="store_true",
                        help=f"replace the section '{SECTION}' of benchmarks/RESULTS.md")
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--train-every", type=int, default=8,
                        help="train the tokenizer on every n-th document (default 8)")
    args = parser.parse_args(argv)

    from pipelines.engines import make_engine
    from pipelines.runner import run
    from tokenizers import Tokenizer

    texts, ids = load(args.data)
    if len(set(ids)) != len(ids):
        raise SystemExit("the benchmark needs unique document ids")
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    work = Path(tempfile.mkdtemp(prefix="tokenmill-bench-"))
    engine = None
    try:
        tok_path = work / "tokenizer.json"
        t0 = time.perf_counter()
        train(texts[:: args.train_every], args.vocab, tok_path)
        print(f"corpus: {args.data.name}, {len(texts):,} documents, {mb:.1f} MB of UTF-8 text")
        print(f"tokenizer: byte-level BPE, GPT-2 regex, vocab {args.vocab:,}, trained by this "
              f"script with HF tokenizers on every {args.train_every}th document "
              f"({time.perf_counter() - t0:.1f} s, not timed)")
        configs = {mode: pipeline_config(tok_path, args.data, work / "run", args.workers, mode)
                   for mode in ("off", "expand", "both")}
        engine = make_engine(configs["off"], progress=False).started()
        run(configs["off"], engine=engine, until="write")  # read + write once, not timed
        # warm-up, not timed: every worker process caches its encoder and split table, so
        # all timed runs start equally warm
        pipeline_path(configs["both"], engine)
        print(f"machine: {os.cpu_count()} CPUs visible, pipeline on {engine.workers} Ray "
              f"workers; medians of {args.repeats} interleaved repeats\n", flush=True)

        hf = Tokenizer.from_file(str(tok_path))
        eod = hf.token_to_id("<|endoftext|>")
        keys = ["hf", "pipe", "pipe+st", "pipe both", "lib", "lib+st"]
        wall: dict[str, list[float]] = {k: [] for k in keys}
        hf_ids = None
        backend = ""
        same_lib = same_pipe = 0
        for rep in range(args.repeats):
            w0 = time.perf_counter()
            encodings = hf.encode_batch(texts)
            wall["hf"].append(time.perf_counter() - w0)
            if hf_ids is None:
                hf_ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
            del encodings
            for key, mode in (("pipe", "off"), ("pipe+st", "expand"), ("pipe both", "both")):
                seconds, out = pipeline_path(configs[mode], engine)
                wall[key].append(seconds)
                if rep == 0 and mode == "off":
                    same_pipe = pipeline_parity(out, ids, hf_ids, eod)
            for key, p in (("lib", None), ("lib+st", 0.1)):
                out = work / f"out-{key}"
                out.mkdir()
                w0 = time.perf_counter()
                plain, backend = library_path(tok_path, texts, ids, out, p)
                wall[key].append(time.perf_counter() - w0)
                if rep == 0 and p is None:
                    got = [d for tok, ln in plain for d in np.split(tok, np.cumsum(ln)[:-1])]
                    same_lib = sum(np.array_equal(g, w) for g, w in zip(got, hf_ids))
                    corpus_ids = plain
                shutil.rmtree(out)
            print(f"repeat {rep + 1}: " + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in wall.items()),
                  flush=True)

        kernel = expansion_backends(corpus_ids, ids, SplitTable.build(Encoder.from_tokenizer_json(
            str(tok_path)).token_bytes), args.repeats)
        med = {k: statistics.median(v) for k, v in wall.items()}
        rows = [
            ("HF tokenizers `encode_batch` (ids only)", "hf"),
            ("pipeline: encode + write_shards steps, StochasTok off", "pipe"),
            ("pipeline: encode + write_shards steps, StochasTok expand p = 0.1", "pipe+st"),
            ("pipeline: same, StochasTok `both` (two streams, for information)", "pipe both"),
            ("library: stages API in one process, StochasTok off", "lib"),
            ("library: stages API in one process, StochasTok p = 0.1", "lib+st"),
        ]
        lines = [
            (f"Command: `python benchmarks/bench_encode.py --repeats {args.repeats}` "
             f"({args.data.name}: {len(texts):,} documents, {mb:.1f} MB of UTF-8 text). "
             f"Tokenizer: byte-level BPE, GPT-2 regex, vocab {args.vocab:,}, trained by the "
             f"script with HF `tokenizers` on every {args.train_every}th document. "
             f"{os.cpu_count()} CPUs, shared with other sessions; the pipeline runs on "
             f"{engine.workers} Ray workers, HF `encode_batch` on its own thread pool. "
             f"Wall-clock medians of {args.repeats} interleaved repeats."),
            "",
            "| path | s | MB/s | vs HF |",
            "|---|---|---|---|",
        ]
        for title, key in rows:
            lines.append(f"| {title} | {med[key]:.2f} | {mb / med[key]:.2f} | "
                         f"{med['hf'] / med[key]:.2f}x |")
        lines += [
            "",
            (f"- **pipeline (what `tokenmill run` does) vs HF `encode_batch`: "
             f"{med['hf'] / med['pipe']:.2f}x** (target >= 4x); paired per repeat "
             f"{1 / (1 + paired(wall['pipe'], wall['hf'])):.2f}x"),
            (f"- **StochasTok p = 0.1 adds {100 * paired(wall['pipe+st'], wall['pipe']):+.1f}%** "
             f"to the pipeline path (median of paired repeats; ratio of medians "
             f"{100 * (med['pipe+st'] / med['pipe'] - 1):+.1f}%; target <= 10%); in the "
             f"library path {100 * paired(wall['lib+st'], wall['lib']):+.1f}%"),
            (f"- ids equal to HF `encode` + EOD for {same_pipe:,} of {len(texts):,} documents "
             f"read back from the pipeline's shards through documents.parquet; library path: "
             f"{same_lib:,} of {len(texts):,} (tokenmill backend: {backend})"),
            "- per repeat, s (" + " / ".join(keys) + "): " + "; ".join(
                " / ".join(f"{wall[k][i]:.1f}" for k in keys) for i in range(args.repeats)),
            "",
            "Notes:",
            ("- Where the speed comes from: tiktoken where it is exact (decided from the "
             "tokenizer.json, and checked per document above); one never-used special token "
             "(without any, tiktoken's special-token regex is empty and matches at every "
             "position, ~1.7x slower); the GPT-2 split run without its lookahead on marked "
             "text (~2x, see docs/output.md)."),
            (f"- StochasTok expansion alone at p = 0.1 over the corpus ({kernel['tokens']:,} "
             f"tokens, one thread, median of {args.repeats}): native kernel "
             f"{kernel['native']:.1f} ns per token, vectorized numpy backend "
             f"{kernel['numpy']:.1f} ns per token ({kernel['numpy'] / kernel['native']:.1f}x); "
             "same ids. What remains of StochasTok's cost in the pipeline is mostly the ~7% "
             "more tokens it makes, which are written and routed."),
            ("- The pipeline's write_shards routes documents to their shards through Arrow IPC "
             "scratch files (the seeded global shuffle of configs/laptop.yaml) and reads back "
             "only the columns the shards need. The encode step works in 4 MB batches of "
             "text inside a task, so no id array is large enough for glibc to hand it fresh "
             "pages (faulting those in cost as much as the expansion)."),
        ]
        report = "\n".join(lines)
        print("\n" + report)
        if args.write_results:
            from results_md import (
                write_section,  # benchmarks/ is on sys.path as a script
            )

            write_section(SECTION, report)
    finally:
        if engine is not None:
            engine.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
