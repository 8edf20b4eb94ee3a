"""The Apache Beam engine: one Beam pipeline per phase.

Each phase is `Create(tasks) | Reshuffle() | ParDo(run_task)` under the stable label
`<step>/<phase>`; the pipeline is run to completion before the step looks at the task
records. Beam's cluster runners do not hand values back to the launching process, which
is why results travel only through the records.

Runners:
- default (`engine.beam.runner: null`): Beam's in-process portable runner (FnApiRunner)
  with `min(engine.workers, tasks)` SDK worker processes; a phase of one task runs in this
  process (no worker start-up). Works offline.
- any runner Beam knows, by name (PortableRunner, FlinkRunner, SparkRunner, DataflowRunner,
  ...), with `engine.beam.options` passed to PipelineOptions as given. DirectRunner and
  PrismRunner are never chosen by default: both try to download the Prism binary at run
  time; name them to use them.

A pipeline costs about a second to start here (1.1 s with 2 worker processes) and minutes
on Dataflow; `stats()` counts pipelines and their seconds so the cost is visible.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, _BeamArgumentParser

from pipelines.config import ConfigError
from pipelines.engines.base import Engine, OnDone, RecordWatcher
from pipelines.tasks import Task, raise_failure, run_task

DEFAULT_RUNNER = "FnApiRunner"
KNOWN_RUNNERS = tuple(StandardOptions.KNOWN_RUNNER_NAMES)
# Loggers that repeat a failed task's traceback from the in-process runner's workers; the
# task's own exception is raised here instead.
_QUIET_LOGGERS = ("apache_beam.runners.portability.local_job_service", "apache_beam.runners.worker.sdk_worker",
                  "apache_beam.runners.portability.fn_api_runner.worker_handlers")


class _StrictParser(_BeamArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit
        raise ConfigError(f"engine.beam.options: {message}")


def parse_options(flags: list[str]) -> dict:
    """Beam's own parse of the flags; unknown flags and bad values are errors here (Beam
    itself only logs and drops them)."""
    parser = _StrictParser(allow_abbrev=False)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)
    known, unknown = parser.parse_known_args(flags)
    if unknown:
        raise ConfigError(f"engine.beam.options: Beam does not know {unknown}; see the options of your runner "
                          "(python -m apache_beam.examples.wordcount --help lists them)")
    return vars(known)


def runner_and_flags(cfg) -> tuple[str, list[str]]:
    """The runner's name and the user's flags without --runner (validated)."""
    bc = cfg.engine.beam
    flags = list(bc.options)
    from_flags = [f.split("=", 1)[1] if "=" in f else None for f in flags if f.startswith("--runner")]
    if len(from_flags) > 1 or (from_flags and from_flags[0] is None):
        raise ConfigError("engine.beam.options: give the runner once, as --runner=NAME (or in engine.beam.runner)")
    runner = bc.runner
    if from_flags:
        if runner and runner != from_flags[0]:
            raise ConfigError(f"engine.beam.runner is {runner!r} but engine.beam.options says --runner={from_flags[0]}; "
                              "keep one")
        runner = from_flags[0]
        flags = [f for f in flags if not f.startswith("--runner")]
    runner = runner or DEFAULT_RUNNER
    if runner not in KNOWN_RUNNERS:
        raise ConfigError(f"engine.beam.runner {runner!r} is not a Beam runner; allowed: {', '.join(KNOWN_RUNNERS)} "
                          f"(default {DEFAULT_RUNNER}: in-process, offline)")
    return runner, flags


def _job_name(label: str, step_url: str) -> str:
    """Dataflow's rules: lowercase letters, digits and dashes, at most 63; unique per step version."""
    tag = hashlib.sha256(step_url.encode()).hexdigest()[:10]
    name = re.sub(r"[^a-z0-9-]+", "-", f"tokenmill-{label}".lower()).strip("-")[:52].rstrip("-") + f"-{tag}"
    return name


class _RunTask(beam.DoFn):
    def process(self, task_json: str):
        run_task(Task.from_json(task_json))
        return ()


class RunTasks(beam.PTransform):
    """The tasks of one phase, spread over the workers by a reshuffle, each run once."""

    def __init__(self, tasks: list[Task]):
        super().__init__()
        self.tasks = tasks

    def expand(self, pbegin):
        return (pbegin
                | "Tasks" >> beam.Create([t.to_json() for t in self.tasks])
                | "Spread" >> beam.Reshuffle()
                | "Run" >> beam.ParDo(_RunTask()))


class BeamEngine(Engine):
    name = "beam"

    @staticmethod
    def check(cfg) -> None:
        runner, flags = runner_and_flags(cfg)
        parsed = parse_options(flags)
        if runner == DEFAULT_RUNNER and cfg.engine.workers > 1 and any(
                u.startswith("memory://") for u in [cfg.run_root, *cfg.input.paths]):
            raise ConfigError("memory:// lives inside one process and Beam's worker processes cannot see it; "
                              "set engine.workers=1, engine.kind=local, or use a local path or object store URL")
        if runner == DEFAULT_RUNNER and parsed.get("direct_num_workers") not in (None, 0, 1):
            raise ConfigError("engine.beam.options: --direct_num_workers is set from engine.workers; remove it")

    def __init__(self, cfg, progress: bool = True):
        super().__init__(workers=cfg.engine.workers)
        self.runner, self.flags = runner_and_flags(cfg)

    def _flags(self, tasks: list[Task], label: str) -> list[str]:
        n_tasks = len(tasks)
        flags = [f"--runner={self.runner}", *self.flags]
        if self.runner == DEFAULT_RUNNER:
            n = max(1, min(self.workers, n_tasks))
            flags += ["--direct_running_mode=" + ("multi_processing" if n > 1 else "in_memory"), f"--direct_num_workers={n}"]
        elif not any(f.startswith("--job_name") for f in flags):
            flags.append(f"--job_name={_job_name(label, tasks[0].step_url)}")
        return flags

    def run(self, tasks: list[Task], label: str, on_done: OnDone | None = None) -> None:
        if not tasks:
            return
        t0 = time.monotonic()
        quiet = [logging.getLogger(n) for n in _QUIET_LOGGERS] if self.runner == DEFAULT_RUNNER else []
        levels = [q.level for q in quiet]
        for q in quiet:
            q.setLevel(logging.CRITICAL)
        try:
            with RecordWatcher(tasks, on_done):
                try:
                    pipeline = beam.Pipeline(options=PipelineOptions(self._flags(tasks, label)))
                    _ = pipeline | label >> RunTasks(tasks)
                    result = pipeline.run()
                    state = result.wait_until_finish()
                    if state not in (None, "DONE", beam.runners.runner.PipelineState.DONE):
                        raise RuntimeError(f"Beam pipeline {label} ended in state {state}")
                except Exception as exc:
                    raise_failure(tasks, exc)
        finally:
            for q, lv in zip(quiet, levels):
                q.setLevel(lv)
            self._stats["beam_pipelines"] += 1
            self._stats["beam_pipeline_seconds"] += round(time.monotonic() - t0, 3)
