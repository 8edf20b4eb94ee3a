"""The cost of running the plan as the Airflow DAG: `airflow dags test` against `tokenmill
run` of the same config on a corpus, per task, side by side.

    python benchmarks/bench_airflow.py [--data DIR] [--engines local,ray] [--repeats 1] [--write-results]

For each engine: `tokenmill run` in a fresh process (wall time), then the DAG built from the
same config by `airflow dags test` against a fresh SQLite metadata database in a temporary
AIRFLOW_HOME (`airflow db migrate` first, not timed). Per task, from Airflow's metadata: the
task's duration against the seconds the step itself reports in its `_SUCCESS.json`; the
difference is what the DAG adds (the Airflow task, a fresh `tokenmill run-step` process with
its imports, plan loading and checks, and with an embedded Ray engine its start-up, once per
step instead of once per run). Outputs are checked byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_engines import outputs  # noqa: E402  (one definition of "the outputs of a run")

SECTION = "## Airflow DAG overhead (issue 9)"
BIN = Path(sys.executable).parent


def config(data: Path, root: Path, engine: str, dag_id: str) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "laptop.yaml").read_text())
    raw.update(run_root=str(root), progress=False)
    raw["input"].update(paths=[str(data / "*.jsonl.zst")], keep_fields=[], id_field="id", max_doc_bytes=50_000_000)
    raw["engine"]["kind"] = engine
    raw["shards"]["target"] = 10_000_000
    raw["airflow"].update(dag_id=dag_id, retries=0)
    path = root.parent / f"{root.name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def one(data: Path, tmp: Path, engine: str, rep: int) -> dict:
    direct = tmp / f"run-{engine}-{rep}"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "pipelines.cli", "run", str(config(data, direct, engine, "unused"))],
                   cwd=REPO, check=True, capture_output=True)
    run_wall = time.monotonic() - t0

    home = tmp / f"airflow-{engine}-{rep}"
    home.mkdir()
    dag_root = tmp / f"dag-{engine}-{rep}"
    dag_id = f"bench_{engine}_{rep}"
    cfg = config(data, dag_root, engine, dag_id)
    env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
               AIRFLOW__CORE__LOAD_EXAMPLES="False", TOKENMILL_DAG_CONFIGS=str(cfg),
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
    t0 = time.monotonic()
    proc = subprocess.run([str(BIN / "airflow"), "dags", "test", dag_id], env=env, cwd=REPO, capture_output=True, text=True)
    dag_wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"dags test failed:\n{proc.stdout[-3000:]}")
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute("select task_id, start_date, end_date from task_instance where dag_id = ?", (dag_id,)).fetchall()
    tasks = {t: _seconds(s, e) for t, s, e in rows}
    steps = {}
    for success in dag_root.glob("*/*/_SUCCESS.json"):
        rec = json.loads(success.read_text())
        steps[rec["step"]] = rec["seconds"]
    same = outputs(direct) == outputs(dag_root)
    return {"run_wall": run_wall, "dag_wall": dag_wall, "tasks": tasks, "steps": steps, "same": same}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "corpus-en")
    ap.add_argument("--engines", default="local,ray")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--write-results", action="store_true")
    a = ap.parse_args(argv)
    engines = a.engines.split(",")
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    with tempfile.TemporaryDirectory(prefix="tokenmill-airflow-") as tmp:
        for rep in range(a.repeats):
            for e in engines:
                runs[e].append(one(a.data, Path(tmp), e, rep))
                r = runs[e][-1]
                print(f"  {e} {rep + 1}/{a.repeats}: run {r['run_wall']:.1f} s, dags test {r['dag_wall']:.1f} s",
                      file=sys.stderr, flush=True)
    lines = [f"Command: `python benchmarks/bench_airflow.py --engines {a.engines} --repeats {a.repeats}` (data: "
             f"`{a.data.name}`, configs/laptop.yaml with shards.target 10M tokens; shared 2-core machine; medians of "
             f"{a.repeats}). Task seconds are Airflow's (start to end of each task instance); step seconds are what the "
             f"step reports in its `_SUCCESS.json`.", ""]
    for e in engines:
        rs = runs[e]
        med = lambda f: statistics.median(f(r) for r in rs)  # noqa: E731
        names = [t for t in rs[0]["tasks"]]
        order = ["plan", "read", "normalize", "langid", "dedup_exact", "dedup_near", "write", "train_bpe", "encode",
                 "write_shards", "accounting"]
        names.sort(key=lambda n: order.index(n) if n in order else len(order))
        lines += [f"**engine {e}**", "", "| task | Airflow task (s) | step itself (s) | added by the DAG (s) |", "|---|---:|---:|---:|"]
        added = []
        for n in names:
            task = med(lambda r: r["tasks"][n])
            step = med(lambda r: r["steps"].get(n, 0.0))
            added.append(task - step)
            lines.append(f"| {n} | {task:.2f} | {step:.2f} | {task - step:.2f} |")
        lines += ["",
                  f"- whole plan: `tokenmill run` {med(lambda r: r['run_wall']):.1f} s, `airflow dags test` "
                  f"{med(lambda r: r['dag_wall']):.1f} s (ratio {med(lambda r: r['dag_wall'] / r['run_wall']):.2f}); "
                  f"added per task: median {statistics.median(added):.2f} s, total {sum(added):.1f} s over {len(added)} tasks",
                  f"- outputs byte-identical to `tokenmill run`: {'yes' if all(r['same'] for r in rs) else 'NO'}"]
        if e == "ray":
            lines.append("- every step task is a fresh `tokenmill run-step` process: with the embedded Ray engine it starts its own Ray cluster (about 5 s here), once per step instead of once per run; on a cluster the tasks attach to it (`engine.address`) or run as Ray jobs (`airflow.compute: ray_job`), and that start-up is paid by the cluster once")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if a.write_results:
        from results_md import write_section

        write_section(SECTION, text)
    return 0 if all(r["same"] for rs in runs.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
