"""Helpers for the BPE tests: in-repo corpora, the HF oracle, a pure-Python reference.

Imported by tests/test_bpe_*.py (pytest puts tests/ on sys.path).
"""
from __future__ import annotations

import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import zstandard

from stages.bpe import BpeConfig, WordTable, train_from_table

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / "data" / "dev"
HANDBOOK = REPO / "data" / "langid-dev" / "handbook"


def _jsonl_zst(path: Path) -> list[dict]:
    with open(path, "rb") as fh:
        text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8")
        return [json.loads(line) for line in text if line.strip()]


@lru_cache(maxsize=None)
def dev_docs(name: str) -> tuple[str, ...]:
    """Documents of data/dev/<name>.jsonl.zst (rust-doc-books, postgresql-doc-15)."""
    return tuple(r["text"] for r in _jsonl_zst(DEV / f"{name}.jsonl.zst"))


@lru_cache(maxsize=None)
def handbook_docs(langs: tuple[str, ...]) -> tuple[str, ...]:
    """Handbook sections in the given locales, one sequence per section."""
    out = []
    for lang in langs:
        out += ["\n".join(r["pars"]) for r in _jsonl_zst(HANDBOOK / f"{lang}.jsonl.zst")]
    return tuple(out)


def count(texts: Sequence[str], cfg: BpeConfig, superword: bool = False) -> WordTable:
    c = cfg.pretok(superword).counter()
    c.add_many(texts)
    return WordTable.from_counter(c)


def ours(texts: Sequence[str], cfg: BpeConfig):
    m = train_from_table(count(texts, cfg), cfg)
    return m.vocab_dict(), m.merge_pairs()


def hf_train(texts: Sequence[str], cfg: BpeConfig):
    """tokenizers' BpeTrainer configured like cfg, fed one sequence per text."""
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = cfg.pretok().hf_pre_tokenizer()
    kw = dict(vocab_size=cfg.vocab_size, show_progress=False, min_frequency=cfg.min_frequency,
              special_tokens=list(cfg.special_tokens), initial_alphabet=cfg.initial_alphabet_chars())
    if cfg.limit_alphabet is not None:
        kw["limit_alphabet"] = cfg.limit_alphabet
    if cfg.max_token_length is not None:
        kw["max_token_length"] = cfg.max_token_length
    tok.train_from_iterator(list(texts), trainers.BpeTrainer(**kw))
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def reference_bpe(words: dict[str, int], vocab: list[str], vocab_size: int, min_frequency: int = 0,
                  max_token_length: int | None = None, wrap_i32: bool = False):
    """Slow, obvious BPE with HF's rules: recount every pair each step.

    A pair position counts when both sides are initial symbols or the merged length stays
    below max_token_length (HF only adds pairs formed by a merge under that rule).
    wrap_i32 imitates HF's i32 pair counts, to show what overflow does.
    Returns the merges as (left, right) strings.
    """
    index = {t: i for i, t in enumerate(vocab)}
    initial = set(vocab)
    seqs = [([c for c in w if c in index], n) for w, n in words.items()]
    merges = []
    limit = max_token_length if max_token_length is not None else 1 << 62
    while len(index) < vocab_size:
        counts: dict[tuple[str, str], int] = {}
        for s, n in seqs:
            for a, b in zip(s, s[1:]):
                if (a in initial and b in initial and len(a) == 1 and len(b) == 1) or len(a) + len(b) < limit:
                    counts[(a, b)] = counts.get((a, b), 0) + n
        if wrap_i32:
            counts = {k: ((v + 2**31) % 2**32) - 2**31 for k, v in counts.items()}
            counts = {k: v for k, v in counts.items() if v > 0}
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], index[p[0]], index[p[1]]))
        if counts[best] < max(1, min_frequency):
            break
        new = best[0] + best[1]
        if new not in index:
            index[new] = len(index)
        merges.append(best)
        for k, (s, n) in enumerate(seqs):
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[k] = (out, n)
    return merges
