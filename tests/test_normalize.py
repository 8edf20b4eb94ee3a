"""Normalization and the exact-dedup key."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from stages.dedup_exact import ExactKeyOptions, dedup_key, duplicates_in_bucket, key_hashes
from stages.normalize import NormalizeOptions, normalize_table, normalize_text

OPTS = NormalizeOptions()


def norm(text, **kw):
    c = Counter()
    return normalize_text(text, NormalizeOptions(**kw) if kw else OPTS, c), c


def test_mojibake_is_repaired():
    out, c = norm("The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.")
    assert out == "The Mona Lisa doesn't have eyebrows." or out == "The Mona Lisa doesn\u2019t have eyebrows."
    assert c["fixed_encoding"] == 1


def test_unicode_forms():
    decomposed = "Cafe\u0301"
    assert norm(decomposed)[0] == "Caf\u00e9"
    assert norm("\ufb01x", unicode_form="NFKC")[0] == "fix"
    assert norm("\ufb01x")[0] == "\ufb01x"  # NFC keeps the ligature


def test_controls_and_whitespace():
    out, c = norm("  a\x07b\r\nc\u00a0d   \n\n\n\n\n\ne\t\n  ")
    assert out == "ab\nc d\n\n\ne"
    assert c["control_removed"] == 1 and c["whitespace_normalized"] == 1
    # indentation inside lines is kept (code)
    assert norm("def f():\n    return 1")[0] == "def f():\n    return 1"


def test_normalize_table_drops_what_becomes_empty():
    t = pa.table({"id": ["a", "b"], "ord": [0, 1], "source": ["s", "s"], "text": ["ok", "\x01\x02"]})
    kept, dropped, _ = normalize_table(t, OPTS)
    assert kept.column("id").to_pylist() == ["a"]
    assert dropped.column("reason").to_pylist() == ["empty_after_normalize"]


def test_exact_key_folds_case_space_punctuation():
    o = ExactKeyOptions()
    assert dedup_key("Hello,   World!", o) == dedup_key("hello world", o)
    assert dedup_key("abc 123", o) != dedup_key("abc 124", o)
    assert dedup_key("abc 123", ExactKeyOptions(strip_digits=True)) == dedup_key("abc 124", ExactKeyOptions(strip_digits=True))
    h = key_hashes(["A b", "a  B.", "c"], o)
    assert h[0] == h[1] != h[2] and len(h[0]) == 32


def test_duplicates_keep_smallest_id_whatever_the_row_order():
    rows = pa.table({"id": ["z", "b", "a", "q"], "ord": [0, 1, 2, 3], "exact_hash": ["h1", "h1", "h1", "h2"]})
    d1 = duplicates_in_bucket(rows)
    d2 = duplicates_in_bucket(rows.take([3, 2, 1, 0]))
    assert d1.equals(d2)
    assert sorted(d1.column("ord").to_pylist()) == [0, 1]
    assert set(d1.column("dup_of").to_pylist()) == {"a"}


def test_mojibake_of_every_single_byte_codec_passes_the_gate():
    """The cheap gate in front of ftfy must let through every text ftfy would repair."""
    import ftfy

    from stages.normalize import _FTFY_CONFIG, _MOJIBAKE_TRACE

    samples = ["naïve café déjà vu", "Größe und Maß", "Привет, мир", "Καλημέρα κόσμε", "żółć gęś", "“quoted” — dash…", "a\u00a0b"]
    repaired = 0
    for text in samples:
        for codec in ["latin-1", "cp1252", "cp1251", "cp1250", "iso-8859-2", "mac_roman", "cp437", "cp1253"]:
            try:
                broken = text.encode("utf-8").decode(codec)
            except UnicodeDecodeError:
                continue
            if ftfy.fix_text(broken, _FTFY_CONFIG) != broken:
                repaired += 1
                assert _MOJIBAKE_TRACE.search(broken), (text, codec, broken)
                out, c = norm(broken)
                assert c["fixed_encoding"] == 1
    assert repaired > 20
