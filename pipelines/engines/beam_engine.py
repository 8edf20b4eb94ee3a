"""The Apache Beam engine: one Beam pipeline per phase.

Each phase is `Create(tasks) | Reshuffle() | ParDo(run_task)` under the stable label
`<step>/<phase>`; the pipeline is run to completion before the step looks at the task
records. Beam's cluster runners do not hand values back to the launching process, which
is why results travel only through the records.

Runners:
- default (`engine.beam.runner: null`): Beam's in-process portable runner (FnApiRunner)
  with `min(engine.workers, tasks)` SDK worker processes; a phase of one task runs in this
  process (no worker start-up). Works offline. This runner hands each worker a fixed share
  of a stage's elements and never rebalances, which leaves a worker idle while another
  works through a share of slow tasks. So here each worker gets one element, the whole
  list of tasks (heaviest first), and takes the next task nobody has claimed yet (an
  exclusive file create under `_tasks/`): the schedule Ray's adapter has, within Beam.
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
import uuid

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, _BeamArgumentParser

from pipelines.config import ConfigError
from pipelines.engines.base import Engine, OnDone, RecordWatcher
from pipelines.tasks import TASKS_DIR, Task, heaviest_first, raise_failure, run_task
from stages import storage

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


class _RunTasks(beam.DoFn):
    """Runs the tasks of an element: one task; or, with a claims folder, every task of the
    list that this worker claims first. Emits one marker per element (for the next phase's
    barrier)."""

    def process(self, element: tuple[str | None, list[str]]):
        claims, tasks = element
        for task_json in tasks:
            task = Task.from_json(task_json)
            if claims is None or storage.create_exclusive(storage.join(claims, task.name)):
                run_task(task)
        yield len(tasks)


def _after(element, _done):
    return element


class RunTasks(beam.PTransform):
    """The tasks of one phase as elements spread over the workers by a reshuffle: one task
    per element, or (with `claims`, a fresh folder) `workers` elements that each hold the
    whole list and take tasks as they go. With `after` (the previous phase's output as a
    side input) it starts only once that phase has finished."""

    def __init__(self, tasks: list[Task], claims: str | None = None, workers: int = 1, after=None):
        super().__init__()
        self.after = after
        if claims is None:
            self.elements = [(None, [t.to_json()]) for t in tasks]
        else:
            ordered = [t.to_json() for t in heaviest_first(tasks)]
            self.elements = [(claims, ordered) for _ in range(workers)]

    def expand(self, pbegin):
        elements = pbegin | "Tasks" >> beam.Create(self.elements)
        if self.after is not None:
            elements = elements | "After" >> beam.Map(_after, beam.pvalue.AsList(self.after))
        return (elements
                | "Spread" >> beam.Reshuffle()
                | "Run" >> beam.ParDo(_RunTasks()))


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

    def _flags(self, workers: int, label: str, step_url: str) -> list[str]:
        flags = [f"--runner={self.runner}", *self.flags]
        if self.runner == DEFAULT_RUNNER:
            mode = "multi_processing" if workers > 1 else "in_memory"
            flags += [f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"]
        elif not any(f.startswith("--job_name") for f in flags):
            flags.append(f"--job_name={_job_name(label, step_url)}")
        return flags

    def run(self, tasks: list[Task], label: str, on_done: OnDone | None = None) -> None:
        self.run_phases([(label, tasks)], on_done)

    def run_phases(self, phases: list[tuple[str, list[Task]]], on_done: OnDone | None = None) -> None:
        """One Beam pipeline for all the phases: each phase's tasks wait (side input) for the
        markers of the phase before, so the order holds inside the pipeline and its workers
        start once."""
        phases = [(label, tasks) for label, tasks in phases if tasks]
        if not phases:
            return
        every = [t for _, tasks in phases for t in tasks]
        t0 = time.monotonic()
        workers = max(1, min(self.workers, max(len(tasks) for _, tasks in phases)))
        claims_root = storage.join(every[0].step_url, TASKS_DIR, f"claims-{uuid.uuid4().hex[:12]}")
        quiet = [logging.getLogger(n) for n in _QUIET_LOGGERS] if self.runner == DEFAULT_RUNNER else []
        levels = [q.level for q in quiet]
        for q in quiet:
            q.setLevel(logging.CRITICAL)
        try:
            with RecordWatcher(every, on_done):
                try:
                    first = phases[0][0]
                    pipeline = beam.Pipeline(options=PipelineOptions(self._flags(workers, first, every[0].step_url)))
                    done = None
                    for label, tasks in phases:
                        # The in-process runner splits elements statically among its workers:
                        # there, workers claim tasks as they go (see the module docstring).
                        claims = (storage.join(claims_root, label.rsplit("/", 1)[-1])
                                  if self.runner == DEFAULT_RUNNER and workers > 1 and len(tasks) > 1 else None)
                        done = pipeline | label >> RunTasks(tasks, claims, min(workers, len(tasks)), after=done)
                    result = pipeline.run()
                    state = result.wait_until_finish()
                    if state not in (None, "DONE", beam.runners.runner.PipelineState.DONE):
                        raise RuntimeError(f"Beam pipeline {first} ended in state {state}")
                except Exception as exc:
                    raise_failure(every, exc)
            storage.remove_tree(claims_root)
        finally:
            for q, lv in zip(quiet, levels):
                q.setLevel(lv)
            self._stats["beam_pipelines"] += 1
            self._stats["beam_pipeline_seconds"] += round(time.monotonic() - t0, 3)
