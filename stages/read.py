"""Turning raw input records into documents, or into quarantine with a reason.

Works on already-open binary streams (the pipeline opens fsspec URLs), so it is the same
for local files, object stores and in-memory test data.

JSONL positions are 1-based line numbers; Parquet positions are 0-based row numbers.
Ids, when the input has none, are `<source>:<line>` / `<source>:<row>`.

Quarantine reasons (each counted in the run summary):
  invalid_utf8     line is not valid UTF-8, or its JSON holds a lone surrogate
  nul_byte         raw NUL byte, or NUL in the decoded text
  bad_json         not parseable JSON, or not a JSON object
  missing_text     text field absent or null
  non_string_text  text field present but not a string
  missing_id       id field configured but absent/null in this record
  empty_text       text is empty or whitespace only
  too_long         text over max_doc_bytes (UTF-8)
  truncated_file   a compressed file ended early or is corrupt; the unreadable remainder
                   counts as one quarantined record at the position where reading stopped

Plain text input (format "text"): every line, its line ending included, is a document,
blank lines too, as Hugging Face's file trainer reads a text file.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Callable, Iterator

import pyarrow as pa
import zstandard

from stages.records import DOC_BASE_SCHEMA, QUARANTINE_SCHEMA, RAW_PREFIX_BYTES, make_ord

COMPRESSED_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
READ_BLOCK = 1 << 20


class TruncatedInput(Exception):
    """Raised by a line iterator when the rest of a compressed stream cannot be read."""


def codec_of(name: str) -> str | None:
    for suffix, codec in COMPRESSED_SUFFIXES.items():
        if name.endswith(suffix):
            return codec
    return None


def format_of(name: str) -> str:
    base = name
    codec = codec_of(name)
    if codec:
        base = name.rsplit(".", 1)[0]
    if base.endswith((".parquet", ".pq")):
        return "parquet"
    if base.endswith((".txt", ".text")):
        return "text"
    return "jsonl"


@dataclass(frozen=True)
class ReadSpec:
    text_field: str = "text"
    id_field: str | None = None
    keep_fields: tuple[str, ...] = ()
    max_doc_bytes: int = 1_000_000
    # A task's documents roll over into a new part after this many text bytes, so one huge
    # unsplittable file (a .zst stream) still gives later steps many parts to run in parallel.
    part_bytes: int = 32 << 20


# Parts of read task t are numbered t * SUBPARTS_PER_TASK + k; ords embed the part number.
SUBPARTS_PER_TASK = 1 << 12


@dataclass
class DocBuilder:
    """Accumulates the documents and quarantined records of one read task."""

    spec: ReadSpec
    source: str
    part: int
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    extras: dict[str, list] = field(default_factory=dict)
    q_rows: dict[str, list] = field(default_factory=lambda: {k: [] for k in QUARANTINE_SCHEMA.names})
    counters: Counter = field(default_factory=Counter)
    on_seal: Callable[[int, pa.Table], None] | None = None
    sub: int = 0
    text_bytes: int = 0

    @property
    def current_part(self) -> int:
        return self.part + self.sub

    def _docs_table(self) -> pa.Table:
        n = len(self.ids)
        base = self.current_part
        cols = {
            "id": pa.array(self.ids, pa.string()),
            "ord": pa.array([make_ord(base, i) for i in range(n)], pa.int64()),
            "source": pa.array([self.source] * n, pa.string()),
            "text": pa.array(self.texts, pa.string()),
        }
        schema = DOC_BASE_SCHEMA
        for k in self.spec.keep_fields:
            cols[k] = pa.array(self.extras.get(k, [None] * n), pa.string())
            schema = schema.append(pa.field(k, pa.string()))
        return pa.table(cols, schema=schema)

    def _maybe_seal(self) -> None:
        if self.on_seal is None or self.text_bytes < self.spec.part_bytes:
            return
        if self.sub + 1 >= SUBPARTS_PER_TASK:
            raise ValueError(f"{self.source}: more than {SUBPARTS_PER_TASK} parts of part_bytes={self.spec.part_bytes}; raise input.part_bytes")
        self.on_seal(self.current_part, self._docs_table())
        self.ids, self.texts, self.extras, self.text_bytes = [], [], {}, 0
        self.sub += 1

    def quarantine(self, position: int, reason: str, detail: str, raw: bytes | None) -> None:
        self.q_rows["source"].append(self.source)
        self.q_rows["position"].append(position)
        self.q_rows["reason"].append(reason)
        self.q_rows["detail"].append(detail[:500])
        self.q_rows["raw"].append(raw[:RAW_PREFIX_BYTES] if raw is not None else None)
        self.counters["records"] += 1
        self.counters["bytes"] += len(raw) if raw else 0
        self.counters[f"quarantined:{reason}"] += 1

    def add_jsonl_line(self, line_no: int, raw: bytes) -> None:
        if not raw.strip():
            self.counters["blank_lines"] += 1  # not a record: nothing to account for
            return
        line = self._decoded(line_no, raw)
        if line is None:
            return
        try:
            record = json.loads(line)
        except ValueError as e:
            return self.quarantine(line_no, "bad_json", str(e), raw)
        if not isinstance(record, dict):
            return self.quarantine(line_no, "bad_json", f"JSON value is a {type(record).__name__}, not an object", raw)
        self.add_record(line_no, record, raw, len(raw))

    def add_text_line(self, line_no: int, raw: bytes) -> None:
        """One line of a plain text file (line ending included) as one document."""
        text = self._decoded(line_no, raw)
        if text is not None:
            self.add_record(line_no, {self.spec.text_field: text}, raw, len(raw), allow_blank=True)

    def _decoded(self, line_no: int, raw: bytes) -> str | None:
        """A raw line as text, or None after quarantining it (NUL byte, invalid UTF-8)."""
        if b"\x00" in raw:
            self.quarantine(line_no, "nul_byte", "raw NUL byte in line", raw)
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.quarantine(line_no, "invalid_utf8", str(e), raw)
            return None

    def add_record(self, position: int, record: dict, raw: bytes | None, nbytes: int, allow_blank: bool = False) -> None:
        spec = self.spec

        def reject(reason: str, detail: str) -> None:
            # Parquet rows have no raw line; keep their JSON form for the audit trail.
            data = raw if raw is not None else json.dumps(record, default=str).encode("utf-8", "surrogatepass")
            self.quarantine(position, reason, detail, data)

        text = record.get(spec.text_field)
        if text is None:
            return reject("missing_text", f"field {spec.text_field!r} absent or null")
        if not isinstance(text, str):
            return reject("non_string_text", f"field {spec.text_field!r} is a {type(text).__name__}")
        if "\x00" in text:
            return reject("nul_byte", "NUL character in text")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as e:  # lone surrogates from JSON escapes
            return reject("invalid_utf8", str(e))
        if not text or (not allow_blank and not text.strip()):
            return reject("empty_text", "text is empty or whitespace")
        if size > spec.max_doc_bytes:
            return reject("too_long", f"{size} bytes > max_doc_bytes={spec.max_doc_bytes}")
        if spec.id_field:
            doc_id = record.get(spec.id_field)
            if doc_id is None:
                return reject("missing_id", f"field {spec.id_field!r} absent or null")
            doc_id = str(doc_id)
        else:
            doc_id = f"{self.source}:{position}"
        self.ids.append(doc_id)
        self.texts.append(text)
        for k in spec.keep_fields:
            v = record.get(k)
            self.extras.setdefault(k, []).append(None if v is None else (v if isinstance(v, str) else json.dumps(v, sort_keys=True)))
        self.counters["records"] += 1
        self.counters["bytes"] += nbytes
        self.counters["documents"] += 1
        self.text_bytes += size
        self._maybe_seal()

    def finish(self) -> tuple[pa.Table, pa.Table, Counter]:
        """The last (unsealed) part's documents, all quarantined records, the counters."""
        docs = self._docs_table()
        quarantine = pa.table(self.q_rows, schema=QUARANTINE_SCHEMA)
        return docs, quarantine, self.counters


def iter_range_lines(f: IO[bytes], start: int, end: int, keep_ends: bool = False) -> Iterator[tuple[int, bytes]]:
    """Lines of an uncompressed stream whose first byte lies in [start, end).

    Yields (offset_of_line_start, line without its line ending, unless `keep_ends`). A line
    belongs to the range in which it starts, so adjacent ranges never share or lose a line.
    """
    pos = start
    if start > 0:
        f.seek(start - 1)
        if f.read(1) != b"\n":
            f.readline()  # finish the line owned by the previous range
        pos = f.tell()
    else:
        f.seek(0)
    while pos < end:
        line = f.readline()
        if not line:
            break
        yield pos, line if keep_ends or not line.endswith(b"\n") else line.rstrip(b"\r\n")
        pos += len(line)


def _decoded_chunks(f: IO[bytes], new_decoder: Callable[[], object], errors: tuple, name: str) -> Iterator[bytes]:
    """Decompress a stream of concatenated frames/members, yielding every byte that can be
    decoded, then raise TruncatedInput if the last frame is incomplete or data is corrupt.

    Decoder objects are used directly (not zstandard's or gzip's readers) because those
    either return a short stream silently on truncation or lose the decodable tail.
    """
    dec = new_decoder()
    fed = False
    while True:
        block = f.read(READ_BLOCK)
        if not block:
            break
        fed = True
        while block:
            try:
                out = dec.decompress(block)
            except errors as e:
                raise TruncatedInput(f"corrupt {name} data: {e}") from None
            if out:
                yield out
            if dec.eof:  # a frame ended; the rest of the block starts the next one
                block = dec.unused_data
                dec = new_decoder()
                fed = bool(block)
            else:
                block = b""
    if fed and not dec.eof:
        raise TruncatedInput(f"{name} stream ended before its frame was complete")


def _zstd_chunks(f: IO[bytes]) -> Iterator[bytes]:
    dctx = zstandard.ZstdDecompressor()
    return _decoded_chunks(f, dctx.decompressobj, (zstandard.ZstdError,), "zstd")


def _gzip_chunks(f: IO[bytes]) -> Iterator[bytes]:
    return _decoded_chunks(f, lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), (zlib.error,), "gzip")


def _plain_chunks(f: IO[bytes]) -> Iterator[bytes]:
    while True:
        block = f.read(READ_BLOCK)
        if not block:
            return
        yield block


def iter_stream_lines(f: IO[bytes], codec: str | None, keep_ends: bool = False) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line) over a whole, possibly compressed, stream; lines without
    their line ending, unless `keep_ends`.

    On a truncated or corrupt stream, yields every complete line first, then the partial
    last line (it will fail JSON parsing and be quarantined), then raises TruncatedInput.
    """
    end = b"\n" if keep_ends else b""
    chunks = {"zstd": _zstd_chunks, "gzip": _gzip_chunks, None: _plain_chunks}[codec](f)
    line_no = 0
    pending = b""
    try:
        for chunk in chunks:
            pieces = (pending + chunk).split(b"\n")
            pending = pieces.pop()
            for piece in pieces:
                line_no += 1
                yield line_no, piece + end if keep_ends else piece.rstrip(b"\r")
    except TruncatedInput:
        if pending:
            line_no += 1
            yield line_no, pending
        raise TruncatedInput(line_no + 1) from None
    if pending:
        line_no += 1
        yield line_no, pending if keep_ends else pending.rstrip(b"\r")


def read_jsonl_stream(f: IO[bytes], codec: str | None, builder: DocBuilder, text: bool = False) -> None:
    """Read a whole stream into the builder (JSONL, or plain `text` lines); a truncated
    stream adds a truncated_file record."""
    add = builder.add_text_line if text else builder.add_jsonl_line
    try:
        for line_no, raw in iter_stream_lines(f, codec, keep_ends=text):
            add(line_no, raw)
    except TruncatedInput as e:
        position = e.args[0]
        builder.quarantine(position, "truncated_file", f"{codec or 'plain'} stream unreadable from line {position} on", None)


def read_jsonl_range(f: IO[bytes], start: int, end: int, first_line_no: int, builder: DocBuilder, text: bool = False) -> None:
    """Read the lines of an uncompressed file that start in [start, end)."""
    add = builder.add_text_line if text else builder.add_jsonl_line
    line_no = first_line_no
    for _, raw in iter_range_lines(f, start, end, keep_ends=text):
        add(line_no, raw)
        line_no += 1


def count_newlines(f: IO[bytes], start: int, end: int) -> int:
    f.seek(start)
    remaining = end - start
    n = 0
    while remaining > 0:
        block = f.read(min(READ_BLOCK, remaining))
        if not block:
            break
        n += block.count(b"\n")
        remaining -= len(block)
    return n


def first_line_number(f: IO[bytes], start: int, newlines_before_start: int) -> int:
    """1-based number of the first line that starts at or after `start`."""
    if start == 0:
        return 1
    f.seek(start - 1)
    return newlines_before_start + 1 if f.read(1) == b"\n" else newlines_before_start + 2


def read_parquet_rows(table: pa.Table, first_row: int, builder: DocBuilder) -> None:
    """Read rows of a Parquet slice; `first_row` is the row number of the slice's first row."""
    spec = builder.spec
    wanted = [c for c in {spec.text_field, spec.id_field, *spec.keep_fields} if c and c in table.column_names]
    columns = {c: table.column(c).to_pylist() for c in wanted}
    for i in range(table.num_rows):
        record = {c: columns[c][i] for c in wanted}
        text = record.get(spec.text_field)
        nbytes = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else 0
        builder.add_record(first_row + i, record, None, nbytes)
