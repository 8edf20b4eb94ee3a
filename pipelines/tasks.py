"""The task contract: the one unit of work every engine runs.

A task is a module-level function named by its import path, plus small JSON arguments
(URLs and scalars; anything larger the driver writes to a file and the task reads). The
function is called as `fn(step_url, index, **args)`, writes its outputs atomically and
returns a small dict, which `run_task` writes last, atomically, as the task's record
`<step_url>/_tasks/<phase>-<index>.json`. The record is the only way a result reaches the
step: engines run tasks and return nothing.

Tasks are idempotent and may run more than once, even at the same time (Ray retries, Beam
and Dataflow re-execute bundles, Airflow retries, a zombie worker may still be writing):
the same inputs give the same files and the same record (but for its `task_seconds`), and
atomic renames make the last writer win with identical bytes.

A task that fails writes `<phase>-<index>.error.json` (its exception pickled, and the
traceback as text) before it raises, so the original exception, with the task named,
reaches the driver from any engine, including those that only report "a bundle failed".

`python -m pipelines.tasks < task.json` runs one task in a fresh process (exit 1 on
failure), for executors outside the engines here.
"""

from __future__ import annotations

import base64
import importlib
import json
import pickle
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from stages import storage

#: Largest JSON form of one task's arguments. A task that needs more takes a URL.
MAX_ARGS_BYTES = 64 << 10
TASKS_DIR = "_tasks"


class TaskArgumentError(ValueError):
    """A task was given arguments that are not small JSON values."""


class TaskFailed(RuntimeError):
    """A task failed and its own exception could not be recovered."""


def function_name(fn: Callable) -> str:
    """The import path of a module-level function ("package.module:function")."""
    qual = getattr(fn, "__qualname__", "")
    if not qual or "." in qual or "<" in qual:
        raise TaskArgumentError(f"task functions must be module-level functions, got {fn!r}")
    return f"{fn.__module__}:{qual}"


def resolve(name: str) -> Callable[..., dict]:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Task:
    fn: str
    step_url: str
    phase: str
    index: int
    args: dict = field(default_factory=dict)
    weight: int = 0  # a hint of its size (input bytes): engines start heavy tasks first

    def __post_init__(self):
        try:
            blob = json.dumps(self.args, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TaskArgumentError(f"task {self.name}: arguments must be JSON values (URLs and scalars): {e}") from None
        if len(blob) > MAX_ARGS_BYTES:
            raise TaskArgumentError(f"task {self.name}: arguments are {len(blob):,} bytes (limit {MAX_ARGS_BYTES:,}); "
                                    "write large inputs to a file and pass its URL")

    @classmethod
    def of(cls, fn: Callable, step_url: str, phase: str, index: int, args: dict | None = None, weight: int = 0) -> "Task":
        return cls(function_name(fn), step_url, phase, index, dict(args or {}), int(weight))

    @property
    def name(self) -> str:
        return f"{self.phase}-{self.index:05d}"

    @property
    def record_url(self) -> str:
        return storage.join(self.step_url, TASKS_DIR, f"{self.name}.json")

    @property
    def error_url(self) -> str:
        return storage.join(self.step_url, TASKS_DIR, f"{self.name}.error.json")

    def describe(self) -> str:
        return f"task {self.name} of {self.step_url} ({self.fn})"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Task":
        return cls(**json.loads(text))


def run_task(task: Task) -> None:
    """Worker side: run the task, then write its record last, atomically. On failure,
    write its error record and raise the task's own exception, with the task named."""
    t0 = time.monotonic()
    try:
        result = resolve(task.fn)(task.step_url, task.index, **task.args)
        if not isinstance(result, dict):
            raise TypeError(f"{task.fn} returned {type(result).__name__}; a task returns its record as a dict")
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        exc.add_note(f"tokenmill: in {task.describe()}")
        _write_error(task, exc)
        raise
    result["task_seconds"] = round(time.monotonic() - t0, 4)
    storage.atomic_write_json(task.record_url, result)
    storage.remove(task.error_url)


def _write_error(task: Task, exc: BaseException) -> None:
    try:
        pickled = base64.b64encode(pickle.dumps(exc)).decode()
        pickle.loads(base64.b64decode(pickled))
    except Exception:
        pickled = None
    storage.atomic_write_json(task.error_url, {
        "task": task.name, "fn": task.fn, "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc), "traceback": "".join(traceback.format_exception(exc)), "pickled": pickled,
    })


def failure_of(task: Task) -> BaseException | None:
    """The exception a failed task left in its error record, or None."""
    if not storage.exists(task.error_url):
        return None
    rec = storage.read_json(task.error_url)
    if rec.get("pickled"):
        try:
            return pickle.loads(base64.b64decode(rec["pickled"]))
        except Exception:
            pass
    return TaskFailed(f"{task.describe()} failed with {rec['type']}: {rec['message']}\n{rec['traceback']}")


def raise_failure(tasks: Iterable[Task], cause: BaseException) -> None:
    """After an engine reported a failure: raise the first failed task's own exception
    (the engine's error is kept as its context); if no task left an error record (a worker
    was killed, say), raise TaskFailed naming the phase with the engine's error."""
    tasks = list(tasks)
    for task in tasks:
        exc = failure_of(task)
        if exc is not None:
            raise exc from cause
    phase = tasks[0].phase if tasks else "?"
    raise TaskFailed(f"phase {phase}: the engine failed and no task left an error record: "
                     f"{type(cause).__name__}: {str(cause)[:2000]}") from cause


def clear_errors(tasks: list[Task]) -> None:
    """Remove error records a previous attempt of these tasks left (one listing)."""
    if not tasks:
        return
    wanted = {t.error_url.rsplit("/", 1)[-1] for t in tasks}
    for url in storage.list_files(storage.join(tasks[0].step_url, TASKS_DIR), ".error.json"):
        if url.rsplit("/", 1)[-1] in wanted:
            storage.remove(url)


def heaviest_first(tasks: list[Task]) -> list[Task]:
    return sorted(tasks, key=lambda t: -t.weight)


def finished(tasks: list[Task]) -> dict[int, dict]:
    """Records of the tasks that have one, by position in `tasks` (one listing)."""
    if not tasks:
        return {}
    present = {u.rsplit("/", 1)[-1] for u in storage.list_files(storage.join(tasks[0].step_url, TASKS_DIR), ".json")}
    out = {}
    for i, t in enumerate(tasks):
        if t.record_url.rsplit("/", 1)[-1] in present:
            out[i] = storage.read_json(t.record_url)
    return out


def main() -> int:
    task = Task.from_json(sys.stdin.read() if len(sys.argv) < 2 else open(sys.argv[1], encoding="utf-8").read())
    try:
        run_task(task)
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
