"""The encode step's task on real documents: batching inside a task changes nothing but
memory, mode `expand` stores only the expanded stream, and an empty part keeps its columns."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from stages import storage as io
from pipelines.steps import encode as encode_step
from stages.encode import Encoder, arrow_to_flat
from test_shards import load_records, train_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("encode-step")
    tok = tmp / "tokenizer.json"
    train_tokenizer(tok)
    records = load_records(300)
    docs = tmp / "docs.parquet"
    io.write_parquet(str(docs), pa.table({"id": [r["id"] for r in records], "text": [r["text"] for r in records]}))
    return tmp, str(tok), str(docs), records


def run_task(tmp, tok, docs, mode, name, **stochastok):
    st = {"mode": mode, "p": 0.1, "max_num_to_expand": None, "seed": 3, **stochastok}
    out = tmp / name
    res = encode_step.encode_task(str(out), 0, docs, 0, encode_step.TokenizerSource(tok).to_args(), "auto", None, st, "zstd")
    return io.read_parquet(str(out / "tokens" / "part-00000.parquet")), res


@pytest.mark.parametrize("mode", ["off", "expand", "both"])
def test_batches_inside_a_task_do_not_change_the_output(setup, monkeypatch, mode):
    tmp, tok, docs, records = setup
    whole, res = run_task(tmp, tok, docs, mode, f"whole-{mode}")
    monkeypatch.setattr(encode_step, "ENCODE_BATCH_BYTES", 5000)  # many batches, some of one document
    batches = encode_step._batches(np.array([len(r["text"].encode()) for r in records]), 5000)
    assert len(batches) > 20 and any(b - a == 1 for a, b in batches)
    small, res_small = run_task(tmp, tok, docs, mode, f"small-{mode}")
    assert small.to_pylist() == whole.to_pylist()
    assert res_small["counters"] == res["counters"]
    expected = {"off": {"tokens"}, "expand": {"stochastok"}, "both": {"tokens", "stochastok"}}[mode]
    assert {c for c in whole.column_names if c in ("tokens", "stochastok")} == expected
    assert res["counters"]["tokens"] == sum(whole.column("n_tokens").to_pylist())


def test_plain_ids_equal_the_encoders(setup):
    tmp, tok, docs, records = setup
    table, _ = run_task(tmp, tok, docs, "off", "plain")
    enc = Encoder.from_tokenizer_json(tok, eod="auto", threads=1)
    want, want_len = enc.encode_flat([r["text"] for r in records])
    got, got_len = arrow_to_flat(table.column("tokens"))
    assert np.array_equal(got, want) and np.array_equal(got_len, want_len)


def test_empty_part_keeps_its_columns(setup):
    tmp, tok, _, _ = setup
    empty = tmp / "empty.parquet"
    io.write_parquet(str(empty), pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}))
    table, res = run_task(tmp, tok, str(empty), "both", "empty")
    assert table.num_rows == 0 and {"tokens", "stochastok", "st_expanded"} <= set(table.column_names)
    assert res["counters"]["documents"] == 0
