"""Pre-tokenization for BPE training: split presets, digit modes, byte-level mapping.

A *sequence* (one document's text, or one line of a plain-text file) is split into words
by a regex used as Hugging Face's ``Split(pattern, behavior="isolated")`` does: every match
is a word and so is every stretch of text between matches. Words never cross sequences.
Each word is then mapped byte by byte to the GPT-2 printable alphabet (``bytes_to_unicode``).

The presets have hand-written native scanners (native/bpe_pretok.pyx), about 20x faster than
the ``regex`` module; a custom ``pattern`` runs through ``regex``. Both give the same words
(tests/test_bpe_pretokenize.py fuzzes one against the other, and the parity tests compare
whole word tables with tokenizers' own pre-tokenizer).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import regex

# The contraction alternatives; llama3 and o200k match them case-insensitively.
_CONTRACTIONS = r"'s|'t|'re|'ve|'m|'ll|'d"

# Number alternative of each preset for every digit mode.
#   native: the preset's own rule (gpt2: any run; llama3/o200k: 1-3 digits, left to right)
#   l2r3:   1-3 digits, left to right (1234567 -> 123|456|7)
#   r2l3:   1-3 digits, right to left (1234567 -> 1|234|567)
#   single: one digit per word
_DIGITS = {
    "native": None,
    "l2r3": r"\p{N}{1,3}",
    "r2l3": r"\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N}))",
    "single": r"\p{N}",
}
DIGIT_MODES = tuple(_DIGITS)
PRESETS = ("gpt2", "llama3", "o200k")


def preset_pattern(preset: str, digits: str = "native") -> str:
    """The split regex of a named preset with the given digit mode."""
    if digits not in _DIGITS:
        raise ValueError(f"unknown digit mode {digits!r}; expected one of {list(DIGIT_MODES)}")
    d = _DIGITS[digits]
    if preset == "gpt2":
        num = r" ?\p{N}+" if d is None else " ?" + d
        return _CONTRACTIONS + r"| ?\p{L}+|" + num + r"| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
    if preset == "llama3":
        num = r"\p{N}{1,3}" if d is None else d
        return (
            "(?i:" + _CONTRACTIONS + r")|[^\r\n\p{L}\p{N}]?\p{L}+|" + num
            + r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        )
    if preset == "o200k":
        num = r"\p{N}{1,3}" if d is None else d
        up = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
        lo = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
        con = "(?i:" + _CONTRACTIONS + ")?"
        return (
            r"[^\r\n\p{L}\p{N}]?" + up + "*" + lo + "+" + con
            + r"|[^\r\n\p{L}\p{N}]?" + up + "+" + lo + "*" + con
            + "|" + num
            + r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        )
    raise ValueError(f"unknown preset {preset!r}; expected one of {list(PRESETS)}")


def superword_pattern(base: str = "gpt2", digits: str = "native") -> str:
    """SuperBPE stage-2 separators: digit groups, 2+ punctuation, newlines, extra spaces.

    Used with isolated-split semantics, so everything between separators (words joined by
    single spaces, single punctuation) stays one word and merges may cross single spaces.
    Newline runs are separators, so no superword spans a newline.
    """
    if digits not in _DIGITS:
        raise ValueError(f"unknown digit mode {digits!r}; expected one of {list(DIGIT_MODES)}")
    d = _DIGITS[digits]
    if d is None:
        d = r"\p{N}+" if base == "gpt2" else r"\p{N}{1,3}"
    return d + r"| ?[^\s\p{L}\p{N}]{2,}|\s*[\r\n]+|\s+(?!\S)"


@functools.lru_cache(maxsize=1)
def char_class_table() -> np.ndarray:
    """uint16[0x110000]: the classes the native scanners test, derived from `regex`.

    Low byte: 1 \\p{L}, 2 \\p{N}, 4 \\s, 8 [Lu Lt Lm Lo M], 16 [Ll Lm Lo M], 32 CR/LF.
    High byte: case-insensitive match of the contraction letters s t r e v m l d.
    Taking the classes from the same library as the fallback keeps both paths identical.
    """
    every = "".join(map(chr, range(0x110000)))
    table = np.zeros(0x110000, dtype=np.uint16)
    classes = [
        (1, r"\p{L}+"), (2, r"\p{N}+"), (4, r"\s+"),
        (8, r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"), (16, r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"),
        (32, r"[\r\n]+"),
    ]
    for i, letter in enumerate("strevmld"):
        classes.append((256 << i, "(?i:" + letter + ")+"))
    for bit, pat in classes:
        for m in regex.finditer(pat, every):
            table[m.start():m.end()] |= bit
    return table


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


@functools.lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def to_bytelevel(raw: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in raw)


def from_bytelevel(text: str) -> bytes:
    table = unicode_to_bytes()
    return bytes(table[c] for c in text)


@dataclass(frozen=True)
class PreTokSpec:
    """What splits sequences into words: a preset (native scanner) or a custom regex."""

    preset: str = "gpt2"
    digits: str = "native"
    pattern: str | None = None       # custom regex; overrides the preset's pattern
    superword: bool = False          # SuperBPE stage-2 splitter built on `preset`/`digits`

    def __post_init__(self):
        if self.pattern is None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {list(PRESETS)}")
        if self.digits not in _DIGITS:
            raise ValueError(f"unknown digit mode {self.digits!r}; expected one of {list(DIGIT_MODES)}")
        if self.pattern is not None:
            if self.superword:
                raise ValueError("a custom pattern cannot be combined with the superword splitter")
            try:
                regex.compile(self.pattern)
            except regex.error as e:
                raise ValueError(f"invalid pre-tokenizer pattern {self.pattern!r}: {e}") from None

    @property
    def regex(self) -> str:
        if self.pattern is not None:
            return self.pattern
        if self.superword:
            return superword_pattern(self.preset, self.digits)
        return preset_pattern(self.preset, self.digits)

    @property
    def native(self) -> bool:
        return self.pattern is None

    def counter(self) -> "WordCounter":
        return WordCounter(self)

    def split(self, text: str) -> list[str]:
        """Words of one sequence, as str (before the byte-level mapping)."""
        return WordCounter(self).split(text)

    def hf_pre_tokenizer(self):
        """The tokenizers pre-tokenizer that yields the same byte-level words."""
        from tokenizers import Regex, pre_tokenizers

        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(self.regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ])


def regex_split(compiled, text: str) -> Iterator[str]:
    """Isolated split: every match and every non-empty gap between matches, in order."""
    pos = 0
    for m in compiled.finditer(text):
        s, e = m.span()
        if s == e:
            continue
        if s > pos:
            yield text[pos:s]
        yield text[s:e]
        pos = e
    if pos < len(text):
        yield text[pos:]


class WordCounter:
    """Counts the words of many sequences into one exact (int64) table of raw UTF-8 words."""

    def __init__(self, spec: PreTokSpec):
        from native.bpe_pretok import PreTokenizer

        self.spec = spec
        if spec.native:
            mode = "superword" if spec.superword else spec.preset
            self._impl = PreTokenizer(char_class_table(), mode, spec.digits, spec.preset)
            self._re = None
        else:
            self._impl = PreTokenizer(char_class_table(), "gpt2")  # used only as the table
            self._re = regex.compile(spec.pattern)

    def add(self, text: str, weight: int = 1) -> None:
        if self._re is None:
            self._impl.add(text, weight)
        else:
            self._impl.n_sequences += 1
            self._impl.n_bytes += len(text.encode("utf-8", "surrogatepass"))
            self._impl.add_pieces(regex_split(self._re, text), weight)

    def add_many(self, texts: Iterable[str]) -> None:
        if self._re is None:
            self._impl.add_many(texts)
        else:
            for t in texts:
                self.add(t)

    def split(self, text: str) -> list[str]:
        if self._re is None:
            return self._impl.split(text)
        return list(regex_split(self._re, text))

    def items(self) -> tuple[list[bytes], np.ndarray]:
        return self._impl.items()

    def __len__(self) -> int:
        return len(self._impl)

    @property
    def n_sequences(self) -> int:
        return self._impl.n_sequences

    @property
    def n_bytes(self) -> int:
        return self._impl.n_bytes

    def nbytes_estimate(self) -> int:
        return self._impl.nbytes_estimate()

    def clear(self) -> None:
        self._impl.clear()
