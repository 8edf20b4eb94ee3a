"""The Ray adapter: map/reduce counting and sharded merging with 1, 2 and 3 actors give
exactly the single-process tokenizer (and so HF's, see test_bpe_parity)."""
from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from conftest_bpe import DEV, dev_docs, hf_train  # noqa: E402
from pipelines import bpe_ray  # noqa: E402
from pipelines.bpe_job import expand, train  # noqa: E402
from stages.bpe import BpeConfig  # noqa: E402


@pytest.fixture(scope="module")
def ray_session():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def sources():
    return expand([str(DEV / "rust-doc-books.jsonl.zst")], "text")


@pytest.fixture(scope="module")
def local_model(sources):
    cfg = BpeConfig.from_dict({"vocab_size": 5000, "preset": "llama3", "special_tokens": ["<s>"],
                               "max_token_length": 10})
    return cfg, train(sources, cfg, workers=0)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_ray_counting_and_sharded_merging_equal_local(ray_session, sources, local_model, workers):
    cfg, local = local_model
    for mode in ("single", "sharded"):
        c = BpeConfig.from_dict({**cfg.to_dict(), "merge_mode": mode})
        model = train(sources, c, workers=workers)
        np.testing.assert_array_equal(model.merges, local.merges)
        assert model.vocab == local.vocab
        assert model.stats["counting"]["distinct_words"] == local.stats["counting"]["distinct_words"]
        assert len(model.stats["counting"]["partition_words"]) == workers
    assert model.stats["rounds"] < len(model.merges)  # batching saved round trips


def test_local_model_equals_hf(local_model):
    cfg, local = local_model
    assert local.merge_pairs() == hf_train(list(dev_docs("rust-doc-books")), cfg)[1]


def test_large_files_are_split_over_tasks():
    srcs = [bpe_ray.Source("big", "big", 100), bpe_ray.Source("a", "a", 10), bpe_ray.Source("b", "b", 10)]
    split = bpe_ray.split_sources(srcs, workers=2)
    big = [s for s in split if s.url == "big"]
    assert [(s.stride, s.phase) for s in big] == [(3, 0), (3, 1), (3, 2)]
    assert bpe_ray.split_sources(srcs, workers=1) == srcs


def test_partition_over_its_cap_fails_clearly(ray_session, sources):
    cfg = BpeConfig.from_dict({"vocab_size": 300, "max_partition_mb": 1})
    with pytest.raises(Exception, match="cap of 1 MB"):
        train(sources, cfg, workers=1)
