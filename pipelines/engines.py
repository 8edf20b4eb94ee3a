"""Engine adapters: the only place that knows how tasks are run.

An engine offers one operation, `map(fn, items)`: run `fn(item)` for every item, in
parallel where it can, and return the results in item order. Steps are written against
that alone, so the choice of engine never changes what a step computes — only where.
"""

from __future__ import annotations

import os
import sys
import time
from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

from pipelines.config import EngineConfig


class Progress:
    """A progress bar on a terminal, a periodic plain line elsewhere (CI logs, files)."""

    def __init__(self, desc: str, total: int, enabled: bool = True, unit: str = "task", interval: float = 10.0):
        self.desc, self.total, self.enabled, self.unit = desc, total, enabled, unit
        self.done = 0
        self.docs = 0
        self.start = time.monotonic()
        self._last = self.start
        self._interval = interval
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True)

    def update(self, n: int = 1, docs: int = 0) -> None:
        self.done += n
        self.docs += docs
        if not self.enabled:
            return
        rate = self.docs / max(time.monotonic() - self.start, 1e-9)
        if self._bar is not None:
            self._bar.update(n)
            if self.docs:
                self._bar.set_postfix_str(f"{rate:,.0f} docs/s", refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self._interval or self.done == self.total:
            self._last = now
            elapsed = now - self.start
            eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
            print(f"[{self.desc}] {self.done}/{self.total} {self.unit}s, {self.docs:,} docs, "
                  f"{rate:,.0f} docs/s, elapsed {elapsed:,.1f}s, ETA {eta:,.1f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _docs_of(result: Any) -> int:
    if isinstance(result, dict):
        return int(result.get("rows_in", result.get("rows", 0)) or 0)
    return 0


class Engine(ABC):
    name = "engine"
    workers = 1

    def __init__(self, progress: bool = True):
        self.progress = progress

    @abstractmethod
    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str = "tasks") -> list[Any]:
        """fn(item) for each item; results in item order. Raises the first task error."""

    def close(self) -> None:
        pass

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalEngine(Engine):
    """Runs tasks one after another in this process: for debugging and tiny inputs."""

    name = "local"

    def map(self, fn, items, desc="tasks"):
        bar = Progress(desc, len(items), self.progress)
        out = []
        try:
            for item in items:
                r = fn(item)
                out.append(r)
                bar.update(1, _docs_of(r))
        finally:
            bar.close()
        return out


class RayEngine(Engine):
    """Runs tasks as Ray tasks, one CPU each, on an embedded local cluster or a given one."""

    name = "ray"

    def __init__(self, cfg: EngineConfig, progress: bool = True):
        super().__init__(progress)
        import ray

        self._ray = ray
        self._owns_cluster = False
        t0 = time.monotonic()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=True, configure_logging=False)
            if cfg.address:
                ray.init(address=cfg.address, **kwargs)
            else:
                # Workers inherit this env; keep them from each spawning a thread pool per core.
                os.environ.setdefault("OMP_NUM_THREADS", "1")
                ray.init(num_cpus=cfg.workers, **kwargs)
                self._owns_cluster = True
        self.startup_seconds = time.monotonic() - t0
        self.workers = int(ray.cluster_resources().get("CPU", cfg.workers))

        @ray.remote(num_cpus=1, max_retries=2)
        def _call(fn, item):
            return fn(item)

        self._call = _call

    def map(self, fn, items, desc="tasks"):
        ray = self._ray
        bar = Progress(desc, len(items), self.progress)
        fn_ref = ray.put(fn)
        # Bounded in-flight tasks: enough to keep every CPU busy without flooding the
        # object store with the arguments of tasks that cannot start yet.
        window = max(2, 2 * self.workers)
        pending: dict[Any, int] = {}
        results: list[Any] = [None] * len(items)
        next_i = 0
        try:
            while next_i < len(items) or pending:
                while next_i < len(items) and len(pending) < window:
                    pending[self._call.remote(fn_ref, items[next_i])] = next_i
                    next_i += 1
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    i = pending.pop(ref)
                    results[i] = ray.get(ref)
                    bar.update(1, _docs_of(results[i]))
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()
        return results

    def close(self):
        if self._owns_cluster and self._ray.is_initialized():
            self._ray.shutdown()


def make_engine(cfg: EngineConfig, progress: bool = True) -> Engine:
    if cfg.kind == "local":
        return LocalEngine(progress)
    if cfg.kind == "ray":
        return RayEngine(cfg, progress)
    raise ValueError(f"engine.kind={cfg.kind!r}; allowed: ray, local")
