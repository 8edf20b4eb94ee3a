"""A run killed with SIGKILL at random points, then rerun, equals an uninterrupted run, on
Ray and on Beam: no document lost or doubled, finished steps and tasks reused."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tokenmill
from helpers_runs import data_checksums, output_docs, summary


def _start(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _finished_steps(run_root: Path) -> set[str]:
    return {p.parent.parent.name for p in run_root.glob("*/*/_SUCCESS.json")}


def _alive_in_session(sid: int) -> list[str]:
    """Live (not zombie) processes of the killed run's session: its workers, Ray's, Beam's."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()
            if len(f := line.split(None, 3)) >= 3 and f[1] == str(sid) and not f[2].startswith("Z")]


def _all_gone(sid: int, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (alive := _alive_in_session(sid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive


# A Beam run of the sample takes about twice a Ray run (a pipeline per submission of phases).
@pytest.mark.parametrize("engine, slower", [("ray", 1.0), ("beam", 2.0)])
def test_sigkill_then_rerun_is_byte_identical(tmp_path, reference_run, engine, slower):
    ref_root, ref_cfg, ref_seconds, _ = reference_run
    raw = yaml.safe_load(ref_cfg.read_text())
    raw["run_root"] = str(tmp_path / "run")
    raw["engine"]["kind"] = engine
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))

    seed = int(os.environ.get("TOKENMILL_KILL_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    kills = 0
    finished_before_rerun: set[str] = set()
    upper = max(1.0, ref_seconds * slower * 0.9)
    for _ in range(8):  # attempts to land up to 2 kills part-way
        proc = _start(cfg)
        delay = rng.uniform(0.5, upper)
        try:
            proc.wait(timeout=delay)
            finished = True  # it completed before the kill
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            alive = _all_gone(proc.pid)  # Ray's and Beam's workers end with their driver
            assert not alive, f"processes of the killed run still alive: {alive}"
            finished = False
            kills += 1
        if finished and kills == 0:  # the run was quicker than the draw: start again, sooner
            shutil.rmtree(tmp_path / "run")
            upper = max(1.0, delay * 0.7)
            continue
        if finished:
            break
        finished_before_rerun = _finished_steps(tmp_path / "run")
        if kills == 2:
            break
    assert kills >= 1, f"no kill landed part-way (seed {seed})"
    # steps the kill interrupted after some of their tasks finished
    partial = {d.parent.name: len(list((d / "_tasks").glob("*-?????.json"))) for d in (tmp_path / "run").glob("*/*")
               if (d / "_tasks").is_dir() and not (d / "_SUCCESS.json").exists()}

    final = tokenmill("run", str(cfg))
    for name in finished_before_rerun:
        assert f"{name}: done already" in final.stderr, (name, seed)
    for name, records in partial.items():  # their finished tasks were reused, not redone
        record = json.loads(next((tmp_path / "run" / name).glob("*/_SUCCESS.json")).read_text())
        assert sum(p["resumed"] for p in record["execution"]["phases"].values()) == records, (name, seed)

    assert summary(tmp_path / "run")["invariant"]["holds"]
    assert data_checksums(tmp_path / "run") == data_checksums(ref_root), f"outputs differ (kill seed {seed})"
    ids = output_docs(tmp_path / "run").column("id").to_pylist()
    assert len(ids) == len(set(ids)) == output_docs(ref_root).num_rows
