"""`tokenmill plan` and `tokenmill run-step`: the plan is a file any process can execute one
step at a time; it pins the input list and the files steps depend on; bad plans and bad
requests exit 2 before any work."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from conftest import SAMPLE, tokenmill
from helpers_runs import data_checksums, summary
from pipelines.config import parse_config
from pipelines.plan import build_steps


@pytest.fixture
def copied_input(tmp_path, laptop_raw):
    """The laptop config over a copy of the sample (so files can be added and changed)."""
    src = tmp_path / "in"
    shutil.copytree(SAMPLE, src)
    raw = yaml.safe_load(yaml.safe_dump(laptop_raw))
    raw["input"]["paths"] = [str(src / "*.jsonl*"), str(src / "*.parquet")]
    raw["run_root"] = str(tmp_path / "run")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    return cfg, src, tmp_path / "run"


def _plan(cfg) -> str:
    proc = tokenmill("plan", str(cfg))
    return proc.stdout.strip().splitlines()[-1]


def test_each_step_in_its_own_process_gives_the_bytes_of_run(copied_input, reference_run):
    cfg, src, root = copied_input
    plan = _plan(cfg)
    names = [s["name"] for s in json.loads(open(plan).read())["steps"]]
    assert names == [s.name for s in build_steps(parse_config(yaml.safe_load(cfg.read_text())))]
    (src / "late.jsonl").write_text('{"text": "a file that appears after the plan was made"}\n')
    # a step before its input: refused, naming the input, nothing written
    early = tokenmill("run-step", plan, "normalize", "--set", "engine.kind=local", check=False)
    assert early.returncode == 2 and "reads read, which is not finished" in early.stderr
    assert not (root / "normalize").exists()
    for name in names:
        tokenmill("run-step", plan, name, "--set", "engine.kind=local")
    # the late file belongs to the next plan: not read, so the bytes equal a plain run's
    assert data_checksums(root) == data_checksums(reference_run[0])
    assert summary(root)["records_read"] == summary(reference_run[0])["records_read"]
    # the next plan sees the late file: a new read version
    again = json.loads(open(_plan(cfg)).read())
    assert len(again["inputs"]) == len(json.loads(open(plan).read())["inputs"]) + 1


def test_a_changed_input_or_dependency_is_refused(copied_input, tmp_path):
    cfg, src, root = copied_input
    plan = _plan(cfg)
    with open(src / "seeded-dups.jsonl", "a") as f:
        f.write('{"text": "edited after planning"}\n')
    proc = tokenmill("run-step", plan, "read", "--set", "engine.kind=local", check=False)
    assert proc.returncode == 2
    assert "seeded-dups.jsonl changed since the plan was made" in proc.stderr and "re-plan" in proc.stderr
    assert not (root / "read").exists()
    # a dependency (the language-ID model file) is pinned by content
    model = tmp_path / "model.ftz"
    from stages.langid import bundled_fasttext_model

    shutil.copy(bundled_fasttext_model(), model)
    raw = yaml.safe_load(cfg.read_text())
    raw["langid"]["model_path"] = str(model)
    cfg.write_text(yaml.safe_dump(raw))
    plan = _plan(cfg)
    tokenmill("run-step", plan, "read", "--set", "engine.kind=local")
    tokenmill("run-step", plan, "normalize", "--set", "engine.kind=local")
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    proc = tokenmill("run-step", plan, "langid", "--set", "engine.kind=local", check=False)
    assert proc.returncode == 2 and "langid.model_path" in proc.stderr and "other content" in proc.stderr


def test_bad_plans_and_requests_exit_2_before_any_work(copied_input, tmp_path):
    cfg, _, root = copied_input
    plan = _plan(cfg)
    body = json.loads(open(plan).read())

    def refused(path, step="read", *extra) -> str:
        proc = tokenmill("run-step", str(path), step, *extra, check=False)
        assert proc.returncode == 2, proc.stderr
        assert not (root / "read").exists()
        return proc.stderr

    assert "not found" in refused(tmp_path / "nope.json")
    corrupt = root / "_plans" / "corrupt.json"
    corrupt.write_text("{ not json")
    assert "not valid JSON" in refused(corrupt)
    edited = dict(body, run_root=str(tmp_path / "elsewhere"))
    tampered = root / "_plans" / open(plan).name.rsplit("/", 1)[-1]
    tampered.write_text(json.dumps(edited))
    assert "changed after it was written" in refused(tampered)
    tampered.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")  # restored
    other = tmp_path / "other" / "_plans"
    other.mkdir(parents=True)
    shutil.copy(plan, other)
    assert "is a plan for run root" in refused(other / tampered.name)
    from pipelines.config import stable_hash

    older = dict(body, tokenmill_version="0.0.1")
    older_path = root / "_plans" / f"{stable_hash(older)}.json"
    older_path.write_text(json.dumps(older))
    assert "made by tokenmill 0.0.1" in refused(older_path)
    assert "no step 'shards'" in refused(plan, "shards")
    assert "another version of dedup_near" in refused(plan, "read", "--set", "dedup_near.threshold=0.9")


@pytest.mark.parametrize("key, value, needle", [
    ("engine.beam.runner", "NopeRunner", "'NopeRunner' is not a Beam runner"),
    ("engine.beam.options", "[--no_such_flag=1]", "Beam does not know ['--no_such_flag=1']"),
    ("engine.beam.options", "[--direct_num_workers=many]", "invalid int value: 'many'"),
    ("engine.beam.options", "[--runner=DataflowRunner]", None),  # another runner named in the options: accepted
])
def test_beam_settings_are_checked_before_any_work(copied_input, key, value, needle):
    cfg, _, root = copied_input
    proc = tokenmill("validate", str(cfg), "--set", "engine.kind=beam", "--set", f"{key}={value}", check=False)
    if needle is None:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert not root.exists()


def test_beam_never_defaults_to_a_runner_that_downloads():
    from pipelines.engines.beam_engine import DEFAULT_RUNNER, runner_and_flags

    cfg = parse_config({"run_root": "r", "input": {"paths": ["x"]}, "engine": {"kind": "beam"}})
    assert runner_and_flags(cfg) == (DEFAULT_RUNNER, []) and DEFAULT_RUNNER == "FnApiRunner"
    named = parse_config({"run_root": "r", "input": {"paths": ["x"]}, "engine": {"kind": "beam", "beam": {"runner": "DirectRunner"}}})
    assert runner_and_flags(named)[0] == "DirectRunner"  # only when asked for by name


def test_validate_says_why_each_step_will_run(copied_input):
    cfg, _, root = copied_input
    tokenmill("run", str(cfg), "--set", "engine.kind=local", "--until", "langid")
    out = tokenmill("validate", str(cfg), "--set", "normalize.unicode_form=NFKC").stdout
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert " done " in lines["read"]
    assert "settings changed since version" in lines["normalize"] and "unicode_form: 'NFC' -> 'NFKC'" in lines["normalize"]
    assert "after normalize" in lines["langid"]
    assert len(list((root / "normalize").iterdir())) == 1  # validate wrote nothing
