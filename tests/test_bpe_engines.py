"""BPE training through the task contract, on every engine.

The word-table reduce runs as tasks (local, Beam) or inside Ray actors; the merges run in one
task or sharded over the actors. All of them must leave the same word-table files, the same
merges and the same tokenizer files, equal to Hugging Face's trainer; and `tokenmill
train-bpe` must train the same tokenizer as the pipeline step on the same documents.
"""
from __future__ import annotations

import hashlib
import json

import pytest

from conftest import tokenmill
from conftest_bpe import dev_docs, hf_train
from pipelines.bpe_cli import build_parser, main, run_config
from pipelines.config import ConfigError, parse_config
from pipelines.engines import make_engine
from pipelines.plan import make_plan
from pipelines.runner import run_plan
from pipelines.steps.train_bpe import WordTableMemoryError
from stages.bpe import BpeConfig

BPE_FLAGS = ["--vocab-size", "5000", "--preset", "llama3", "--special-token", "<s>", "--max-token-length", "10",
             "--partitions", "3", "--no-progress"]
TOKENIZER_FILES = ("tokenizer.json", "merges.txt", "vocab.json", "tokenizer.tiktoken")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe-corpus") / "rust.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in dev_docs("rust-doc-books")))
    return path


@pytest.fixture(scope="module")
def ray_engine():
    cfg = parse_config({"run_root": "unused", "input": {"paths": ["unused"]}, "engine": {"kind": "ray", "workers": 2},
                        "progress": False})
    engine = make_engine(cfg, progress=False)
    yield engine
    engine.close()


def _plan(corpus, root, engine: str, merge_mode: str = "single", extra: list[str] = ()):
    args = build_parser().parse_args(["--input", str(corpus), "--out", str(root / "out"), "--run-root", str(root),
                                      "--engine", engine, "--workers", "2", "--merge-mode", merge_mode, *BPE_FLAGS, *extra])
    raw = run_config(args)
    raw["output"]["keep_scratch"] = True  # the word tables are compared below
    return make_plan(parse_config(raw))


def _files(step_dir) -> dict[str, str]:
    names = [p for p in sorted(step_dir.glob("words/part-*.arrow"))] + [step_dir / n for n in TOKENIZER_FILES]
    return {str(p.relative_to(step_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in names}


@pytest.fixture(scope="module")
def local_run(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe-local")
    plan = _plan(corpus, root, "local")
    finished = {f.name: f for f in run_plan(plan)}
    return plan, finished


def test_local_tasks_equal_hugging_face(local_run):
    plan, finished = local_run
    assert finished["read"].record["counters"]["documents"] == len(dev_docs("rust-doc-books"))  # nothing quarantined
    cfg = BpeConfig.from_dict(plan.cfg.tokenizer.train)
    merges = (plan_dir(plan, "train_bpe") / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    assert [tuple(m.split(" ")) for m in merges] == [tuple(m) for m in hf_train(list(dev_docs("rust-doc-books")), cfg)[1]]
    assert len(list((plan_dir(plan, "train_bpe") / "words").glob("part-*.arrow"))) == 3


def plan_dir(plan, name):
    from pathlib import Path

    return Path(plan.step_url(name))


@pytest.mark.parametrize("engine, merge_mode", [("ray", "single"), ("ray", "sharded"), ("beam", "single")])
def test_every_engine_leaves_the_same_word_tables_and_tokenizer(corpus, tmp_path, local_run, ray_engine, engine, merge_mode):
    plan = _plan(corpus, tmp_path, engine, merge_mode)
    if engine == "ray":
        run_plan(plan, engine=ray_engine)
    else:
        run_plan(plan)
    got, want = _files(plan_dir(plan, "train_bpe")), _files(plan_dir(local_run[0], "train_bpe"))
    assert len(got) == 3 + len(TOKENIZER_FILES) and got == want
    stats = json.loads((plan_dir(plan, "train_bpe") / "training_stats.json").read_text())
    assert stats["counting"]["actors"] == (engine == "ray")  # the reduce ran in actors on Ray only
    assert len(stats["counting"]["partition_words"]) == 3
    if merge_mode == "sharded":
        assert stats["merge_mode"] == "sharded" and stats["shards"] == 3
        assert stats["rounds"] < stats["merges_total"]  # batching saved round trips


def test_sharded_merges_need_actors(corpus, tmp_path):
    with pytest.raises(ConfigError, match="needs an engine with actors"):
        _plan(corpus, tmp_path, "beam", "sharded")
    args = ["--input", str(corpus), "--out", str(tmp_path / "o"), "--merge-mode", "sharded", *BPE_FLAGS]
    assert main(args) == 2


def test_word_table_over_its_cap_fails_clearly(corpus, tmp_path):
    plan = _plan(corpus, tmp_path, "local", extra=["--max-partition-mb", "1"])
    with pytest.raises(WordTableMemoryError, match="cap of 1 MB") as info:
        run_plan(plan)
    assert any("task count-00000" in note for note in getattr(info.value, "__notes__", []))  # the task is named


def test_cli_and_pipeline_step_train_the_same_tokenizer(corpus, tmp_path, make_config):
    assert main(["--input", str(corpus), "--out", str(tmp_path / "cli"), *BPE_FLAGS]) == 0
    train = {"vocab_size": 5000, "preset": "llama3", "special_tokens": ["<s>"], "max_token_length": 10, "partitions": 3}
    cfg = make_config("pipe", input={"paths": [str(corpus)]}, engine={"kind": "local"},
                      normalize={"enabled": False}, langid={"enabled": False}, dedup_exact={"enabled": False},
                      dedup_near={"enabled": False}, tokenizer={"train": train}, encode={"enabled": False})
    tokenmill("run", str(cfg))
    from helpers_runs import step_dirs

    trained = step_dirs(cfg.parent / "run-pipe")["train_bpe"]
    for name in TOKENIZER_FILES:
        assert (trained / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
