"""The langid step: label + score per document, then the keep/drop decision.

With fixed thresholds this is one map over the parts. With any threshold set to `auto`
the thresholds depend on the whole data set, so it is two phases: `predict` writes
annotated parts to annotated/, the thresholds are fitted from every part's (lang, score)
columns, and `filter` applies them.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from pipelines import io
from pipelines.config import RunConfig
from pipelines.steps.base import Step, StepContext
from pipelines.steps.docmap import map_parts, success_payload
from stages.langid import LanguageIdentifier, drop_reasons, fit_thresholds
from stages.records import dropped_table, empty_dropped


class Annotate:
    """Processor: add `lang` and `lang_score`; drops nothing."""

    def __init__(self, identifier: LanguageIdentifier):
        self.identifier = identifier

    def __call__(self, docs: pa.Table, part: int = 0):
        labels, scores = self.identifier.predict(docs.column("text").to_pylist())
        docs = docs.append_column("lang", pa.array(labels, pa.string())).append_column("lang_score", pa.array(scores, pa.float32()))
        return docs, empty_dropped(), Counter(f"lang:{l}" for l in labels)


class Decide:
    """Processor: drop documents by language keep-list and per-language thresholds."""

    def __init__(self, keep, thresholds: dict[str, float], default: float, annotate: Annotate | None = None):
        self.keep, self.thresholds, self.default, self.annotate = keep, thresholds, default, annotate

    def __call__(self, docs: pa.Table, part: int = 0):
        counters: Counter = Counter()
        if self.annotate is not None:
            docs, _, counters = self.annotate(docs, part)
        labels = docs.column("lang").to_pylist()
        scores = docs.column("lang_score").to_numpy(zero_copy_only=False)
        reasons = drop_reasons(labels, scores, self.keep, self.thresholds, self.default)
        details = [f"lang={l} score={s:.3f}" for l, s in zip(labels, scores)]
        dropped = dropped_table(docs, [r is not None for r in reasons], "langid", reasons, details)
        kept = docs.filter(pa.array([r is None for r in reasons], pa.bool_()))
        return kept, dropped, counters


class LangIdStep(Step):
    name = "langid"

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.langid.enabled

    def version_config(self, cfg: RunConfig) -> dict:
        c = cfg.langid.model_dump()
        if c["model_path"]:  # a different model file at the same path must move the version
            c["model_sha256"] = io.sha256_of(c["model_path"])
        return c

    def run(self, ctx: StepContext) -> dict:
        c = ctx.cfg.langid
        identifier = LanguageIdentifier(backend=c.backend, model_path=c.model_path)
        fixed = {k: float(v) for k, v in c.thresholds.items() if v != "auto"}
        if len(fixed) == len(c.thresholds):
            return success_payload(map_parts(ctx, Decide(c.keep, fixed, c.threshold, Annotate(identifier)), "langid"))
        annotated = map_parts(ctx, Annotate(identifier), "langid: predict", phase="predict", kind_out="annotated")
        urls = [(e["part"], io.join(ctx.url, e["path"])) for r in annotated for e in r["parts"]]
        cols = [io.read_parquet(u, columns=["lang", "lang_score"]) for _, u in urls]
        both = pa.concat_tables(cols) if cols else pa.table({"lang": pa.array([], pa.string()), "lang_score": pa.array([], pa.float32())})
        thresholds = fit_thresholds(both.column("lang").to_pylist(), both.column("lang_score").to_numpy(zero_copy_only=False),
                                    dict(c.thresholds), c.threshold)
        payload = success_payload(map_parts(ctx, Decide(c.keep, thresholds, c.threshold), "langid: filter", phase="filter", source=urls))
        payload["counters"] = dict(Counter(payload["counters"]) + Counter({k: v for r in annotated for k, v in r["counters"].items() if k.startswith("lang:")}))
        payload["thresholds"] = thresholds
        return payload
