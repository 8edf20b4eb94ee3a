"""The stage plan: which steps run, in what order, reading whose output.

Document steps form a chain; a disabled step is left out and its successor reads from
the step before it. The same plan drives the CLI runner and the Airflow DAG (one task
per step), so there is one definition of the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines import io
from pipelines.config import RunConfig
from pipelines.steps.base import SUCCESS, Step
from pipelines.steps.dedup_exact import DedupExactStep
from pipelines.steps.dedup_near import DedupNearStep
from pipelines.steps.encode import EncodeStep
from pipelines.steps.langid import LangIdStep
from pipelines.steps.normalize import NormalizeStep
from pipelines.steps.read import ReadStep
from pipelines.steps.train_bpe import TrainBpeStep
from pipelines.steps.write import WriteStep
from pipelines.steps.write_shards import WriteShardsStep

# Document steps in order; each consumes the documents of the previous enabled one.
DOC_STEPS: list[type[Step]] = [ReadStep, NormalizeStep, LangIdStep, DedupExactStep, DedupNearStep, WriteStep]


def build_plan(cfg: RunConfig) -> list[Step]:
    steps: list[Step] = []
    for cls in DOC_STEPS:
        step = cls() if cls is ReadStep else cls((steps[-1].name,))
        if step.enabled(cfg):
            steps.append(step)
    docs = steps[-1].name  # the cleaned documents
    train = TrainBpeStep((docs,))
    if train.enabled(cfg):
        steps.append(train)
    encode = EncodeStep((docs, train.name) if train.enabled(cfg) else (docs,))
    if encode.enabled(cfg):
        steps += [encode, WriteShardsStep((encode.name,))]
    return steps


@dataclass
class PlannedStep:
    step: Step
    version: str
    url: str

    @property
    def done(self) -> bool:
        return io.exists(io.join(self.url, SUCCESS))


def resolve(cfg: RunConfig, steps: list[Step] | None = None) -> list[PlannedStep]:
    """Versions and output URLs of every step, computed before any work."""
    steps = steps if steps is not None else build_plan(cfg)
    versions: dict[str, str] = {}
    out = []
    for s in steps:
        v = s.version(cfg, {n: versions[n] for n in s.inputs})
        versions[s.name] = v
        out.append(PlannedStep(s, v, io.join(cfg.run_root, s.name, v)))
    return out
