"""Config validation fails fast with exit 2 and names the key; versioning moves only when it should."""

from __future__ import annotations

import pytest
import yaml

from conftest import tokenmill
from pipelines.config import ConfigError, apply_overrides, load_config, parse_config
from pipelines.plan import make_plan


def _write(tmp_path, raw) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    return str(p)


@pytest.mark.parametrize("mutate, needle", [
    (lambda r: r.update(bogus=1), "bogus: unknown key"),
    (lambda r: r["dedup_near"].update(threshold=1.5), "dedup_near.threshold"),
    (lambda r: r["dedup_near"].update(num_perm="many"), "dedup_near.num_perm"),
    (lambda r: r["dedup_near"].update(bands=40, rows=40), "exceeds num_perm"),
    (lambda r: r["dedup_near"].update(seed=-1), "dedup_near"),
    (lambda r: r["dedup_near"].update(bands=20), "set both bands and rows"),
    (lambda r: r["langid"]["thresholds"].update(en=2.0), "allowed: a number in [0, 1] or 'auto'"),
    (lambda r: r["engine"].update(kind="spark"), "engine.kind"),
    (lambda r: r["engine"].update(workers=0), "engine.workers"),
    (lambda r: r["input"].update(paths=["/nonexistent/dir/*.jsonl"]), "matches no file"),
    (lambda r: r.pop("run_root"), "run_root: required key is missing"),
    (lambda r: r["tokenizer"].update(pattern="gpt2"), "are for a tiktoken ranks file"),
    (lambda r: r["tokenizer"].update(path="/nonexistent/cl100k.tiktoken"), "set tokenizer.pattern"),
    (lambda r: r["tokenizer"].update(path="/nonexistent/x.tiktoken", pattern="(unclosed"), "tokenizer.pattern does not compile"),
    (lambda r: r["tokenizer"].update(path="/nonexistent/x.tiktoken", pattern="gpt2"), "has no end-of-text token"),
    (lambda r: r["tokenizer"].update(path="/nonexistent/x.tiktoken", pattern="gpt2", special_tokens={"<|endoftext|>": 9}),
     "tokenizer.path: /nonexistent/x.tiktoken does not exist"),
    (lambda r: r["tokenizer"].update(path="/nonexistent/tokenizer.json"), "does not exist"),
    (lambda r: r["tokenizer"]["train"].update(special_tokens=["<pad>"]), "has no end-of-text token"),
])
def test_bad_config_exits_2_naming_the_key(tmp_path, laptop_raw, mutate, needle):
    raw = yaml.safe_load(yaml.safe_dump(laptop_raw))
    mutate(raw)
    proc = tokenmill("validate", _write(tmp_path, raw), check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    # fail fast: nothing was written
    assert not (tmp_path / "runs").exists()


def test_run_with_bad_config_does_no_work(tmp_path, laptop_raw):
    raw = yaml.safe_load(yaml.safe_dump(laptop_raw))
    raw["run_root"] = str(tmp_path / "root")
    raw["normalize"]["unicode_form"] = "NFX"
    proc = tokenmill("run", _write(tmp_path, raw), check=False)
    assert proc.returncode == 2
    assert "normalize.unicode_form" in proc.stderr and "NFX" in proc.stderr
    assert not (tmp_path / "root").exists()


def test_set_overrides_any_key(tmp_path, laptop_raw):
    path = _write(tmp_path, laptop_raw)
    cfg = load_config(path, ["dedup_near.threshold=0.9", "engine.workers=3", "langid.keep=[en, fr]"])
    assert cfg.dedup_near.threshold == 0.9 and cfg.engine.workers == 3 and cfg.langid.keep == ["en", "fr"]
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["no-equals-sign"])
    with pytest.raises(ConfigError, match="dedup_near.threshold"):
        load_config(path, ["dedup_near.threshold=7"])


def _versions(raw) -> dict[str, str]:
    return {p.name: p.version for p in make_plan(parse_config(raw)).steps}


# Field by field: which config change moves which step's output path. A change moves the
# named step and, through the input versions, every step downstream of it; None: nothing.
ORDER = ["read", "normalize", "langid", "dedup_exact", "dedup_near", "write", "train_bpe", "encode", "write_shards",
         "accounting"]


@pytest.mark.parametrize("key, value, first_moved", [
    ("engine.workers", 7, None),
    ("engine.kind", "local", None),
    ("progress", False, None),
    ("input.max_doc_bytes", 5000, "read"),
    ("normalize.unicode_form", "NFKC", "normalize"),
    ("langid.threshold", 0.2, "langid"),
    ("dedup_exact.strip_digits", True, "dedup_exact"),
    ("dedup_near.threshold", 0.85, "dedup_near"),
    ("output.compression", "snappy", "write"),
    ("output.keep_scratch", True, None),
    ("tokenizer.train.vocab_size", 4096, "train_bpe"),
    ("tokenizer.train.max_partition_mb", 100, None),
    ("tokenizer.train.min_frequency", 0, None),  # spelled-out default
    ("encode.stochastok.p", 0.2, "encode"),
    ("encode.eod", "null", "encode"),
    ("shards.target", 1000, "write_shards"),
    ("shards.shuffle", False, "write_shards"),
])
def test_versioning_contract(laptop_raw, key, value, first_moved):
    base = _versions(laptop_raw)
    assert list(base) == ORDER
    changed = _versions(apply_overrides(laptop_raw, [f"{key}={value}"]))
    want = set() if first_moved is None else set(ORDER[ORDER.index(first_moved):])
    assert {k for k in base if base[k] != changed[k]} == want
    assert all(len(v) >= 16 for v in base.values())


def test_version_moves_when_input_changes(tmp_path, laptop_raw):
    f = tmp_path / "in.jsonl"
    f.write_text('{"text": "one"}\n')
    raw = yaml.safe_load(yaml.safe_dump(laptop_raw))
    raw["input"]["paths"] = [str(f)]
    v1 = _versions(raw)["read"]
    f.write_text('{"text": "one"}\n{"text": "two"}\n')
    assert _versions(raw)["read"] != v1
