"""The step contract: how a step is versioned, where it writes, how it resumes.

A step writes under `<run_root>/<name>/<version>/`, where `version` hashes the config
fields that change its result and the versions of its inputs. It is finished when
`_SUCCESS.json` exists there; that file is written last and atomically and holds the
counters and the list of parts with their row counts and checksums.

Inside a step, work is split into tasks; each task writes its files atomically and then
a task record `_tasks/<phase>-<index>.json`. A rerun after a crash reuses every task that
has a record and redoes the others, so a killed run loses at most the tasks in flight.

Task records and a step's shuffle scratch (`Step.scratch`) are needed only until the step
is finished: the runner removes them once `_SUCCESS.json` is written (unless
`output.keep_scratch`), so a finished run keeps only its outputs.

Layout of a document-producing step's folder:
  docs/part-00000.parquet      surviving documents (one part per input part)
  dropped/part-00000.parquet   documents this step removed, with the reason
  quarantine/part-00000.parquet  (read only) records that are not documents
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

from pipelines import io
from pipelines.config import RunConfig, stable_hash
from pipelines.engines import Engine

SUCCESS = "_SUCCESS.json"


def part_name(i: int) -> str:
    return f"part-{i:05d}.parquet"


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
        return [(p["part"], io.join(self.url, p["path"])) for p in self.parts]


@dataclass
class StepContext:
    cfg: RunConfig
    engine: Engine
    url: str
    inputs: dict[str, FinishedStep]
    version: str = ""
    progress: bool = True

    @property
    def compression(self) -> str:
        return self.cfg.output.compression

    def input_docs(self) -> FinishedStep:
        """The single upstream step whose documents this step consumes."""
        (only,) = self.inputs.values()
        return only


class Step(ABC):
    """One named step of the plan. Subclasses implement `version_config` and `run`."""

    name: str = ""
    # Bump when the code changes what the step outputs, so old outputs are not reused.
    code_version: int = 1
    # Subfolders used only while the step runs (shuffles); removed with `_tasks/` once done.
    scratch: tuple[str, ...] = ()

    def __init__(self, inputs: tuple[str, ...] = ()):
        self.inputs = inputs

    def enabled(self, cfg: RunConfig) -> bool:
        return True

    @abstractmethod
    def version_config(self, cfg: RunConfig) -> dict:
        """The config fields that change this step's output (and nothing else)."""

    def version(self, cfg: RunConfig, input_versions: dict[str, str]) -> str:
        return stable_hash({
            "step": self.name,
            "code_version": self.code_version,
            "config": self.version_config(cfg),
            "inputs": input_versions,
        })

    @abstractmethod
    def run(self, ctx: StepContext) -> dict:
        """Do the work; return the payload of _SUCCESS.json (counters, parts, ...)."""


# ---------------------------------------------------------------------------------------
# Tasks with records: the unit of resume.

@dataclass
class TaskSpec:
    """Everything one task needs, shipped to a worker; `fn` is a module-level function."""

    fn: Callable[..., dict]
    step_url: str
    phase: str
    index: int
    args: dict = field(default_factory=dict)

    @property
    def record_url(self) -> str:
        return io.join(self.step_url, "_tasks", f"{self.phase}-{self.index:05d}.json")


def run_task(spec: TaskSpec) -> dict:
    """Worker side: run the task and write its record last, atomically."""
    t0 = time.monotonic()
    result = spec.fn(spec.step_url, spec.index, **spec.args)
    result["seconds"] = round(time.monotonic() - t0, 4)
    io.atomic_write_json(spec.record_url, result)
    return result


def run_tasks(ctx: StepContext, fn: Callable[..., dict], phase: str, args_list: list[dict], desc: str) -> list[dict]:
    """Run one phase of a step: reuse recorded tasks, run the rest on the engine."""
    specs = [TaskSpec(fn, ctx.url, phase, i, a) for i, a in enumerate(args_list)]
    results: list[dict | None] = [None] * len(specs)
    todo = []
    for s in specs:
        if io.exists(s.record_url):
            results[s.index] = io.read_json(s.record_url)
        else:
            todo.append(s)
    if todo:
        done = len(specs) - len(todo)
        label = f"{desc} ({done} resumed)" if done else desc
        for s, r in zip(todo, ctx.engine.map(run_task, todo, desc=label)):
            results[s.index] = r
    return results  # type: ignore[return-value]


def merge_counters(results: list[dict], key: str = "counters") -> dict[str, int]:
    total: Counter = Counter()
    for r in results:
        total.update(r.get(key, {}))
    return dict(sorted(total.items()))


def parquet_entry(kind: str, i: int, table: pa.Table, sha: str) -> dict:
    return {"path": f"{kind}/{part_name(i)}", "part": i, "rows": table.num_rows, "sha256": sha}


def write_part(step_url: str, kind: str, i: int, table: pa.Table, compression: str) -> dict:
    sha = io.write_parquet(io.join(step_url, kind, part_name(i)), table, compression)
    return parquet_entry(kind, i, table, sha)
