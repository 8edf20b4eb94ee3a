"""The encode step: documents -> token ids (+ EOD/BOS), optionally StochasTok-expanded.

One task per document part; part p in -> tokens/part-p.parquet out, with columns
`id`, `tokens` (list<int32>, framed), `n_tokens`, and with StochasTok on also
`stochastok` (the expanded, framed ids), `n_stochastok`, `st_attempts`, `st_expanded`.
In mode `expand` only the expanded stream is written: `tokens` is left out (its length
`n_tokens` stays), since no shard is made from it.
The encoder (tiktoken where exact, else Hugging Face; stages.encode) and the split table
are built once per worker process; a task works through its part in batches of about
`ENCODE_BATCH_BYTES` of text, so its memory does not grow with the part.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import ConfigError, RunConfig
from pipelines.steps.base import Pins, Step, StepContext, merge_counters, write_part
from stages import storage
from stages.encode import EOD_CANDIDATES, PATTERNS, Encoder, ids_to_arrow, is_tiktoken_ranks
from stages.stochastok import SplitTable, document_keys, expand_flat


@dataclasses.dataclass(frozen=True)
class TokenizerSource:
    """Where the encode step's tokenizer comes from: a tokenizer.json, or a tiktoken ranks
    file with its split pattern and special tokens (hashable: workers cache by it)."""

    url: str
    pattern: str | None = None
    special_tokens: tuple[tuple[str, int], ...] = ()

    def encoder(self, eod, bos, threads: int | None = None) -> Encoder:
        return Encoder.from_file(self.url, pattern=self.pattern, special_tokens=dict(self.special_tokens) or None,
                                 eod=eod, bos=bos, threads=threads)

    def info(self) -> dict:
        """What the manifest records beside the file's path and checksum."""
        return {"pattern": self.pattern, "special_tokens": dict(self.special_tokens)} if self.pattern else {}

    def to_args(self) -> dict:
        return {"url": self.url, "pattern": self.pattern, "special_tokens": [list(kv) for kv in self.special_tokens]}

    @classmethod
    def from_args(cls, a: dict) -> "TokenizerSource":
        return cls(a["url"], a.get("pattern"), tuple((str(k), int(v)) for k, v in a.get("special_tokens") or ()))


@functools.lru_cache(maxsize=4)
def _encoder(source: TokenizerSource, eod, bos) -> Encoder:
    # One thread: a task owns one CPU of the engine; parallelism comes from tasks.
    return source.encoder(eod, bos, threads=1)


@functools.lru_cache(maxsize=4)
def _split_table(source: TokenizerSource, eod, bos) -> SplitTable:
    return SplitTable.build(_encoder(source, eod, bos).token_bytes)


#: Text per batch inside a task. Bounds a task's memory whatever the part size, and keeps
#: the id arrays (~4 bytes per text byte at most) below glibc's 32 MB mmap threshold: larger
#: arrays get fresh pages on every allocation, which cost about as much to fault in as the
#: StochasTok expansion itself.
ENCODE_BATCH_BYTES = 4 << 20


def _batches(text_bytes: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Contiguous document ranges of about `limit` text bytes (at least one document each;
    one empty range for no documents, so the output keeps its columns)."""
    ends = np.cumsum(text_bytes)
    bounds, start = [] if len(text_bytes) else [(0, 0)], 0
    while start < len(text_bytes):
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + limit, side="right")), start + 1)
        bounds.append((start, stop))
        start = stop
    return bounds


def _encode_batch(enc: Encoder, texts: list[str], ids: list, stochastok: dict, table: SplitTable | None,
                  counters: Counter) -> dict[str, pa.Array]:
    tokens, lengths = enc.encode_flat(texts, frame=False)
    cols = {}
    if stochastok["mode"] == "expand":  # no plain shards: only their lengths are kept
        framed_len = enc.framed_lengths(lengths)
    else:
        framed, framed_len = enc.frame(tokens, lengths)
        cols["tokens"] = ids_to_arrow(framed, framed_len)
    cols["n_tokens"] = pa.array(framed_len, pa.int64())
    counters.update(tokens=int(framed_len.sum()))
    if table is not None:
        exp = expand_flat(tokens, lengths, document_keys(stochastok["seed"], ids), table, stochastok["p"],
                          max_num_to_expand=stochastok["max_num_to_expand"])
        st, st_len = enc.frame(exp.tokens, exp.lengths)
        cols.update(stochastok=ids_to_arrow(st, st_len), n_stochastok=pa.array(st_len, pa.int64()),
                    st_attempts=pa.array(exp.attempts, pa.int64()), st_expanded=pa.array(exp.expanded, pa.int64()))
        counters.update(stochastok_tokens=int(st_len.sum()), stochastok_input_tokens=int(lengths.sum()),
                        stochastok_attempts=exp.total_attempts, stochastok_expanded=exp.total_expanded)
    return cols


def encode_task(step_url: str, index: int, in_url: str, part: int, tokenizer: dict, eod, bos,
                stochastok: dict, compression: str) -> dict:
    tokenizer = TokenizerSource.from_args(tokenizer)
    docs = storage.read_parquet(in_url, columns=["id", "text"])
    ids = docs.column("id").to_pylist()
    texts = docs.column("text")
    enc = _encoder(tokenizer, eod, bos)
    table = _split_table(tokenizer, eod, bos) if stochastok["mode"] != "off" else None
    before = enc.stats
    counters = Counter(documents=len(ids))
    text_bytes = pc.binary_length(texts).to_numpy(zero_copy_only=False)
    batches = [_encode_batch(enc, texts.slice(a, b - a).to_pylist(), ids[a:b], stochastok, table, counters)
               for a, b in _batches(text_bytes, ENCODE_BATCH_BYTES)]
    counters.update(hf_fallback_documents=enc.stats.hf_documents - before.hf_documents)
    out = pa.table({"id": docs.column("id"), **{name: pa.chunked_array([b[name] for b in batches]) for name in batches[0]}})
    return {"counters": dict(counters), "rows_in": len(ids), "parts": [write_part(step_url, "tokens", part, out, compression)],
            "vocab_size": enc.vocab_size, "backend": enc.backend, "backend_reason": enc.backend_reason}


TOKENIZER = "tokenizer.path"


def tokenizer_source(cfg: RunConfig, inputs: dict) -> TokenizerSource:
    if cfg.tokenizer.path:
        return TokenizerSource(cfg.tokenizer.path, cfg.tokenizer.pattern, tuple(sorted(cfg.tokenizer.special_tokens.items())))
    return TokenizerSource(storage.join(inputs["train_bpe"].url, inputs["train_bpe"].record["tokenizer"]))


def check_tokenizer(cfg: RunConfig) -> None:
    """A given tokenizer file, its split pattern and the framing tokens, before any work."""
    import regex

    if not cfg.tokenizer.enabled:
        raise ConfigError("encode.enabled needs a tokenizer: set tokenizer.enabled: true (and tokenizer.path to use an existing one)")
    tiktoken_ranks = cfg.tokenizer.path is not None and is_tiktoken_ranks(cfg.tokenizer.path)
    if (cfg.tokenizer.pattern is not None or cfg.tokenizer.special_tokens) and not tiktoken_ranks:
        raise ConfigError("tokenizer.pattern and tokenizer.special_tokens are for a tiktoken ranks file in tokenizer.path; "
                          "a tokenizer.json carries its own, and training uses tokenizer.train")
    if tiktoken_ranks:
        pattern = cfg.tokenizer.pattern
        if not pattern:
            raise ConfigError(f"tokenizer.path {cfg.tokenizer.path} is a tiktoken ranks file (its name does not end in .json): "
                              f"set tokenizer.pattern to its split regex ({' | '.join(PATTERNS)} or a regex)")
        try:
            regex.compile(PATTERNS.get(pattern, pattern))
        except regex.error as e:
            raise ConfigError(f"tokenizer.pattern does not compile: {e}") from None
    if cfg.tokenizer.path is None or tiktoken_ranks:
        specials = list(cfg.tokenizer.special_tokens if tiktoken_ranks else cfg.tokenizer.train.get("special_tokens") or [])
        where = "tokenizer.special_tokens" if tiktoken_ranks else "tokenizer.train.special_tokens"
        eod = cfg.encode.eod
        if eod == "auto" and not any(t in specials for t in EOD_CANDIDATES):
            raise ConfigError(f"encode.eod is auto but {where} has no end-of-text token ({', '.join(EOD_CANDIDATES)}); "
                              "add one, give encode.eod as a token or an id, or set encode.eod: null")
        for key, tok in (("eod", eod), ("bos", cfg.encode.bos)):
            if isinstance(tok, str) and tok != "auto" and tok not in specials:
                raise ConfigError(f"encode.{key}={tok!r} is not among {where} {specials}")


class EncodeStep(Step):
    name = "encode"
    code_version = 2  # 2: mode expand leaves out the plain `tokens` column

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.encode.enabled

    def check(self, cfg: RunConfig) -> None:
        check_tokenizer(cfg)

    def dependencies(self, cfg: RunConfig) -> dict[str, str]:
        return {TOKENIZER: cfg.tokenizer.path} if cfg.tokenizer.path else {}

    def version_config(self, cfg: RunConfig, pins: Pins) -> dict:
        c = cfg.encode.model_dump()
        if cfg.tokenizer.path:  # a trained tokenizer is versioned through its step's input
            c["tokenizer_sha256"] = pins.files[TOKENIZER].sha256
            if cfg.tokenizer.pattern:
                c["tokenizer_pattern"] = cfg.tokenizer.pattern
                c["tokenizer_special_tokens"] = cfg.tokenizer.special_tokens
        return c

    def run(self, ctx: StepContext) -> dict:
        c = ctx.cfg.encode
        tok = tokenizer_source(ctx.cfg, ctx.inputs)
        docs = ctx.inputs[self.inputs[0]]
        st = c.stochastok.model_dump()
        args = [dict(in_url=u, part=p, tokenizer=tok.to_args(), eod=c.eod, bos=c.bos, stochastok=st, compression=ctx.compression)
                for p, u in docs.part_urls()]
        results = ctx.run_phase(encode_task, "encode", args, "encode", docs.part_weights())
        first = results[0]  # every task loads the same tokenizer
        return {"counters": merge_counters(results), "parts": [p for r in results for p in r["parts"]],
                "tokenizer": ctx.relative(tok.url),
                "tokenizer_info": tok.info(),
                "vocab_size": first["vocab_size"], "backend": first["backend"], "backend_reason": first["backend_reason"]}

