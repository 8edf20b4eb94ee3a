"""Byte-level BPE training with the exact semantics of tokenizers' BpeTrainer.

Engine-free: word tables, the single-node trainer around the Cython kernel
(native/bpe_merge.pyx), the sharded merge protocol, the SuperBPE curriculum and the output
artifacts. The pipeline step (pipelines/steps/train_bpe.py) places these on tasks and
actors and only moves word tables (as Arrow files) and merge messages between processes.

Flow: sequences -> words (stages.pretokenize) -> word table (raw UTF-8 words, exact int64
counts) -> alphabet + ids (HF order: special tokens, then the alphabet by code point) ->
symbol arrays -> merge loop -> model -> artifacts (tokenizer.json, merges.txt, vocab.json,
tiktoken ranks, training_stats.json).
"""
from __future__ import annotations

import base64
import json
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.pretokenize import (
    DIGIT_MODES,
    PRESETS,
    PreTokSpec,
    bytes_to_unicode,
    unicode_to_bytes,
)

# HF gives initial-alphabet characters this count so limit_alphabet never drops them.
_ALWAYS = np.iinfo(np.int64).max


class BpeConfigError(ValueError):
    """A bad train-bpe configuration; the message names the key and what is allowed."""


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SuperBpeConfig:
    transition: int          # vocab size at which stage 1 (subwords) ends
    max_words: int = 4       # a superword token spans at most this many words


@dataclass(frozen=True)
class BpeConfig:
    """Everything that changes the trained tokenizer (see docs/bpe.md)."""

    vocab_size: int
    preset: str = "gpt2"
    digits: str = "native"
    pattern: str | None = None
    min_frequency: int = 0
    max_token_length: int | None = None
    special_tokens: tuple[str, ...] = ()
    limit_alphabet: int | None = None
    # "bytelevel": all 256 byte characters (every input encodable); "seen": only those in
    # the data (HF's default); or an explicit list of characters.
    initial_alphabet: str | tuple[str, ...] = "bytelevel"
    prune_below: int = 1     # drop words seen fewer times after the reduce (1 = keep all)
    superbpe: SuperBpeConfig | None = None
    merge_mode: str = "single"          # "single" | "sharded" (needs an engine with actors: Ray)
    max_partition_mb: int = 8192        # per-partition word-table cap (clear error past it)
    partitions: int | None = None       # hash partitions of the word table; None: from the data
    export_merge_free: bool = False
    record_mixture: bool = False

    _KEYS = (
        "vocab_size", "preset", "digits", "pattern", "min_frequency", "max_token_length",
        "special_tokens", "limit_alphabet", "initial_alphabet", "prune_below", "superbpe",
        "merge_mode", "max_partition_mb", "partitions", "export_merge_free", "record_mixture",
    )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "BpeConfig":
        if not isinstance(raw, Mapping):
            raise BpeConfigError(f"bpe config must be a mapping, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(cls._KEYS))
        if unknown:
            raise BpeConfigError(f"unknown bpe config key(s) {unknown}; allowed: {list(cls._KEYS)}")
        if "vocab_size" not in raw:
            raise BpeConfigError("bpe config needs vocab_size")
        kw = dict(raw)
        sb = kw.get("superbpe")
        if sb is not None and not isinstance(sb, SuperBpeConfig):
            if not isinstance(sb, Mapping) or "transition" not in sb:
                raise BpeConfigError("superbpe must be a mapping like {transition: 24000, max_words: 4}")
            extra = sorted(set(sb) - {"transition", "max_words"})
            if extra:
                raise BpeConfigError(f"unknown superbpe key(s) {extra}; allowed: ['transition', 'max_words']")
            kw["superbpe"] = SuperBpeConfig(int(sb["transition"]), int(sb.get("max_words", 4)))
        if "special_tokens" in kw:
            kw["special_tokens"] = tuple(kw["special_tokens"] or ())
        ia = kw.get("initial_alphabet")
        if ia is not None and not isinstance(ia, str):
            kw["initial_alphabet"] = tuple(ia)
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def need_int(name, value, lo):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
                raise BpeConfigError(f"{name} must be an integer >= {lo}, got {value!r}")

        need_int("vocab_size", self.vocab_size, 1)
        need_int("min_frequency", self.min_frequency, 0)
        need_int("prune_below", self.prune_below, 1)
        need_int("max_partition_mb", self.max_partition_mb, 1)
        if self.partitions is not None:
            need_int("partitions", self.partitions, 1)
        if self.max_token_length is not None:
            need_int("max_token_length", self.max_token_length, 1)
        if self.limit_alphabet is not None:
            need_int("limit_alphabet", self.limit_alphabet, 0)
        if self.pattern is None and self.preset not in PRESETS:
            raise BpeConfigError(f"preset must be one of {list(PRESETS)}, got {self.preset!r}")
        if self.digits not in DIGIT_MODES:
            raise BpeConfigError(f"digits must be one of {list(DIGIT_MODES)}, got {self.digits!r}")
        if self.merge_mode not in ("single", "sharded"):
            raise BpeConfigError(f"merge_mode must be 'single' or 'sharded', got {self.merge_mode!r}")
        if not all(isinstance(t, str) and t for t in self.special_tokens):
            raise BpeConfigError("special_tokens must be non-empty strings")
        if isinstance(self.initial_alphabet, str):
            if self.initial_alphabet not in ("bytelevel", "seen"):
                raise BpeConfigError("initial_alphabet must be 'bytelevel', 'seen' or a list of single characters")
        elif not all(isinstance(c, str) and len(c) == 1 for c in self.initial_alphabet):
            raise BpeConfigError("initial_alphabet entries must be single characters")
        if self.superbpe is not None:
            sb = self.superbpe
            if self.pattern is not None:
                raise BpeConfigError("superbpe needs a named preset, not a custom pattern")
            if not (0 < sb.transition < self.vocab_size):
                raise BpeConfigError(f"superbpe.transition must be between 0 and vocab_size ({self.vocab_size}), got {sb.transition}")
            if sb.max_words < 1:
                raise BpeConfigError("superbpe.max_words must be >= 1")
        try:
            self.pretok()
        except ValueError as e:
            raise BpeConfigError(str(e)) from None

    def pretok(self, superword: bool = False) -> PreTokSpec:
        return PreTokSpec(preset=self.preset, digits=self.digits, pattern=self.pattern, superword=superword)

    def initial_alphabet_chars(self) -> list[str]:
        if self.initial_alphabet == "bytelevel":
            return sorted(bytes_to_unicode().values())
        if self.initial_alphabet == "seen":
            return []
        return list(self.initial_alphabet)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["special_tokens"] = list(self.special_tokens)
        if not isinstance(self.initial_alphabet, str):
            d["initial_alphabet"] = list(self.initial_alphabet)
        return d


# --------------------------------------------------------------------------------------
# Word tables
# --------------------------------------------------------------------------------------

@dataclass
class WordTable:
    """Distinct raw UTF-8 words and exact int64 counts, packed for cheap transfer.

    data[offsets[i]:offsets[i+1]] is word i. Built by native.bpe_pretok.PreTokenizer.
    """

    data: np.ndarray      # uint8
    offsets: np.ndarray   # int64, len n+1
    counts: np.ndarray    # int64, len n

    def __post_init__(self):
        self.data = np.ascontiguousarray(self.data, dtype=np.uint8)
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        self.counts = np.ascontiguousarray(self.counts, dtype=np.int64)
        if len(self.offsets) != len(self.counts) + 1:
            raise ValueError("offsets must have len(counts) + 1 entries")

    def __len__(self) -> int:
        return len(self.counts)

    @classmethod
    def empty(cls) -> "WordTable":
        return cls(np.empty(0, np.uint8), np.zeros(1, np.int64), np.empty(0, np.int64))

    @classmethod
    def from_counter(cls, counter, min_count: int = 1) -> "WordTable":
        impl = getattr(counter, "_impl", counter)
        return cls(*impl.packed(min_count))

    @classmethod
    def from_dict(cls, counts: Mapping[bytes | str, int]) -> "WordTable":
        from native.bpe_pretok import PreTokenizer
        from stages.pretokenize import char_class_table

        acc = PreTokenizer(char_class_table(), "gpt2")
        for w, c in counts.items():
            acc.add_pieces([w], int(c))
        return cls(*acc.packed(1))

    @classmethod
    def reduce(cls, tables: Iterable["WordTable"], min_count: int = 1) -> "WordTable":
        """Sum tables by word; words under min_count are pruned after the sum."""
        from native.bpe_pretok import PreTokenizer
        from stages.pretokenize import char_class_table

        acc = PreTokenizer(char_class_table(), "gpt2")
        for t in tables:
            acc.add_packed(t.data, t.offsets, t.counts)
        return cls(*acc.packed(min_count))

    @classmethod
    def concat(cls, tables: Sequence["WordTable"]) -> "WordTable":
        """Tables with disjoint words (hash partitions) as one table."""
        tables = [t for t in tables if len(t)]
        if not tables:
            return cls.empty()
        if len(tables) == 1:
            return tables[0]
        lengths = np.concatenate([np.diff(t.offsets) for t in tables])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(np.concatenate([t.data for t in tables]), offsets, np.concatenate([t.counts for t in tables]))

    def to_arrow(self) -> pa.Table:
        """(word: large_binary, count: int64), zero-copy from the packed arrays."""
        words = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(self),
                                                 [None, pa.py_buffer(self.offsets), pa.py_buffer(self.data)])
        return pa.table({"word": words, "count": pa.array(self.counts, pa.int64())})

    @classmethod
    def from_arrow(cls, table: pa.Table) -> "WordTable":
        if table.num_rows == 0:
            return cls.empty()
        words = table.column("word").combine_chunks().cast(pa.large_binary())
        _, off_buf, data_buf = words.buffers()
        offsets = np.frombuffer(off_buf, dtype=np.int64)[words.offset: words.offset + len(words) + 1]
        data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0]: offsets[-1]]
        counts = table.column("count").to_numpy()
        return cls(data, offsets - offsets[0], counts)

    def sorted(self) -> "WordTable":
        """The same words in byte order: a canonical layout, so equal tables are equal files."""
        t = self.to_arrow()
        return WordTable.from_arrow(t.take(pc.sort_indices(t, sort_keys=[("word", "ascending")])))

    def partition(self, n_parts: int) -> list["WordTable"]:
        from native.bpe_pretok import partition_packed

        return [WordTable(*p) for p in partition_packed(self.data, self.offsets, self.counts, n_parts)]

    def words(self) -> list[bytes]:
        raw = self.data.tobytes()
        o = self.offsets
        return [raw[o[i]:o[i + 1]] for i in range(len(self.counts))]

    def to_dict(self) -> dict[bytes, int]:
        return dict(zip(self.words(), self.counts.tolist()))

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.offsets.nbytes + self.counts.nbytes


# --------------------------------------------------------------------------------------
# Alphabet and initial vocabulary (HF: add_special_tokens, compute_alphabet, tokenize_words)
# --------------------------------------------------------------------------------------

def byte_histogram(table: WordTable) -> np.ndarray:
    from native.bpe_merge import byte_histogram as _hist

    return _hist(table.data, table.offsets, table.counts)


def compute_alphabet(hist: np.ndarray, initial: Sequence[str], limit: int | None) -> list[str]:
    """The kept alphabet, sorted by code point.

    Counts are per character occurrence weighted by word count; initial characters are
    always kept first. With limit_alphabet the least frequent are dropped; HF leaves ties
    at the cut to an unstable sort, here the larger code point goes first.
    """
    b2u = bytes_to_unicode()
    counts: dict[str, int] = {b2u[b]: int(hist[b]) for b in range(256) if hist[b] > 0}
    for c in initial:
        counts[c] = int(_ALWAYS)
    kept = list(counts.items())
    if limit is not None and len(kept) > limit:
        kept.sort(key=lambda kv: (kv[1], -ord(kv[0])))
        kept = kept[len(kept) - limit:]
    return sorted((c for c, _ in kept), key=ord)


def initial_vocab(special_tokens: Sequence[str], alphabet: Sequence[str]) -> list[str]:
    vocab: list[str] = []
    seen: set[str] = set()
    for t in list(special_tokens) + list(alphabet):
        if t not in seen:
            seen.add(t)
            vocab.append(t)
    return vocab


def byte_lut(vocab: Sequence[str]) -> np.ndarray:
    """int32[256]: the id of each byte's character, -1 when it is not in the vocabulary."""
    index = {t: i for i, t in enumerate(vocab)}
    b2u = bytes_to_unicode()
    return np.array([index.get(b2u[b], -1) for b in range(256)], dtype=np.int32)


def encode_table(table: WordTable, lut: np.ndarray):
    """Words as symbol arrays (chars outside the alphabet removed, as HF does).

    Returns (symbols, offsets, counts) for the words that still hold a pair.
    """
    from native.bpe_merge import encode_words

    sym, off, kept = encode_words(table.data, table.offsets, lut, 2)
    return sym, off, table.counts[kept]


# --------------------------------------------------------------------------------------
# The trained model and the single-node trainer
# --------------------------------------------------------------------------------------

@dataclass
class BpeModel:
    vocab: list[str]                 # byte-level token strings by id
    merges: np.ndarray               # (n, 3) int32: left, right, new id; HF's order, duplicates kept
    special_tokens: tuple[str, ...]
    pretok: PreTokSpec
    stats: dict[str, Any] = field(default_factory=dict)

    def vocab_dict(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.vocab)}

    def merge_pairs(self) -> list[tuple[str, str]]:
        """Merges as HF exports them: one per pair, at the rank of its last occurrence.

        HF stores merges in a map keyed by pair, so a pair merged twice (possible when a
        merge reuses an existing token) keeps its later rank.
        """
        seen: set[tuple[int, int]] = set()
        out = []
        for left, right, _ in self.merges[::-1].tolist():
            if (left, right) not in seen:
                seen.add((left, right))
                out.append((self.vocab[left], self.vocab[right]))
        out.reverse()
        return out

    # ---- exports -----------------------------------------------------------------------

    def hf_tokenizer(self):
        from tokenizers import AddedToken, Tokenizer, decoders, models

        tok = Tokenizer(models.BPE(vocab=self.vocab_dict(), merges=self.merge_pairs(), fuse_unk=False))
        tok.pre_tokenizer = self.pretok.hf_pre_tokenizer()
        tok.decoder = decoders.ByteLevel()
        if self.special_tokens:
            tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in self.special_tokens])
        return tok

    def tokenizer_json(self) -> bytes:
        return self.hf_tokenizer().to_str(pretty=True).encode("utf-8")

    def merges_txt(self) -> bytes:
        lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in self.merge_pairs()]
        return ("\n".join(lines) + "\n").encode("utf-8")

    def vocab_json(self) -> bytes:
        return json.dumps(self.vocab_dict(), ensure_ascii=False, indent=0).encode("utf-8")

    def token_bytes(self) -> list[bytes | None]:
        """Raw bytes of each token; None for special tokens and characters outside the
        byte-level alphabet (an initial_alphabet entry can be such a character)."""
        u2b = unicode_to_bytes()
        specials = set(self.special_tokens)
        out: list[bytes | None] = []
        for t in self.vocab:
            if t in specials or any(c not in u2b for c in t):
                out.append(None)
            else:
                out.append(bytes(u2b[c] for c in t))
        return out

    def tiktoken_ranks(self) -> bytes:
        """tiktoken's format: base64 of the token bytes and its rank (= our id) per line."""
        lines = [
            f"{base64.b64encode(b).decode('ascii')} {i}"
            for i, b in enumerate(self.token_bytes())
            if b is not None
        ]
        return ("\n".join(lines) + "\n").encode("ascii")

    def tiktoken_config(self) -> dict[str, Any]:
        index = self.vocab_dict()
        return {
            "pattern": self.pretok.regex,
            "special_tokens": {t: index[t] for t in self.special_tokens},
            "ranks_file": "tokenizer.tiktoken",
        }

    def tiktoken_encoding(self, name: str = "tokenmill"):
        import tiktoken

        ranks = {b: i for i, b in enumerate(self.token_bytes()) if b is not None}
        cfg = self.tiktoken_config()
        return tiktoken.Encoding(name, pat_str=cfg["pattern"], mergeable_ranks=ranks,
                                 special_tokens=cfg["special_tokens"])

    def merge_free_vocab(self) -> list[str]:
        """Tokens in an order that reveals nothing of the merge order (see docs/bpe.md):
        special tokens, then by byte length, then bytewise."""
        specials = list(self.special_tokens)
        rest = [t for t in self.vocab if t not in set(specials)]
        tb = dict(zip(self.vocab, self.token_bytes()))
        rest.sort(key=lambda t: (len(tb[t]) if tb[t] is not None else len(t.encode()), tb[t] or t.encode()))
        return specials + rest

    def merge_free_tokenizer_json(self) -> bytes:
        """A merge-free tokenizer: greedy longest match over the vocabulary ("Train It and
        Forget It" shows merge lists are not needed at inference), as an HF WordPiece model
        with an empty continuation prefix."""
        from tokenizers import AddedToken, Tokenizer, decoders, models

        vocab = {t: i for i, t in enumerate(self.merge_free_vocab())}
        unk = self.special_tokens[0] if self.special_tokens else self.merge_free_vocab()[0]
        tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=unk, continuing_subword_prefix="",
                                         max_input_chars_per_word=1 << 30))
        tok.pre_tokenizer = self.pretok.hf_pre_tokenizer()
        tok.decoder = decoders.ByteLevel()
        if self.special_tokens:
            tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in self.special_tokens])
        return tok.to_str(pretty=True).encode("utf-8")

    def artifacts(self, export_merge_free: bool = False) -> dict[str, bytes]:
        """File name -> content for every output (the caller writes them atomically)."""
        out = {
            "tokenizer.json": self.tokenizer_json(),
            "merges.txt": self.merges_txt(),
            "vocab.json": self.vocab_json(),
            "tokenizer.tiktoken": self.tiktoken_ranks(),
            "tiktoken.json": (json.dumps(self.tiktoken_config(), ensure_ascii=False, indent=2) + "\n").encode(),
        }
        if export_merge_free:
            vocab = self.merge_free_vocab()
            out["vocab_merge_free.json"] = json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False, indent=0).encode()
            out["tokenizer_merge_free.json"] = self.merge_free_tokenizer_json()
        out["training_stats.json"] = (json.dumps(self.stats, indent=2, sort_keys=True, default=_jsonable) + "\n").encode()
        return out


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class MergeProgress:
    """tqdm bar over merges (its rate is merges/s); a no-op when disabled."""

    def __init__(self, total: int, enabled: bool, desc: str = "merges"):
        self.bar = None
        self.last = 0
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="merge", smoothing=0.1)

    def __call__(self, n: int) -> None:
        if self.bar is not None and n > self.last:
            self.bar.update(n - self.last)
            self.last = n

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class PreparedWords:
    """What the merge loop starts from: the initial vocabulary and symbol arrays."""

    vocab: list[str]
    symbols: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray
    alphabet_size: int
    n_words: int


def prepare_words(table: WordTable, cfg: BpeConfig) -> PreparedWords:
    """HF steps 1-3: special tokens, alphabet, words as symbol arrays."""
    alphabet = compute_alphabet(byte_histogram(table), cfg.initial_alphabet_chars(), cfg.limit_alphabet)
    vocab = initial_vocab(cfg.special_tokens, alphabet)
    sym, off, counts = encode_table(table, byte_lut(vocab))
    return PreparedWords(vocab, sym, off, counts, len(alphabet), len(table))


def run_merges(vocab: Sequence[str], symbols, offsets, counts, *, vocab_size: int,
               min_frequency: int = 0, max_token_length: int | None = None,
               max_words: int = 0, superword_bans: bool = False,
               progress: bool = False, stats: dict | None = None):
    """The single-node merge loop. Returns (final vocab, merges (n, 3) int32)."""
    from native.bpe_merge import MergeState, WordStore

    t0 = time.perf_counter()
    state = MergeState(list(vocab), vocab_size, min_frequency, max_words, superword_bans, superword_bans)
    store = WordStore(symbols, offsets, counts, state.token_lengths(), max_token_length)
    state.add_counts(*store.initial_pairs())
    state.build_heap()
    n_initial = int(state.n_pairs)
    t1 = time.perf_counter()
    bar = MergeProgress(max(0, vocab_size - len(vocab)), progress)
    try:
        state.train_local(store, bar)
    finally:
        bar.close()
    t2 = time.perf_counter()
    if stats is not None:
        stats.update({
            "initial_pairs": n_initial,
            "pair_count_seconds": t1 - t0,
            "merge_seconds": t2 - t1,
            "pairs_seen": int(state.n_pairs),
            "stale_pops": int(state.n_stale),
            "banned_merges": int(state.n_banned),
        })
    return state.vocab_tokens(), state.merges_array()


def train_from_table(table: WordTable, cfg: BpeConfig, *, progress: bool = False,
                     vocab_size: int | None = None) -> BpeModel:
    """Train (stage 1 only when SuperBPE is on) from a reduced word table, in this process."""
    stats: dict[str, Any] = {}
    t0 = time.perf_counter()
    prep = prepare_words(table, cfg)
    stats["prepare_seconds"] = time.perf_counter() - t0
    vocab, merges = run_merges(
        prep.vocab, prep.symbols, prep.offsets, prep.counts,
        vocab_size=vocab_size or cfg.vocab_size, min_frequency=cfg.min_frequency,
        max_token_length=cfg.max_token_length, progress=progress, stats=stats)
    stats.update({"words": len(table), "word_occurrences": table.total, "alphabet": prep.alphabet_size,
                  "merges": int(len(merges)), "vocab": len(vocab)})
    return BpeModel(vocab, merges, tuple(cfg.special_tokens), cfg.pretok(), stats)


# --------------------------------------------------------------------------------------
# Sharded merging: the coordinator side (engine-free; transports plug in)
# --------------------------------------------------------------------------------------

class WordStoreShard:
    """The worker side of sharded merging for one partition of the words; the Ray adapter
    wraps one in an actor, tests call it directly."""

    def __init__(self, table: WordTable):
        self.table = table
        self.store = None

    def byte_hist(self) -> np.ndarray:
        return byte_histogram(self.table)

    def build(self, lut: np.ndarray, token_lengths: np.ndarray, max_token_length):
        from native.bpe_merge import WordStore

        sym, off, counts = encode_table(self.table, lut)
        self.table = None  # the store now holds all the merge needs
        self.store = WordStore(sym, off, counts, token_lengths, max_token_length)
        return self.store.initial_pairs()

    def step(self, n_prev: int, drops, cmds: np.ndarray):
        self.store.settle(n_prev)
        if drops is not None:
            self.store.drop(*drops)
        return self.store.apply_batch(0, cmds)

    def settle(self, n_prev: int) -> float:
        self.store.settle(n_prev)
        return peak_rss_mb()


def coordinate_merges(byte_hist: np.ndarray, build: Callable[[np.ndarray, np.ndarray], list],
                      step: Callable[[int, Any, np.ndarray], list], settle: Callable[[int], list],
                      cfg: BpeConfig, vocab_size: int, *, progress: bool = False,
                      max_batch: int = 32, speculate: bool = True) -> BpeModel:
    """Merge with the words spread over shards; same merges as the single-node loop.

    build(lut, token_lengths) -> each shard's initial pair counts;
    step(n_prev, drops, cmds) -> each shard's changes for the merges in cmds;
    settle(n_prev) -> each shard's peak memory, after undoing unconfirmed merges.

    One round trip per batch: the next merge (certain) plus guessed followers (the next
    valid heap entries). The shards apply them in order and report each merge's changes;
    the coordinator replays HF's selection with the real changes, keeps the guesses that
    were right, and the shards undo the rest at the start of the next round. The real heap
    is only ever advanced by that replay, so the result equals single-node training.
    """
    from native.bpe_merge import MergeState

    stats: dict[str, Any] = {"merge_mode": "sharded"}
    t0 = time.perf_counter()
    alphabet = compute_alphabet(byte_hist, cfg.initial_alphabet_chars(), cfg.limit_alphabet)
    vocab = initial_vocab(cfg.special_tokens, alphabet)
    state = MergeState(vocab, vocab_size, cfg.min_frequency)
    for left, right, cnt in build(byte_lut(vocab), state.token_lengths()):
        state.add_counts(left, right, cnt)
    state.build_heap()
    stats["initial_pairs"] = int(state.n_pairs)
    t1 = time.perf_counter()

    bar = MergeProgress(max(0, vocab_size - len(vocab)), progress)
    rounds = guessed = kept = 0
    k = 1
    n_prev = 0
    drops = None
    pending = state.next_exact()
    try:
        while pending is not None:
            cmds = state.speculate(pending, k if speculate else 1)
            results = step(n_prev, drops, cmds)
            rounds += 1
            guessed += len(cmds) - 1
            drop_l, drop_r, drop_s = [], [], []
            n_ok = 0
            pending = None
            for j in range(len(cmds)):
                sel = [r[0] == j for r in results]
                left, right, delta, gain = (np.concatenate([r[i][m] for r, m in zip(results, sel)])
                                            for i in (1, 2, 3, 4))
                dl, dr = state.absorb_arrays(int(cmds[j, 5]), left, right, delta, gain)
                if len(dl):
                    drop_l.append(dl)
                    drop_r.append(dr)
                    drop_s.append(np.full(len(dl), cmds[j, 5], dtype=np.int32))
                n_ok = j + 1
                nxt = state.next_exact()
                if nxt is None:
                    break
                if j + 1 < len(cmds) and tuple(int(x) for x in cmds[j + 1]) == nxt:
                    kept += 1
                    continue
                pending = nxt
                break
            drops = ((np.concatenate(drop_l), np.concatenate(drop_r), np.concatenate(drop_s))
                     if drop_l else None)
            # Guess further while guesses hold, fewer when they fail.
            k = min(max_batch, 2 * k) if n_ok == len(cmds) else max(1, n_ok)
            n_prev = n_ok
            bar(int(cmds[0, 5]) + n_ok)
    finally:
        bar.close()
    peaks = settle(n_prev)
    t2 = time.perf_counter()
    merges = state.merges_array()
    stats.update({
        "shards": len(peaks), "prepare_seconds": t1 - t0, "merge_seconds": t2 - t1,
        "rounds": rounds, "guessed": guessed, "guesses_kept": kept, "merges": int(len(merges)),
        "merges_per_round": len(merges) / max(1, rounds), "peak_rss_mb_shards": peaks,
        "alphabet": len(alphabet), "pairs_seen": int(state.n_pairs), "stale_pops": int(state.n_stale),
    })
    return BpeModel(state.vocab_tokens(), merges, tuple(cfg.special_tokens), cfg.pretok(), stats)


def train_sharded_local(tables: Sequence[WordTable], cfg: BpeConfig, vocab_size: int | None = None,
                        **kw) -> BpeModel:
    """Sharded merging with in-process shards (tests; same protocol as on Ray)."""
    shards = [WordStoreShard(t) for t in tables]
    hist = np.sum([s.byte_hist() for s in shards], axis=0)
    return coordinate_merges(
        hist,
        lambda lut, lens: [s.build(lut, lens, cfg.max_token_length) for s in shards],
        lambda n, d, c: [s.step(n, d, c) for s in shards],
        lambda n: [s.settle(n) for s in shards],
        cfg, vocab_size or cfg.vocab_size, **kw)


# --------------------------------------------------------------------------------------
# SuperBPE
# --------------------------------------------------------------------------------------

def superword_segmentation(table: WordTable, stage1: BpeModel):
    """Stage-2 words segmented by the stage-1 tokenizer (merges applied by rank to the
    whole superword, which is what encoding with the final tokenizer will do).

    Returns (symbols, offsets, counts) for the words that hold a pair.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab=stage1.vocab_dict(), merges=stage1.merge_pairs(), fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    texts = [w.decode("utf-8") for w in table.words()]
    ids: list[list[int]] = []
    step = 1 << 16
    for i in range(0, len(texts), step):
        ids.extend(e.ids for e in tok.encode_batch(texts[i:i + step], add_special_tokens=False))
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    keep = np.flatnonzero(lengths >= 2)
    offsets = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(lengths[keep], out=offsets[1:])
    flat = np.fromiter((t for k in keep.tolist() for t in ids[k]), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets, table.counts[keep]


def superbpe_stage2(stage1: BpeModel, table2: WordTable, cfg: BpeConfig, *, progress: bool = False) -> BpeModel:
    """Continue from stage 1 over superwords, with SuperBPE's bans (": ", > max_words
    words, newline next to text) enforced when a merge is selected."""
    assert cfg.superbpe is not None
    stats: dict[str, Any] = {}
    t0 = time.perf_counter()
    sym, off, counts = superword_segmentation(table2, stage1)
    stats["segment_seconds"] = time.perf_counter() - t0
    vocab, merges2 = run_merges(
        stage1.vocab, sym, off, counts, vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
        max_token_length=cfg.max_token_length, max_words=cfg.superbpe.max_words,
        superword_bans=True, progress=progress, stats=stats)
    merges = np.concatenate([stage1.merges, merges2]) if len(merges2) else stage1.merges
    stats.update({"words": len(table2), "word_occurrences": table2.total, "merges": int(len(merges2))})
    return BpeModel(vocab, merges, tuple(cfg.special_tokens), cfg.pretok(superword=True),
                    {"stage1": stage1.stats, "stage2": stats})


def superword_violations(model: BpeModel, first_id: int, max_words: int) -> list[str]:
    """Tokens from id `first_id` on that break a SuperBPE ban (for tests and reports)."""
    bad = []
    for t in model.vocab[first_id:]:
        words = [p for p in t.split("Ġ") if p]
        if ":Ġ" in t or len(words) > max_words:
            bad.append(t)
        elif ("Ċ" in t or "č" in t) and any(c not in "ĠĉĊċČč" for c in t):
            bad.append(t)
    return bad


# --------------------------------------------------------------------------------------
# One entry point for engines: count with a callback, train, return the model
# --------------------------------------------------------------------------------------

CountFn = Callable[[PreTokSpec, int], tuple[WordTable, dict[str, Any]]]


def train_bpe(count: CountFn, cfg: BpeConfig, *, progress: bool = False,
              merge: Callable[..., BpeModel] | None = None) -> BpeModel:
    """Run the whole curriculum. `count(spec, prune_below)` returns the reduced word table
    and counting stats; `merge(table, cfg, vocab_size)` trains (default: this process)."""
    t0 = time.perf_counter()
    table, cstats = count(cfg.pretok(), cfg.prune_below)
    t1 = time.perf_counter()
    trainer = merge or (lambda tb, c, vs: train_from_table(tb, c, progress=progress, vocab_size=vs))
    first_vocab = cfg.superbpe.transition if cfg.superbpe else cfg.vocab_size
    model = trainer(table, cfg, first_vocab)
    t2 = time.perf_counter()
    stats: dict[str, Any] = {"config": cfg.to_dict(), "counting": cstats, "count_seconds": t1 - t0,
                             "train_seconds": t2 - t1, **model.stats}
    if cfg.superbpe:
        del table
        t3 = time.perf_counter()
        table2, cstats2 = count(cfg.pretok(superword=True), cfg.prune_below)
        t4 = time.perf_counter()
        model = superbpe_stage2(model, table2, cfg, progress=progress)
        stats["superbpe"] = {"transition": cfg.superbpe.transition, "max_words": cfg.superbpe.max_words,
                             "count_seconds": t4 - t3, "train_seconds": time.perf_counter() - t4,
                             "counting": cstats2, **model.stats}
    stats["total_seconds"] = time.perf_counter() - t0
    stats["vocab"] = len(model.vocab)
    stats["merges_total"] = int(len(model.merges))
    stats["peak_rss_mb_driver"] = peak_rss_mb()
    model.stats = stats
    return model
