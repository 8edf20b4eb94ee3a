"""Runs a plan: skip finished steps, run the others, write _SUCCESS.json last, summarize."""

from __future__ import annotations

import sys
import time

from pipelines import io
from pipelines.accounting import summarize
from pipelines.config import RunConfig
from pipelines.engines import Engine, make_engine
from pipelines.plan import DOC_STEPS, PlannedStep, build_plan, resolve
from pipelines.steps.base import SUCCESS, FinishedStep, StepContext


def log(msg: str) -> None:
    print(f"tokenmill: {msg}", file=sys.stderr, flush=True)


def run_step(cfg: RunConfig, planned: PlannedStep, engine: Engine, finished: dict[str, FinishedStep]) -> FinishedStep:
    step = planned.step
    success_url = io.join(planned.url, SUCCESS)
    if io.exists(success_url):
        log(f"{step.name}: done already ({planned.url}), skipped")
        remove_scratch(cfg, planned)  # in case a run was stopped while removing it
        return FinishedStep(step.name, planned.version, planned.url, {**io.read_json(success_url), "skipped": True})
    log(f"{step.name}: running -> {planned.url}")
    ctx = StepContext(cfg=cfg, engine=engine, url=planned.url, inputs={n: finished[n] for n in step.inputs},
                      version=planned.version, progress=cfg.progress)
    t0 = time.monotonic()
    payload = step.run(ctx)
    record = {
        "step": step.name,
        "version": planned.version,
        "config": step.version_config(cfg),
        "inputs": {n: finished[n].version for n in step.inputs},
        "seconds": round(time.monotonic() - t0, 3),
        **payload,
    }
    io.atomic_write_json(success_url, record)
    remove_scratch(cfg, planned)
    return FinishedStep(step.name, planned.version, planned.url, record)


def remove_scratch(cfg: RunConfig, planned: PlannedStep) -> None:
    """Task records and shuffle scratch of a finished step (kept with output.keep_scratch)."""
    if cfg.output.keep_scratch:
        return
    for name in ("_tasks", *planned.step.scratch):
        io.remove_tree(io.join(planned.url, name))


def run(cfg: RunConfig, engine: Engine | None = None, until: str | None = None) -> dict:
    steps = build_plan(cfg)
    if until:
        names = [s.name for s in steps]
        if until not in names:
            raise ValueError(f"--until {until!r}: no such step; steps are {', '.join(names)}")
        steps = steps[: names.index(until) + 1]
    plan = resolve(cfg, steps)
    own_engine = engine is None
    engine = engine or make_engine(cfg.engine, cfg.progress)
    try:
        finished: dict[str, FinishedStep] = {}
        for planned in plan:
            finished[planned.step.name] = run_step(cfg, planned, engine, finished)
    finally:
        if own_engine:
            engine.close()
    doc_steps = [p.step.name for p in plan if type(p.step) in DOC_STEPS]
    summary = summarize(list(finished.values()), doc_steps)
    summary["engine"] = {"kind": engine.name, "workers": engine.workers}
    io.atomic_write_json(io.join(cfg.run_root, "summary.json"), summary)
    return summary

