"""Shard planning, shuffle, manifest, determinism across workers, SIGKILL + resume, inspect.

`run_pipeline` below plays the encode and write-shards steps the way an engine would: the
documents are cut into one partition per worker, each partition is encoded (and expanded)
in its own process, then every shard is written by whichever process picks it up.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from helpers_data import read_jsonl_zst, train_byte_level_bpe
from stages import megatron, shards, storage
from stages.encode import Encoder
from stages.stochastok import SplitTable, document_keys, expand_flat

REPO = Path(__file__).resolve().parents[1]



def train_tokenizer(path: Path) -> None:
    train_byte_level_bpe(path, vocab_size=3000, every=4)


def load_records(limit: int = 240) -> list[dict]:
    return read_jsonl_zst(REPO / "data/dev/postgresql-doc-15.jsonl.zst")[:limit]


# -- the two steps, engine-free ----------------------------------------------------------
def encode_partition(args):
    tok_path, records, mode, p, seed = args
    enc = Encoder.from_tokenizer_json(tok_path, threads=1)
    tokens, lengths = enc.encode_flat([r["text"] for r in records], frame=False)
    out = {"tokens": enc.frame(tokens, lengths) + (np.zeros_like(lengths),) * 2}
    if mode != "off":
        ex = expand_flat(tokens, lengths, document_keys(seed, [r["id"] for r in records]),
                         SplitTable.build(enc.token_bytes), p)
        out["stochastok"] = enc.frame(ex.tokens, ex.lengths) + (ex.attempts, ex.expanded)
    if mode == "expand":
        del out["tokens"]
    return out


def write_one(args):
    out_dir, name, stream, tokens, lengths, attempts, expanded, vocab, stall = args
    if shards.completed_shard(out_dir, name) is not None:
        return None  # resume: already written by an earlier run
    if stall:
        # stand-in for a kill mid-write: leave a half-written shard and wait to be killed
        writer = megatron.MegatronWriter(f"{out_dir}/{name}", megatron.dtype_for_vocab(vocab))
        writer.add_flat(tokens[: tokens.size // 2], np.array([tokens.size // 2]))
        writer._bin.flush()
        Path(out_dir, "stalled").write_text(name)
        time.sleep(600)
    return shards.write_shard(
        out_dir, name, tokens, lengths, megatron.dtype_for_vocab(vocab), vocab_size=vocab,
        stream=stream, stochastok_attempts=attempts, stochastok_expanded=expanded,
    )


def run_pipeline(tok_path, records, out_dir, *, workers=1, mode="off", p=0.1, seed=17,
                 shuffle_seed=None, target=12_000, stall_after=None) -> dict:
    parts = np.array_split(np.arange(len(records)), workers)
    jobs = [(str(tok_path), [records[i] for i in part], mode, p, seed) for part in parts]
    with ProcessPoolExecutor(workers) as pool:
        encoded = list(pool.map(encode_partition, jobs))
    vocab = Encoder.from_tokenizer_json(str(tok_path)).vocab_size
    streams = {}
    for stream in encoded[0]:
        streams[stream] = [np.concatenate([e[stream][k] for e in encoded]) for k in range(4)]
    plain_lengths = next(iter(streams.values()))[1]
    ids = [r["id"] for r in records]
    plan = shards.plan_shards(plain_lengths, target=target, doc_ids=ids,
                              shuffle_seed=shuffle_seed)
    tasks, index = [], []
    for s, members in enumerate(plan.shards()):
        for stream, (tokens, lengths, attempts, expanded) in streams.items():
            name = shards.shard_name(s, stream)
            t, n = shards.gather(tokens, lengths, members)
            stall = stall_after is not None and len(tasks) == stall_after
            tasks.append((str(out_dir), name, stream, t, n, int(attempts[members].sum()),
                          int(expanded[members].sum()), vocab, stall))
            index.append((name, [ids[i] for i in members]))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(write_one, tasks))
    records_ = [shards.completed_shard(str(out_dir), name) for name, _ in index]
    shards.write_doc_index(str(out_dir), index)
    manifest = shards.build_manifest(
        records_,
        tokenizer=shards.tokenizer_info(str(tok_path), vocab_size=vocab, preset="test-bpe"),
        config_hash="test-config",
        settings={"stochastok": {"mode": mode, "p": p, "seed": seed},
                  "shuffle_seed": shuffle_seed, "target_tokens": target},
    )
    shards.write_manifest(str(out_dir), manifest)
    # writers of one shard may overlap, so none removes the others' temporaries; once all
    # are done the leftovers of killed ones go (as the pipeline's runner does)
    storage.remove_temporaries(str(out_dir))
    return manifest


def snapshot(out_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir())}


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return load_records()


# -- planning ----------------------------------------------------------------------------
def test_in_order_plan_cuts_by_target():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 900, size=500)
    plan = shards.plan_shards(sizes, target=5000)
    assert np.array_equal(plan.order(), np.arange(500))  # input order kept
    groups = plan.shards()
    assert len(groups) == plan.num_shards and sorted(np.concatenate(groups)) == list(range(500))
    for g in groups:
        assert sizes[g].sum() <= 5000 + sizes.max()
        assert np.array_equal(g, np.arange(g[0], g[-1] + 1))
    assert set(plan.shard) == set(range(plan.num_shards))  # dense names
    big = shards.plan_shards([50_000, 10, 10], target=1000)  # one document past the target
    assert big.shard.tolist() == [0, 1, 1]
    assert shards.plan_shards([], target=10).shards() == []
    assert shards.plan_shards([], target=10, doc_ids=[], shuffle_seed=1).shards() == []


def test_shuffle_is_a_seeded_permutation_of_the_ids():
    rng = np.random.default_rng(1)
    ids = [f"src/file-{i}.jsonl:{i}" for i in range(400)]
    sizes = rng.integers(1, 500, size=400)
    plan = shards.plan_shards(sizes, target=4000, doc_ids=ids, shuffle_seed=5)
    placed = {ids[i]: (plan.shard[i], plan.position[i]) for i in range(400)}
    # the same documents in another input order land in the same places
    perm = rng.permutation(400)
    again = shards.plan_shards(sizes[perm], target=4000, doc_ids=[ids[i] for i in perm],
                               shuffle_seed=5)
    assert {ids[j]: (again.shard[k], again.position[k]) for k, j in enumerate(perm)} == placed
    order = plan.order()
    assert sorted(order.tolist()) == list(range(400)) and not np.array_equal(order, np.arange(400))
    other = shards.plan_shards(sizes, target=4000, doc_ids=ids, shuffle_seed=6)
    assert not np.array_equal(other.order(), order)
    for g in plan.shards():
        assert sizes[g].sum() <= 4000 + sizes.max()
    with pytest.raises(ValueError, match="unique"):
        shards.plan_shards([1, 2], target=10, doc_ids=["a", "a"], shuffle_seed=1)
    with pytest.raises(ValueError, match="id"):
        shards.plan_shards([1, 2], target=10, shuffle_seed=1)


def test_target_units():
    assert shards.target_in_tokens(1000, "tokens", np.uint16) == 1000
    assert shards.target_in_tokens(1000, "bytes", np.uint16) == 500
    assert shards.target_in_tokens(1000, "bytes", np.int32) == 250
    with pytest.raises(ValueError):
        shards.target_in_tokens(1000, "lines", np.int32)


# -- end to end --------------------------------------------------------------------------
def test_manifest_checksums_and_trace(tok_path, records, tmp_path):
    out = tmp_path / "run"
    manifest = run_pipeline(tok_path, records, out, shuffle_seed=3)
    assert shards.verify_manifest(str(out)) == []
    total = manifest["totals"]["tokens"]
    assert total["documents"] == len(records) and total["shards"] == len(manifest["shards"]) > 3
    assert manifest["tokenizer"]["vocab_size"] == 3000
    assert manifest["tokenizer"]["sha256"] == shards.sha256_of(str(tok_path))
    for entry in manifest["shards"]:
        assert entry["dtype"] == "uint16" and entry["tokens"] > 0
    # any token range traces back to its source documents
    index = shards.read_doc_index(str(out)).to_pylist()
    name = manifest["shards"][1]["name"]
    rows = [r for r in index if r["shard"] == name]
    mid = rows[1]
    got = shards.trace_tokens(str(out), name, mid["token_start"], mid["token_start"] + 1)
    assert got == [mid["doc_id"]]
    span = shards.trace_tokens(str(out), name, 0, rows[2]["token_start"] + 1)
    assert span == [r["doc_id"] for r in rows[:3]]
    # the documents in the shard are the ones the index names, in that order
    text_of = {r["id"]: r["text"] for r in records}
    enc = Encoder.from_tokenizer_json(str(tok_path))
    reader = megatron.MegatronReader(str(out / name))
    for row in rows:
        assert enc.decode(reader[row["doc_index"]][:-1]) == text_of[row["doc_id"]]
    # corruption is caught
    victim = out / f"{manifest['shards'][0]['name']}.bin"
    data = bytearray(victim.read_bytes())
    data[3] ^= 0xFF
    victim.write_bytes(bytes(data))
    problems = shards.verify_manifest(str(out))
    assert len(problems) == 1 and "sha256" in problems[0]
    (out / f"{manifest['shards'][2]['name']}.idx").unlink()
    assert any("missing" in p for p in shards.verify_manifest(str(out)))


def test_byte_identical_with_one_and_two_workers(tok_path, records, tmp_path):
    one = tmp_path / "one"
    two = tmp_path / "two"
    run_pipeline(tok_path, records, one, workers=1, mode="both", shuffle_seed=9)
    run_pipeline(tok_path, records, two, workers=2, mode="both", shuffle_seed=9)
    a, b = snapshot(one), snapshot(two)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]


def test_both_streams_record_expansion(tok_path, records, tmp_path):
    out = tmp_path / "both"
    p = 0.1
    manifest = run_pipeline(tok_path, records, out, mode="both", p=p)
    assert shards.verify_manifest(str(out)) == []
    plain, expanded = manifest["totals"]["tokens"], manifest["totals"]["stochastok"]
    assert plain["documents"] == expanded["documents"] == len(records)
    assert plain["shards"] == expanded["shards"]
    content = plain["tokens"] - plain["documents"]  # the EOD tokens are not expanded
    assert expanded["tokens"] == plain["tokens"] + expanded["stochastok_expanded"]
    assert 0 < expanded["stochastok_expanded"] < expanded["stochastok_attempts"] <= content * p
    for entry in manifest["shards"]:
        if entry["stream"] == "stochastok":
            assert entry["stochastok_attempts"] > 0
    enc = Encoder.from_tokenizer_json(str(tok_path))
    a = megatron.MegatronReader(str(out / "tokens-00001"))
    b = megatron.MegatronReader(str(out / "stochastok-00001"))
    assert len(a) == len(b)
    for i in range(len(a)):
        assert enc.decode_bytes(a[i]) == enc.decode_bytes(b[i])
        assert b[i].size >= a[i].size


def test_sigkill_then_rerun_is_byte_identical(tok_path, records, tmp_path):
    clean = tmp_path / "clean"
    run_pipeline(tok_path, records, clean, mode="both", shuffle_seed=4)
    killed = tmp_path / "killed"
    killed.mkdir()
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", str(tok_path), str(killed), "5"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while not (killed / "stalled").exists():
            assert child.poll() is None, "the child ended before reaching the stall"
            assert time.time() < deadline, "the child never reached the stall"
            time.sleep(0.05)
        os.killpg(child.pid, signal.SIGKILL)  # the child and its pool worker, like a lost node
        child.wait(30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    (killed / "stalled").unlink()
    leftovers = [p.name for p in killed.iterdir()]
    assert any(".tmp-" in n for n in leftovers) and "manifest.json" not in leftovers
    finished = {p.name: p.stat().st_mtime_ns for p in killed.glob("*.done.json")}
    assert len(finished) == 5
    run_pipeline(tok_path, records, killed, mode="both", shuffle_seed=4)
    for name, mtime in finished.items():  # finished shards were not written again
        assert (killed / name).stat().st_mtime_ns == mtime
    assert snapshot(killed) == snapshot(clean)
    assert shards.verify_manifest(str(killed)) == []


def test_streaming_writer_equals_plan_then_write(tok_path, records, tmp_path):
    enc = Encoder.from_tokenizer_json(str(tok_path))
    tokens, lengths = enc.encode_flat([r["text"] for r in records])
    ids = [r["id"] for r in records]
    attempts = np.arange(len(records))  # any per-document counts: they must add up per shard
    planned = tmp_path / "planned"
    plan = shards.plan_shards(lengths, target=15_000)
    want = []
    for s, members in enumerate(plan.shards()):
        t, n = shards.gather(tokens, lengths, members)
        want.append(shards.write_shard(str(planned), shards.shard_name(s), t, n, np.uint16,
                                       stochastok_attempts=attempts[members].sum()))
    streamed = tmp_path / "streamed"
    writer = shards.InOrderShardWriter(str(streamed), np.uint16, 15_000)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    for a, b in ((0, 1), (1, 7), (7, 100), (100, len(records))):  # uneven batches
        writer.add(tokens[offsets[a]:offsets[b]], lengths[a:b], ids[a:b],
                   stochastok_attempts=attempts[a:b])
    assert writer.close() == want
    assert snapshot(streamed) == snapshot(planned)
    assert [d for _, d in writer.shard_docs] == [[ids[i] for i in m] for m in plan.shards()]
    # a rerun finds every shard done and writes nothing
    mtimes = {p.name: p.stat().st_mtime_ns for p in streamed.iterdir()}
    again = shards.InOrderShardWriter(str(streamed), np.uint16, 15_000)
    again.add(tokens, lengths, ids, stochastok_attempts=attempts)
    assert again.close() == want
    assert {p.name: p.stat().st_mtime_ns for p in streamed.iterdir()} == mtimes


def test_object_store_urls(tok_path, records):
    """The same writes, resume check, index and verification through an fsspec URL."""
    import fsspec

    out = "memory://tokenmill-shards-test/run"
    enc = Encoder.from_tokenizer_json(str(tok_path))
    tokens, lengths = enc.encode_flat([r["text"] for r in records[:40]])
    plan = shards.plan_shards(lengths, target=20_000)
    written, index = [], []
    for s, members in enumerate(plan.shards()):
        name = shards.shard_name(s)
        t, n = shards.gather(tokens, lengths, members)
        written.append(shards.write_shard(out, name, t, n, np.uint16, vocab_size=enc.vocab_size))
        assert shards.completed_shard(out, name) == written[-1]
        index.append((name, [records[i]["id"] for i in members]))
    shards.write_doc_index(out, index)
    shards.write_manifest(out, shards.build_manifest(
        written, tokenizer={"path": "tokenizer.json", "vocab_size": enc.vocab_size},
        config_hash="x"))
    try:
        assert shards.verify_manifest(out) == []
        reader = megatron.MegatronReader(f"{out}/{written[0].name}")
        assert enc.decode(reader[0][:-1]) == records[0]["text"]
        assert not fsspec.filesystem("memory").glob("/tokenmill-shards-test/run/*tmp*")
    finally:
        fsspec.filesystem("memory").rm("/tokenmill-shards-test", recursive=True)


# -- inspect -----------------------------------------------------------------------------
def test_inspect_cli(tok_path, records, tmp_path, capsys):
    from pipelines.inspect_cli import main

    out = tmp_path / "ins"
    run_pipeline(tok_path, records, out)
    assert main([str(out / "tokens-00000"), "--docs", "2", "--chars", "60"]) == 0
    text = capsys.readouterr().out
    reader = megatron.MegatronReader(str(out / "tokens-00000"))
    assert f"documents {len(reader):,}" in text and f"tokens {reader.num_tokens:,}" in text
    assert "tokens per document:" in text and "#" in text
    assert records[0]["text"][:60] in text and f"id {records[0]['id']}" in text
    # the whole directory, counted from the manifest
    assert main([str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents"] == len(records)
    # without a manifest the tokenizer must be given
    lone = tmp_path / "lone"
    lone.mkdir()
    for ext in (".bin", ".idx"):
        (lone / f"s{ext}").write_bytes((out / f"tokens-00000{ext}").read_bytes())
    assert main([str(lone / "s")]) == 2
    assert "tokenizer" in capsys.readouterr().err
    assert main([str(lone / "s"), "--tokenizer", str(tok_path), "--doc", "1"]) == 0
    assert records[1]["text"][:100] in capsys.readouterr().out
    assert main([str(lone / "missing")]) == 2


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    # child of test_sigkill_then_rerun_is_byte_identical: stall on the given shard task
    _, _, tok, out_dir, stall = sys.argv
    run_pipeline(Path(tok), load_records(), Path(out_dir), mode="both", shuffle_seed=4,
                 stall_after=int(stall))
