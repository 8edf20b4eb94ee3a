"""URL storage primitives shared by stages and pipelines: one place for atomic writes.

Every path is an fsspec URL (a plain local path is one too). `storage_options` are passed
to the filesystem (credentials, endpoints) where a caller has them.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem


def filesystem(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of a URL and the path inside it."""
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def join(url: str, *parts: str) -> str:
    if "://" in url:
        proto, rest = url.split("://", 1)
        return f"{proto}://{posixpath.join(rest, *parts)}"
    return os.path.join(url, *parts)


def exists(url: str, storage_options: dict | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return fs.exists(path)


def read_bytes(url: str, storage_options: dict | None = None) -> bytes:
    fs, path = filesystem(url, storage_options)
    return fs.cat_file(path)


def atomic_write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write to a unique temporary name beside the target, then rename it into place.

    Locally the rename is atomic (and the data is fsynced first); on object stores the
    temporary is one complete PUT and the move copies a complete object, so a reader never
    sees a partial file either way.
    """
    fs, path = filesystem(url, storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
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
    fs, path = filesystem(url, storage_options)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
