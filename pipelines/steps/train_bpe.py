"""The train-bpe step: a byte-level BPE tokenizer trained on the cleaned documents.

Phases (SuperBPE repeats count and reduce with its superword splitter, `_super`):
  count   doc part i -> counts/part-p/from-i.arrow: the part's word table, split by a
          stable hash of each word into P partitions
  reduce  partition p -> words/part-p.arrow: the summed table (pruned by prune_below,
          words in byte order, so equal tables are equal files). On an engine with actors
          (Ray) the reduce tasks run inside P WordPartition actors, which keep their words
          for the sharded merge; elsewhere they are ordinary tasks. Same files either way.
  merge   one task: the words of every partition -> the merge loop (native kernel) ->
          tokenizer.json, merges.txt, vocab.json, tiktoken ranks, training_stats.json.
          With merge_mode "sharded" the words stay on the actors and the driver
          coordinates the merges (stages.bpe.coordinate_merges); it needs actors.

P (tokenizer.train.partitions) comes from the data, never from the worker count, so every
engine trains the same tokenizer. See docs/bpe.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

from pipelines.config import ConfigError, RunConfig
from pipelines.engines import ACTORS
from pipelines.steps.base import Phase, Pins, Step, StepContext
from pipelines.tasks import Task, clear_errors, finished, raise_failure, run_task
from stages import storage
from stages.bpe import (BpeConfig, BpeConfigError, BpeModel, WordStoreShard, WordTable, byte_histogram, coordinate_merges,
                        peak_rss_mb, train_bpe)
from stages.pretokenize import PreTokSpec

#: Documents per word-table partition when tokenizer.train.partitions is not set.
DOCS_PER_PARTITION = 1_000_000
# Bytes a distinct word costs in the native counter (hash node + string + count), an upper bound.
_BYTES_PER_WORD = 96


class WordTableMemoryError(MemoryError):
    """A word table outgrew its cap; raised instead of being OOM-killed."""


def _check_cap(words: int, key_bytes: int, cap_mb: int, what: str) -> None:
    estimate = words * _BYTES_PER_WORD + key_bytes
    if estimate > cap_mb << 20:
        raise WordTableMemoryError(
            f"{what} holds {words:,} distinct words, about {estimate / 2**20:.1f} MB, over the cap of {cap_mb} MB "
            "(tokenizer.train.max_partition_mb); raise tokenizer.train.partitions, raise max_partition_mb, "
            "or set prune_below")


def _dir(stage: str, kind: str) -> str:
    return kind + stage


def count_task(step_url: str, index: int, in_url: str, spec: dict, partitions: int, stage: str, cap_mb: int,
               by_source: bool) -> dict:
    docs = storage.read_parquet(in_url, columns=["text", "source"] if by_source else ["text"])
    counter = PreTokSpec(**spec).counter()
    sources: Counter = Counter()
    texts = docs.column("text").to_pylist()
    for n, text in enumerate(texts, 1):
        counter.add(text)
        if n % 4096 == 0:
            _check_cap(len(counter), 0, cap_mb, f"the word table of {in_url}")
    if by_source:
        for src, text in zip(docs.column("source").to_pylist(), texts):
            sources[src] += len(text.encode("utf-8", "surrogatepass"))
    table = WordTable.from_counter(counter)
    _check_cap(len(table), table.data.nbytes, cap_mb, f"the word table of {in_url}")
    for p, sub in enumerate(table.partition(partitions)):
        if len(sub):
            url = storage.join(step_url, _dir(stage, "counts"), f"part-{p:05d}", f"from-{index:05d}.arrow")
            storage.write_arrow(url, sub.to_arrow())
    out = {"sequences": counter.n_sequences, "bytes": counter.n_bytes, "distinct_words": len(table),
           "words": table.total, "rows_in": docs.num_rows, "peak_rss_mb": peak_rss_mb()}
    if by_source:
        out["sources"] = dict(sorted(sources.items()))
    return out


def reduce_task(step_url: str, index: int, stage: str, prune_below: int, cap_mb: int) -> dict:
    """Partition `index`: the sum of every count task's table for it, pruned and sorted."""
    from native.bpe_pretok import PreTokenizer
    from stages.pretokenize import char_class_table

    acc = PreTokenizer(char_class_table(), "gpt2")  # used as the word table
    key_bytes = 0
    for url in storage.list_files(storage.join(step_url, _dir(stage, "counts"), f"part-{index:05d}"), ".arrow"):
        t = WordTable.from_arrow(storage.read_arrow(url))
        acc.add_packed(t.data, t.offsets, t.counts)
        key_bytes += t.data.nbytes
        _check_cap(len(acc), key_bytes, cap_mb, f"word partition {index}")
    table = WordTable(*acc.packed(prune_below)).sorted()
    storage.write_arrow(words_url(step_url, stage, index), table.to_arrow())
    return {"words": len(table), "occurrences": table.total, "byte_hist": byte_histogram(table).tolist(),
            "peak_rss_mb": peak_rss_mb()}


def words_url(step_url: str, stage: str, p: int) -> str:
    return storage.join(step_url, _dir(stage, "words"), f"part-{p:05d}.arrow")


def read_words(step_url: str, stage: str, partitions: int) -> WordTable:
    return WordTable.concat([WordTable.from_arrow(storage.read_arrow(words_url(step_url, stage, p))) for p in range(partitions)])


def merge_task(step_url: str, index: int, bpe: dict, partitions: int, counting_url: str) -> dict:
    """Train from the reduced words of every partition and write the tokenizer files
    (`counting_url`: the counting phases' figures, for training_stats.json)."""
    cfg = BpeConfig.from_dict(bpe)
    counting = storage.read_json(counting_url)

    def count(spec: PreTokSpec, prune_below: int):
        stage = "_super" if spec.superword else ""
        table = read_words(step_url, stage, partitions)
        return table, {**counting[stage], "distinct_words": len(table), "word_occurrences": table.total}

    return write_model(step_url, train_bpe(count, cfg), cfg)


def write_model(step_url: str, model: BpeModel, cfg: BpeConfig) -> dict:
    counting = model.stats.get("counting", {})
    if cfg.record_mixture:
        sources = counting.get("sources", {})
        total = sum(sources.values()) or 1
        model.stats["mixture"] = {s: {"bytes": b, "fraction": b / total} for s, b in sources.items()}
        model.stats["mixture_note"] = ("merge order leaks these proportions (Data Mixture Inference); "
                                       "release the merge-free export if they must stay private")
    counting.pop("sources", None)
    files = []
    for name, data in model.artifacts(cfg.export_merge_free).items():
        storage.atomic_write_bytes(storage.join(step_url, name), data)
        files.append(name)
    return {"files": files, "vocab": len(model.vocab), "merges": int(model.stats.get("merges_total", len(model.merges))),
            "words": int(counting.get("distinct_words") or 0)}


class WordPartition:
    """An actor (engine capability "actors") that owns one hash partition of the words: it
    runs that partition's reduce task, then holds the words for the sharded merge."""

    def __init__(self, index: int):
        self.index = index
        self.shard: WordStoreShard | None = None

    def reduce(self, task_json: str | None) -> None:
        if task_json:  # None: this partition's reduce is done already
            run_task(Task.from_json(task_json))

    def load(self, url: str) -> int:
        self.shard = WordStoreShard(WordTable.from_arrow(storage.read_arrow(url)))
        return len(self.shard.table)

    def build(self, lut, token_lengths, max_token_length):
        return self.shard.build(lut, token_lengths, max_token_length)

    def step(self, n_prev: int, drops, cmds):
        return self.shard.step(n_prev, drops, cmds)

    def settle(self, n_prev: int) -> float:
        return self.shard.settle(n_prev)


def bpe_config(cfg: RunConfig) -> BpeConfig:
    try:
        return BpeConfig.from_dict(cfg.tokenizer.train)
    except BpeConfigError as e:
        raise ConfigError(f"tokenizer.train: {e}") from None


class TrainBpeStep(Step):
    name = "train_bpe"
    code_version = 2  # 2: counting and merging through task records
    scratch = ("counts", "words", "counts_super", "words_super", "counting.json")

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.tokenizer.enabled and cfg.tokenizer.path is None

    def check(self, cfg: RunConfig) -> None:
        bpe = bpe_config(cfg)
        if bpe.superbpe and bpe.merge_mode == "sharded":
            raise ConfigError("tokenizer.train: superbpe runs with merge_mode single (stage 2 starts from stage 1's words)")

    def requires(self, cfg: RunConfig) -> set[str]:
        return {ACTORS} if bpe_config(cfg).merge_mode == "sharded" else set()

    def version_config(self, cfg: RunConfig, pins: Pins) -> dict:
        # The resolved config (defaults filled in), so spelling a default out does not move the version;
        # the memory cap and the partitioning do not change the tokenizer.
        resolved = dataclasses.asdict(bpe_config(cfg))
        return {k: v for k, v in resolved.items() if k not in ("max_partition_mb", "partitions")}

    def run(self, ctx: StepContext) -> dict:
        bpe = bpe_config(ctx.cfg)
        docs = ctx.input_docs()
        partitions = bpe.partitions or max(1, math.ceil(docs.rows / DOCS_PER_PARTITION))
        stages = [("", bpe.pretok())] + ([("_super", bpe.pretok(superword=True))] if bpe.superbpe else [])
        use_actors = ACTORS in ctx.engine.capabilities
        group = ctx.engine.actors(WordPartition, [(p,) for p in range(partitions)]) if use_actors else None
        try:
            count_phases = [Phase(count_task, "count" + stage, [
                dict(in_url=u, spec=dataclasses.asdict(spec), partitions=partitions, stage=stage, cap_mb=bpe.max_partition_mb,
                     by_source=bpe.record_mixture) for _, u in docs.part_urls()],
                f"train_bpe: count words{stage.replace('_', ' ')}", docs.part_weights()) for stage, spec in stages]
            reduce_phases = [Phase(reduce_task, "reduce" + stage, [dict(stage=stage, prune_below=bpe.prune_below,
                                                                        cap_mb=bpe.max_partition_mb)] * partitions,
                                   "train_bpe: reduce") for stage, _ in stages]
            names = [stage for stage, _ in stages]
            if group is None:  # counts and reduces are all known now: one submission
                records = ctx.run_phases([ph for pair in zip(count_phases, reduce_phases) for ph in pair])
                counts, reduced = dict(zip(names, records[0::2])), dict(zip(names, records[1::2]))
            else:  # the reduce runs in the actors, after the counts
                counts, reduced = {}, {}
                for (stage, _), count_ph, reduce_ph in zip(stages, count_phases, reduce_phases):
                    (counts[stage],) = ctx.run_phases([count_ph])
                    reduced[stage] = self._reduce_in_actors(ctx, group, reduce_ph)
            counting = {stage: self._counting(counts[stage], reduced[stage], partitions, group is not None) for stage, _ in stages}
            if bpe.merge_mode == "single":
                counting_url = storage.join(ctx.url, "counting.json")
                storage.atomic_write_json(counting_url, counting)
                (result,) = ctx.run_phase(merge_task, "merge", [dict(bpe=bpe.to_dict(), partitions=partitions,
                                                                     counting_url=counting_url)], "train_bpe: merges")
            else:
                result = self._sharded_merge(ctx, group, reduced[""], counting[""], partitions, bpe)
        finally:
            if group is not None:
                group.close()
        return {"tokenizer": "tokenizer.json", "vocab": result["vocab"], "merges": result["merges"], "files": result["files"],
                "partitions": partitions, "counters": {"words": result["words"], "merges": result["merges"]}}

    @staticmethod
    def _counting(counts: list[dict], reduced: list[dict], partitions: int, actors: bool) -> dict:
        """The counting figures of one stage, for training_stats.json."""
        sources: Counter = Counter()
        for r in counts:
            sources.update(r.get("sources", {}))
        return {"sequences": sum(r["sequences"] for r in counts), "bytes": sum(r["bytes"] for r in counts),
                "count_tasks": len(counts), "partitions": partitions, "actors": actors,
                "partition_words": [r["words"] for r in reduced],
                "peak_rss_mb_count_tasks": max((r["peak_rss_mb"] for r in counts), default=0.0),
                "peak_rss_mb_partitions": max((r["peak_rss_mb"] for r in reduced), default=0.0),
                **({"sources": dict(sorted(sources.items()))} if sources else {})}

    def _reduce_in_actors(self, ctx: StepContext, group, phase: Phase) -> list[dict]:
        """Each actor runs its partition's reduce task (same task, same files, same record);
        then run_phases finds every record and only reads them."""
        tasks = [Task.of(phase.fn, ctx.url, phase.name, p, a) for p, a in enumerate(phase.args)]
        done = finished(tasks)
        todo = [t for i, t in enumerate(tasks) if i not in done]
        if todo:
            clear_errors(todo)
            try:
                group.call("reduce", [(t.to_json() if i not in done else None,) for i, t in enumerate(tasks)])
            except Exception as exc:
                raise_failure(todo, exc)
        return ctx.run_phases([phase])[0]

    def _sharded_merge(self, ctx: StepContext, group, reduced: list[dict], counting: dict, partitions: int,
                       bpe: BpeConfig) -> dict:
        import numpy as np

        group.call("load", [(words_url(ctx.url, "", p),) for p in range(partitions)])
        hist = np.sum([np.asarray(r["byte_hist"], dtype=np.int64) for r in reduced], axis=0)

        def count(spec, prune_below):
            return WordTable.empty(), {**counting, "distinct_words": sum(r["words"] for r in reduced),
                                       "word_occurrences": sum(r["occurrences"] for r in reduced)}

        def merge(table, c, vocab_size):
            return coordinate_merges(
                hist,
                lambda lut, lens: group.call("build", [(lut, lens, c.max_token_length)] * partitions),
                lambda n, drops, cmds: group.call("step", [(n, drops, cmds)] * partitions),
                lambda n: group.call("settle", [(n,)] * partitions),
                c, vocab_size)

        return write_model(ctx.url, train_bpe(count, bpe, merge=merge), bpe)
