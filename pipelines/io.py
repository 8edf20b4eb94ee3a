"""Pipeline storage helpers: Parquet and JSON files, input discovery. The URL primitives
(atomic writes, joins, checksums) live in stages.storage, shared with the stages.

Every path in tokenmill is an fsspec URL (a plain local path is one too), so the same
code writes to a laptop disk, `memory://` in tests, or an object store on a cluster.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import io
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from stages.storage import atomic_write_bytes, exists, filesystem, join, read_bytes, sha256_of  # noqa: F401  (re-exported)


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    fs.makedirs(path, exist_ok=True)


def remove_tree(url: str) -> None:
    """Remove a directory and everything under it; nothing happens if it is absent."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def atomic_write_json(url: str, obj: Any) -> None:
    atomic_write_bytes(url, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_parquet(url: str, table: pa.Table, compression: str = "zstd") -> str:
    """Write a table atomically as Parquet; returns the sha256 of the file bytes."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=compression)
    data = sink.getvalue()
    atomic_write_bytes(url, data)
    return hashlib.sha256(data).hexdigest()


def read_parquet(url: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def write_arrow(url: str, table: pa.Table, compression: str | None = "zstd") -> None:
    """Write a table atomically as an Arrow IPC file (zstd-compressed buffers by default).

    For scratch files inside a step (shuffles): about 3x faster to write and 2x faster to
    read than Parquet for token lists, at the same size. Data between steps stays Parquet.
    """
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema, options=ipc.IpcWriteOptions(compression=compression)) as writer:
        writer.write_table(table)
    atomic_write_bytes(url, sink.getvalue().to_pybytes())


def read_arrow(url: str) -> pa.Table:
    return ipc.open_file(pa.BufferReader(read_bytes(url))).read_all()


@dataclass(frozen=True)
class InputFile:
    """One input file: its URL, its name relative to the input root (used in document ids
    and so independent of where the data is mounted), and a fingerprint of its content."""

    url: str
    rel: str
    size: int
    fingerprint: str


def _glob_root(pattern: str) -> str:
    """The directory part of a pattern before its first wildcard."""
    head = pattern
    for i, ch in enumerate(pattern):
        if ch in "*?[":
            head = pattern[:i]
            break
    else:
        return posixpath.dirname(pattern)
    return head if head.endswith("/") else posixpath.dirname(head)


def expand_inputs(patterns: list[str]) -> list[InputFile]:
    """Expand globs/URLs into a sorted, de-duplicated list of input files.

    Raises FileNotFoundError naming the pattern when a pattern matches nothing, because a
    silently empty run is worse than a failed one.
    """
    files: dict[str, InputFile] = {}
    for pattern in patterns:
        fs, path = filesystem(pattern)
        proto = protocol_of(pattern)
        if fs.isdir(path):
            matches = sorted(p for p in fs.find(path) if not posixpath.basename(p).startswith((".", "_")))
            root = path
        else:
            matches = sorted(fs.glob(path)) if _glob.has_magic(path) else ([path] if fs.exists(path) else [])
            root = _glob_root(path)
        if not matches:
            raise FileNotFoundError(f"input pattern {pattern!r} matches no file")
        for m in matches:
            info = fs.info(m)
            if info.get("type") == "directory":
                continue
            url = m if proto == "file" else f"{proto}://{m}"
            rel = os.path.relpath(m, root) if proto == "file" else posixpath.relpath(m, root.rstrip("/") or "/")
            # Object stores give an ETag/md5; local files size + mtime. Either changes when
            # the content does, which is what makes step outputs content-addressed.
            marker = info.get("ETag") or info.get("etag") or info.get("md5") or info.get("mtime") or info.get("LastModified")
            fingerprint = hashlib.sha256(f"{info.get('size')}|{marker}".encode()).hexdigest()[:32]
            files.setdefault(url, InputFile(url=url, rel=rel.replace(os.sep, "/"), size=int(info.get("size") or 0), fingerprint=fingerprint))
    return sorted(files.values(), key=lambda f: f.url)
