"""Storage: the one module that opens, lists, reads and writes URLs.

Every path in tokenmill is an fsspec URL (a plain local path is one too), so the same
code writes to a laptop disk, `memory://` in tests, or an object store on a cluster.
Writes are atomic (temporary name beside the target, then a rename, or one complete PUT on
object stores), so a reader never sees a partial file and a task that runs twice leaves
the same bytes.

Data between steps is Parquet; scratch inside a step (shuffles) is Arrow IPC, about 3x
faster to write and 2x faster to read than Parquet for token lists, at the same size.
`storage_options` are passed to the filesystem (credentials, endpoints) where a caller
has them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import uuid
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem


def filesystem(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of a URL and the path inside it."""
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def is_local(url: str) -> bool:
    return protocol_of(url) in ("file", "local")


def absolute(url: str) -> str:
    """A local path made absolute (so other processes, in other directories, find it);
    any other URL as it is."""
    if "://" in url:
        return url
    return os.path.abspath(url)


def join(url: str, *parts: str) -> str:
    if "://" in url:
        proto, rest = url.split("://", 1)
        return f"{proto}://{posixpath.join(rest, *parts)}"
    return os.path.join(url, *parts)


def relative_to(url: str, root: str) -> str:
    """`url` as a path relative to `root` (both URLs of one filesystem); raises ValueError
    when `url` is not under `root`."""
    u, r = absolute(url).rstrip("/"), absolute(root).rstrip("/")
    if u == r:
        return "."
    if not u.startswith(r + "/") and not (os.sep != "/" and u.startswith(r + os.sep)):
        raise ValueError(f"{url} is not under {root}")
    return u[len(r) + 1:].replace(os.sep, "/")


def url_of(fs_path: str, protocol: str) -> str:
    """The URL of a path that a filesystem of `protocol` returned (ls, glob, find)."""
    return fs_path if protocol in ("file", "local") else f"{protocol}://{fs_path}"


def exists(url: str, storage_options: dict | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return fs.exists(path)


def open_url(url: str, mode: str = "rb", storage_options: dict | None = None) -> IO:
    """Open a URL for reading or writing (binary unless the mode says text). Prefer the
    atomic writers below for whole files."""
    fs, path = filesystem(url, storage_options)
    if "b" not in mode:
        return fs.open(path, mode, encoding="utf-8")
    return fs.open(path, mode)


def read_bytes(url: str, storage_options: dict | None = None) -> bytes:
    fs, path = filesystem(url, storage_options)
    return fs.cat_file(path)


def info(url: str, storage_options: dict | None = None) -> dict:
    fs, path = filesystem(url, storage_options)
    return fs.info(path)


def list_files(url: str, suffix: str = "", storage_options: dict | None = None) -> list[str]:
    """URLs of the files directly in directory `url` whose names end with `suffix`, in name
    order; an absent directory has none. Temporaries of atomic writes never match a suffix."""
    fs, path = filesystem(url, storage_options)
    if not fs.exists(path):
        return []
    proto = protocol_of(url)
    names = sorted(p for p in fs.ls(path, detail=False) if p.endswith(suffix) and TMP_MARK not in posixpath.basename(p))
    return [url_of(p, proto) for p in names]


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    fs.makedirs(path, exist_ok=True)


def remove(url: str) -> None:
    """Remove one file; nothing happens if it is absent."""
    fs, path = filesystem(url)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def remove_tree(url: str) -> None:
    """Remove a directory and everything under it; nothing happens if it is absent."""
    fs, path = filesystem(url)
    if fs.exists(path):
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:  # removed meanwhile by another runner of the same step
            pass


def create_exclusive(url: str, data: bytes = b"") -> bool:
    """Create a file only if it does not exist; True if this call created it. Atomic on
    local and POSIX shared filesystems; elsewhere a best effort (check, then write), which
    is enough where two creators at once only cost a repeated idempotent task."""
    fs, path = filesystem(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        try:
            with open(path, "xb") as handle:
                handle.write(data)
            return True
        except FileExistsError:
            return False
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    return True


TMP_MARK = ".tmp-"  # in the names of atomic writes' temporaries (here and in stages.megatron)


def remove_temporaries(url: str) -> int:
    """Remove the temporaries that killed writers left anywhere under `url` (only when no
    writer can still be at work there); returns how many."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return 0
    stale = [p for p in fs.find(path) if TMP_MARK in posixpath.basename(p)]
    for p in stale:
        try:
            fs.rm_file(p)
        except FileNotFoundError:
            pass
    return len(stale)


def atomic_write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write to a unique temporary name beside the target, then rename it into place.

    Locally the rename is atomic (and the data is fsynced first); on object stores the
    temporary is one complete PUT and the move copies a complete object, so a reader never
    sees a partial file either way. Two writers of the same bytes leave those bytes.
    """
    fs, path = filesystem(url, storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:12]}"
    if isinstance(fs, LocalFileSystem):
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)


def sha256_of(url: str, storage_options: dict | None = None) -> str:
    digest = hashlib.sha256()
    with open_url(url, "rb", storage_options) as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# -- JSON ----------------------------------------------------------------------------------

def json_bytes(obj: Any) -> bytes:
    """The one JSON layout of tokenmill's files: sorted keys, indented, newline-terminated."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def atomic_write_json(url: str, obj: Any) -> None:
    atomic_write_bytes(url, json_bytes(obj))


# -- Parquet and Arrow IPC --------------------------------------------------------------------

def write_parquet(url: str, table: pa.Table, compression: str = "zstd") -> str:
    """Write a table atomically as Parquet; returns the sha256 of the file bytes."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=compression)
    data = sink.getvalue()
    atomic_write_bytes(url, data)
    return hashlib.sha256(data).hexdigest()


def read_parquet(url: str, columns: list[str] | None = None) -> pa.Table:
    with open_url(url, "rb") as f:
        return pq.read_table(f, columns=columns)


def parquet_metadata(url: str) -> pq.FileMetaData:
    with open_url(url, "rb") as f:
        return pq.ParquetFile(f).metadata


def parquet_schema(url: str) -> pa.Schema:
    with open_url(url, "rb") as f:
        return pq.read_schema(f)


def write_arrow(url: str, table: pa.Table, compression: str | None = "zstd") -> None:
    """Write a table atomically as an Arrow IPC file (zstd-compressed buffers by default)."""
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema, options=ipc.IpcWriteOptions(compression=compression)) as writer:
        writer.write_table(table)
    atomic_write_bytes(url, sink.getvalue().to_pybytes())


def read_arrow(url: str) -> pa.Table:
    return ipc.open_file(pa.BufferReader(read_bytes(url))).read_all()
