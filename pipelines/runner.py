"""Runs the steps of a pinned plan: one step (`run_step`, what `tokenmill run-step` and each
Airflow task do) or all of them in order (`run_plan`, what `tokenmill run` does).

A step runs only when its inputs are finished and its pinned files are unchanged; it
skips when its `_SUCCESS.json` exists; otherwise, holding the step folder's lease
(pipelines/lease.py), it resumes from its task records, writes `_SUCCESS.json` last, then
removes its scratch.
"""

from __future__ import annotations

import socket
import sys
import time

from pipelines.engines import Engine, make_engine
from pipelines.inputs import PinnedFile, current
from pipelines.lease import Lease, LeaseHeld
from pipelines.plan import Plan, PlanError
from pipelines.steps.base import SUCCESS, FinishedStep, StepContext, read_finished
from stages import storage


def log(msg: str) -> None:
    print(f"tokenmill: {msg}", file=sys.stderr, flush=True)


def check_pins(plan: Plan, name: str) -> None:
    """The files this step reads are the ones the plan pinned; raise PlanError if not."""
    step = plan.step_object(name)
    replan = "re-plan (tokenmill plan CONFIG) so that the run reads one consistent set of files"
    if step.reads_inputs:
        for f in plan.inputs:
            now = current(f)
            if now is None:
                raise PlanError(f"input file {f.url} is gone since the plan was made; {replan}")
            if now.size != f.size:
                raise PlanError(f"input file {f.url} changed since the plan was made (size {f.size:,} -> {now.size:,}); {replan}")
            if now.fingerprint != f.fingerprint:
                raise PlanError(f"input file {f.url} was modified since the plan was made; {replan}")
    for key, url in step.dependencies(plan.cfg).items():
        pinned = plan.files.get(key)
        try:
            now = PinnedFile.of(url)
        except FileNotFoundError:
            raise PlanError(f"{key}: {url} is gone since the plan was made; {replan}") from None
        if pinned is None or now.sha256 != pinned.sha256:
            raise PlanError(f"{key}: {url} has other content than when the plan was made; {replan}")


def lease_of(plan: Plan, name: str, owner: str = "", wait: bool | None = None) -> Lease:
    c = plan.cfg.lease
    return Lease(plan.step_url(name), name, owner or f"tokenmill run-step {name}", c.timeout_seconds, c.heartbeat_seconds,
                 c.wait if wait is None else wait)


def run_step(plan: Plan, name: str, engine: Engine, wait_for_lease: bool | None = None) -> FinishedStep:
    planned = plan.step(name)
    url = plan.step_url(name)
    success_url = storage.join(url, SUCCESS)
    unfinished = [n for n in planned.inputs if not plan.done(n)]
    if unfinished:
        raise PlanError(f"step {name} reads {', '.join(unfinished)}, which {'is' if len(unfinished) == 1 else 'are'} not "
                        f"finished; run `tokenmill run-step {plan.url} {unfinished[0]}` first")
    if storage.exists(success_url):
        log(f"{name}: done already ({url}), skipped")
        try:  # in case a run was stopped while removing its scratch
            with lease_of(plan, name, wait=False):
                remove_scratch(plan, name)
        except LeaseHeld:
            pass  # its holder cleans up
        return read_finished(url, name)
    check_pins(plan, name)
    missing = set(planned.requires) - engine.capabilities
    if missing:
        raise PlanError(f"step {name} needs an engine with {', '.join(sorted(missing))}; engine {engine.name} has none")
    with lease_of(plan, name, wait=wait_for_lease) as lease:
        if storage.exists(success_url):  # finished by the runner we waited for
            log(f"{name}: done by the runner that held the lease ({url}), skipped")
            return read_finished(url, name)
        try:
            return _run_leased(plan, name, engine, lease)
        except BaseException as exc:
            if not lease.held():  # whatever broke, it broke because another runner took the step over
                raise lease.lost_error() from exc
            raise


def _run_leased(plan: Plan, name: str, engine: Engine, lease: Lease) -> FinishedStep:
    planned = plan.step(name)
    step = plan.step_object(name)
    url = plan.step_url(name)
    success_url = storage.join(url, SUCCESS)
    log(f"{name}: running on {engine.name} -> {url}")
    ctx = StepContext(cfg=plan.cfg, engine=engine, name=name, url=url, run_root=plan.run_root,
                      inputs={n: read_finished(plan.step_url(n), n) for n in planned.inputs}, pins=plan.pins,
                      version=planned.version, progress=plan.cfg.progress, lease=lease)
    before = engine.stats()
    t0 = time.monotonic()
    payload = step.run(ctx)
    seconds = round(time.monotonic() - t0, 3)
    after = engine.stats()
    record = {
        "step": name,
        "version": planned.version,
        "plan": plan.hash,
        "config": step.version_config(plan.cfg, plan.pins),
        "inputs": {n: plan.step(n).version for n in planned.inputs},
        "seconds": seconds,
        "finished_at": time.time(),
        "execution": {"engine": engine.name, "workers": engine.workers, "host": socket.gethostname(), "phases": ctx.phases,
                      **{k: round(v - before.get(k, 0), 3) for k, v in after.items()}},
        **payload,
    }
    lease.check()  # only the lease holder finishes a step
    storage.atomic_write_json(success_url, record)
    remove_scratch(plan, name, temporaries=True)
    log(f"{name}: done in {seconds:,.1f}s")
    return FinishedStep(name, planned.version, url, record)


def remove_scratch(plan: Plan, name: str, temporaries: bool = False) -> None:
    """Task records and shuffle scratch of a finished step (kept with output.keep_scratch),
    and with `temporaries` the ones that killed writers left in it (a listing of the folder)."""
    url = plan.step_url(name)
    if not plan.cfg.output.keep_scratch:
        for sub in ("_tasks", *plan.step_object(name).scratch):
            storage.remove_tree(storage.join(url, sub))
    if temporaries:
        storage.remove_temporaries(url)


def run_plan(plan: Plan, engine: Engine | None = None, until: str | None = None,
             wait_for_lease: bool | None = None) -> list[FinishedStep]:
    """Every step of the plan in order (up to and including `until`)."""
    names = plan.names
    if until is not None:
        if until not in names:
            raise PlanError(f"--until {until!r}: no such step; steps are {', '.join(names)}")
        names = names[: names.index(until) + 1]
    own = engine is None
    engine = engine or make_engine(plan.cfg, plan.cfg.progress)
    try:
        return [run_step(plan, n, engine, wait_for_lease) for n in names]
    finally:
        if own:
            engine.close()


def run(cfg, engine: Engine | None = None, until: str | None = None) -> dict | None:
    """Plan (written under the run root) and run a config in this process; returns the
    summary when the accounting step ran. For tests and notebooks; the CLI does the same."""
    from pipelines.plan import make_plan, write_plan
    from pipelines.steps.accounting import SUMMARY

    plan = make_plan(cfg)
    write_plan(plan)
    finished = run_plan(plan, engine, until)
    if finished and finished[-1].name == "accounting":
        return storage.read_json(storage.join(finished[-1].url, SUMMARY))
    return None
