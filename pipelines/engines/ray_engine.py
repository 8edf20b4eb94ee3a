"""The Ray engine: tasks as Ray tasks (one CPU each), on an embedded local cluster or a
running one (`engine.address`), plus Ray actors for the steps that need them.

Ray retries a task whose worker or node died (`max_retries`); tasks are idempotent, so a
retry, or a zombie copy still writing, leaves the same files.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

from pipelines.config import ConfigError
from pipelines.engines.base import ACTORS, ActorGroup, Engine, OnDone
from pipelines.tasks import Task, heaviest_first, raise_failure, run_task

# A task whose worker process or node died is run again up to this many times.
TASK_RETRIES = 3


class RayActorGroup(ActorGroup):
    def __init__(self, ray, cls: type, args: Sequence[tuple]):
        self._ray = ray
        # Actors hold memory, not CPUs: the tasks that feed them need the CPUs.
        remote_cls = ray.remote(num_cpus=0, max_restarts=0)(cls)
        self.handles = [remote_cls.remote(*a) for a in args]

    def call(self, method: str, args: Sequence[tuple] | None = None) -> list[Any]:
        refs = [getattr(h, method).remote(*(args[i] if args is not None else ())) for i, h in enumerate(self.handles)]
        return self._ray.get(refs)

    def close(self) -> None:
        for h in self.handles:
            self._ray.kill(h)
        self.handles = []


class RayEngine(Engine):
    name = "ray"
    capabilities = frozenset({ACTORS})

    @staticmethod
    def check(cfg) -> None:
        if any(u.startswith("memory://") for u in [cfg.run_root, *cfg.input.paths]):
            raise ConfigError("memory:// lives inside one process and Ray workers cannot see it; "
                              "set engine.kind=local, or use a local path or object store URL")

    def __init__(self, cfg, progress: bool = True):
        import ray

        self._ray = ray
        self._owns_cluster = False
        ec = cfg.engine
        t0 = time.monotonic()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=True, configure_logging=False)
            if ec.address:
                ray.init(address=ec.address, **kwargs)
            else:
                # Workers inherit this env; keep them from each spawning a thread pool per core.
                os.environ.setdefault("OMP_NUM_THREADS", "1")
                ray.init(num_cpus=ec.workers, **kwargs)
                self._owns_cluster = True
        self.startup_seconds = time.monotonic() - t0
        # On a cluster that autoscales, the tasks in flight are what asks it to grow: keep
        # enough of them for engine.workers CPUs even while fewer are up.
        self._min_workers = ec.workers if ec.address else 0
        super().__init__(workers=self._cluster_cpus())
        self._remote = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(run_task)

    def _cluster_cpus(self) -> int:
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def run(self, tasks: list[Task], label: str, on_done: OnDone | None = None) -> None:
        ray = self._ray
        self.workers = self._cluster_cpus()  # nodes come and go
        # Bounded in-flight tasks: enough to keep every CPU busy without flooding the
        # object store with tasks that cannot start yet.
        window = max(2, 2 * max(self.workers, self._min_workers))
        tasks = heaviest_first(tasks)  # the longest tasks start first: a shorter tail
        pending: dict[Any, Task] = {}
        next_i = 0
        try:
            while next_i < len(tasks) or pending:
                while next_i < len(tasks) and len(pending) < window:
                    pending[self._remote.remote(tasks[next_i])] = tasks[next_i]
                    next_i += 1
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    task = pending.pop(ref)
                    ray.get(ref)
                    if on_done:
                        on_done(task)
        except ray.exceptions.RayError as exc:
            self._cancel(pending)
            raise_failure(tasks, exc)
        except BaseException:
            self._cancel(pending)
            raise

    def _cancel(self, pending: dict) -> None:
        for ref in pending:
            self._ray.cancel(ref, force=True)

    def actors(self, cls: type, args: Sequence[tuple]) -> ActorGroup:
        return RayActorGroup(self._ray, cls, args)

    def close(self) -> None:
        if self._owns_cluster and self._ray.is_initialized():
            self._ray.shutdown()
