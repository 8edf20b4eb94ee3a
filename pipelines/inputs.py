"""Pinning what a plan reads: the input files, listed once, and the files steps depend on.

A plan lists its inputs when it is made and every later process reads that list, so a file
that appears afterwards belongs to the next plan, never half to this one. Each file is
fingerprinted; a file whose fingerprint no longer matches stops `run-step` with a request
to re-plan.

What a fingerprint compares: the size and, for local files, the modification time in
nanoseconds; for object stores their version marker (ETag, generation or md5). Files a
step depends on (a language-ID model, a tokenizer) are small and also pinned by sha256.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import os
import posixpath
from dataclasses import asdict, dataclass

from stages import storage


@dataclass(frozen=True)
class InputFile:
    """One input file: its URL, its name relative to the input root (used in document ids
    and so independent of where the data is mounted), its size and fingerprint."""

    url: str
    rel: str
    size: int
    fingerprint: str

    def to_dict(self) -> dict:
        return asdict(self)


def fingerprint(info: dict) -> str:
    marker = (info.get("ETag") or info.get("etag") or info.get("generation") or info.get("md5")
              or info.get("mtime_ns") or info.get("mtime") or info.get("LastModified"))
    return hashlib.sha256(f"{info.get('size')}|{marker}".encode()).hexdigest()[:32]


def _info(fs, path: str) -> dict:
    info = dict(fs.info(path))
    if isinstance(fs, storage.LocalFileSystem):
        info["mtime_ns"] = os.stat(path).st_mtime_ns  # fsspec rounds mtime to float seconds
    return info


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
        fs, path = storage.filesystem(pattern)
        proto = storage.protocol_of(pattern)
        if fs.isdir(path):
            matches = sorted(p for p in fs.find(path) if not posixpath.basename(p).startswith((".", "_")))
            root = path
        else:
            matches = sorted(fs.glob(path)) if _glob.has_magic(path) else ([path] if fs.exists(path) else [])
            root = _glob_root(path)
        if not matches:
            raise FileNotFoundError(f"input pattern {pattern!r} matches no file")
        for m in matches:
            info = _info(fs, m)
            if info.get("type") == "directory":
                continue
            url = storage.url_of(m, proto)
            rel = os.path.relpath(m, root) if proto == "file" else posixpath.relpath(m, root.rstrip("/") or "/")
            files.setdefault(url, InputFile(url=url, rel=rel.replace(os.sep, "/"), size=int(info.get("size") or 0),
                                            fingerprint=fingerprint(info)))
    return sorted(files.values(), key=lambda f: f.url)


def current(f: InputFile) -> InputFile | None:
    """The same file as it is now (None when it is gone)."""
    fs, path = storage.filesystem(f.url)
    if not fs.exists(path):
        return None
    info = _info(fs, path)
    return InputFile(url=f.url, rel=f.rel, size=int(info.get("size") or 0), fingerprint=fingerprint(info))


@dataclass(frozen=True)
class PinnedFile:
    """A file a step depends on, pinned by content."""

    url: str
    size: int
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, url: str) -> "PinnedFile":
        return cls(url=url, size=int(storage.info(url).get("size") or 0), sha256=storage.sha256_of(url))
