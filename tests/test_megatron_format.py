"""Megatron .bin/.idx byte compatibility.

The reader here is written from the layout in DESIGN.md, independently of stages.megatron
(nothing of the writer's layout code is imported), and is the oracle for what we write.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import fsspec
import numpy as np
import pytest
from tokenizers import Tokenizer

from helpers_data import read_jsonl_zst, train_byte_level_bpe
from stages import megatron
from stages.encode import Encoder

REPO = Path(__file__).resolve().parents[1]

# DESIGN.md: magic, u64 version, u8 dtype code, u64 N, u64 D+1, int32[N] lengths,
# int64[N] byte offsets, int64[D+1] document indices.
MAGIC = b"MMIDIDX\x00\x00"
CODES = {1: "u1", 2: "i1", 3: "<i2", 4: "<i4", 5: "<i8", 6: "<f8", 7: "<f4", 8: "<u2"}


def independent_read(idx: bytes, bin_: bytes) -> dict:
    assert idx[:9] == MAGIC
    (version,) = struct.unpack_from("<Q", idx, 9)
    (code,) = struct.unpack_from("<B", idx, 17)
    n, d1 = struct.unpack_from("<QQ", idx, 18)
    pos = 34
    lengths = np.frombuffer(idx, "<i4", n, pos)
    pos += 4 * n
    pointers = np.frombuffer(idx, "<i8", n, pos)
    pos += 8 * n
    doc_index = np.frombuffer(idx, "<i8", d1, pos)
    pos += 8 * d1
    assert pos == len(idx), "trailing bytes in .idx"
    dt = np.dtype(CODES[code])
    docs = [np.frombuffer(bin_, dt, int(ln), int(pt)) for ln, pt in zip(lengths, pointers)]
    return {"version": version, "code": code, "n": n, "d1": d1, "lengths": lengths,
            "pointers": pointers, "doc_index": doc_index, "docs": docs, "bin_size": len(bin_)}


def read_local(prefix: Path) -> dict:
    return independent_read(Path(f"{prefix}.idx").read_bytes(), Path(f"{prefix}.bin").read_bytes())



@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> Path:
    return train_byte_level_bpe(tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=4096, every=2)


def check_layout(got: dict, docs: list[np.ndarray], code: int, itemsize: int) -> None:
    assert got["version"] == 1
    assert got["code"] == code
    assert got["n"] == len(docs) and got["d1"] == len(docs) + 1
    lengths = np.array([d.size for d in docs], dtype=np.int64)
    assert np.array_equal(got["lengths"], lengths)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    assert np.array_equal(got["pointers"], starts * itemsize)
    assert np.array_equal(got["doc_index"], np.arange(len(docs) + 1))
    assert got["bin_size"] == int(lengths.sum()) * itemsize
    for want, have in zip(docs, got["docs"]):
        assert np.array_equal(have.astype(np.int64), want.astype(np.int64))


def test_real_text_uint16_round_trip(tokenizer_path, tmp_path):
    records = read_jsonl_zst(REPO / "data/dev/postgresql-doc-15.jsonl.zst")[:300]
    texts = [r["text"] for r in records]
    enc = Encoder.from_tokenizer_json(str(tokenizer_path), eod="<|endoftext|>")
    docs = enc.encode_batch(texts)
    dtype = megatron.dtype_for_vocab(enc.vocab_size)
    assert dtype == np.uint16
    prefix = tmp_path / "shard"
    files = megatron.write_shard(
        str(prefix), np.concatenate(docs), np.array([d.size for d in docs]), dtype,
        vocab_size=enc.vocab_size,
    )
    got = read_local(prefix)
    check_layout(got, docs, code=8, itemsize=2)
    assert files.documents == len(texts) and files.tokens == sum(d.size for d in docs)
    # documents decode back to the kept texts exactly (with Hugging Face's own decoder)
    hf = Tokenizer.from_file(str(tokenizer_path))
    eod = hf.token_to_id("<|endoftext|>")
    for text, ids in zip(texts, got["docs"]):
        assert int(ids[-1]) == eod
        assert hf.decode(ids[:-1].tolist()) == text


def test_large_vocab_uses_int32(tmp_path):
    vocab = 100_000
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, vocab, size=n) for n in (0, 1, 17, 5000, 3)]
    docs[3][:10] = vocab - 1  # the top id must survive
    dtype = megatron.dtype_for_vocab(vocab)
    assert dtype == np.int32
    megatron.write_shard(
        str(tmp_path / "big"), np.concatenate(docs), np.array([d.size for d in docs]), dtype,
        vocab_size=vocab,
    )
    check_layout(read_local(tmp_path / "big"), docs, code=4, itemsize=4)


def test_dtype_threshold_matches_megatron():
    assert megatron.dtype_for_vocab(65_499) == np.uint16
    assert megatron.dtype_for_vocab(65_500) == np.int32
    assert megatron.dtype_for_vocab(200_000) == np.int32
    with pytest.raises(ValueError):
        megatron.dtype_for_vocab(0)


@pytest.mark.parametrize(
    "ids, dtype, vocab",
    [([1, 65_536], np.uint16, None), ([-1, 3], np.int32, None), ([5, 100], np.uint16, 100)],
)
def test_ids_that_do_not_fit_are_refused(tmp_path, ids, dtype, vocab):
    with pytest.raises(ValueError, match="does not fit"):
        megatron.write_shard(str(tmp_path / "x"), np.array(ids), np.array([len(ids)]), dtype,
                             vocab_size=vocab)
    assert not list(tmp_path.iterdir()), "a refused write must leave nothing behind"


def test_empty_documents_and_empty_shard(tmp_path):
    docs = [np.array([], dtype=np.int64), np.array([7, 8]), np.array([], dtype=np.int64)]
    megatron.write_shard(str(tmp_path / "e"), np.array([7, 8]), np.array([0, 2, 0]), np.uint16)
    check_layout(read_local(tmp_path / "e"), docs, code=8, itemsize=2)
    megatron.write_shard(str(tmp_path / "none"), np.array([], dtype=np.int64), np.array([]),
                         np.uint16)
    got = read_local(tmp_path / "none")
    assert got["n"] == 0 and got["d1"] == 1 and got["bin_size"] == 0
    with megatron.MegatronReader(str(tmp_path / "none")) as reader:
        assert len(reader) == 0 and reader.num_tokens == 0


def test_writer_is_atomic(tmp_path):
    prefix = tmp_path / "a"
    with pytest.raises(RuntimeError), megatron.MegatronWriter(str(prefix), np.uint16) as writer:
        writer.add_document([1, 2, 3])
        assert not Path(f"{prefix}.bin").exists()  # only temporaries while writing
        raise RuntimeError("boom")
    assert not list(tmp_path.iterdir())
    # a killed writer leaves temporaries; they are cleaned up and never mistaken for data
    writer = megatron.MegatronWriter(str(prefix), np.uint16)
    writer.add_document([1, 2, 3])
    writer._bin.flush()
    (left,) = tmp_path.iterdir()
    assert left.name.startswith("a.bin.tmp-")
    removed = megatron.remove_stale_temporaries(str(prefix))
    assert len(removed) == 1 and not list(tmp_path.iterdir())


def test_reader_matches_independent_reader(tmp_path):
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 50_000, size=int(n)) for n in rng.integers(0, 300, size=50)]
    prefix = tmp_path / "r"
    with megatron.MegatronWriter(str(prefix), np.uint16, vocab_size=50_000) as writer:
        writer.add_documents(docs[:20])
        for doc in docs[20:]:
            writer.add_document(doc)
    got = read_local(prefix)
    with megatron.MegatronReader(str(prefix)) as reader:
        assert len(reader) == len(docs)
        for i in rng.permutation(len(docs)):
            assert np.array_equal(reader[int(i)], got["docs"][i])
        assert np.array_equal(reader[-1], docs[-1])
        with pytest.raises(IndexError):
            reader[len(docs)]


def test_truncated_bin_is_detected(tmp_path):
    prefix = tmp_path / "t"
    megatron.write_shard(str(prefix), np.arange(10), np.array([4, 6]), np.uint16)
    data = Path(f"{prefix}.bin").read_bytes()
    Path(f"{prefix}.bin").write_bytes(data[:-2])
    with pytest.raises(ValueError, match="bytes but the index"):
        megatron.MegatronReader(str(prefix))


def test_fsspec_memory_round_trip():
    docs = [np.array([1, 2, 3]), np.array([70_000, 5])]
    url = "memory://tokenmill-test/shards/m"
    megatron.write_shard(url, np.concatenate(docs), np.array([3, 2]), np.int32)
    fs = fsspec.filesystem("memory")
    got = independent_read(fs.cat_file("/tokenmill-test/shards/m.idx"),
                           fs.cat_file("/tokenmill-test/shards/m.bin"))
    check_layout(got, docs, code=4, itemsize=4)
    reader = megatron.MegatronReader(url)
    assert [r.tolist() for r in reader] == [d.tolist() for d in docs]
    assert not fs.glob("/tokenmill-test/shards/*tmp*")
    fs.rm("/tokenmill-test", recursive=True)


def test_megatron_core_reads_our_shards(tmp_path):
    """Megatron's own IndexedDataset (extra `megatron`: megatron-core and torch). Skipped
    when they are not installed, except under `make test`, which installs them and sets
    TOKENMILL_REQUIRE_MEGATRON=1 so that a missing install fails instead of skipping."""
    if os.environ.get("TOKENMILL_REQUIRE_MEGATRON") == "1":
        from megatron.core.datasets import indexed_dataset as indexed
    else:
        indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    rng = np.random.default_rng(2)
    for vocab in (32_000, 100_000):
        docs = [rng.integers(0, vocab, size=int(n)) for n in rng.integers(1, 200, size=30)]
        prefix = tmp_path / f"mc{vocab}"
        megatron.write_shard(str(prefix), np.concatenate(docs), np.array([d.size for d in docs]),
                             megatron.dtype_for_vocab(vocab))
        dataset = indexed.IndexedDataset(str(prefix), multimodal=False, mmap=True)
        assert len(dataset) == len(docs)
        for i, doc in enumerate(docs):
            assert np.array_equal(np.asarray(dataset[i]).astype(np.int64), doc)
        assert list(dataset.document_indices) == list(range(len(docs) + 1))
