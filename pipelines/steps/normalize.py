"""The normalize step: stages.normalize over every part."""

from __future__ import annotations

from pipelines.config import RunConfig
from pipelines.steps.base import Pins, StepContext
from pipelines.steps.docmap import DocMapStep
from stages.normalize import NormalizeOptions, normalize_table


def normalize_part(docs, part: int, **options):
    return normalize_table(docs, NormalizeOptions(**options))


class NormalizeStep(DocMapStep):
    name = "normalize"

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.normalize.enabled

    def version_config(self, cfg: RunConfig, pins: Pins) -> dict:
        return cfg.normalize.model_dump()

    def processor(self, ctx: StepContext):
        return normalize_part, ctx.cfg.normalize.model_dump(exclude={"enabled"})
