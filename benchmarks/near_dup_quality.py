"""Near-duplicate quality and speed: precision/recall against exact Jaccard, signature throughput.

    python benchmarks/near_dup_quality.py              # print tables, update RESULTS.md
    python benchmarks/near_dup_quality.py --no-write   # print only
    python benchmarks/near_dup_quality.py --controlled 700   # the test's subset, faster

The labelled set is the one tests/test_dedup_near_quality.py builds (its docstring says
how), here with every controlled-edit base (about 1,730) instead of the test's 700. A pair
is a predicted duplicate when both documents land in the same component of
`stages.dedup_near.near_duplicates_local`; truth is exact Jaccard >= 0.8 over the same
shingles. Throughput: `signatures` on the two dev corpora (Rust books + PostgreSQL docs),
one process, one core.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):  # run as a script from anywhere, or loaded by path
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from stages.dedup_near import NearDupParams, near_duplicates_local, signatures  # noqa: E402
from results_md import write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Near-duplicate quality (issue 2)"
COMMAND = "python benchmarks/near_dup_quality.py"


def _quality_module():
    # the test module owns the labelled set and the oracle; benchmarks/ and tests/ are not
    # packages, so load it by path
    path = ROOT / "tests" / "test_dedup_near_quality.py"
    spec = importlib.util.spec_from_file_location("test_dedup_near_quality", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


CONFIGS = [  # (label, params); bands x rows derived unless given
    ("1024, verify (default)", NearDupParams()),
    ("512, verify", NearDupParams(num_perm=512)),
    ("256, verify", NearDupParams(num_perm=256)),
    ("128, verify", NearDupParams(num_perm=128)),
    # datasketch's balanced optimum for 256 values: LSH then misses pairs verification would keep
    ("1024, verify, balanced 17x15 bands", NearDupParams(bands=17, rows=15)),
    ("1024, no verify", NearDupParams(verify=False)),
    ("256, no verify", NearDupParams(num_perm=256, verify=False)),
    ("128, no verify", NearDupParams(num_perm=128, verify=False)),
    ("112 = 14x8, no verify", NearDupParams(num_perm=112, bands=14, rows=8, verify=False)),
]


def _texts() -> list[str]:
    out = []
    for name in ("rust-doc-books", "postgresql-doc-15"):
        with open(ROOT / "data" / "dev" / f"{name}.jsonl.zst", "rb") as f:
            raw = zstandard.ZstdDecompressor().stream_reader(f).read().decode("utf-8")
        out += [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
    return out


def throughput(num_perms=(128, 256, 512, 1024), repeats: int = 2) -> list[dict]:
    """Best of `repeats` timings of `signatures`: full signatures, and the map phase's
    leading bands * rows values of the default params."""
    texts = _texts()
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    cases = [(f"{k} (full)", NearDupParams(num_perm=k), None) for k in num_perms]
    d = NearDupParams()
    cases.append((f"{d.bands * d.rows} (map phase of the default: {d.bands}x{d.rows})", d, d.bands * d.rows))
    rows = []
    for label, p, values in cases:
        best = min(_timed(lambda p=p, v=values: signatures(texts, p, values=v)) for _ in range(repeats))
        rows.append({"values": label, "docs": len(texts), "mb": mb, "secs": best,
                     "docs_per_s": len(texts) / best, "mb_per_s": mb / best})
    return rows


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(controlled: int | None) -> str:
    q = _quality_module()
    t0 = time.perf_counter()
    ls = q.build_labelled_set(controlled)
    build_s = time.perf_counter() - t0
    import numpy as np

    j = np.array([p[3] for p in ls.pairs])
    near = np.abs(j - q.THRESHOLD) <= q.BAND
    kinds = {k: sum(p[2] == k for p in ls.pairs) for k in ("controlled", "version", "locale")}
    head = (f"Labelled set: {len(ls.ids)} docs, {len(ls.pairs)} pairs ({kinds['controlled']} controlled edits, "
            f"{kinds['version']} version, {kinds['locale']} locale); {int((j >= q.THRESHOLD).sum())} duplicates "
            f"(J >= {q.THRESHOLD}); {int(near.sum())} pairs ({near.mean():.0%}) within +-{q.BAND} of {q.THRESHOLD} "
            f"({int((near & (j >= q.THRESHOLD)).sum())} above, {int((near & (j < q.THRESHOLD)).sum())} below). "
            f"Built in {build_s:.0f} s.")
    print(head, flush=True)
    table = ["| params | b x r | P all | R all | P outside band | R outside band | P band | R band | fp | fn | P(cand) at J=0.75 / 0.8 / 0.85 | cross-family comps (pairs < 0.8) | secs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    curves = []
    for label, p in CONFIGS:
        t0 = time.perf_counter()
        _, cluster = near_duplicates_local(ls.ids, ls.texts, p, num_parts=2, num_buckets=4, cc_partitions=3)
        secs = time.perf_counter() - t0
        r = q.evaluate(ls, cluster)
        print(q.format_report(r, f"{label}: {p} ({secs:.1f}s)"), flush=True)
        a, o, b = r["all"], r["outside_band"], r["band"]
        cf = r["cross_family"]
        cand = " / ".join(f"{p.candidate_probability(x):.2f}" for x in (0.75, 0.8, 0.85))
        table.append(f"| {label} | {p.bands}x{p.rows} | {a['precision']:.4f} | {a['recall']:.4f} | {o['precision']:.4f} | "
                     f"{o['recall']:.4f} | {b['precision']:.4f} | {b['recall']:.4f} | {a['fp']} | {a['fn']} | {cand} | "
                     f"{cf.get('components', 0)} ({cf.get('pairs_below_threshold', 0)}) | {secs:.1f} |")
        curves.append(f"| {label} | " + " | ".join(f"{rate:.2f}" for _, _, _, rate in r["curve"]) + " |")
    bins = [f"[{lo:.2f}, {hi:.2f})" for lo, hi, _, _ in q.evaluate(ls, list(ls.ids))["curve"]]
    counts = [str(n) for _, _, n, _ in q.evaluate(ls, list(ls.ids))["curve"]]
    curve_table = ["| params | " + " | ".join(bins) + " |", "|---|" + "---|" * len(bins),
                   "| (pairs) | " + " | ".join(counts) + " |"] + curves

    tp = throughput()
    print(tp, flush=True)
    tp_table = ["| values computed | docs | MB | s | docs/s | MB/s |", "|---|---|---|---|---|---|"] + [
        f"| {r['values']} | {r['docs']} | {r['mb']:.1f} | {r['secs']:.2f} | {r['docs_per_s']:,.0f} | {r['mb_per_s']:.1f} |" for r in tp]

    cmd = COMMAND + (f" --controlled {controlled}" if controlled is not None else "")
    return "\n".join([
        f"Command: `{cmd}` (one process on a shared 2-core machine; timings indicative only).",
        "Set and oracle: tests/test_dedup_near_quality.py (docstring). Truth: exact Jaccard >= 0.8 over the "
        "stage's shingles (case-folded words, 5-grams), Python sets. Predicted: same component. "
        "\"Band\" = pairs with J within +-0.05 of 0.8. Cross-family components: components joining documents "
        "of different origins (e.g. the Rust book's 'moved' notices, which are near-duplicates of each other); "
        "their pairs are not in the P/R figures, the count of their pairs below 0.8 is shown.",
        "", head, "", *table, "",
        "Share of pairs predicted duplicate, by exact Jaccard (the measured S-curve of the whole stage):", "",
        *curve_table, "",
        "Signature throughput (`signatures`: tokenize + shingle hashes + MinHash, one core):", "", *tp_table, "",
        "Defaults and why: docs/dedup.md.",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--controlled", type=int, default=None, help="use this many controlled-edit pairs (default: all)")
    args = ap.parse_args(argv)
    body = run(args.controlled)
    print(body)
    if not args.no_write:
        write_section(SECTION, body)
        print(f"updated {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
