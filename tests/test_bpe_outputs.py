"""Output files: loadable by tokenizers and transformers, tiktoken-equivalent, the CLI and
the pipeline step."""
from __future__ import annotations

import base64
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from conftest_bpe import DEV, dev_docs, handbook_docs
from pipelines.bpe_cli import main

SPECIALS = ["<|endoftext|>", "<|pad|>"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train once from a file through the CLI (half of the rust book: even lines)."""
    tmp = tmp_path_factory.mktemp("bpe")
    docs = dev_docs("rust-doc-books")
    src = tmp / "train.jsonl"
    src.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs[::2]))
    out = tmp / "out"
    argv = ["--input", str(src), "--vocab-size", "6000", "--preset", "llama3", "--digits", "r2l3",
            "--out", str(out), "--text-field", "body", "--no-progress", "--export-merge-free",
            "--record-mixture"]
    for s in SPECIALS:
        argv += ["--special-token", s]
    assert main(argv) == 0
    return out, list(docs[1::2]) + list(handbook_docs(("de-DE", "ja-JP")))[:20]


def test_files_exist_and_no_temp_left(trained):
    out, _ = trained
    names = sorted(n for n in os.listdir(out) if n != "_run")  # _run: the run's own steps (resume)
    assert names == sorted(["tokenizer.json", "merges.txt", "vocab.json", "tokenizer.tiktoken", "tiktoken.json",
                            "training_stats.json", "vocab_merge_free.json", "tokenizer_merge_free.json"])


def test_tokenizer_json_loads_and_round_trips(trained):
    out, held = trained
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    vocab = json.loads((out / "vocab.json").read_text())
    assert tok.get_vocab_size() == len(vocab) == 6000
    assert [vocab[s] for s in SPECIALS] == [0, 1]
    for text in held[:50]:
        enc = tok.encode(text)
        assert tok.decode(enc.ids) == text
    # special tokens are recognised as single ids
    assert tok.encode("a<|endoftext|>b").ids.count(0) == 1


def test_transformers_fast_tokenizer_loads(trained):
    transformers = pytest.importorskip("transformers", reason="transformers is needed for this check")
    out, held = trained
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"),
                                                eos_token="<|endoftext|>", pad_token="<|pad|>")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    text = held[3][:2000]
    ids = fast(text)["input_ids"]
    assert ids == tok.encode(text).ids
    assert fast.decode(ids) == text
    assert fast.eos_token_id == 0 and fast.pad_token_id == 1


def test_merges_txt_and_vocab_json(trained):
    out, _ = trained
    lines = (out / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    model = json.loads((out / "tokenizer.json").read_text())["model"]
    assert [tuple(x.split(" ")) for x in lines[1:]] == [tuple(m) for m in model["merges"]]
    assert json.loads((out / "vocab.json").read_text()) == model["vocab"]


def test_tiktoken_from_files_encodes_like_hf(trained):
    import tiktoken

    out, held = trained
    cfg = json.loads((out / "tiktoken.json").read_text())
    ranks = {}
    for line in (out / "tokenizer.tiktoken").read_text().splitlines():
        b64, rank = line.split()
        ranks[base64.b64decode(b64)] = int(rank)
    enc = tiktoken.Encoding("test", pat_str=cfg["pattern"], mergeable_ranks=ranks,
                            special_tokens=cfg["special_tokens"])
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    n = 0
    for text in held:
        assert enc.encode_ordinary(text) == tok.encode(text, add_special_tokens=False).ids
        n += 1
    assert n > 400
    assert enc.encode("x<|endoftext|>", allowed_special="all")[-1] == 0


def test_merge_free_export_hides_merge_order_and_still_encodes(trained):
    out, held = trained
    tok = Tokenizer.from_file(str(out / "tokenizer_merge_free.json"))
    free = json.loads((out / "vocab_merge_free.json").read_text())
    vocab = json.loads((out / "vocab.json").read_text())
    assert set(free) == set(vocab)
    assert list(free)[:2] == SPECIALS
    # ids sorted by (length, bytes): nothing of the merge order is left
    assert [free[t] for t in sorted(free, key=free.get)] == list(range(len(free)))
    for text in held[:30]:
        assert tok.decode(tok.encode(text).ids) == text


def test_stats_record_phases_memory_and_mixture(trained):
    out, _ = trained
    stats = json.loads((out / "training_stats.json").read_text())
    for key in ("count_seconds", "train_seconds", "total_seconds", "merge_seconds", "peak_rss_mb_driver"):
        assert stats[key] >= 0
    assert stats["counting"]["distinct_words"] > 1000 and stats["initial_pairs"] > 100
    assert stats["mixture"]["train.jsonl"]["fraction"] == 1.0
    assert "Data Mixture Inference" in stats["mixture_note"]


def test_plain_text_input_is_one_sequence_per_line(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("ab\ncd\n" * 30)
    out = tmp_path / "o"
    assert main(["--input", str(src), "--vocab-size", "270", "--out", str(out), "--no-progress"]) == 0
    merges = (out / "merges.txt").read_text().splitlines()[1:]
    assert "b Ċ" in merges or "a b" in merges
    assert "b c" not in merges


def test_cli_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["--input", str(DEV / "rust-doc-books.jsonl.zst"), "--vocab-size", "0", "--out", str(tmp_path)]) == 2
    assert "vocab_size" in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "missing*.jsonl"), "--vocab-size", "300", "--out", str(tmp_path)]) == 2


def test_parquet_input_and_bad_records_are_quarantined(tmp_path, capsys):
    docs = list(dev_docs("postgresql-doc-15")[:200])
    for i in range(2):
        p = tmp_path / "in" / f"part-{i}.parquet"
        p.parent.mkdir(exist_ok=True)
        pq.write_table(pa.table({"id": list(range(i, len(docs), 2)), "text": docs[i::2]}), p)
    (tmp_path / "in" / "bad.jsonl").write_text('{"text": "fine text"}\nnot json\n{"body": 1}\n')
    out = tmp_path / "out"
    assert main(["--input", str(tmp_path / "in"), "--vocab-size", "2000", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "quarantined 2 records (bad_json 1, missing_text 1)" in printed  # counted and named, not skipped
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() == 2000
    assert tok.decode(tok.encode(docs[0]).ids) == docs[0]
