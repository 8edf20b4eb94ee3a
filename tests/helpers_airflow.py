"""A real Airflow for the tests: a temporary AIRFLOW_HOME with a migrated SQLite metadata
database, the repo's dags/ folder, and `airflow dags test` as a subprocess."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).parent / "airflow")


class Airflow:
    def __init__(self, home: Path):
        self.home = home
        self.env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
                        AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__UNIT_TEST_MODE="False",
                        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        proc = subprocess.run([AIRFLOW, "db", "migrate"], env=self.env, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")

    def config(self, name: str, raw: dict) -> Path:
        path = self.home / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    def dags_test(self, config: Path, dag_id: str, conf: dict | None = None, timeout: float = 900,
                  env: dict | None = None, wait: bool = True):
        argv = [AIRFLOW, "dags", "test", dag_id] + (["-c", json.dumps(conf)] if conf else [])
        full = dict(self.env, TOKENMILL_DAG_CONFIGS=str(config), **(env or {}))
        if not wait:
            return subprocess.Popen(argv, env=full, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return subprocess.run(argv, env=full, cwd=REPO, capture_output=True, text=True, timeout=timeout)

    def task_instances(self, dag_id: str) -> dict[str, tuple[int, str]]:
        """task id -> (try number, state) of the DAG's latest run."""
        with sqlite3.connect(self.home / "airflow.db") as db:
            run = db.execute("select run_id from dag_run where dag_id = ? order by id desc limit 1", (dag_id,)).fetchone()[0]
            rows = db.execute("select task_id, try_number, state from task_instance where dag_id = ? and run_id = ?",
                              (dag_id, run)).fetchall()
        return {t: (n, s) for t, n, s in rows}

    def asset_events(self, uri: str) -> list[dict]:
        with sqlite3.connect(self.home / "airflow.db") as db:
            rows = db.execute("select e.extra from asset_event e join asset a on a.id = e.asset_id where a.uri = ?",
                              (uri,)).fetchall()
        return [json.loads(r[0]) if r[0] else {} for r in rows]
