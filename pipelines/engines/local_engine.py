"""The local engine: tasks one after another in this process (debugging, tiny inputs,
`memory://` URLs)."""

from __future__ import annotations

from pipelines.engines.base import Engine, OnDone
from pipelines.tasks import Task, run_task


class LocalEngine(Engine):
    name = "local"

    @staticmethod
    def check(cfg) -> None:
        pass

    def __init__(self, cfg=None, progress: bool = True):
        super().__init__(workers=1)

    def run(self, tasks: list[Task], label: str, on_done: OnDone | None = None) -> None:
        for task in tasks:
            run_task(task)  # raises the task's own exception, with the task named
            if on_done:
                on_done(task)
