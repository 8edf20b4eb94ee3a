"""Text repair and normalization, with a count of what changed.

Order matters: encoding repair first (mojibake is defined on the raw code points), then
Unicode normalization, then control characters, then whitespace. Indentation inside
lines is kept (code and tables depend on it); only line ends, blank-line runs, exotic
space characters and the document's outer whitespace are normalized.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

import ftfy
import ftfy.badness
import pyarrow as pa

from stages.records import dropped_table

# C0/C1 controls except tab and newline (carriage returns are handled as line ends).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_LINE_ENDS = re.compile(r"\r\n?|[\u2028\u2029\x85]")
# Unicode space separators other than the ASCII space (NBSP, thin spaces, ideographic, ...).
_EXOTIC_SPACE = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
# UTF-8 decoded by a single-byte codec (Latin-1, Windows-125x, ISO-8859-x, Mac Roman, CP437)
# turns each multi-byte character into 2-4 characters from these ranges (Mac Roman uses
# math operators and ligatures), or "Â"/"Ã" plus a
# space where a no-break space was flattened. Checked: every text ftfy changes in the repo's
# corpora and in synthetic mojibake of those codecs matches (tests/test_normalize.py).
_MOJIBAKE_TRACE = re.compile("[\u0080-\u045f\u2010-\u2122\u2200-\u22ff\u2500-\u25ff\uf8ff\ufb01\ufb02\ufffd]{2}|[\u00c2\u00c3] ")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)
# ftfy only repairs encodings here: the other steps below do their own part, and its
# other fixes change legitimate text (HTML entities in code, full-width CJK, ligatures).
_FTFY_CONFIG = ftfy.TextFixerConfig(
    unescape_html=False, remove_terminal_escapes=True, fix_encoding=True, restore_byte_a0=True,
    replace_lossy_sequences=True, decode_inconsistent_utf8=True, fix_c1_controls=True,
    fix_latin_ligatures=False, fix_character_width=False, uncurl_quotes=False, fix_line_breaks=False,
    fix_surrogates=True, remove_control_chars=False, normalization=None, explain=False,
)


@dataclass(frozen=True)
class NormalizeOptions:
    fix_encoding: bool = True
    unicode_form: str = "NFC"  # NFC | NFKC | none
    remove_control: bool = True
    normalize_whitespace: bool = True
    max_blank_lines: int = 2


def normalize_text(text: str, opts: NormalizeOptions, changes: Counter) -> str:
    """Normalize one text; add one count per kind of change made to `changes`."""
    # ftfy is the slow part: it works line by line and its badness test is a large regex.
    # Gate it: ASCII cannot hold mojibake, and mojibake always leaves a cheap trace (see
    # _MOJIBAKE_TRACE); only then ask ftfy's own badness test.
    if opts.fix_encoding and not text.isascii() and _MOJIBAKE_TRACE.search(text) and ftfy.badness.is_bad(text):
        fixed = ftfy.fix_text(text, _FTFY_CONFIG)
        if fixed != text:
            changes["fixed_encoding"] += 1
            text = fixed
    if opts.unicode_form != "none" and not text.isascii():
        if not unicodedata.is_normalized(opts.unicode_form, text):
            text = unicodedata.normalize(opts.unicode_form, text)
            changes["unicode_normalized"] += 1
    if opts.remove_control:
        if "\r" in text or "\u2028" in text or "\u2029" in text or "\x85" in text:
            text = _LINE_ENDS.sub("\n", text)
            changes["line_ends_normalized"] += 1
        cleaned = _CONTROL.sub("", text)
        if cleaned != text:
            changes["control_removed"] += 1
            text = cleaned
    if opts.normalize_whitespace:
        before = text
        text = _EXOTIC_SPACE.sub(" ", text)
        text = _TRAILING_SPACE.sub("", text)
        limit = "\n" * (opts.max_blank_lines + 2)
        if limit in text:
            text = re.sub(r"\n{%d,}" % (opts.max_blank_lines + 2), "\n" * (opts.max_blank_lines + 1), text)
        text = text.strip()
        if text != before:
            changes["whitespace_normalized"] += 1
    return text


def normalize_texts(texts: list[str], opts: NormalizeOptions) -> tuple[list[str], Counter]:
    changes: Counter = Counter()
    out = []
    for t in texts:
        n = normalize_text(t, opts, changes)
        if n == t:
            changes["unchanged"] += 1
        out.append(n)
    return out, changes


def normalize_table(docs: pa.Table, opts: NormalizeOptions) -> tuple[pa.Table, pa.Table, Counter]:
    """The normalize stage over one part: texts replaced; texts left empty are dropped."""
    texts, changes = normalize_texts(docs.column("text").to_pylist(), opts)
    empty = [not t for t in texts]
    col = docs.schema.get_field_index("text")
    docs = docs.set_column(col, "text", pa.array(texts, pa.string()))
    dropped = dropped_table(docs, empty, "normalize", ["empty_after_normalize"] * len(texts))
    kept = docs.filter(pa.array([not e for e in empty], pa.bool_()))
    return kept, dropped, changes
