"""The record types that flow between steps, one place for their Arrow schemas.

- documents: `id` (stable, traceable), `ord` (int64 = part << 32 | row: unique, ordered,
  deterministic), `source` (input file name relative to the input root), `text`, plus
  annotations that steps add (`lang`, `lang_score`, `exact_hash`, `cluster_id`, ...).
- dropped: a document removed on purpose by a step, with the reason.
- quarantined: a record that could not be read as a document, with the reason and a
  prefix of its raw bytes.
"""

from __future__ import annotations

import pyarrow as pa

ORD_PART_SHIFT = 32
RAW_PREFIX_BYTES = 4096

DOC_BASE_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("ord", pa.int64()),
    ("source", pa.string()),
    ("text", pa.string()),
])

DROPPED_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("ord", pa.int64()),
    ("source", pa.string()),
    ("step", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
])

QUARANTINE_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("position", pa.int64()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("raw", pa.binary()),
])


def make_ord(part: int, row: int) -> int:
    return (part << ORD_PART_SHIFT) | row


def dropped_table(docs: pa.Table, mask: list[bool] | pa.Array, step: str, reasons: list[str | None], details: list[str] | None = None) -> pa.Table:
    """The dropped records for the rows of `docs` where `mask` is true."""
    idx = [i for i, m in enumerate(mask if isinstance(mask, list) else mask.to_pylist()) if m]
    ids = docs.column("id").to_pylist()
    ords = docs.column("ord").to_pylist()
    sources = docs.column("source").to_pylist()
    return pa.table({
        "id": [ids[i] for i in idx],
        "ord": [ords[i] for i in idx],
        "source": [sources[i] for i in idx],
        "step": [step] * len(idx),
        "reason": [reasons[i] for i in idx],
        "detail": [details[i] if details else "" for i in idx],
    }, schema=DROPPED_SCHEMA)


def empty_dropped() -> pa.Table:
    return DROPPED_SCHEMA.empty_table()
