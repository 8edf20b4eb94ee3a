"""Airflow DAGs built from tokenmill configs (Airflow 3.3): one task per step of the plan.

`build_dag(config)` makes a DAG whose shape comes from the config alone (no data is
touched at parse time): a `plan` task (`tokenmill plan`, which pins the inputs and versions
for this DAG run; its path goes to the step tasks by XCom), then one task per step (task
id = step name, upstream = the step's inputs), the last being `accounting`. Each step task
runs `tokenmill run-step PLAN STEP`, so a retried task resumes from the step's task records.

How a step task reaches compute (`airflow.compute` in the config):
- `worker`: run-step in the Airflow worker, with the config's engine: embedded (Ray,
  Beam's in-process runner, local; laptops, CI) or attached to a running Ray cluster
  (`engine.address`);
- `ray_job`: `tokenmill submit-step` submits run-step as a Ray job with the submission id
  `tokenmill-<dag>-<run>-<step>`, so a retry re-attaches to a job still running instead of
  submitting a second, and follows its logs (pipelines/ray_jobs.py).

Production defaults: retries with exponential backoff, except for exit code 2 (bad config
or plan) and 3 (accounting broken), which fail at once; one active run at a time; no
catchup; an execution timeout per step; the pool `airflow.pool` for steps that use a
cluster; params `overrides` (KEY=VALUE for the plan) and `step_overrides` (for run-step:
engine settings) for manual triggers; the schedule from `airflow.schedule` or, with
`airflow.asset`, a run per event on the raw-data Asset. The accounting task publishes
`tokenmill://<dag_id>/shards` with the manifest path and sha256 and the shard prefixes.

The DAG file `tokenmill_dags.py` beside this one builds one DAG per config it is given;
see infra/airflow/README.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.sdk import DAG, Asset, BaseOperator, Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from pipelines.config import load_config
from pipelines.plan import build_steps, check_config
from pipelines.ray_jobs import submission_id

#: Exit codes that a retry cannot mend.
NO_RETRY = {2: "the config, the plan or the request is invalid", 3: "the accounting invariant does not hold"}
#: Where relative paths in configs (inputs, configs) are resolved: the repo (or image) root.
HOME = Path(os.environ.get("TOKENMILL_HOME") or Path(__file__).resolve().parents[1])


def outputs_asset(dag_id: str) -> Asset:
    return Asset(name=f"{dag_id}.shards", uri=f"tokenmill://{dag_id}/shards")


class TokenmillCommand(BaseOperator):
    """Runs one `tokenmill` command in a fresh process, its output in the task log; maps its
    exit code: 0 success, 2 and 3 fail without retry, anything else (a failed task, a
    killed process, a lease held by another runner) fails for a retry."""

    template_fields = ("arguments",)
    ui_color = "#e8f1fb"

    def __init__(self, *, arguments: list[str], **kwargs):
        super().__init__(**kwargs)
        self.arguments = arguments

    def command(self, context) -> list[str]:
        return [sys.executable, "-m", "pipelines.cli", *self.arguments]

    def run_command(self, context) -> list[str]:
        argv = self.command(context)
        self.log.info("running %s", " ".join(argv))
        proc = subprocess.Popen(argv, cwd=HOME, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            self.log.info("%s", lines[-1])
        code = proc.wait()
        if code in NO_RETRY:
            raise AirflowFailException(f"tokenmill exited {code}: {NO_RETRY[code]}; not retried")
        if code != 0:
            raise AirflowException(f"tokenmill exited {code}")
        return lines

    def execute(self, context):
        self.run_command(context)


class PlanOperator(TokenmillCommand):
    """`tokenmill plan CONFIG`; returns (XCom) the plan file's URL."""

    def command(self, context) -> list[str]:
        extra = [a for kv in context["params"].get("overrides") or [] for a in ("--set", kv)]
        return super().command(context) + extra

    def execute(self, context) -> str:
        lines = [line for line in self.run_command(context) if line.strip()]
        return lines[-1].strip()


class StepOperator(TokenmillCommand):
    """One step of the plan pinned by this DAG run: in the worker, or as a Ray job."""

    def __init__(self, *, step: str, compute: str, ray_address: str | None = None, **kwargs):
        plan = "{{ ti.xcom_pull(task_ids='plan') }}"
        if compute == "ray_job":
            arguments = ["submit-step", plan, step, "--address", ray_address or "",
                         "--submission-id", "tokenmill-{{ dag.dag_id }}-{{ run_id }}-" + step]
        else:
            arguments = ["run-step", plan, step]
        super().__init__(arguments=arguments, **kwargs)
        self.step, self.compute = step, compute

    def command(self, context) -> list[str]:
        argv = super().command(context)
        if self.compute == "ray_job":  # Ray's characters for the deterministic job id
            i = argv.index("--submission-id") + 1
            argv[i] = submission_id(argv[i])
            return argv
        return argv + [a for kv in context["params"].get("step_overrides") or [] for a in ("--set", kv)]

    def execute(self, context):
        self.run_command(context)
        if self.outlets:
            self.publish(context)

    def publish(self, context) -> None:
        """The run's outputs on the outlet Asset's event: summary, manifest and shards."""
        from pipelines.plan import load_plan
        from stages import storage

        plan = load_plan(context["ti"].xcom_pull(task_ids="plan"))
        summary = storage.read_json(storage.join(plan.step_url("accounting"), "summary.json"))
        extra = {"run_root": plan.run_root, "plan": plan.url, "kept": summary["kept"],
                 "documents": storage.join(plan.run_root, summary["output"])}
        if summary.get("shards"):
            manifest = storage.join(plan.run_root, summary["shards"]["manifest"])
            folder = manifest.rsplit("/", 1)[0]
            extra.update(manifest=manifest, manifest_sha256=storage.sha256_of(manifest),
                         shards=[storage.join(folder, s["name"]) for s in storage.read_json(manifest)["shards"]])
        for asset in self.outlets:
            context["outlet_events"][asset].extra.update(extra)


def build_dag(config_path: str | os.PathLike) -> DAG:
    """The DAG of one config (its shape needs the config only, never the data)."""
    path = Path(config_path)
    if not path.is_absolute():
        path = HOME / path
    cfg = load_config(str(path))
    steps = check_config(cfg, build_steps(cfg))
    a = cfg.airflow
    dag_id = a.dag_id or f"tokenmill_{path.stem.replace('-', '_')}"
    on_cluster = a.compute == "ray_job" or bool(cfg.engine.address)
    default_args = {
        "owner": "tokenmill",
        "retries": a.retries,
        "retry_delay": timedelta(seconds=a.retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(seconds=a.max_retry_delay_seconds),
    }
    dag = DAG(
        dag_id,
        description=f"tokenmill plan of {path.name}",
        schedule=[Asset(a.asset)] if a.asset else a.schedule,
        start_date=datetime.fromisoformat(a.start_date).replace(tzinfo=timezone.utc),
        catchup=False,
        max_active_runs=1,
        default_args=default_args,
        params={
            "overrides": Param([], type="array", description="KEY=VALUE config overrides for this run's plan"),
            "step_overrides": Param([], type="array", description="KEY=VALUE for run-step (settings that move no "
                                                                   "step, e.g. engine.workers=8)"),
        },
        tags=["tokenmill"],
        doc_md=__doc__,
    )
    with dag:
        plan = PlanOperator(task_id="plan", arguments=["plan", str(path), *[x for kv in a.overrides for x in ("--set", kv)]])
        tasks: dict[str, StepOperator] = {}
        for s in steps:
            task = StepOperator(
                task_id=s.name, step=s.name, compute=a.compute, ray_address=a.ray_job.address,
                execution_timeout=timedelta(seconds=a.step_timeouts.get(s.name, a.execution_timeout_seconds)),
                **({"pool": a.pool} if a.pool and on_cluster else {}),
                outlets=[outputs_asset(dag_id)] if s.name == "accounting" else [],
            )
            for up in [tasks[i] for i in s.inputs] or [plan]:
                up >> task
            tasks[s.name] = task
    return dag


def configured_configs() -> list[str]:
    """The configs to build DAGs from: the environment variable TOKENMILL_DAG_CONFIGS, else
    the Airflow Variable `tokenmill_configs` (a JSON list, or paths separated by commas)."""
    raw = os.environ.get("TOKENMILL_DAG_CONFIGS")
    if raw is None:
        from airflow.sdk import Variable

        raw = Variable.get("tokenmill_configs", default="")
    raw = raw.strip()
    if raw.startswith("["):
        return [str(p) for p in json.loads(raw)]
    return [p.strip() for p in raw.replace(os.pathsep, ",").split(",") if p.strip()]
