"""A step as a Ray job: `tokenmill submit-step PLAN STEP --address http://HEAD:8265`.

The job runs `tokenmill run-step PLAN STEP --set engine.address=auto` on the cluster (the
plan and the run root must be on storage the cluster reaches). Its submission id is
deterministic (given, e.g. by Airflow from the DAG run and the step, or derived from the
plan and the step), so a second `submit-step` for the same id, such as a retried Airflow
task whose worker died, re-attaches to the job while it is still pending or running,
returns at once when it succeeded, and submits a new attempt (`<id>-retry<N>`) only after
it failed or was stopped. It follows the job's logs and exits with the job's own exit code
(0, 1, 2, 3, 4), so the caller tells a bad plan from a failed task as with run-step.

No Airflow or deprecated Ray provider is involved: this uses Ray's JobSubmissionClient.
With Ray's token authentication on, the client reads the same RAY_AUTH_MODE and token as
the cluster (see infra/README.md).
"""

from __future__ import annotations

import re
import shlex
import sys
import time

RUNNING = ("PENDING", "RUNNING")


def _log(msg: str) -> None:
    print(f"tokenmill: {msg}", file=sys.stderr, flush=True)


def submission_id(*parts: str) -> str:
    """A submission id from its parts, in the characters Ray and dashboards take well."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(parts)).strip("-")[:200]


def _attempt(job_id: str, base: str) -> int:
    if job_id == base:
        return 1
    m = re.fullmatch(re.escape(base) + r"-retry(\d+)", job_id)
    return int(m.group(1)) if m else 0


def latest_attempt(client, base: str):
    """The newest job of this submission id (base or base-retryN), or None."""
    jobs = [j for j in client.list_jobs() if j.submission_id and _attempt(j.submission_id, base)]
    return max(jobs, key=lambda j: _attempt(j.submission_id, base)) if jobs else None


def _status(job) -> str:
    return str(getattr(job.status, "value", job.status))


def submit_step(plan_url: str, step: str, address: str, job_id: str, *, runtime_env: dict | None = None,
                entrypoint_num_cpus: float = 0.0, poll_seconds: float = 5.0, follow_logs: bool = True) -> int:
    """Submit (or re-attach to) the Ray job of one step; returns its exit code."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    job = latest_attempt(client, job_id)
    if job is not None and _status(job) in RUNNING:
        _log(f"{step}: re-attaching to Ray job {job.submission_id} ({_status(job)}), not submitting another")
        current = job.submission_id
    elif job is not None and _status(job) == "SUCCEEDED":
        _log(f"{step}: Ray job {job.submission_id} succeeded already")
        return 0
    else:
        current = job_id if job is None else f"{job_id}-retry{_attempt(job.submission_id, job_id) + 1}"
        entrypoint = (f"tokenmill run-step {shlex.quote(plan_url)} {shlex.quote(step)} "
                      f"--set engine.address=auto --set progress=false")
        client.submit_job(entrypoint=entrypoint, submission_id=current, runtime_env=runtime_env or None,
                          entrypoint_num_cpus=entrypoint_num_cpus, metadata={"tokenmill_step": step, "plan": plan_url})
        _log(f"{step}: submitted Ray job {current}" + (f" (after {job.submission_id} ended {_status(job)})" if job else ""))
    return follow(client, current, poll_seconds, follow_logs)


def follow(client, job_id: str, poll_seconds: float, follow_logs: bool = True) -> int:
    """Print the job's new log lines until it ends; its exit code (1 if Ray has none)."""
    shown = 0
    while True:
        info = client.get_job_info(job_id)
        if follow_logs:
            logs = client.get_job_logs(job_id)
            if len(logs) > shown:
                sys.stderr.write(logs[shown:])
                sys.stderr.flush()
                shown = len(logs)
        status = _status(info)
        if status not in RUNNING:
            code = info.driver_exit_code
            if status == "SUCCEEDED":
                return 0
            _log(f"Ray job {job_id} ended {status}: {info.message or ''}".rstrip(": "))
            return int(code) if code not in (None, 0) else 1
        time.sleep(poll_seconds)
