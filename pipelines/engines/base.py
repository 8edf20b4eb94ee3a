"""What every engine adapter offers: run a list of tasks, and nothing else by default.

`run(tasks, label, on_done)` runs every task (`pipelines.tasks.run_task`) in parallel
where it can and returns nothing: results reach the step through the task records;
`run_phases` runs several phases in order, each after the one before. `run`
calls `on_done(task)` as it learns that a task finished (as soon as it can, or never, for
an engine that cannot tell). On failure it raises the failed task's own exception
(`pipelines.tasks.raise_failure`).

An engine may offer capabilities beyond that (`capabilities`); a step that needs one says
so (`Step.requires`) and a plan asking for it on an engine without it is refused before
any work. The only one today is "actors": long-lived workers that keep state between calls
(Ray actors), used by train_bpe's sharded merge mode.

`stats()` reports what running cost on this engine (Beam: pipelines and their seconds),
for the step's execution record.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import Counter
from typing import Any, Callable, Sequence

from pipelines.tasks import TASKS_DIR, Task
from stages import storage

OnDone = Callable[[Task], None]

ACTORS = "actors"


class ActorGroup(ABC):
    """Actors of one class, addressed together: `call(method, args)` runs
    `actor_i.method(*args[i])` on every actor i and returns the results in order."""

    @abstractmethod
    def call(self, method: str, args: Sequence[tuple] | None = None) -> list[Any]: ...

    @abstractmethod
    def close(self) -> None: ...


class Engine(ABC):
    name = "engine"
    capabilities: frozenset[str] = frozenset()

    def __init__(self, workers: int = 1):
        self.workers = workers
        self._stats: Counter = Counter()

    @abstractmethod
    def run(self, tasks: list[Task], label: str, on_done: OnDone | None = None) -> None:
        """Run every task; return nothing; raise the first failed task's own exception."""

    def run_phases(self, phases: list[tuple[str, list[Task]]], on_done: OnDone | None = None) -> None:
        """Run phases in order, each after the one before has finished. Engines with a high
        cost per submission (Beam: a pipeline) override this to submit them together."""
        for label, tasks in phases:
            self.run(tasks, label, on_done)

    def actors(self, cls: type, args: Sequence[tuple]) -> ActorGroup:
        """One actor of `cls` per entry of `args` (its constructor arguments)."""
        raise NotImplementedError(f"engine {self.name} has no actors")

    def stats(self) -> dict[str, float]:
        """Counters of what this engine ran so far (take differences around a step)."""
        return dict(self._stats)

    def close(self) -> None:
        pass

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RecordWatcher:
    """For engines that do not report single tasks back (Beam): a thread that lists the
    task records while a phase runs and reports the new ones."""

    def __init__(self, tasks: list[Task], on_done: OnDone | None, interval: float = 2.0):
        self.tasks, self.on_done, self.interval = tasks, on_done, interval
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True) if on_done and tasks else None

    def __enter__(self) -> "RecordWatcher":
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread:
            self._stop.set()
            self._thread.join()
            self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        try:
            present = {u.rsplit("/", 1)[-1] for u in storage.list_files(storage.join(self.tasks[0].step_url, TASKS_DIR), ".json")}
        except OSError:
            return
        for t in self.tasks:
            name = t.record_url.rsplit("/", 1)[-1]
            if name in present and name not in self._seen:
                self._seen.add(name)
                self.on_done(t)
