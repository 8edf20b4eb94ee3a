"""The langid step: label + score per document, then the keep/drop decision.

With fixed thresholds this is one map over the parts. With any threshold set to `auto`
the thresholds depend on the whole data set, so it is three phases: `predict` writes
annotated parts to annotated/, `fit` (one task) derives the thresholds from every part's
(lang, score) columns, and `filter` applies them.

The model file (the bundled lid.176.ftz or `langid.model_path`) is pinned by the plan:
its sha256 is part of the step's version.
"""

from __future__ import annotations

import functools
from collections import Counter

import pyarrow as pa

from pipelines.config import RunConfig
from pipelines.steps.base import Phase, Pins, Step, StepContext, part_name
from pipelines.steps.docmap import map_parts, map_phase, success_payload
from stages import storage
from stages.langid import LanguageIdentifier, bundled_fasttext_model, drop_reasons, fit_thresholds
from stages.records import dropped_table, empty_dropped

MODEL = "langid.model_path"
THRESHOLDS = "thresholds.json"  # the file it names, or the bundled lid.176.ftz


@functools.lru_cache(maxsize=4)
def _identifier(backend: str, model_path: str | None) -> LanguageIdentifier:
    return LanguageIdentifier(backend=backend, model_path=model_path)  # loads lazily, once per worker


def _annotate(docs: pa.Table, backend: str, model_path: str | None) -> tuple[pa.Table, Counter]:
    labels, scores = _identifier(backend, model_path).predict(docs.column("text").to_pylist())
    docs = docs.append_column("lang", pa.array(labels, pa.string())).append_column("lang_score", pa.array(scores, pa.float32()))
    return docs, Counter(f"lang:{l}" for l in labels)


def annotate_part(docs: pa.Table, part: int, backend: str, model_path: str | None):
    """Processor: add `lang` and `lang_score`; drops nothing."""
    docs, counters = _annotate(docs, backend, model_path)
    return docs, empty_dropped(), counters


def decide_part(docs: pa.Table, part: int, keep: list[str] | None, thresholds: dict[str, float] | str, default: float,
                annotate: dict | None = None):
    """Processor: drop documents by language keep-list and per-language thresholds (or the
    URL of the file the fit phase wrote them to), annotating first when `annotate` gives
    the backend and model."""
    if isinstance(thresholds, str):
        thresholds = storage.read_json(thresholds)
    counters: Counter = Counter()
    if annotate is not None:
        docs, counters = _annotate(docs, **annotate)
    labels = docs.column("lang").to_pylist()
    scores = docs.column("lang_score").to_numpy(zero_copy_only=False)
    reasons = drop_reasons(labels, scores, keep, thresholds, default)
    details = [f"lang={l} score={s:.3f}" for l, s in zip(labels, scores)]
    dropped = dropped_table(docs, [r is not None for r in reasons], "langid", reasons, details)
    kept = docs.filter(pa.array([r is None for r in reasons], pa.bool_()))
    return kept, dropped, counters


def fit_task(step_url: str, index: int, spec: dict, default: float) -> dict:
    """The `auto` thresholds from every annotated part's (lang, score) columns, written to
    thresholds.json for the filter phase (and in the record, for the step)."""
    cols = [storage.read_parquet(u, columns=["lang", "lang_score"])
            for u in storage.list_files(storage.join(step_url, "annotated"), ".parquet")]
    both = pa.concat_tables(cols) if cols else pa.table({"lang": pa.array([], pa.string()), "lang_score": pa.array([], pa.float32())})
    thresholds = fit_thresholds(both.column("lang").to_pylist(), both.column("lang_score").to_numpy(zero_copy_only=False),
                                spec, default)
    storage.atomic_write_json(storage.join(step_url, THRESHOLDS), thresholds)
    return {"thresholds": thresholds, "rows": both.num_rows}


class LangIdStep(Step):
    name = "langid"
    code_version = 2  # 2: the (bundled) model's sha256 is part of the version
    scratch = ("annotated", THRESHOLDS)

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.langid.enabled

    def check(self, cfg: RunConfig) -> None:
        from pipelines.config import ConfigError

        c = cfg.langid
        try:
            LanguageIdentifier(backend=c.backend, model_path=c.model_path)
        except (ValueError, OSError, ImportError) as e:
            raise ConfigError(f"langid: {e}") from None

    def dependencies(self, cfg: RunConfig) -> dict[str, str]:
        c = cfg.langid
        if c.backend != "fasttext":
            return {}
        return {MODEL: c.model_path or bundled_fasttext_model()}

    def version_config(self, cfg: RunConfig, pins: Pins) -> dict:
        c = cfg.langid.model_dump()
        if MODEL in pins.files:  # a different model file at the same path must move the version
            c["model_sha256"] = pins.files[MODEL].sha256
        return c

    def run(self, ctx: StepContext) -> dict:
        c = ctx.cfg.langid
        model = {"backend": c.backend, "model_path": c.model_path}
        fixed = {k: float(v) for k, v in c.thresholds.items() if v != "auto"}
        if len(fixed) == len(c.thresholds):
            return success_payload(map_parts(ctx, decide_part, dict(keep=c.keep, thresholds=fixed, default=c.threshold,
                                                                      annotate=model), "langid"))
        # predict writes annotated/part-i for input part i, which the filter reads: all three
        # phases are known now (fit hands the thresholds on in a file).
        urls = [(i, storage.join(ctx.url, "annotated", part_name(i))) for i, _ in ctx.input_docs().part_urls()]
        annotated, (fit,), filtered = ctx.run_phases([
            map_phase(ctx, annotate_part, model, "langid: predict", phase="predict", kind_out="annotated"),
            Phase(fit_task, "fit", [dict(spec=dict(c.thresholds), default=c.threshold)], "langid: thresholds"),
            map_phase(ctx, decide_part, dict(keep=c.keep, thresholds=storage.join(ctx.url, THRESHOLDS), default=c.threshold),
                      "langid: filter", phase="filter", source=urls),
        ])
        thresholds = fit["thresholds"]
        payload = success_payload(filtered)
        payload["counters"] = dict(sorted((Counter(payload["counters"]) + Counter(
            {k: v for r in annotated for k, v in r["counters"].items() if k.startswith("lang:")})).items()))
        payload["thresholds"] = thresholds
        return payload
