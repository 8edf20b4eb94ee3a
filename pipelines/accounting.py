"""The run summary and the accounting invariant.

  records read = kept + dropped (per reason) + quarantined (per reason)

Checked twice: from the steps' counters, and from the row counts of the files on disk
(Parquet footers), so a lost or doubled part cannot hide behind a correct counter.
"""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq

from pipelines import io
from pipelines.steps.base import FinishedStep


def _file_rows(step: FinishedStep, key: str) -> int:
    total = 0
    for entry in step.record.get(key, []):
        fs, path = io.filesystem(io.join(step.url, entry["path"]))
        with fs.open(path, "rb") as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        if rows != entry["rows"]:
            raise AssertionError(f"{step.name}: {entry['path']} holds {rows} rows, its record says {entry['rows']}")
        total += rows
    return total


def summarize(finished: list[FinishedStep], doc_steps: list[str]) -> dict:
    by_name = {f.name: f for f in finished}
    read = by_name["read"]
    rc = read.record["counters"]
    records = int(rc.get("records", 0))
    quarantined = {k.split(":", 1)[1]: v for k, v in rc.items() if k.startswith("quarantined:")}
    dropped: Counter = Counter()
    dropped_files = 0
    for name in doc_steps[1:]:
        c = by_name[name].record["counters"]
        for k, v in c.items():
            if k.startswith("dropped:"):
                dropped[k.split(":", 1)[1]] += v
        dropped_files += _file_rows(by_name[name], "dropped")
    last = by_name[doc_steps[-1]]
    kept = sum(p["rows"] for p in last.parts)
    kept_files = _file_rows(last, "parts")
    quarantined_files = _file_rows(read, "quarantine")
    by_counters = kept + sum(dropped.values()) + sum(quarantined.values())
    by_files = kept_files + dropped_files + quarantined_files
    holds = records == by_counters == by_files
    shards = None
    if "write_shards" in by_name:
        ws = by_name["write_shards"]
        manifest = io.read_json(io.join(ws.url, ws.record["manifest"]))
        totals = manifest["totals"]
        per_stream = {s: t["documents"] for s, t in totals.items()}
        holds = holds and all(n == kept for n in per_stream.values())
        shards = {"manifest": io.join(ws.url, ws.record["manifest"]), "totals": totals}
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
            "documents in each shard stream": per_stream if shards else None,
        },
        "shards": shards,
        "output": io.join(last.url, "docs"),
        "steps": {
            f.name: {"version": f.version, "url": f.url, "seconds": f.record.get("seconds"), "counters": f.record.get("counters", {})}
            for f in finished
        },
    }


def format_table(summary: dict) -> str:
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
    lines.append(f"  output: {summary['output']}")
    if summary.get("shards"):
        for stream, t in summary["shards"]["totals"].items():
            lines.append(f"  shards ({stream}): {t['shards']} shards, {t['documents']:,} documents, {t['tokens']:,} tokens")
        st = summary["shards"].get("stochastok")
        if st:
            lines.append(f"  stochastok: p = {st['p']}, {st['attempts']:,} attempts, {st['replacements']:,} replacements "
                         f"over {st['input_tokens']:,} tokens: realized rate {st['realized_rate']:.4f}")
        lines.append(f"  manifest: {summary['shards']['manifest']}")
    return "\n".join(lines)
