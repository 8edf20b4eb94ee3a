"""The accounting step, the plan's last: the run summary and the accounting invariant.

  records read = kept + dropped (per reason) + quarantined (per reason)

Checked twice: from the steps' counters, and from the row counts of the files on disk
(Parquet footers), so a lost or doubled part cannot hide behind a correct counter; and
every shard stream must hold exactly the kept documents. It writes `summary.json` in its
folder and at the run root (the last run's summary), then fails with AccountingError
(exit 3) when the invariant does not hold, so a scheduler sees a failed task.

Everything in the summary but its `execution` section (engines, seconds, Beam pipelines)
is the same on every engine and worker count; paths in it are relative to the run root.
"""

from __future__ import annotations

from collections import Counter

from pipelines.config import RunConfig
from pipelines.steps.base import FinishedStep, Pins, Step, StepContext, read_finished
from stages import storage

SUMMARY = "summary.json"


class AccountingError(RuntimeError):
    """The run finished but documents were lost or doubled."""


def _file_rows(step: FinishedStep, key: str) -> int:
    total = 0
    for entry in step.record.get(key, []):
        rows = storage.parquet_metadata(storage.join(step.url, entry["path"])).num_rows
        if rows != entry["rows"]:
            raise AssertionError(f"{step.name}: {entry['path']} holds {rows} rows, its record says {entry['rows']}")
        total += rows
    return total


def summarize(by_name: dict[str, FinishedStep], doc_steps: list[str], run_root: str) -> dict:
    def rel(url: str) -> str:
        return storage.relative_to(url, run_root)

    read = by_name["read"]
    rc = read.record["counters"]
    records = int(rc.get("records", 0))
    quarantined = {k.split(":", 1)[1]: v for k, v in rc.items() if k.startswith("quarantined:")}
    dropped: Counter = Counter()
    dropped_files = 0
    for name in doc_steps[1:]:
        for k, v in by_name[name].record["counters"].items():
            if k.startswith("dropped:"):
                dropped[k.split(":", 1)[1]] += v
        dropped_files += _file_rows(by_name[name], "dropped")
    last = by_name[doc_steps[-1]]
    kept = last.rows
    kept_files = _file_rows(last, "parts")
    quarantined_files = _file_rows(read, "quarantine")
    by_counters = kept + sum(dropped.values()) + sum(quarantined.values())
    by_files = kept_files + dropped_files + quarantined_files
    holds = records == by_counters == by_files
    shards = per_stream = None
    if "write_shards" in by_name:
        ws = by_name["write_shards"]
        manifest = storage.read_json(storage.join(ws.url, ws.record["manifest"]))
        totals = manifest["totals"]
        per_stream = {s: t["documents"] for s, t in totals.items()}
        holds = holds and all(n == kept for n in per_stream.values())
        shards = {"manifest": rel(storage.join(ws.url, ws.record["manifest"])), "totals": totals}
        ec = by_name["encode"].record["counters"] if "encode" in by_name else {}
        if ec.get("stochastok_input_tokens"):
            # realized rate: replacements per token of the plain documents (framing excluded);
            # below p by about the share of picks that land on tokens without a split
            shards["stochastok"] = {
                "p": manifest["settings"].get("stochastok", {}).get("p"),
                "attempts": ec["stochastok_attempts"],
                "replacements": ec["stochastok_expanded"],
                "input_tokens": ec["stochastok_input_tokens"],
                "realized_rate": round(ec["stochastok_expanded"] / ec["stochastok_input_tokens"], 6),
            }
    return {
        "records_read": records,
        "bytes_read": int(rc.get("bytes", 0)),
        "kept": kept,
        "bytes_kept": int(last.record["counters"].get("bytes", 0)),
        "dropped": dict(sorted(dropped.items())),
        "quarantined": dict(sorted(quarantined.items())),
        "invariant": {
            "holds": holds,
            "read": records,
            "kept+dropped+quarantined (counters)": by_counters,
            "kept+dropped+quarantined (files)": by_files,
            "documents in each shard stream": per_stream,
        },
        "shards": shards,
        "output": rel(storage.join(last.url, "docs")),
        "steps": {f.name: {"version": f.version, "path": rel(f.url), "counters": f.record.get("counters", {})}
                  for f in by_name.values()},
        "execution": {f.name: {"seconds": f.record.get("seconds"), **f.record.get("execution", {})} for f in by_name.values()},
    }


def check_task(step_url: str, index: int, run_root: str, steps: dict[str, str], doc_steps: list[str]) -> dict:
    by_name = {name: read_finished(url, name) for name, url in steps.items()}
    summary = summarize(by_name, doc_steps, run_root)
    storage.atomic_write_json(storage.join(step_url, SUMMARY), summary)
    storage.atomic_write_json(storage.join(run_root, SUMMARY), summary)
    return {"holds": summary["invariant"]["holds"], "invariant": summary["invariant"]}


class AccountingStep(Step):
    name = "accounting"

    def __init__(self, inputs: tuple[str, ...], doc_steps: tuple[str, ...]):
        super().__init__(inputs)
        self.doc_steps = doc_steps

    def version_config(self, cfg: RunConfig, pins: Pins) -> dict:
        return {"doc_steps": list(self.doc_steps)}  # the rest is in the inputs' versions

    def run(self, ctx: StepContext) -> dict:
        (rec,) = ctx.run_phase(check_task, "check", [dict(run_root=ctx.run_root, doc_steps=list(self.doc_steps),
                                                          steps={n: f.url for n, f in ctx.inputs.items()})],
                               "accounting: check")
        if not rec["holds"]:
            inv = rec["invariant"]
            raise AccountingError(f"accounting invariant violated: read {inv['read']:,}, kept+dropped+quarantined "
                                  f"{inv['kept+dropped+quarantined (counters)']:,} by counters and "
                                  f"{inv['kept+dropped+quarantined (files)']:,} by files, shard streams "
                                  f"{inv['documents in each shard stream']}; see {storage.join(ctx.run_root, SUMMARY)}")
        return {"summary": SUMMARY, "holds": True, "counters": {"records_read": rec["invariant"]["read"]}}


def format_table(summary: dict, run_root: str = "") -> str:
    """The summary as the text table the CLI prints (paths under `run_root`)."""
    def path(rel: str) -> str:
        return storage.join(run_root, rel) if run_root else rel

    rows = [("read", summary["records_read"])]
    rows += [(f"dropped: {k}", v) for k, v in summary["dropped"].items()]
    rows += [(f"quarantined: {k}", v) for k, v in summary["quarantined"].items()]
    rows += [("kept", summary["kept"])]
    w = max(len(r[0]) for r in rows)
    lines = [f"  {name:<{w}}  {n:>12,}" for name, n in rows]
    inv = summary["invariant"]
    verdict = "holds" if inv["holds"] else "VIOLATED"
    lines.append(f"  accounting: read {inv['read']:,} = kept + dropped + quarantined "
                 f"{inv['kept+dropped+quarantined (files)']:,} -> {verdict}")
    lines.append(f"  bytes read {summary['bytes_read']:,}, bytes kept {summary['bytes_kept']:,}")
    lines.append(f"  output: {path(summary['output'])}")
    if summary.get("shards"):
        for stream, t in summary["shards"]["totals"].items():
            lines.append(f"  shards ({stream}): {t['shards']} shards, {t['documents']:,} documents, {t['tokens']:,} tokens")
        st = summary["shards"].get("stochastok")
        if st:
            lines.append(f"  stochastok: p = {st['p']}, {st['attempts']:,} attempts, {st['replacements']:,} replacements "
                         f"over {st['input_tokens']:,} tokens: realized rate {st['realized_rate']:.4f}")
        lines.append(f"  manifest: {path(summary['shards']['manifest'])}")
    return "\n".join(lines)
