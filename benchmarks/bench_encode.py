"""Encode + shard throughput: HF `tokenizers` encode_batch alone vs tokenmill's whole path.

    python benchmarks/bench_encode.py [--data DIR] [--repeats 3] [--vocab 32000]

Reads every ``*.jsonl.zst`` of --data (default: corpus-en in the shared folder beside the
repository), trains a byte-level BPE with Hugging Face on a slice of it (GPT-2 regex, the
vocabulary size given), then times, interleaved, `--repeats` times:

  hf          Tokenizer.encode_batch(texts) on the whole corpus (ids only, nothing written)
  tm          tokenmill text -> Megatron shards: Encoder.encode_flat in batches, EOD framing,
              shard plan, .bin/.idx writes with checksums, documents.parquet, manifest.json
  tm+st       the same with StochasTok expansion at p = 0.1 before framing

Reports medians of wall-clock time and of CPU time (all threads of this process; less
disturbed by other processes on a shared machine), throughput in MB of UTF-8 text per
second and the ratio to HF. StochasTok's cost is shown three ways: end to end (tm+st vs
tm), as the median of per-repeat paired ratios, and as the time measured inside the path
(split table + expansion) relative to the tm path. It also checks that tokenmill's ids equal
HF's for every document. Text loading and tokenizer training are not timed.
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

from stages import megatron, shards  # noqa: E402
from stages.encode import Encoder  # noqa: E402
from stages.stochastok import SplitTable, document_keys, expand_flat  # noqa: E402

BATCH_BYTES = 8 << 20  # text per encode batch, like one partition of the encode step
SHARD_TOKENS = 8 << 20


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


def tokenmill_path(tok_path: Path, texts, ids, out_dir: Path, p: float | None):
    """Text -> shards + manifest; returns (plain ids, lengths) for the parity check."""
    enc = Encoder.from_tokenizer_json(str(tok_path))
    clock = time.perf_counter()
    table = SplitTable.build(enc.token_bytes) if p else None
    in_stochastok = time.perf_counter() - clock
    parts, lens, plain = [], [], []
    for a, b in batches(texts):
        tokens, lengths = enc.encode_flat(texts[a:b], frame=False)
        plain.append((tokens, lengths))
        if table is not None:
            clock = time.perf_counter()
            ex = expand_flat(tokens, lengths, document_keys(1, ids[a:b]), table, p)
            tokens, lengths = ex.tokens, ex.lengths
            in_stochastok += time.perf_counter() - clock
        tokens, lengths = enc.frame(tokens, lengths)
        parts.append(tokens)
        lens.append(lengths)
    tokens, lengths = np.concatenate(parts), np.concatenate(lens)
    plan = shards.plan_shards(lengths, target=SHARD_TOKENS)
    dtype = megatron.dtype_for_vocab(enc.vocab_size)
    records, index = [], []
    for s, members in enumerate(plan.shards()):
        name = shards.shard_name(s)
        t, n = shards.gather(tokens, lengths, members)
        records.append(shards.write_shard(str(out_dir), name, t, n, dtype,
                                          vocab_size=enc.vocab_size))
        index.append((name, [ids[i] for i in members]))
    shards.write_doc_index(str(out_dir), index)
    shards.write_manifest(str(out_dir), shards.build_manifest(
        records, tokenizer=shards.tokenizer_info(str(tok_path), vocab_size=enc.vocab_size),
        config_hash="bench"))
    enc.close()
    return plain, enc.backend, in_stochastok


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared/data/corpus-en")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--train-every", type=int, default=8,
                        help="train the tokenizer on every n-th document (default 8)")
    args = parser.parse_args(argv)

    texts, ids = load(args.data)
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    work = Path(tempfile.mkdtemp(prefix="tokenmill-bench-"))
    try:
        tok_path = work / "tokenizer.json"
        t0 = time.perf_counter()
        train(texts[:: args.train_every], args.vocab, tok_path)
        print(f"corpus: {args.data.name}, {len(texts):,} documents, {mb:.1f} MB of UTF-8 text")
        print(f"tokenizer: byte-level BPE, GPT-2 regex, vocab {args.vocab:,}, trained by this "
              f"script with HF tokenizers on every {args.train_every}th document "
              f"({time.perf_counter() - t0:.1f} s, not timed)")
        print(f"machine: {os.cpu_count()} CPUs visible; timings are wall-clock medians of "
              f"{args.repeats} interleaved repeats\n")

        from tokenizers import Tokenizer

        hf = Tokenizer.from_file(str(tok_path))
        wall = {"hf": [], "tm": [], "tm+st": []}
        cpu = {"hf": [], "tm": [], "tm+st": []}
        inside = []
        hf_ids = None
        backend = ""
        for rep in range(args.repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            encodings = hf.encode_batch(texts)
            wall["hf"].append(time.perf_counter() - w0)
            cpu["hf"].append(time.process_time() - c0)
            if hf_ids is None:
                hf_ids = [np.asarray(e.ids, dtype=np.int32) for e in encodings]
            del encodings
            for label, p in (("tm", None), ("tm+st", 0.1)):
                out = work / f"out-{label}"
                out.mkdir()
                w0, c0 = time.perf_counter(), time.process_time()
                plain, backend, st_time = tokenmill_path(tok_path, texts, ids, out, p)
                wall[label].append(time.perf_counter() - w0)
                cpu[label].append(time.process_time() - c0)
                if p:
                    inside.append(st_time)
                if rep == 0 and label == "tm":
                    got = [d for tok, ln in plain for d in np.split(tok, np.cumsum(ln)[:-1])]
                    same = sum(np.array_equal(g, w) for g, w in zip(got, hf_ids))
                    print(f"parity: {same:,} of {len(texts):,} documents have ids equal to HF "
                          f"encode (tokenmill backend: {backend})\n")
                shutil.rmtree(out)
            print(f"repeat {rep + 1}: wall " + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in
                                                         wall.items())
                  + f"  (StochasTok inside tm+st: {inside[-1]:.2f}s)", flush=True)

        med = {k: statistics.median(v) for k, v in wall.items()}
        cmed = {k: statistics.median(v) for k, v in cpu.items()}
        paired = statistics.median(s / o - 1 for s, o in zip(wall["tm+st"], wall["tm"]))
        print(f"\n{'path':<48}{'wall s':>8}{'MB/s':>8}{'vs HF':>8}{'cpu s':>8}{'vs HF':>8}")
        rows = [
            ("HF tokenizers encode_batch (ids only)", "hf"),
            (f"tokenmill encode+write, StochasTok off", "tm"),
            (f"tokenmill encode+write, StochasTok p=0.1", "tm+st"),
        ]
        for title, key in rows:
            print(f"{title:<48}{med[key]:>8.2f}{mb / med[key]:>8.2f}"
                  f"{med['hf'] / med[key]:>7.2f}x{cmed[key]:>8.2f}{cmed['hf'] / cmed[key]:>7.2f}x")
        share = statistics.median(inside) / med["tm"]
        print(f"\ntokenmill backend: {backend}")
        print(f"StochasTok p=0.1 adds: end to end {100 * (med['tm+st'] / med['tm'] - 1):+.1f}% "
              f"(paired repeats {100 * paired:+.1f}%, cpu {100 * (cmed['tm+st'] / cmed['tm'] - 1):+.1f}%); "
              f"measured inside the path {statistics.median(inside):.2f}s = {100 * share:+.1f}% "
              f"of the tm path")
        print(f"targets: path >= 4x HF encode_batch: wall {med['hf'] / med['tm']:.2f}x, "
              f"cpu {cmed['hf'] / cmed['tm']:.2f}x; StochasTok <= +10%: inside {100 * share:+.1f}%")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
