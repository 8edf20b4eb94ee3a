"""Encode documents to token ids: tiktoken where it is exact, Hugging Face `tokenizers` otherwise.

`Encoder.from_tokenizer_json` reads a `tokenizer.json` and decides whether tiktoken can
reproduce Hugging Face's ids exactly. It can when all of these hold (checked on the JSON,
the reason for a "no" is kept in `Encoder.backend_reason`):

- the model is BPE without dropout, subword prefix/suffix or byte fallback;
- there is no normalizer (an empty `Sequence` counts as none);
- the pre-tokenizer is `ByteLevel(use_regex=True)` (the GPT-2 split; `add_prefix_space` is
  replayed here), or `Sequence[Split(Regex, Isolated), ByteLevel(use_regex=False,
  add_prefix_space=False)]` (Llama-3 / Qwen style, and the project's presets: the split
  regex goes to tiktoken; one that leaves text between matches, like SuperBPE's stage-2
  separators, gets an extra alternative so each gap is one piece as in Hugging Face; one
  that can match the empty string is refused);
- every vocabulary entry is a byte-level string;
- merge priority equals id order (rank = id, which is how a byte-level BPE is numbered), each
  merged string comes from exactly one merge, every multi-byte token is some merge's result;
- unless the model sets `ignore_merges` (tiktoken's whole-piece shortcut), every token is
  what Hugging Face's BPE itself makes of the token's own bytes.

Even then some documents go to Hugging Face, one by one, so the result stays exact:
documents containing the text of an added/special token (Hugging Face splits those out
first), documents with bytes the vocabulary lacks (Hugging Face drops them, which changes
neighbouring merges), and, with a split regex not known to cover all text, any document
whose ids do not spell back its exact UTF-8 length. `EncodeStats.hf_documents` counts
them. The post-processor, truncation and padding of the `tokenizer.json` are not applied
(ids equal `Tokenizer.encode(text, add_special_tokens=False)`); document framing is ours:
`eod` appended and/or `bos` prepended per document, or neither.

With the GPT-2 split, tiktoken runs it without its lookahead on marked text, about twice as
fast (see `_mark_whitespace_runs`).

`Encoder.from_tiktoken` takes a tiktoken ranks file (``base64(token) rank`` per line) and a
split regex; text is encoded as ordinary text (special-token strings are not special).

Ids are returned as int32 numpy arrays, either one per document or flat (concatenated ids
plus per-document lengths), which is what StochasTok and the shard writer consume.
"""
from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from stages.pretokenize import preset_pattern, unicode_to_bytes
from stages.storage import atomic_write_bytes, read_bytes

# The split regexes are the pre-tokenizer's presets (one definition, in stages.pretokenize).
GPT2_PATTERN = preset_pattern("gpt2")
LLAMA3_PATTERN = preset_pattern("llama3")
PATTERNS = {"gpt2": GPT2_PATTERN, "llama3": LLAMA3_PATTERN, "o200k": preset_pattern("o200k")}
#: Split regexes whose alternatives match every character (letters, numbers, other
#: non-space, whitespace), so tiktoken never skips text with them.
FULL_COVERAGE = frozenset(PATTERNS.values())


def is_tiktoken_ranks(path: str) -> bool:
    """Tokenizer files are told apart by name: `*.json` is a Hugging Face tokenizer.json,
    anything else (e.g. `cl100k_base.tiktoken`) a tiktoken ranks file."""
    return not str(path).lower().endswith(".json")


#: Tried in order when ``eod="auto"``.
EOD_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[EOS]")

ID_DTYPE = np.dtype(np.int32)


_BYTE_OF_CHAR = unicode_to_bytes()


def byte_level_to_bytes(token: str) -> bytes | None:
    """Bytes a byte-level token string stands for; None if it is not a byte-level string."""
    try:
        return bytes(_BYTE_OF_CHAR[ch] for ch in token)
    except KeyError:
        return None


def _read_text(path: str, storage_options: dict | None = None) -> str:
    return read_bytes(path, storage_options).decode("utf-8")


def read_tiktoken_ranks(path: str, storage_options: dict | None = None) -> dict[bytes, int]:
    """Parse a tiktoken ranks file: one ``base64(token) rank`` per non-empty line."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(_read_text(path, storage_options).splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except Exception as exc:
            raise ValueError(f"{path}:{lineno}: not a tiktoken ranks line: {line!r}") from exc
    return ranks


def write_tiktoken_ranks(path: str, ranks: dict[bytes, int]) -> None:
    """Write `ranks` in tiktoken's file format, sorted by rank."""
    lines = [f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in
             sorted(ranks.items(), key=lambda kv: kv[1])]
    atomic_write_bytes(path, "".join(lines).encode("utf-8"))


def _merge_pairs(model: dict) -> list[tuple[str, str]]:
    pairs = []
    for merge in model.get("merges", []):
        if isinstance(merge, str):
            left, _, right = merge.partition(" ")  # byte-level tokens never hold a space
        else:
            left, right = merge
        pairs.append((left, right))
    return pairs


def tiktoken_ranks_from_tokenizer_json(spec: dict) -> dict[bytes, int]:
    """Mergeable ranks of a byte-level BPE `tokenizer.json` (rank = id, added tokens left out)."""
    added = {t["content"] for t in spec.get("added_tokens", [])}
    ranks = {}
    for token, idx in spec["model"]["vocab"].items():
        if token in added:
            continue
        raw = byte_level_to_bytes(token)
        if raw is None:
            raise ValueError(f"token {token!r} (id {idx}) is not a byte-level string")
        ranks[raw] = idx
    return ranks


@dataclass(frozen=True)
class _TiktokenPlan:
    pattern: str
    prefix_space: bool
    ranks: dict[bytes, int]
    check_self_encode: bool


def _is_empty_normalizer(norm) -> bool:
    return norm is None or (norm.get("type") == "Sequence" and not norm.get("normalizers"))


def _pre_tokenizer_plan(pre) -> tuple[str, bool] | str:
    """(pattern, add_prefix_space) tiktoken can run, or the reason it cannot."""
    if pre is None:
        return "no pre-tokenizer (tiktoken always splits with a regex)"
    if pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 1:
        pre = pre["pretokenizers"][0]
    if pre.get("type") == "ByteLevel":
        if not pre.get("use_regex", True):
            return "ByteLevel without regex split"
        return GPT2_PATTERN, bool(pre.get("add_prefix_space", False))
    if pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 2:
        split, byte_level = pre["pretokenizers"]
        if (
            split.get("type") == "Split"
            and "Regex" in split.get("pattern", {})
            and split.get("behavior") == "Isolated"
            and not split.get("invert", False)
            and byte_level.get("type") == "ByteLevel"
            and not byte_level.get("use_regex", True)
            and not byte_level.get("add_prefix_space", False)
        ):
            return split["pattern"]["Regex"], False
    return f"pre-tokenizer {json.dumps(pre)[:120]} has no tiktoken equivalent"


def _tiktoken_plan(spec: dict) -> _TiktokenPlan | str:
    """What tiktoken needs to reproduce `spec` exactly, or the reason it cannot."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return f"model type {model.get('type')!r} is not BPE"
    if model.get("dropout") not in (None, 0, 0.0):
        return "BPE dropout is random"
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return "BPE with subword prefix/suffix"
    if model.get("byte_fallback"):
        return "BPE byte_fallback"
    if not _is_empty_normalizer(spec.get("normalizer")):
        return f"normalizer {spec['normalizer'].get('type')!r} changes the text"
    pre = _pre_tokenizer_plan(spec.get("pre_tokenizer"))
    if isinstance(pre, str):
        return pre
    pattern, prefix_space = pre
    try:
        ranks = tiktoken_ranks_from_tokenizer_json(spec)
    except ValueError as exc:
        return f"not a byte-level vocabulary: {exc}"
    vocab = model["vocab"]
    added = {t["content"] for t in spec.get("added_tokens", [])}
    produced: set[str] = set()
    last_id = -1
    for rank, (left, right) in enumerate(_merge_pairs(model)):
        merged = left + right
        if merged in produced:
            return f"merge {rank} ({left!r}, {right!r}) re-makes an existing token"
        produced.add(merged)
        idx = vocab.get(merged)
        if idx is None:
            return f"merge {rank} makes {merged!r}, which is not in the vocabulary"
        if idx <= last_id:
            return f"merge order is not id order at merge {rank} ({merged!r}, id {idx})"
        last_id = idx
    for token in vocab:
        if token not in added and len(token) > 1 and token not in produced:
            return f"token {token!r} is made by no merge"
    return _TiktokenPlan(pattern, prefix_space, ranks, not model.get("ignore_merges", False))


@dataclass
class EncodeStats:
    """Counters of one encoder; merge per-worker stats with ``+``."""

    documents: int = 0
    hf_documents: int = 0
    text_bytes: int = 0
    tokens: int = 0

    def __add__(self, other: EncodeStats) -> EncodeStats:
        return EncodeStats(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.documents, self.hf_documents, self.text_bytes, self.tokens)


def flat_offsets(lengths: np.ndarray) -> np.ndarray:
    """Start offsets (length n + 1) of documents in a flat token array."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def split_flat(tokens: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """Per-document views into a flat token array."""
    return np.split(tokens, flat_offsets(lengths)[1:-1])


def _usable_cpus() -> int:
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; macOS has only cpu_count
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class Encoder:
    """Text -> token ids, with the exact fastest backend; see the module docstring.

    Build with `from_tokenizer_json` or `from_tiktoken`. `eod` / `bos` take a token string,
    an id, None (no token) or "auto" (eod only: the first of `EOD_CANDIDATES` in the
    vocabulary; an error if none is). `threads` bounds tiktoken's parallelism (it releases
    the GIL); default: the CPUs this process may use.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        token_bytes: list[bytes | None] | None,
        special_tokens: dict[str, int],
        tiktoken_encoding=None,
        tiktoken_exact=None,
        prefix_space: bool = False,
        hf_tokenizer=None,
        backend_reason: str = "",
        eod="auto",
        bos=None,
        threads: int | None = None,
        spec: tuple = (),
        check_stand_ins: bool = False,
        check_coverage: bool = False,
    ):
        self.vocab_size = int(vocab_size)
        self.token_bytes = token_bytes
        self.special_tokens = dict(special_tokens)
        self._tt = tiktoken_encoding
        # set when _tt runs the GPT-2 split on marked text (see _fast_gpt2_pattern)
        self._tt_exact = tiktoken_exact
        self._hf = hf_tokenizer
        self._prefix_space = prefix_space
        self.backend = "tiktoken" if tiktoken_encoding is not None else "hf"
        self.backend_reason = backend_reason
        self.threads = max(1, threads or _usable_cpus())
        self._spec = spec
        self._pool: ThreadPoolExecutor | None = None
        self._dispatch: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.stats = EncodeStats()
        self.eod_id = self._resolve(eod, "eod")
        self.bos_id = self._resolve(bos, "bos")
        # Special-token texts are routed to Hugging Face; screen on their first two
        # characters with str.__contains__ (fast) before the exact check.
        self._added = sorted(self.special_tokens) if hf_tokenizer is not None else []
        self._added_heads = sorted({t[:2] for t in self._added})
        if token_bytes is not None:
            lens = np.array([len(b) if b is not None else -1 for b in token_bytes], np.int64)
            self._token_len = lens
        else:
            self._token_len = None
        # Per-document checks, only where they can fire: stand-in ids exist when the
        # vocabulary lacks single bytes; a regex that is not known to cover all text may
        # leave characters unmatched (tiktoken drops them, Hugging Face keeps them).
        self._check_stand_ins = check_stand_ins
        self._check_coverage = check_coverage and token_bytes is not None

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_tokenizer_json(
        cls,
        path: str,
        *,
        eod="auto",
        bos=None,
        threads: int | None = None,
        storage_options: dict | None = None,
        allow_tiktoken: bool = True,
    ) -> Encoder:
        """Encoder for a Hugging Face `tokenizer.json` (local path or fsspec URL)."""
        return cls.from_tokenizer_str(
            _read_text(path, storage_options),
            eod=eod,
            bos=bos,
            threads=threads,
            allow_tiktoken=allow_tiktoken,
        )

    @classmethod
    def from_tokenizer_str(
        cls,
        text: str,
        *,
        eod="auto",
        bos=None,
        threads: int | None = None,
        allow_tiktoken: bool = True,
    ) -> Encoder:
        from tokenizers import Tokenizer

        spec = json.loads(text)
        hf = Tokenizer.from_str(text)
        hf.no_truncation()
        hf.no_padding()
        added = {t["content"]: int(t["id"]) for t in spec.get("added_tokens", [])}
        vocab = {**spec["model"].get("vocab", {}), **added} if spec.get("model") else added
        if not vocab:
            vocab = {tok: idx for tok, idx in hf.get_vocab(with_added_tokens=True).items()}
        vocab_size = max(vocab.values()) + 1

        plan = _tiktoken_plan(spec) if allow_tiktoken else "tiktoken disabled by caller"
        token_bytes = None
        byte_level = isinstance(plan, _TiktokenPlan) or _looks_byte_level(spec)
        if byte_level:
            token_bytes = [None] * vocab_size
            for tok, idx in spec["model"]["vocab"].items():
                if tok not in added:
                    token_bytes[idx] = byte_level_to_bytes(tok)
        if isinstance(plan, _TiktokenPlan) and plan.check_self_encode:
            plan = _check_self_encode(hf, spec, added) or plan
        encoding = exact = None
        reason = ""
        stand_ins = False
        if isinstance(plan, _TiktokenPlan):
            try:
                encoding, exact, stand_ins = _make_tiktoken(
                    plan.ranks, _hugging_face_split(plan.pattern), vocab_size
                )
            except ValueError as exc:  # a regex tiktoken's engine cannot compile
                plan = f"tiktoken cannot use the split regex: {exc}"
        if not isinstance(plan, _TiktokenPlan):
            reason = plan
        kwargs = {"eod": eod, "bos": bos, "threads": threads}
        return cls(
            vocab_size=vocab_size,
            token_bytes=token_bytes,
            special_tokens=added,
            tiktoken_encoding=encoding,
            tiktoken_exact=exact,
            prefix_space=isinstance(plan, _TiktokenPlan) and plan.prefix_space,
            hf_tokenizer=hf,
            backend_reason=reason,
            spec=("json", text, allow_tiktoken, kwargs),
            check_stand_ins=stand_ins,
            check_coverage=isinstance(plan, _TiktokenPlan) and plan.pattern not in FULL_COVERAGE,
            **kwargs,
        )

    @classmethod
    def from_file(
        cls,
        path: str,
        *,
        pattern: str | None = None,
        special_tokens: dict[str, int] | None = None,
        eod="auto",
        bos=None,
        threads: int | None = None,
        storage_options: dict | None = None,
    ) -> Encoder:
        """Encoder for a `tokenizer.json` (a name ending in .json) or a tiktoken ranks file
        (any other name); a ranks file needs the split `pattern` and may have
        `special_tokens`, which a tokenizer.json carries itself."""
        if not is_tiktoken_ranks(path):
            if pattern is not None or special_tokens:
                raise ValueError(f"{path}: pattern and special_tokens are for tiktoken ranks files; "
                                 "a tokenizer.json carries its own")
            return cls.from_tokenizer_json(path, eod=eod, bos=bos, threads=threads,
                                           storage_options=storage_options)
        if not pattern:
            raise ValueError(f"{path} is a tiktoken ranks file: give its split pattern "
                             f"({' | '.join(PATTERNS)} or a regex)")
        return cls.from_tiktoken(path, pattern, special_tokens=special_tokens, eod=eod, bos=bos,
                                 threads=threads, storage_options=storage_options)

    @classmethod
    def from_tiktoken(
        cls,
        ranks_path: str,
        pattern: str,
        *,
        special_tokens: dict[str, int] | None = None,
        eod="auto",
        bos=None,
        threads: int | None = None,
        storage_options: dict | None = None,
    ) -> Encoder:
        """Encoder for a tiktoken ranks file; `pattern` is a regex or a name in `PATTERNS`."""
        ranks = read_tiktoken_ranks(ranks_path, storage_options)
        return cls.from_tiktoken_ranks(
            ranks, pattern, special_tokens=special_tokens, eod=eod, bos=bos, threads=threads
        )

    @classmethod
    def from_tiktoken_ranks(
        cls,
        ranks: dict[bytes, int],
        pattern: str,
        *,
        special_tokens: dict[str, int] | None = None,
        eod="auto",
        bos=None,
        threads: int | None = None,
    ) -> Encoder:
        specials = dict(special_tokens or {})
        pattern = PATTERNS.get(pattern, pattern)
        vocab_size = max([*ranks.values(), *specials.values()]) + 1
        token_bytes: list[bytes | None] = [None] * vocab_size
        for tok, idx in ranks.items():
            token_bytes[idx] = tok
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise ValueError(
                f"tiktoken ranks lack {len(missing)} single bytes (e.g. {missing[:5]}); "
                "tiktoken cannot encode text containing them"
            )
        encoding, exact, _ = _make_tiktoken(ranks, pattern, vocab_size)
        kwargs = {"eod": eod, "bos": bos, "threads": threads}
        return cls(
            vocab_size=vocab_size,
            token_bytes=token_bytes,
            special_tokens=specials,
            tiktoken_encoding=encoding,
            tiktoken_exact=exact,
            spec=("tiktoken", ranks, pattern, specials, kwargs),
            **kwargs,
        )

    def __reduce__(self):
        # Rebuilt from its source on unpickling (engines ship encoders to workers).
        return (_rebuild_encoder, (self._spec,))

    # -- ids -----------------------------------------------------------------------------
    def _resolve(self, token, role: str) -> int | None:
        if token is None:
            return None
        if token == "auto":
            if role != "eod":
                raise ValueError("only eod can be 'auto'")
            for name in EOD_CANDIDATES:
                if name in self.special_tokens:
                    return self.special_tokens[name]
            raise ValueError(
                f"no end-of-document token among {EOD_CANDIDATES} in this tokenizer; "
                "pass eod=<token or id>, or eod=None to write documents without one"
            )
        if isinstance(token, (int, np.integer)):
            if not 0 <= int(token) < self.vocab_size:
                raise ValueError(f"{role} id {token} is outside the vocabulary ({self.vocab_size})")
            return int(token)
        return self.token_id(token)

    def token_id(self, token: str) -> int:
        """Id of a special/added token, or of a plain token given as its text."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        if self.token_bytes is not None:
            raw = token.encode("utf-8")
            for idx, tb in enumerate(self.token_bytes):
                if tb == raw:
                    return idx
        if self._hf is not None and self._hf.token_to_id(token) is not None:
            return int(self._hf.token_to_id(token))
        raise ValueError(f"token {token!r} is not in the vocabulary")

    def config(self) -> dict:
        """What changes the ids: for config hashes and the manifest."""
        return {
            "backend": self.backend,
            "vocab_size": self.vocab_size,
            "eod_id": self.eod_id,
            "bos_id": self.bos_id,
        }

    # -- encoding ------------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:  # two dispatch threads may get here at once
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tokenmill-encode")
            return self._pool

    def _needs_hf(self, text: str) -> bool:
        for head in self._added_heads:
            if head in text:
                return any(tok in text for tok in self._added)
        return False

    def _tt_chunk(self, texts: Sequence[str]) -> tuple[list[np.ndarray], list[bool]]:
        """Encode in a worker thread; flag documents tiktoken cannot be trusted with."""
        encode = self._tt.encode_to_numpy
        exact = self._tt_exact.encode_to_numpy if self._tt_exact is not None else None
        prefix = self._prefix_space
        stand_ins, coverage = self._check_stand_ins, self._check_coverage
        vocab, token_len = self.vocab_size, self._token_len
        out, flags = [], []
        for text in texts:
            if prefix and text and not text.startswith(" "):
                text = " " + text
            if exact is None:
                ids = encode(text, disallowed_special=())
            elif _RUN_MARK in text:  # the marker cannot be told apart: plain GPT-2 split
                ids = exact(text, disallowed_special=())
            else:
                ids = encode(_mark_whitespace_runs(text), disallowed_special=())
            bad = bool(stand_ins and ids.size and ids.max() >= vocab)
            if coverage and not bad:
                bad = int(token_len[ids].sum()) != _utf8_len(text)
            out.append(ids)
            flags.append(bad)
        return out, flags

    def _encode_tiktoken(self, texts: Sequence[str]) -> tuple[list[np.ndarray], list[int]]:
        n = len(texts)
        if n == 0:
            return [], []
        chunks = min(n, self.threads * 8)  # several chunks per thread balance uneven documents
        bounds = np.linspace(0, n, chunks + 1).astype(int)
        parts = [texts[a:b] for a, b in pairwise(bounds)]
        if self.threads == 1 or chunks == 1:
            results = [self._tt_chunk(p) for p in parts]
        else:
            results = list(self._executor().map(self._tt_chunk, parts))
        arrays = [arr for part, _ in results for arr in part]
        flags = [f for _, part in results for f in part]
        return arrays, [i for i, f in enumerate(flags) if f]

    def _encode_hf(self, texts: list[str]) -> list[np.ndarray]:
        if not texts:
            return []
        encode = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)
        return [np.asarray(e.ids, dtype=ID_DTYPE) for e in encode(texts, add_special_tokens=False)]

    def encode_flat(
        self, texts: Sequence[str], *, frame: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode `texts`; returns (concatenated int32 ids, int64 lengths per document).

        With `frame`, each document gets `bos` / `eod` as configured; pass ``frame=False`` to
        expand with StochasTok first and call `frame` afterwards.
        """
        texts = list(texts)
        n = len(texts)
        if self._tt is None:
            arrays = self._encode_hf(texts)
            fallback = list(range(n))
        else:
            arrays, flagged = self._encode_tiktoken(texts)
            special = [i for i, t in enumerate(texts) if self._added and self._needs_hf(t)]
            fallback = sorted(set(special) | set(flagged))
            for i, arr in zip(fallback, self._encode_hf([texts[i] for i in fallback])):
                arrays[i] = arr
        lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=n)
        tokens = (
            np.concatenate(arrays, dtype=ID_DTYPE, casting="unsafe")
            if n else np.zeros(0, ID_DTYPE)
        )
        counted = EncodeStats(n, len(fallback), sum(_utf8_len(t) for t in texts), tokens.size)
        with self._lock:
            self.stats = self.stats + counted
        if frame:
            tokens, lengths = self.frame(tokens, lengths)
        return tokens, lengths

    def submit(self, texts: Sequence[str], *, frame: bool = True) -> Future:
        """`encode_flat` in the background; ``.result()`` gives its (tokens, lengths).

        Lets a caller expand or write one batch while the next is encoded (tiktoken and most
        numpy work release the GIL). Up to two submitted batches are encoded at once.
        """
        if self._dispatch is None:
            # two batches in flight: the next one's chunks fill the threads the current
            # one's last (longest) documents leave idle
            self._dispatch = ThreadPoolExecutor(2, thread_name_prefix="tokenmill-dispatch")
        return self._dispatch.submit(self.encode_flat, list(texts), frame=frame)

    def encode_batch(self, texts: Sequence[str], *, frame: bool = True) -> list[np.ndarray]:
        """One int32 id array per text (framed with bos/eod unless ``frame=False``)."""
        tokens, lengths = self.encode_flat(texts, frame=frame)
        return split_flat(tokens, lengths)

    def encode(self, text: str, *, frame: bool = True) -> np.ndarray:
        return self.encode_batch([text], frame=frame)[0]

    def framed_lengths(self, lengths: np.ndarray) -> np.ndarray:
        """Document lengths once `frame` has added bos/eod."""
        extra = (self.bos_id is not None) + (self.eod_id is not None)
        return np.asarray(lengths, dtype=np.int64) + extra

    def frame(self, tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Insert `bos` before and `eod` after every document of a flat token array."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if self.bos_id is None and self.eod_id is None:
            return tokens, lengths
        new_lengths = self.framed_lengths(lengths)
        new_offsets = flat_offsets(new_lengths)
        out = np.empty(int(new_offsets[-1]), dtype=ID_DTYPE)
        keep = np.ones(out.size, dtype=bool)  # a mask copy is far cheaper than index math
        if self.bos_id is not None:
            keep[new_offsets[:-1]] = False
        if self.eod_id is not None:
            keep[new_offsets[1:] - 1] = False
        out[keep] = tokens
        if self.bos_id is not None:
            out[new_offsets[:-1]] = self.bos_id
        if self.eod_id is not None:
            out[new_offsets[1:] - 1] = self.eod_id
        return out, new_lengths

    # -- decoding ------------------------------------------------------------------------
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes `ids` stand for (special tokens as their text)."""
        ids = [int(i) for i in np.asarray(ids).ravel()]
        if self.token_bytes is None:
            return self.decode(ids).encode("utf-8")
        by_id = {v: k.encode("utf-8") for k, v in self.special_tokens.items()}
        parts = []
        for i in ids:
            tb = self.token_bytes[i] if 0 <= i < self.vocab_size else None
            if tb is None:
                tb = by_id.get(i)
            if tb is None:
                raise ValueError(f"id {i} is not a token of this vocabulary")
            parts.append(tb)
        return b"".join(parts)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; invalid UTF-8 (a document cut mid-character) becomes U+FFFD."""
        if self.token_bytes is None:
            return self._hf.decode([int(i) for i in np.asarray(ids).ravel()],
                                   skip_special_tokens=False)
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def close(self) -> None:
        """Stop the worker threads (they are restarted on the next call)."""
        for name in ("_dispatch", "_pool"):
            pool = getattr(self, name)
            if pool is not None:
                pool.shutdown()
                setattr(self, name, None)


def _looks_byte_level(spec: dict) -> bool:
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("continuing_subword_prefix") or model.get(
        "end_of_word_suffix"
    ):
        return False
    decoder = spec.get("decoder") or {}
    if decoder.get("type") != "ByteLevel":
        return False
    added = {t["content"] for t in spec.get("added_tokens", [])}
    return all(byte_level_to_bytes(t) is not None for t in model["vocab"] if t not in added)


def _check_self_encode(hf, spec: dict, added: dict[str, int]) -> str | None:
    """Reason tiktoken's whole-piece lookup would differ from HF's merges, or None."""
    model = hf.model
    for token, idx in spec["model"]["vocab"].items():
        if token in added or len(token) == 1:
            continue
        got = model.tokenize(token)
        if len(got) != 1 or got[0].id != idx:
            return (
                f"Hugging Face's merges do not rebuild token {token!r} (id {idx}) from its own "
                "bytes, while tiktoken would emit it whole"
            )
    return None


def _hugging_face_split(pattern: str) -> str:
    """A tiktoken pattern that splits like Hugging Face's ``Split(pattern, "isolated")``.

    tiktoken encodes only the regex matches and drops the text between them; Hugging Face
    keeps each such gap as a piece. Adding the alternative "a run of characters where the
    pattern does not match" turns every gap into exactly that piece (the SuperBPE stage-2
    split, for one, matches only separators). Patterns known to match all text are left
    alone. Raises ValueError for a pattern that can match the empty string: tiktoken fails
    on empty pieces.
    """
    if pattern in FULL_COVERAGE:
        return pattern
    import regex

    try:
        compiled = regex.compile(pattern)
    except regex.error as exc:
        raise ValueError(f"split regex does not compile: {exc}") from exc
    probes = ("", "a", "A1", " ", "  x", "\n\n", ".,", "a b.c 12")
    if any(m.end() == m.start() for p in probes for m in compiled.finditer(p)):
        raise ValueError("split regex can match the empty string")
    return f"(?:{pattern})|(?:(?!(?:{pattern}))[\\s\\S])+"


def _make_tiktoken(ranks: dict[bytes, int], pattern: str, vocab_size: int):
    """(encoding, exact encoding or None, whether stand-in ids exist) for `pattern`."""
    import tiktoken

    ranks = dict(ranks)
    # Single bytes the vocabulary lacks get stand-in ranks past the vocabulary so tiktoken
    # does not fail; a document that produces one is re-encoded by Hugging Face.
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    for b in missing:
        ranks[bytes([b])] = vocab_size + b
    # One special token that never occurs. With none at all tiktoken's special-token regex
    # is empty and matches at every position, which made encoding ~1.7x slower here; it is
    # never allowed, so text that does contain it is still encoded as ordinary text.
    specials = {_NEVER_SPECIAL: max(ranks.values()) + 1}

    def build(pat: str):
        return tiktoken.Encoding(
            "tokenmill", pat_str=pat, mergeable_ranks=ranks, special_tokens=specials
        )

    if pattern == GPT2_PATTERN:
        return build(_FAST_GPT2_PATTERN), build(pattern), bool(missing)
    return build(pattern), None, bool(missing)


# -- the GPT-2 split without its lookahead -------------------------------------------------
# In GPT2_PATTERN only `\s+(?!\S)` needs a lookahead, and it makes tiktoken's regex engine
# about 2x slower. What it does: a whitespace run W of two or more characters followed by
# a non-space X splits as W[:-1] | W[-1]X (or W[-1] | X), not W | X. Marking the text with
# a character no alternative matches, right before W's last character, gives the same
# pieces with `\s+` alone: tiktoken skips unmatched text, so the mark is a hard boundary
# and never reaches the ids. U+FDD0 is a Unicode noncharacter; a document that contains
# it is encoded with the plain pattern instead. The tests sweep every whitespace code point.
_RUN_MARK = "\ufdd0"
_FAST_GPT2_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}\x{FDD0}]+|\s+"""
)
# \s of the regex engines: the Unicode White_Space property (none above U+3000)
_WHITE_SPACE = np.zeros(0x3001, dtype=bool)
_WHITE_SPACE[[*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
              0x2028, 0x2029, 0x202F, 0x205F, 0x3000]] = True


def _mark_whitespace_runs(text: str) -> str:
    """Insert `_RUN_MARK` before the last character of every whitespace run of 2+
    characters that a non-space follows (vectorized over UTF-32 code points)."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    if cps.size < 3:
        return text
    ws = _WHITE_SPACE[np.minimum(cps, 0x3000)] & (cps <= 0x3000)
    cuts = np.flatnonzero(ws[:-2] & ws[1:-1] & ~ws[2:]) + 1
    if not cuts.size:
        return text
    return np.insert(cps, cuts, ord(_RUN_MARK)).tobytes().decode("utf-32-le")


_NEVER_SPECIAL = "\U0010fffd<|tokenmill-unused|>\U0010fffd"


def _rebuild_encoder(spec: tuple) -> Encoder:
    kind = spec[0]
    if kind == "json":
        _, text, allow_tiktoken, kwargs = spec
        return Encoder.from_tokenizer_str(text, allow_tiktoken=allow_tiktoken, **kwargs)
    _, ranks, pattern, specials, kwargs = spec
    return Encoder.from_tiktoken_ranks(ranks, pattern, special_tokens=specials, **kwargs)


def ids_to_arrow(tokens: np.ndarray, lengths: np.ndarray):
    """A pyarrow ``list<int32>`` column over a flat token array (zero-copy for the values)."""
    import pyarrow as pa

    offsets = flat_offsets(lengths)
    if offsets[-1] > np.iinfo(np.int32).max:
        return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(tokens))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(tokens))


def arrow_to_flat(column) -> tuple[np.ndarray, np.ndarray]:
    """(concatenated ids, lengths) from a pyarrow list column (or ChunkedArray of them)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    offsets = np.asarray(column.offsets, dtype=np.int64)
    values = column.values.to_numpy(zero_copy_only=False)
    tokens = values[offsets[0] : offsets[-1]]
    return tokens, np.diff(offsets)
