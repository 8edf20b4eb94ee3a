"""The run's shards, read back as a trainer would: independent Megatron reader, exact text
round trip, ids equal to Hugging Face `encode`, StochasTok stream decoding to the same bytes.

Uses the shared reference run of the laptop config (Ray, 2 workers; StochasTok `both`,
global shuffle on, 200k-token shards), so the shards are the real pipeline's output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from conftest import tokenmill
from helpers_runs import output_docs, step_dirs, summary
from stages.shards import read_doc_index, verify_manifest
from test_megatron_format import read_local


@pytest.fixture(scope="module")
def shards(reference_run):
    run_root = reference_run[0]
    out = step_dirs(run_root)["write_shards"]
    manifest = json.loads((out / "manifest.json").read_text())
    tok = Tokenizer.from_file(str(out / manifest["run_root"] / manifest["tokenizer"]["path"]))
    texts = dict(zip(*(output_docs(run_root).column(c).to_pylist() for c in ("id", "text"))))
    index = read_doc_index(str(out)).to_pylist()
    return out, manifest, tok, texts, index


def _stream(out: Path, manifest: dict, stream: str):
    """(doc id, ids) for every document of a stream, via the independent reader and the doc index."""
    index = {(r["shard"], r["doc_index"]): r["doc_id"] for r in read_doc_index(str(out)).to_pylist()}
    for rec in manifest["shards"]:
        if rec["stream"] != stream:
            continue
        got = read_local(out / rec["name"])
        assert got["code"] == 8 and got["version"] == 1  # uint16 for an 8k vocab
        assert list(got["doc_index"]) == list(range(got["n"] + 1))
        for i, ids in enumerate(got["docs"]):
            yield index[(rec["name"], i)], ids


def test_manifest_verifies_and_counts_add_up(shards):
    out, manifest, _, texts, _ = shards
    assert verify_manifest(str(out)) == []
    for stream in ("tokens", "stochastok"):
        assert manifest["totals"][stream]["documents"] == len(texts)


def test_plain_stream_decodes_to_kept_texts_and_equals_hf_encode(shards):
    out, manifest, tok, texts, _ = shards
    eod = tok.token_to_id("<|endoftext|>")
    seen = set()
    for doc_id, ids in _stream(out, manifest, "tokens"):
        text = texts[doc_id]
        assert ids[-1] == eod
        assert list(ids[:-1]) == tok.encode(text, add_special_tokens=False).ids, doc_id
        assert tok.decode(list(ids[:-1])) == text
        seen.add(doc_id)
    assert seen == set(texts)


def test_stochastok_stream_decodes_to_the_same_bytes(shards):
    out, manifest, tok, texts, _ = shards
    plain = dict(_stream(out, manifest, "tokens"))
    expanded = dict(_stream(out, manifest, "stochastok"))
    assert plain.keys() == expanded.keys()
    longer = 0
    for doc_id, ids in expanded.items():
        assert tok.decode(list(ids)) == tok.decode(list(plain[doc_id]))
        longer += len(ids) > len(plain[doc_id])
    assert longer > len(expanded) // 2  # the expansion really happened
    st = manifest["totals"]["stochastok"]
    # realized rate below p = 0.1: some tokens have no split
    assert 0 < st["stochastok_expanded"] <= st["stochastok_attempts"]


def test_run_reports_attempts_and_the_realized_rate(reference_run, shards):
    run_root, _, _, proc = reference_run
    _, manifest, _, texts, _ = shards
    reported = summary(run_root)["shards"]["stochastok"]
    plain, expanded = manifest["totals"]["tokens"], manifest["totals"]["stochastok"]
    content = plain["tokens"] - plain["documents"]  # without the EOD of every document
    assert reported["input_tokens"] == content
    assert reported["replacements"] == expanded["stochastok_expanded"] == expanded["tokens"] - plain["tokens"]
    assert reported["attempts"] == expanded["stochastok_attempts"]
    assert reported["p"] == 0.1 and reported["realized_rate"] == round(reported["replacements"] / content, 6)
    assert 0 < reported["realized_rate"] < 0.1
    # attempts = sum of floor(L * p) over documents, L = plain length without EOD
    lengths = [r["tokens"] - 1 for r in read_doc_index(str(shards[0])).to_pylist() if r["shard"].startswith("tokens")]
    assert reported["attempts"] == sum(int(n * 0.1) for n in lengths)
    assert f"realized rate {reported['realized_rate']:.4f}" in proc.stdout + proc.stderr


def test_shuffle_spreads_sources_across_shards(shards):
    _, _, _, _, index = shards
    first_shard = [r["doc_id"] for r in index if r["shard"] == "tokens-00000"]
    assert len({d.split(":")[0] for d in first_shard}) >= 3  # not just one input file in order


def test_expand_mode_in_document_order(make_config, shards):
    """Mode `expand` with the shuffle off (local engine): only the expanded stream is stored
    and written, shards hold the documents in the encode step's order, the manifest verifies,
    and each document decodes to the same text as the reference run's plain stream."""
    import pyarrow.parquet as pq

    _, ref_manifest, tok, texts, _ = shards
    stochastok = {**ref_manifest["settings"]["stochastok"], "mode": "expand"}
    cfg = make_config("expand", engine={"kind": "local"}, encode={"stochastok": stochastok},
                      shards={"shuffle": False})
    run_root = cfg.parent / "run-expand"
    tokenmill("run", str(cfg))
    steps = step_dirs(run_root)
    encoded = sorted(steps["encode"].glob("tokens/part-*.parquet"))
    names = set()
    order = []
    for part in encoded:
        schema = pq.read_schema(part)
        names.update(schema.names)
        order += pq.read_table(part, columns=["id"]).column("id").to_pylist()
    assert "stochastok" in names and "n_tokens" in names and "tokens" not in names
    out = steps["write_shards"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert verify_manifest(str(out)) == []
    assert {r["stream"] for r in manifest["shards"]} == {"stochastok"}
    seen = [doc_id for doc_id, ids in _stream(out, manifest, "stochastok")
            if tok.decode(list(ids[:-1])) == texts[doc_id]]
    assert seen == order  # every document, exact text, in document order
    st = manifest["totals"]["stochastok"]
    assert st["stochastok_expanded"] == ref_manifest["totals"]["stochastok"]["stochastok_expanded"]


def test_tiktoken_ranks_file_gives_the_same_shards(make_config, reference_run, shards):
    """tokenizer.path may be a tiktoken ranks file (with its pattern and special tokens): the
    train step's own ranks export, given that way, writes byte-identical shards."""
    run_root = reference_run[0]
    trained = step_dirs(run_root)["train_bpe"]
    ranks_info = json.loads((trained / "tiktoken.json").read_text())
    cfg = make_config("ranks", engine={"kind": "local"},
                      tokenizer={"path": str(trained / ranks_info["ranks_file"]), "pattern": ranks_info["pattern"],
                                 "special_tokens": ranks_info["special_tokens"]})
    tokenmill("run", str(cfg))
    out = step_dirs(cfg.parent / "run-ranks")["write_shards"]
    ref_out = shards[0]
    names = sorted(p.name for p in ref_out.glob("*.bin")) + sorted(p.name for p in ref_out.glob("*.idx"))
    assert names and sorted(p.name for p in out.glob("*.bin")) + sorted(p.name for p in out.glob("*.idx")) == names
    for name in names:
        assert (out / name).read_bytes() == (ref_out / name).read_bytes(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["pattern"] == ranks_info["pattern"]
    assert manifest["tokenizer"]["special_tokens"] == ranks_info["special_tokens"]
    assert verify_manifest(str(out)) == []
    # inspect decodes through the manifest's ranks file and pattern
    shown = tokenmill("inspect", str(out / "tokens-00000"), "--docs", "1").stdout
    first = next(r["doc_id"] for r in read_doc_index(str(out)).to_pylist()
                 if r["shard"] == "tokens-00000" and r["doc_index"] == 0)
    assert f"id {first}" in shown and shards[3][first][:60] in shown
