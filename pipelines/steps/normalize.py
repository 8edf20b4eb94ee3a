"""The normalize step: stages.normalize over every part."""

from __future__ import annotations

from functools import partial

from pipelines.config import RunConfig
from pipelines.steps.base import StepContext
from pipelines.steps.docmap import DocMapStep, PartAgnostic
from stages.normalize import NormalizeOptions, normalize_table


def options(cfg: RunConfig) -> NormalizeOptions:
    return NormalizeOptions(**cfg.normalize.model_dump(exclude={"enabled"}))


class NormalizeStep(DocMapStep):
    name = "normalize"

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.normalize.enabled

    def version_config(self, cfg: RunConfig) -> dict:
        return cfg.normalize.model_dump()

    def processor(self, ctx: StepContext):
        return PartAgnostic(partial(normalize_table, opts=options(ctx.cfg)))
