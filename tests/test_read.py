"""The reader: ranges vs whole streams, compression, truncation, every quarantine reason."""

from __future__ import annotations

import gzip
import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from stages import read as rd


def _lines(n, rng):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    return [json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(1, 40))), "n": i}).encode() for i in range(n)]


def _stream_docs(data: bytes, codec=None):
    b = rd.DocBuilder(rd.ReadSpec(keep_fields=("n",)), "f.jsonl", 0)
    rd.read_jsonl_stream(io.BytesIO(data), codec, b)
    return b.finish()


@pytest.mark.parametrize("task_bytes", [1, 7, 100, 1000, 10**6])
def test_ranges_give_the_same_documents_and_ids_as_one_stream(task_bytes):
    rng = random.Random(task_bytes)
    lines = _lines(300, rng)
    lines.insert(50, b"")  # a blank line must not shift numbering
    data = b"\n".join(lines) + b"\n"
    whole, _, _ = _stream_docs(data)
    ids, texts = [], []
    newlines_before = 0
    f = io.BytesIO(data)
    for start in range(0, len(data), task_bytes):
        end = min(start + task_bytes, len(data))
        b = rd.DocBuilder(rd.ReadSpec(), "f.jsonl", 0)
        first = rd.first_line_number(f, start, newlines_before)
        rd.read_jsonl_range(f, start, end, first, b)
        docs, _, _ = b.finish()
        ids += docs.column("id").to_pylist()
        texts += docs.column("text").to_pylist()
        newlines_before += rd.count_newlines(f, start, end)
    assert ids == whole.column("id").to_pylist()
    assert texts == whole.column("text").to_pylist()
    assert whole.column("id")[50].as_py() == "f.jsonl:52"  # line 51 is blank


def test_no_final_newline_and_crlf():
    docs, q, _ = _stream_docs(b'{"text": "a"}\r\n{"text": "b"}')
    assert docs.column("text").to_pylist() == ["a", "b"] and q.num_rows == 0


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compressed_and_truncated(codec):
    rng = random.Random(1)
    lines = _lines(2000, rng)
    body = b"\n".join(lines) + b"\n"
    if codec == "gzip":
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb") as g:
            g.write(body)
        blob = buf.getvalue()
    else:
        # two frames, as written by tools that flush per block
        half = body.index(b"\n", len(body) // 2) + 1
        c = zstandard.ZstdCompressor()
        blob = c.compress(body[:half]) + c.compress(body[half:])
    docs, q, _ = _stream_docs(blob, codec)
    assert docs.num_rows == 2000 and q.num_rows == 0
    docs, q, counters = _stream_docs(blob[: int(len(blob) * 0.6)], codec)
    reasons = q.column("reason").to_pylist()
    assert "truncated_file" in reasons
    assert 0 < docs.num_rows < 2000
    # every line read before the break is a document or quarantined; positions continue
    assert docs.column("text").to_pylist() == [json.loads(l)["text"] for l in lines[: docs.num_rows]]
    assert counters["records"] == docs.num_rows + q.num_rows


def test_every_quarantine_reason():
    raw = [
        (b"\xff\xfe bad", "invalid_utf8"),
        (b'{"text": "x', "bad_json"),
        (b"42", "bad_json"),
        (b'{"body": "x"}', "missing_text"),
        (b'{"text": null}', "missing_text"),
        (b'{"text": ["x"]}', "non_string_text"),
        (b'{"text": "  "}', "empty_text"),
        (b'{"text": "' + b"y" * 50 + b'"}', "too_long"),
        (b'{"text": "a\\u0000b"}', "nul_byte"),
        (b'{"text": "a\x00b"}', "nul_byte"),
        (b'{"text": "\\udc80"}', "invalid_utf8"),
        (b'{"text": "fine", "id": null}', "missing_id"),
    ]
    b = rd.DocBuilder(rd.ReadSpec(max_doc_bytes=40, id_field="id"), "bad.jsonl", 3)
    for i, (line, _) in enumerate(raw, start=1):
        b.add_jsonl_line(i, line)
    b.add_jsonl_line(len(raw) + 1, b'{"text": "ok", "id": 7}')
    docs, q, counters = b.finish()
    assert q.column("reason").to_pylist() == [r for _, r in raw]
    assert q.column("position").to_pylist() == list(range(1, len(raw) + 1))
    assert docs.column("id").to_pylist() == ["7"]
    assert docs.column("ord").to_pylist() == [3 << 32]
    assert counters["records"] == len(raw) + 1
    # the quarantine table round-trips through Parquet (lone surrogates must not break it)
    pq.write_table(q, io.BytesIO())


def test_parquet_rows_quarantine_bad_types():
    table = pa.table({"text": ["good one", None, "", "fine"], "id": ["a", "b", "c", "d"]})
    b = rd.DocBuilder(rd.ReadSpec(), "t.parquet", 0)
    rd.read_parquet_rows(table, 10, b)
    docs, q, _ = b.finish()
    assert docs.column("id").to_pylist() == ["t.parquet:10", "t.parquet:13"]
    assert q.column("reason").to_pylist() == ["missing_text", "empty_text"]
    non_string = pa.table({"text": [1, 2]})
    b = rd.DocBuilder(rd.ReadSpec(), "n.parquet", 0)
    rd.read_parquet_rows(non_string, 0, b)
    assert b.finish()[1].column("reason").to_pylist() == ["non_string_text"] * 2


@pytest.mark.parametrize("task_bytes", [None, 3, 10**6])
def test_text_lines_keep_their_endings_and_blank_lines(task_bytes):
    """Plain text: every line, its line ending included, is one document, blank lines too
    (as Hugging Face's file trainer reads a file), whether read whole or in byte ranges."""
    data = "ab\r\n\nsecond line\n \n\u00e9t\u00e9\nlast without newline".encode()
    want = ["ab\r\n", "\n", "second line\n", " \n", "\u00e9t\u00e9\n", "last without newline"]
    b = rd.DocBuilder(rd.ReadSpec(), "f.txt", 0)
    if task_bytes is None:
        rd.read_jsonl_stream(io.BytesIO(data), None, b, text=True)
    else:
        newlines = 0
        for start in range(0, len(data), task_bytes):
            end = min(start + task_bytes, len(data))
            f = io.BytesIO(data)
            first = rd.first_line_number(f, start, newlines)
            rd.read_jsonl_range(f, start, end, first, b, text=True)
            newlines += data[start:end].count(b"\n")
    docs, quarantine, _ = b.finish()
    assert docs.column("text").to_pylist() == want and quarantine.num_rows == 0
    assert docs.column("id").to_pylist() == [f"f.txt:{i}" for i in range(1, 7)]
    assert rd.format_of("a.txt.zst") == "text" and rd.format_of("a.jsonl") == "jsonl" and rd.format_of("b.pq") == "parquet"
