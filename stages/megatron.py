"""Megatron-LM indexed dataset (`.bin` / `.idx`): the one module that owns the byte layout.

A shard is a *prefix*; its data lives in ``PREFIX.bin`` and ``PREFIX.idx``.

``PREFIX.bin``
    The tokens of every sequence, concatenated in order, no header, no padding, in the
    shard's token dtype (native little-endian).

``PREFIX.idx`` (little-endian, packed, no alignment padding)::

    offset        size      field
    0             9         magic  b"MMIDIDX\\x00\\x00"
    9             8         u64    version = 1
    17            1         u8     dtype code of the .bin tokens (table below)
    18            8         u64    N, number of sequences
    26            8         u64    D + 1, number of entries in the document index
    34            4 * N     int32  sequence lengths, in tokens
    34 + 4N       8 * N     int64  byte offset of each sequence in .bin
    34 + 12N      8 * (D+1) int64  document index: sequence indices where documents start,
                                   beginning at 0 and ending at N

    dtype codes: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16

tokenmill writes one sequence per document, so D = N and the document index is 0, 1, ..., N.
Megatron picks uint16 when the vocabulary has fewer than 65,500 entries and int32 otherwise
(`dtype_for_vocab`); the writer refuses ids that do not fit (negative, or past the dtype's
range or the declared vocabulary) instead of letting them wrap. EOD is not part of the
format: the encoder appends it to each document when configured.

Writes are atomic: `MegatronWriter` streams into temporary names beside the targets and only
renames them on `finalize` (``.bin`` first, then ``.idx``), so a reader never sees a
half-written shard under its final name, and a killed writer leaves only ``*.tmp-*`` files
that `remove_stale_temporaries` cleans up. Local paths and fsspec URLs (``memory://``,
``s3://``, ...) are accepted; the sha256 of both files is computed while writing.
"""
from __future__ import annotations

import hashlib
import os
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from stages.storage import TMP_MARK, LocalFileSystem, filesystem

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_SIZE = 34  # 9 magic + 8 version + 1 dtype + 8 N + 8 (D+1)

DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
}
CODE_OF_DTYPE: dict[np.dtype, int] = {dt: code for code, dt in DTYPE_CODES.items()}

#: Megatron's threshold (``DType.optimal_dtype``): uint16 strictly below this vocabulary size.
UINT16_VOCAB_LIMIT = 65_500
TOKEN_DTYPES = (np.dtype(np.uint16), np.dtype(np.int32))

_INT32_MAX = np.iinfo(np.int32).max
_TMP_MARK = TMP_MARK


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """Token dtype Megatron would choose for `vocab_size` (uint16 below 65,500, else int32)."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size > _INT32_MAX:
        raise ValueError(f"vocab_size {vocab_size} does not fit int32 token ids")
    return np.dtype(np.uint16) if vocab_size < UINT16_VOCAB_LIMIT else np.dtype(np.int32)


def _token_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in TOKEN_DTYPES:
        raise ValueError(f"token dtype must be uint16 or int32 (Megatron's choices), got {dt}")
    return dt


def index_bytes(lengths: np.ndarray, dtype) -> bytes:
    """The complete ``.idx`` content for sequences of `lengths` (one sequence per document)."""
    dt = np.dtype(dtype)
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 0 or lengths.max() > _INT32_MAX):
        raise ValueError("sequence lengths must be in [0, 2**31 - 1] (stored as int32)")
    n = int(lengths.size)
    pointers = np.zeros(n, dtype="<i8")
    if n > 1:
        np.cumsum(lengths[:-1] * dt.itemsize, out=pointers[1:])
    doc_index = np.arange(n + 1, dtype="<i8")
    header = INDEX_MAGIC + struct.pack("<QBQQ", INDEX_VERSION, CODE_OF_DTYPE[dt], n, n + 1)
    return b"".join(
        (header, lengths.astype("<i4").tobytes(), pointers.tobytes(), doc_index.tobytes())
    )


def remove_stale_temporaries(prefix: str, storage_options: dict | None = None) -> list[str]:
    """Delete temporaries a killed writer left for `prefix`; returns what was removed.

    Safe only while no other writer works on the same prefix; shard names are unique per
    run, so a rerun owns its prefixes.
    """
    fs, path = filesystem(prefix, storage_options)
    removed = []
    for ext in (".bin", ".idx"):
        for stale in fs.glob(f"{path}{ext}{_TMP_MARK}*"):
            fs.rm(stale)
            removed.append(stale)
    return removed


@dataclass(frozen=True)
class ShardFiles:
    """What `MegatronWriter.finalize` produced."""

    prefix: str
    documents: int
    tokens: int
    dtype: str
    bin_bytes: int
    idx_bytes: int
    bin_sha256: str
    idx_sha256: str


class MegatronWriter:
    """Stream documents into ``PREFIX.bin``/``PREFIX.idx`` under temporary names.

    Use as a context manager (an exception aborts and removes the temporaries) or call
    `finalize` / `abort` yourself. `vocab_size`, when given, is an extra bound on ids.
    """

    def __init__(
        self,
        prefix: str,
        dtype,
        *,
        vocab_size: int | None = None,
        storage_options: dict | None = None,
    ):
        self.prefix = prefix
        self.dtype = _token_dtype(dtype)
        limit = np.iinfo(self.dtype).max + 1
        self._id_limit = min(limit, vocab_size) if vocab_size is not None else limit
        self._fs, self._path = filesystem(prefix, storage_options)
        self._local = isinstance(self._fs, LocalFileSystem)
        tag = uuid.uuid4().hex[:12]
        self._tmp_bin = f"{self._path}.bin{_TMP_MARK}{tag}"
        self._tmp_idx = f"{self._path}.idx{_TMP_MARK}{tag}"
        parent = self._path.rsplit("/", 1)[0] if "/" in self._path else ""
        if parent:
            self._fs.makedirs(parent, exist_ok=True)
        self._bin = self._open(self._tmp_bin)
        self._bin_hash = hashlib.sha256()
        self._lengths: list[np.ndarray] = []
        self._tokens = 0
        self._closed = False

    # -- writing -------------------------------------------------------------------------
    def _check_ids(self, tokens: np.ndarray) -> None:
        if tokens.size == 0:
            return
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self._id_limit:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"token id {bad} does not fit shard {self.prefix!r}: dtype {self.dtype} with "
                f"ids limited to [0, {self._id_limit}); pick the dtype from the vocabulary "
                f"size with dtype_for_vocab()"
            )

    def add_flat(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as concatenated `tokens` and per-document `lengths`."""
        if self._closed:
            raise RuntimeError(f"writer for {self.prefix!r} is already closed")
        tokens = np.asarray(tokens)
        lengths = np.asarray(lengths, dtype=np.int64)
        if tokens.ndim != 1 or lengths.ndim != 1:
            raise ValueError("tokens and lengths must be one-dimensional")
        if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got {tokens.dtype}")
        if int(lengths.sum()) != tokens.size or (lengths.size and lengths.min() < 0):
            raise ValueError(
                f"lengths sum to {int(lengths.sum())} but {tokens.size} tokens were given"
            )
        if lengths.size and lengths.max() > _INT32_MAX:
            raise ValueError("a document longer than 2**31 - 1 tokens cannot be indexed")
        self._check_ids(tokens)
        data = memoryview(np.ascontiguousarray(tokens, dtype=self.dtype.newbyteorder("<")))
        self._bin.write(data.cast("B"))
        self._bin_hash.update(data.cast("B"))
        self._lengths.append(lengths)
        self._tokens += tokens.size

    def add_document(self, ids: Sequence[int] | np.ndarray) -> None:
        arr = np.asarray(ids)
        if arr.size == 0:
            arr = arr.astype(np.int64)
        self.add_flat(arr.ravel(), np.array([arr.size]))

    def add_documents(self, docs: Iterable[Sequence[int] | np.ndarray]) -> None:
        arrays = [np.asarray(d).ravel() for d in docs]
        if not arrays:
            return
        lengths = np.array([a.size for a in arrays], dtype=np.int64)
        self.add_flat(np.concatenate([a.astype(np.int64, copy=False) for a in arrays]), lengths)

    def _open(self, path: str):
        # plain files locally: os.fsync needs a real descriptor
        return open(path, "wb") if self._local else self._fs.open(path, "wb")

    # -- finishing -----------------------------------------------------------------------
    def _rename(self, src: str, dst: str) -> None:
        if self._local:
            os.replace(src, dst)  # atomic on POSIX, replaces a stale target
        else:
            self._fs.mv(src, dst)  # object stores publish the object whole

    def _sync_close(self, handle) -> None:
        if self._local:
            handle.flush()
            os.fsync(handle.fileno())
        handle.close()

    def finalize(self) -> ShardFiles:
        if self._closed:
            raise RuntimeError(f"writer for {self.prefix!r} is already closed")
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        idx = index_bytes(lengths, self.dtype)
        try:
            self._sync_close(self._bin)
            handle = self._open(self._tmp_idx)
            handle.write(idx)
            self._sync_close(handle)
            self._rename(self._tmp_bin, f"{self._path}.bin")
            self._rename(self._tmp_idx, f"{self._path}.idx")
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return ShardFiles(
            prefix=self.prefix,
            documents=int(lengths.size),
            tokens=int(self._tokens),
            dtype=self.dtype.name,
            bin_bytes=int(self._tokens * self.dtype.itemsize),
            idx_bytes=len(idx),
            bin_sha256=self._bin_hash.hexdigest(),
            idx_sha256=hashlib.sha256(idx).hexdigest(),
        )

    def abort(self) -> None:
        """Close and delete the temporaries; the final names are left untouched."""
        if self._closed:
            return
        self._closed = True
        try:
            self._bin.close()
        finally:
            for tmp in (self._tmp_bin, self._tmp_idx):
                if self._fs.exists(tmp):
                    self._fs.rm(tmp)

    def __enter__(self) -> MegatronWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.finalize()


def write_shard(
    prefix: str,
    tokens: np.ndarray,
    lengths: np.ndarray,
    dtype,
    *,
    vocab_size: int | None = None,
    storage_options: dict | None = None,
) -> ShardFiles:
    """Write one shard from concatenated `tokens` and per-document `lengths`, atomically."""
    with MegatronWriter(
        prefix, dtype, vocab_size=vocab_size, storage_options=storage_options
    ) as writer:
        writer.add_flat(tokens, lengths)
        return writer.finalize()


class MegatronReader:
    """Random access by document to a ``.bin``/``.idx`` pair.

    Local files are memory-mapped (documents are zero-copy views); other fsspec URLs read
    the index once and each document with a ranged read.
    """

    def __init__(self, prefix: str, storage_options: dict | None = None):
        self.prefix = prefix
        self._fs, self._path = filesystem(prefix, storage_options)
        self._local = isinstance(self._fs, LocalFileSystem)
        idx_path = f"{self._path}.idx"
        if self._local:
            idx = np.memmap(idx_path, dtype=np.uint8, mode="r")
        else:
            idx = np.frombuffer(self._fs.cat_file(idx_path), dtype=np.uint8)
        if idx.size < HEADER_SIZE or bytes(idx[:9]) != INDEX_MAGIC:
            raise ValueError(f"{idx_path}: not a Megatron index (bad magic)")
        version, code, n, d1 = struct.unpack("<QBQQ", bytes(idx[9:HEADER_SIZE]))
        if version != INDEX_VERSION:
            raise ValueError(f"{idx_path}: unsupported index version {version}")
        if code not in DTYPE_CODES:
            raise ValueError(f"{idx_path}: unknown dtype code {code}")
        expected = HEADER_SIZE + 4 * n + 8 * n + 8 * d1
        if idx.size < expected:
            raise ValueError(f"{idx_path}: truncated ({idx.size} bytes, need {expected})")
        self.dtype = DTYPE_CODES[code].newbyteorder("<")
        off = HEADER_SIZE
        self.lengths = idx[off : off + 4 * n].view("<i4")
        off += 4 * n
        self.pointers = idx[off : off + 8 * n].view("<i8")
        off += 8 * n
        self.document_indices = idx[off : off + 8 * d1].view("<i8")
        self._idx = idx
        bin_path = f"{self._path}.bin"
        if self._local:
            size = os.path.getsize(bin_path)
            self._bin = (
                np.memmap(bin_path, dtype=self.dtype, mode="r")
                if size
                else np.zeros(0, dtype=self.dtype)
            )
        else:
            size = self._fs.size(bin_path)
            self._bin = None
        self._bin_path = bin_path
        needed = int(self.lengths.astype(np.int64).sum()) * self.dtype.itemsize
        if size != needed:
            raise ValueError(f"{bin_path}: {size} bytes but the index describes {needed}")

    def __len__(self) -> int:
        return int(self.lengths.size)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.astype(np.int64).sum())

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range for {n} documents")
        i %= n
        length = int(self.lengths[i])
        if self._bin is not None:
            start = int(self.pointers[i]) // self.dtype.itemsize
            return self._bin[start : start + length]
        start = int(self.pointers[i])
        raw = self._fs.cat_file(self._bin_path, start, start + length * self.dtype.itemsize)
        return np.frombuffer(raw, dtype=self.dtype)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        self._bin = None
        self._idx = None
        self.lengths = self.pointers = self.document_indices = None

    def __enter__(self) -> MegatronReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
