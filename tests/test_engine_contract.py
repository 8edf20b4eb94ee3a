"""The task contract every engine relies on: tasks are idempotent, may run twice at the
same time in any order, return nothing but their records, and a failure surfaces as the
task's own exception, with the task named."""

from __future__ import annotations

import os
import re
import time

import pytest

from conftest import SAMPLE, tokenmill
from helpers_engines import TwiceConcurrently
from helpers_runs import data_checksums
from pipelines.config import load_config
from pipelines.runner import run
from pipelines.steps.train_bpe import WordTableMemoryError
from pipelines.tasks import Task, TaskArgumentError


# The sample without its largest file: every kind of input (quarantine, duplicates, Parquet,
# a truncated stream) and every phase, in fewer tasks (each one starts a fresh process twice).
SMALL = [str(SAMPLE / n) for n in ("broken.jsonl", "seeded-dups.jsonl", "udhr.parquet", "truncated.jsonl.gz")]


def test_every_task_twice_at_once_in_random_order_gives_the_local_bytes(make_config):
    local = make_config("local", engine={"kind": "local"}, input={"paths": SMALL})
    tokenmill("run", str(local))
    twice = make_config("twice", engine={"kind": "local"}, input={"paths": SMALL})
    seed = int(os.environ.get("TOKENMILL_ORDER_SEED", time.time_ns() % 2**32))
    engine = TwiceConcurrently(seed=seed)
    summary = run(load_config(str(twice)), engine=engine)
    assert summary["invariant"]["holds"]
    assert engine.started > 100  # every task of every phase, twice
    got, want = data_checksums(twice.parent / "run-twice"), data_checksums(local.parent / "run-local")
    assert len(want) > 60 and got == want, f"order seed {seed}"


def test_a_failing_task_raises_its_own_exception(make_config):
    cfg = make_config("fail", engine={"kind": "local"}, normalize={"enabled": False}, langid={"enabled": False},
                      dedup_exact={"enabled": False}, dedup_near={"enabled": False}, encode={"enabled": False},
                      tokenizer={"train": {"vocab_size": 300, "max_partition_mb": 1}})
    with pytest.raises(WordTableMemoryError, match="cap of 1 MB") as info:
        run(load_config(str(cfg)), engine=TwiceConcurrently(seed=0, pairs_at_once=1))
    assert any("task count-" in n and "train_bpe" in n for n in info.value.__notes__)


@pytest.mark.parametrize("kind", ["local", "beam"])
def test_a_failing_task_is_named_by_the_cli(make_config, kind):
    cfg = make_config(f"fail-{kind}", engine={"kind": kind}, normalize={"enabled": False}, langid={"enabled": False},
                      dedup_exact={"enabled": False}, dedup_near={"enabled": False}, encode={"enabled": False},
                      tokenizer={"train": {"vocab_size": 300, "max_partition_mb": 1}})
    proc = tokenmill("run", str(cfg), check=False)
    assert proc.returncode == 1
    assert "WordTableMemoryError" in proc.stderr and "cap of 1 MB" in proc.stderr
    assert re.search(r"tokenmill: in task count-\d{5} of \S+train_bpe", proc.stderr)


def test_task_arguments_are_small_json_values():
    with pytest.raises(TaskArgumentError, match="JSON values"):
        Task("m:f", "/tmp/x", "p", 0, {"table": object()})
    with pytest.raises(TaskArgumentError, match="write large inputs to a file"):
        Task("m:f", "/tmp/x", "p", 0, {"ids": ["x" * 100] * 1000})
    with pytest.raises(TaskArgumentError, match="module-level"):
        Task.of(lambda s, i: {}, "/tmp/x", "p", 0)
