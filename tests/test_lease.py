"""One runner per step folder: the lease, with real run-step processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tokenmill
from helpers_runs import step_checksums
from pipelines.lease import LEASE, Lease, LeaseHeld, LeaseLost


def test_lease_is_exclusive_and_a_stalled_holder_is_taken_over(tmp_path):
    a = Lease(str(tmp_path), "normalize", "runner A", timeout=1.0, heartbeat=0.2).acquire()
    with pytest.raises(LeaseHeld, match=rf"runner A \(host \S+, pid {os.getpid()}\)"):
        Lease(str(tmp_path), "normalize", "runner B", timeout=1.0, heartbeat=0.2).acquire()
    time.sleep(1.2)
    a.check()  # heartbeats keep a live holder's lease fresh
    a._stop.set()  # A stalls: its heartbeats stop
    a._thread.join()
    time.sleep(1.2)
    b = Lease(str(tmp_path), "normalize", "runner B", timeout=1.0, heartbeat=0.2).acquire()
    assert b.took_over is not None and b.took_over.owner == "runner A"
    with pytest.raises(LeaseLost, match="taken over|lost"):
        a.check()
    b.check()
    b.release()
    a.release()  # releasing a lost lease leaves the file alone (already gone here)
    assert not (tmp_path / LEASE).exists()


def _plan(tmp_path, laptop_raw, **lease) -> tuple[str, Path]:
    raw = yaml.safe_load(yaml.safe_dump(laptop_raw))
    raw["run_root"] = str(tmp_path / "run")
    raw["engine"]["kind"] = "local"
    raw["lease"] = {"timeout_seconds": 600, "heartbeat_seconds": 1, **lease}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    plan = tokenmill("plan", str(cfg)).stdout.strip().splitlines()[-1]
    tokenmill("run-step", plan, "read")
    return plan, tmp_path / "run"


def _start(plan: str, step: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run-step", plan, step, *extra], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lease(root: Path, step: str, proc: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for f in root.glob(f"{step}/*/{LEASE}"):
            try:
                return json.loads(f.read_text())
            except ValueError:
                pass  # being replaced
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise TimeoutError(f"no lease for {step}")


def test_two_runners_of_one_step_exactly_one_works(tmp_path, laptop_raw, reference_run):
    plan, root = _plan(tmp_path, laptop_raw)
    a = _start(plan, "normalize")
    holder = _wait_for_lease(root, "normalize", a)
    assert holder["pid"] == a.pid
    os.kill(a.pid, signal.SIGSTOP)  # A holds the lease, mid-step
    try:
        b = tokenmill("run-step", plan, "normalize", check=False)
        assert b.returncode == 4, b.stderr
        assert f"step normalize is being run by tokenmill run-step normalize (host {holder['host']}, pid {a.pid})" in b.stderr
        waiting = _start(plan, "normalize", "--wait-for-lease")  # asked to wait: it waits for A
        time.sleep(2)
        assert waiting.poll() is None
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert a.wait(120) == 0, a.communicate()
    assert waiting.wait(120) == 0
    assert "done by the runner that held the lease" in waiting.communicate()[1]
    records = list(root.glob("normalize/*/_SUCCESS.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["execution"]["phases"]["map"]["resumed"] == 0
    assert not list(root.glob(f"normalize/*/{LEASE}"))  # released
    assert step_checksums(root, ["read", "normalize"]) == step_checksums(reference_run[0], ["read", "normalize"])


def test_a_stale_lease_is_taken_over_and_its_old_holder_stops(tmp_path, laptop_raw, reference_run):
    plan, root = _plan(tmp_path, laptop_raw, timeout_seconds=3, heartbeat_seconds=1)
    a = _start(plan, "normalize")
    _wait_for_lease(root, "normalize", a)
    os.kill(a.pid, signal.SIGSTOP)  # A stalls past the timeout: its heartbeat stops
    try:
        time.sleep(4)
        b = tokenmill("run-step", plan, "normalize")
        assert "took over the lease of tokenmill run-step normalize" in b.stderr and "older than the 3 s timeout" in b.stderr
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert a.wait(120) == 4  # A finds its lease gone and stops instead of finishing the step again
    assert "lease was taken over" in a.communicate()[1]
    assert step_checksums(root, ["read", "normalize"]) == step_checksums(reference_run[0], ["read", "normalize"])


def test_the_lease_of_a_killed_runner_on_this_host_is_taken_over_at_once(tmp_path, laptop_raw, reference_run):
    plan, root = _plan(tmp_path, laptop_raw)  # timeout 600 s: the takeover must not wait for it
    a = _start(plan, "normalize")
    _wait_for_lease(root, "normalize", a)
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    b = tokenmill("run-step", plan, "normalize")
    assert "its process is gone" in b.stderr
    assert step_checksums(root, ["read", "normalize"]) == step_checksums(reference_run[0], ["read", "normalize"])
