"""Engine adapters: the only place that knows how tasks are run (Ray, Beam, in-process).

Each adapter module is imported only when its engine is chosen, so a run on one engine
never imports another's framework.
"""

from __future__ import annotations

import importlib

from pipelines.config import ConfigError, EngineConfig
from pipelines.engines.base import ACTORS, ActorGroup, Engine

__all__ = ["ACTORS", "ActorGroup", "Engine", "LazyEngine", "check_engine", "engine_class", "engines_with", "make_engine"]

# kind -> (adapter class, the engine.* settings only that engine reads)
ENGINES = {
    "local": ("pipelines.engines.local_engine:LocalEngine", ()),
    "ray": ("pipelines.engines.ray_engine:RayEngine", ("address",)),
    "beam": ("pipelines.engines.beam_engine:BeamEngine", ("beam",)),
}


def engines_with(capability: str) -> list[str]:
    """The engine kinds that offer a capability (imports every adapter: for messages)."""
    return [k for k in ENGINES if capability in engine_class(k).capabilities]


def engine_class(kind: str) -> type[Engine]:
    if kind not in ENGINES:
        raise ConfigError(f"engine.kind {kind!r}; allowed: {', '.join(ENGINES)}")
    module, _, name = ENGINES[kind][0].partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise ConfigError(f"engine.kind {kind}: its framework is not installed ({e})") from None


def check_engine(cfg) -> None:
    """The chosen engine's own checks, and no settings meant for another engine."""
    cls = engine_class(cfg.engine.kind)
    defaults = EngineConfig()
    mine = set(ENGINES[cfg.engine.kind][1])
    for key in EngineConfig.model_fields:
        if key in ("kind", "workers") or key in mine:
            continue
        if getattr(cfg.engine, key) != getattr(defaults, key):
            owner = [k for k, (_, settings) in ENGINES.items() if key in settings]
            raise ConfigError(f"engine.{key} is a setting of engine.kind {' or '.join(owner) or '?'}, "
                              f"not {cfg.engine.kind}; remove it or change engine.kind")
    cls.check(cfg)


class LazyEngine(Engine):
    """The configured engine, started on first use: a run that finds its steps done, or is
    refused, starts no Ray cluster and no Beam pipeline."""

    def __init__(self, cfg, progress: bool = True):
        cls = engine_class(cfg.engine.kind)
        super().__init__(workers=cfg.engine.workers)
        self.name, self.capabilities = cls.name, cls.capabilities
        self._cls, self._cfg, self._progress = cls, cfg, progress
        self._engine: Engine | None = None

    def started(self) -> Engine:
        if self._engine is None:
            self._engine = self._cls(self._cfg, self._progress)
        self.workers = self._engine.workers
        return self._engine

    def run(self, tasks, label, on_done=None) -> None:
        self.started().run(tasks, label, on_done)
        self.workers = self._engine.workers

    def run_phases(self, phases, on_done=None) -> None:
        self.started().run_phases(phases, on_done)
        self.workers = self._engine.workers

    def actors(self, cls, args):
        return self.started().actors(cls, args)

    def stats(self) -> dict:
        return self._engine.stats() if self._engine is not None else {}

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def make_engine(cfg, progress: bool = True) -> Engine:
    """The configured engine (started when first used)."""
    return LazyEngine(cfg, progress)
