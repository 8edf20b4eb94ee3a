"""Shared fixtures: the repo root, the bundled sample, and configs that write to tmp dirs."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def laptop_raw() -> dict:
    """configs/laptop.yaml with input paths made absolute (tests run from any directory)."""
    raw = yaml.safe_load((REPO / "configs" / "laptop.yaml").read_text())
    raw["input"]["paths"] = [str(REPO / p) for p in raw["input"]["paths"]]
    raw["progress"] = False
    return raw


@pytest.fixture
def make_config(tmp_path, laptop_raw):
    """Write a config derived from the laptop one; returns its path."""

    def _make(name: str = "cfg", **sections) -> Path:
        raw = copy.deepcopy(laptop_raw)
        raw["run_root"] = str(tmp_path / f"run-{name}")
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key].update(value)
            else:
                raw[key] = value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return _make


def tokenmill(*args: str, check: bool = True, timeout: float = 600, env: dict | None = None,
              **kw) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would (`env`: variables to add)."""
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"tokenmill {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, laptop_raw):
    """One uninterrupted run of the laptop config (Ray, 2 workers), shared by the tests
    that compare other runs with it. Returns (run_root, config_path, seconds, process)."""
    import time

    tmp = tmp_path_factory.mktemp("reference")
    raw = copy.deepcopy(laptop_raw)
    raw["run_root"] = str(tmp / "run")
    cfg = tmp / "laptop.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    t0 = time.monotonic()
    proc = tokenmill("run", str(cfg))
    return tmp / "run", cfg, time.monotonic() - t0, proc


def require_airflow() -> None:
    """Airflow (extra `airflow`) for the DAG tests: skipped when it is not installed, except
    under `make test`, which installs it and sets TOKENMILL_REQUIRE_AIRFLOW=1 so that a
    missing install fails instead of skipping."""
    import importlib.util

    if importlib.util.find_spec("airflow") is None:
        if os.environ.get("TOKENMILL_REQUIRE_AIRFLOW") == "1":
            raise RuntimeError("apache-airflow is not installed: pip install -e '.[airflow]'")
        pytest.skip("apache-airflow is not installed (pip install -e '.[airflow]')", allow_module_level=True)
