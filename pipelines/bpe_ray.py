"""Ray adapter for BPE training: map/reduce word counting and the sharded merge loop.

Thin by design: the pre-tokenizer, word tables and the merge kernel come from
stages.bpe / native; this module only places them on actors and moves arrays.

Counting: one task per input source counts its words and splits the table by a stable
hash into P partitions; partition p goes to the WordPartition actor p, which sums it into
its own table. No process ever holds every source's table, and each actor refuses (with a
clear error, not an OOM kill) to grow past its memory cap.

Sharded merging: the partitions keep their words and each runs a WordStore; a
coordinator in the driver keeps the global pair counts and heap (MergeState). One round
trip per batch: the coordinator sends the next merge plus a few guessed followers, every
actor applies them in order and returns each merge's (pair, delta) changes; the
coordinator replays HF's selection with the real deltas, keeps the guesses that were
right, and the actors undo the rest at the start of the next round. The heap evolves
exactly as in single-node mode, so the merges are the same.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import ray

from stages.bpe import BpeConfig, BpeModel, WordTable, coordinate_merges, peak_rss_mb
from stages.pretokenize import PreTokSpec


class WordTableMemoryError(MemoryError):
    """A partition's word table outgrew its cap; raised instead of being OOM-killed."""


@dataclass(frozen=True)
class Source:
    url: str
    rel: str          # name used in the mixture record
    size: int
    text_field: str = "text"
    stride: int = 1       # read records i with i % stride == phase: one large file can
    phase: int = 0        # feed several map tasks without byte-range seeking in .zst


def split_sources(sources: Sequence[Source], workers: int, max_split: int = 8) -> list[Source]:
    """Split files much larger than an even share so the map tasks finish together."""
    total = sum(s.size for s in sources) or 1
    share = total / (2 * workers)
    out = []
    for s in sources:
        n = 1 if workers <= 1 else int(min(max_split, max(1, round(s.size / share))))
        out.extend(Source(s.url, s.rel, s.size // n, s.text_field, n, k) for k in range(n))
    return out


# --------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------

def _count_source_impl(src: Source, spec: PreTokSpec, n_parts: int, cap_bytes: int):
    from pipelines.bpe_job import iter_sequences  # the readers live with the job's I/O

    t0 = time.perf_counter()
    counter = spec.counter()
    n_seq = 0
    for text in iter_sequences(src.url, src.text_field, src.stride, src.phase):
        counter.add(text)
        n_seq += 1
        if n_seq % 4096 == 0 and len(counter) * 96 > cap_bytes:
            raise WordTableMemoryError(
                f"counting {src.rel}: its word table passed the cap of {cap_bytes >> 20} MB "
                f"({len(counter)} distinct words); split the input into smaller files or "
                f"raise max_partition_mb")
    table = WordTable.from_counter(counter)
    parts = table.partition(n_parts)
    stats = {"source": src.rel, "sequences": counter.n_sequences, "bytes": counter.n_bytes,
             "distinct_words": len(table), "words": table.total,
             "seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}
    return tuple((p.data, p.offsets, p.counts) for p in parts) + (stats,)


@ray.remote(num_cpus=0)
class WordPartition:
    """Owns one hash partition of the words: reduce target, then a merge worker."""

    def __init__(self, index: int, cap_bytes: int):
        from native.bpe_pretok import PreTokenizer
        from stages.pretokenize import char_class_table

        self.index = index
        self.cap = cap_bytes
        self.acc = PreTokenizer(char_class_table(), "gpt2")
        self.key_bytes = 0
        self.shard = None

    def add(self, packed) -> int:
        data, offsets, counts = packed
        self.acc.add_packed(data, offsets, counts)
        self.key_bytes += len(data)
        # std::unordered_map node + string + count, plus the key bytes (upper bound)
        estimate = len(self.acc) * 88 + self.key_bytes
        if estimate > self.cap:
            raise WordTableMemoryError(
                f"word partition {self.index} holds {len(self.acc)} distinct words, about "
                f"{estimate >> 20} MB, over its cap of {self.cap >> 20} MB; use more workers, "
                f"raise max_partition_mb, or set prune_below")
        return len(self.acc)

    def finalize(self, prune_below: int) -> dict[str, Any]:
        from stages.bpe import WordStoreShard

        self.shard = WordStoreShard(WordTable(*self.acc.packed(prune_below)))
        self.acc = None
        t = self.shard.table
        return {"words": len(t), "occurrences": t.total, "byte_hist": self.shard.byte_hist(),
                "peak_rss_mb": peak_rss_mb()}

    def packed(self):
        t = self.shard.table
        return t.data, t.offsets, t.counts

    def build(self, lut: np.ndarray, token_lengths: np.ndarray, max_token_length):
        return self.shard.build(lut, token_lengths, max_token_length)

    def step(self, n_prev: int, drops, cmds: np.ndarray):
        return self.shard.step(n_prev, drops, cmds)

    def settle(self, n_prev: int) -> float:
        return self.shard.settle(n_prev)


def count_with_ray(sources: Sequence[Source], spec: PreTokSpec, workers: int, prune_below: int,
                   cap_mb: int, partitions=None):
    """Map/reduce counting. Returns (partition actors, stats). `workers` tasks run at once."""
    if workers < 1:
        raise ValueError("workers must be >= 1 for the Ray engine")
    cap = int(cap_mb) << 20
    t0 = time.perf_counter()
    if partitions is None:
        partitions = [WordPartition.remote(i, cap) for i in range(workers)]
    n_parts = len(partitions)
    count_task = ray.remote(num_cpus=1, num_returns=n_parts + 1)(_count_source_impl)
    # Largest first, at most `workers` in flight: keeps cores busy to the end (LPT order).
    todo = sorted(split_sources(sources, workers), key=lambda s: -s.size)
    in_flight: dict[Any, list] = {}
    adds: list = []
    src_stats: list[dict] = []
    while todo or in_flight:
        while todo and len(in_flight) < workers:
            refs = count_task.remote(todo.pop(0), spec, n_parts, cap)
            in_flight[refs[-1]] = refs
        done, _ = ray.wait(list(in_flight), num_returns=1)
        refs = in_flight.pop(done[0])
        src_stats.append(ray.get(done[0]))
        adds.extend(p.add.remote(r) for p, r in zip(partitions, refs[:-1]))
    ray.get(adds)
    t1 = time.perf_counter()
    fin = ray.get([p.finalize.remote(prune_below) for p in partitions])
    t2 = time.perf_counter()
    stats = {
        "engine": "ray", "workers": workers, "partitions": n_parts,
        "map_reduce_seconds": t1 - t0, "finalize_seconds": t2 - t1,
        "distinct_words": int(sum(f["words"] for f in fin)),
        "word_occurrences": int(sum(f["occurrences"] for f in fin)),
        "partition_words": [int(f["words"]) for f in fin],
        "sources": _merge_source_stats(src_stats),
        "peak_rss_mb_map_tasks": max(st["peak_rss_mb"] for st in src_stats) if src_stats else 0.0,
        "peak_rss_mb_partitions": max(f["peak_rss_mb"] for f in fin),
        "byte_hist": np.sum([f["byte_hist"] for f in fin], axis=0),
    }
    return partitions, stats


def _merge_source_stats(stats: list[dict]) -> list[dict]:
    """One record per input file (a split file ran as several tasks)."""
    out: dict[str, dict] = {}
    for st in stats:
        o = out.setdefault(st["source"], {"source": st["source"], "sequences": 0, "bytes": 0, "words": 0,
                                          "seconds": 0.0, "tasks": 0})
        for k in ("sequences", "bytes", "words", "seconds"):
            o[k] += st[k]
        o["tasks"] += 1
    return [out[k] for k in sorted(out)]


def gather_table(partitions) -> WordTable:
    """All partitions' words in one table (single-node merge mode)."""
    parts = [WordTable(*p) for p in ray.get([p.packed.remote() for p in partitions])]
    if len(parts) == 1:
        return parts[0]
    data = np.concatenate([p.data for p in parts])
    counts = np.concatenate([p.counts for p in parts])
    lengths = np.concatenate([np.diff(p.offsets) for p in parts])
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return WordTable(data, offsets, counts)


# --------------------------------------------------------------------------------------
# Sharded merging: stages.bpe.coordinate_merges with Ray actor calls as the transport
# --------------------------------------------------------------------------------------

def sharded_merge(partitions, byte_hist: np.ndarray, cfg: BpeConfig, vocab_size: int,
                  *, progress: bool = False) -> BpeModel:
    """Merge with the words left on their partitions; same merges as single-node mode."""
    model = coordinate_merges(
        byte_hist,
        lambda lut, lens: ray.get([p.build.remote(lut, lens, cfg.max_token_length) for p in partitions]),
        lambda n, drops, cmds: ray.get([p.step.remote(n, drops, cmds) for p in partitions]),
        lambda n: ray.get([p.settle.remote(n) for p in partitions]),
        cfg, vocab_size, progress=progress)
    model.stats["per_round_ms"] = 1000 * model.stats["merge_seconds"] / max(1, model.stats["rounds"])
    return model
