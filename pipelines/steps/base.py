"""The step contract: how a step is checked, versioned, run in phases of tasks, resumed.

A step writes under `<run_root>/<name>/<version>/`, where `version` hashes the config
fields that change its result, the pinned files it depends on and the versions of its
inputs. It is finished when `_SUCCESS.json` exists there; that file is written last and
atomically (by pipelines.runner) and holds the counters, the list of parts with their row
counts and checksums, and an `execution` record (engine, seconds per phase).

A step is a sequence of phases; a phase is a list of tasks (pipelines.tasks) run on the
engine. Each task writes its files atomically and then its record
`_tasks/<phase>-<index>.json`; a rerun after a crash reuses every task that has a record
and redoes the others, so a killed run loses at most the tasks in flight. The step reads
its results from the records only.

Task records and a step's shuffle scratch (`Step.scratch`) are needed only until the step
is finished: the runner removes them once `_SUCCESS.json` is written (unless
`output.keep_scratch`), so a finished run keeps only its outputs.

Layout of a document-producing step's folder:
  docs/part-00000.parquet      surviving documents (one part per input part)
  dropped/part-00000.parquet   documents this step removed, with the reason
  quarantine/part-00000.parquet  (read only) records that are not documents
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa

from pipelines.config import RunConfig, stable_hash
from pipelines.engines import Engine
from pipelines.inputs import InputFile, PinnedFile
from pipelines.progress import Progress
from pipelines.tasks import Task, clear_errors, finished
from stages import storage

SUCCESS = "_SUCCESS.json"


def part_name(i: int) -> str:
    return f"part-{i:05d}.parquet"


@dataclass(frozen=True)
class Pins:
    """What a plan pinned: its input files and the files steps depend on (by name)."""

    inputs: tuple[InputFile, ...] = ()
    files: dict[str, PinnedFile] = field(default_factory=dict)


@dataclass
class FinishedStep:
    """A finished step as read back from its _SUCCESS.json."""

    name: str
    version: str
    url: str
    record: dict

    @property
    def parts(self) -> list[dict]:
        return self.record.get("parts", [])

    def part_urls(self) -> list[tuple[int, str]]:
        """(part index, URL) of every document part, in part order."""
        return [(p["part"], storage.join(self.url, p["path"])) for p in self.parts]

    def part_weights(self) -> list[int]:
        """Each part's size in memory (a scheduling hint for the tasks that read it)."""
        return [int(p.get("bytes", p["rows"])) for p in self.parts]

    @property
    def rows(self) -> int:
        return sum(p["rows"] for p in self.parts)


@dataclass
class StepContext:
    cfg: RunConfig
    engine: Engine
    name: str
    url: str
    run_root: str
    inputs: dict[str, FinishedStep]
    pins: Pins
    version: str = ""
    progress: bool = True
    phases: dict[str, dict] = field(default_factory=dict)
    lease: Any = None  # pipelines.lease.Lease of the runner, checked around every submission

    @property
    def compression(self) -> str:
        return self.cfg.output.compression

    def relative(self, url: str) -> str:
        """A URL under the run root as a path relative to it (what records and manifests
        store, so a run means the same wherever it lives); other URLs as they are."""
        try:
            return storage.relative_to(url, self.run_root)
        except ValueError:
            return url

    def resolve(self, path: str) -> str:
        """The URL of a path a record stores (see `relative`)."""
        return path if "://" in path or os.path.isabs(path) else storage.join(self.run_root, path)

    def input_docs(self) -> FinishedStep:
        """The single upstream step whose documents this step consumes."""
        (only,) = self.inputs.values()
        return only

    def run_phase(self, fn: Callable[..., dict], phase: str, args_list: list[dict], desc: str | None = None,
                  weights: list[int] | None = None) -> list[dict]:
        """Run one phase: reuse the tasks that have records, run the rest on the engine,
        return every task's record in task order. `weights` (e.g. input bytes per task)
        let engines start the largest tasks first and balance their workers."""
        return self.run_phases([Phase(fn, phase, args_list, desc, weights)])[0]

    def run_phases(self, phases: list["Phase"]) -> list[list[dict]]:
        """Run phases that follow each other and whose arguments are all known now: each
        starts when the one before it has finished, and engines may submit them together
        (Beam: one pipeline for all of them). Returns each phase's records."""
        planned = []
        for ph in phases:
            weights = ph.weights or [0] * len(ph.args)
            tasks = [Task.of(ph.fn, self.url, ph.name, i, a, w) for i, (a, w) in enumerate(zip(ph.args, weights))]
            records = finished(tasks)
            planned.append((ph, tasks, [t for i, t in enumerate(tasks) if i not in records], records))
        todo = [(f"{self.name}/{ph.name}", left) for ph, _, left, _ in planned if left]
        if todo:
            if self.lease is not None:
                self.lease.check()  # a runner whose lease was taken over stops at the next phase
            clear_errors([t for _, left in todo for t in left])
            labels = [(ph.desc or f"{self.name}: {ph.name}") + (f" ({len(done)} resumed)" if done else "")
                      for ph, _, left, done in planned if left]
            bar = Progress("; ".join(labels), sum(len(left) for _, left in todo), self.progress)

            def on_done(task: Task) -> None:
                rec = storage.read_json(task.record_url) if bar.enabled else {}
                bar.update(1, int(rec.get("rows_in", rec.get("rows", 0)) or 0))

            try:
                self.engine.run_phases(todo, on_done)
            finally:
                bar.close()
            if self.lease is not None:
                self.lease.check()
        out = []
        for ph, tasks, left, records in planned:
            if left:
                records = finished(tasks)
            missing = [t.name for i, t in enumerate(tasks) if i not in records]
            if missing:
                raise RuntimeError(f"{self.name}: engine {self.engine.name} ended phase {ph.name} but tasks {missing[:5]} "
                                   f"({len(missing)} in all) left no record")
            recs = [records[i] for i in range(len(tasks))]
            secs = [float(r.get("task_seconds", 0.0)) for r in recs]
            self.phases[ph.name] = {"tasks": len(tasks), "resumed": len(tasks) - len(left),
                                    "task_seconds": {"sum": round(sum(secs), 3), "min": round(min(secs, default=0), 4),
                                                     "mean": round(sum(secs) / max(1, len(secs)), 4),
                                                     "max": round(max(secs, default=0), 4)}}
            out.append(recs)
        return out


@dataclass
class Phase:
    """A phase for StepContext.run_phases: `fn(step_url, index, **args[index])` per task."""

    fn: Callable[..., dict]
    name: str
    args: list[dict]
    desc: str | None = None
    weights: list[int] | None = None


class Step(ABC):
    """One named step of the plan. Subclasses implement `version_config` and `run`."""

    name: str = ""
    # Bump when the code changes what the step outputs, so old outputs are not reused.
    code_version: int = 1
    # Subfolders used only while the step runs (shuffles); removed with `_tasks/` once done.
    scratch: tuple[str, ...] = ()
    # True for the step that reads the pinned input files (their fingerprints are checked).
    reads_inputs: bool = False

    def __init__(self, inputs: tuple[str, ...] = ()):
        self.inputs = inputs

    def enabled(self, cfg: RunConfig) -> bool:
        return True

    def check(self, cfg: RunConfig) -> None:
        """Raise ConfigError when this step's settings cannot run (before any work)."""

    def requires(self, cfg: RunConfig) -> set[str]:
        """Engine capabilities this step needs with this config (pipelines.engines.base)."""
        return set()

    def dependencies(self, cfg: RunConfig) -> dict[str, str]:
        """Files this step reads besides its inputs, by name -> URL (pinned by the plan)."""
        return {}

    @abstractmethod
    def version_config(self, cfg: RunConfig, pins: Pins) -> dict:
        """The config fields and pinned files that change this step's output (and nothing else)."""

    def version(self, cfg: RunConfig, pins: Pins, input_versions: dict[str, str]) -> str:
        return stable_hash({
            "step": self.name,
            "code_version": self.code_version,
            "config": self.version_config(cfg, pins),
            "inputs": input_versions,
        })

    @abstractmethod
    def run(self, ctx: StepContext) -> dict:
        """Do the work in phases of tasks; return the payload of _SUCCESS.json."""


# ---------------------------------------------------------------------------------------
# Helpers shared by steps

def merge_counters(results: list[dict], key: str = "counters") -> dict[str, int]:
    total: Counter = Counter()
    for r in results:
        total.update(r.get(key, {}))
    return dict(sorted(total.items()))


def parquet_entry(kind: str, i: int, table: pa.Table, sha: str) -> dict:
    return {"path": f"{kind}/{part_name(i)}", "part": i, "rows": table.num_rows, "bytes": int(table.nbytes), "sha256": sha}


def write_part(step_url: str, kind: str, i: int, table: pa.Table, compression: str) -> dict:
    sha = storage.write_parquet(storage.join(step_url, kind, part_name(i)), table, compression)
    return parquet_entry(kind, i, table, sha)


def read_finished(url: str, name: str = "") -> FinishedStep:
    """A finished step from its folder URL (tasks receive input steps as URLs)."""
    record = storage.read_json(storage.join(url, SUCCESS))
    return FinishedStep(name or record.get("step", ""), record.get("version", ""), url, record)
