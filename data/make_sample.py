"""Build the bundled laptop sample in data/sample/ from the in-repo data slices.

Deterministic (fixed seed). The sample is committed; rerun this only to change it:

    python data/make_sample.py

Contents (see data/LICENSES.md for the licence of each source):
  en.jsonl.zst              English technical prose (Rust books, PostgreSQL manual)
  multilingual.jsonl.zst    Debian Administrator's Handbook sections in 12 locales
  udhr.parquet              UDHR paragraphs in 20 languages (exercises the Parquet reader)
  seeded-dups.jsonl         exact duplicates (case/space/punctuation variants) and
                            near duplicates (1% of words edited) of documents above
  broken.jsonl              one record of every bad-input kind the reader quarantines
  truncated.jsonl.gz        a gzip file cut short
  truncated.jsonl.zst       a zstd file cut short
The expected outcome of each seeded record is listed in data/sample-expected.json, which
the end-to-end test checks.
"""

from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

HERE = Path(__file__).resolve().parent
OUT = HERE / "sample"
SEED = 20261122
LOCALES = ["de-DE", "fr-FR", "es-ES", "it-IT", "pt-BR", "ru-RU", "ja-JP", "zh-CN", "nl-NL", "pl-PL", "tr-TR", "vi-VN"]
UDHR_LANGS = ["en", "fr", "de", "es", "it", "pt", "ru", "ja", "zh", "ar", "hi", "ko", "tr", "pl", "nl", "sv", "fi", "el", "he", "vi"]


def read_jsonl_zst(path: Path) -> list[dict]:
    with open(path, "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read()
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def zst(lines: list[bytes]) -> bytes:
    return zstandard.ZstdCompressor(level=19).compress(b"".join(l + b"\n" for l in lines))


def dumps(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def edit_words(text: str, rate: float, rng: random.Random) -> str:
    """Replace about `rate` of the words by other words of the text (a near duplicate)."""
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, int(len(words) * rate))):
        words[i] = rng.choice(words)
    return " ".join(words)


def main() -> None:
    rng = random.Random(SEED)
    OUT.mkdir(parents=True, exist_ok=True)

    rust = read_jsonl_zst(HERE / "dev" / "rust-doc-books.jsonl.zst")
    pg = read_jsonl_zst(HERE / "dev" / "postgresql-doc-15.jsonl.zst")
    en = [d for d in rng.sample(rust, 220) + rng.sample(pg, 220) if 500 <= len(d["text"]) <= 60_000]
    en_lines = [dumps({"id": d["id"], "license": d["license"], "text": d["text"]}) for d in en]
    (OUT / "en.jsonl.zst").write_bytes(zst(en_lines))

    multi = []
    for loc in LOCALES:
        secs = read_jsonl_zst(HERE / "langid-dev" / "handbook" / f"{loc}.jsonl.zst")
        for s in rng.sample(secs, min(8, len(secs))):
            text = "\n\n".join(s["pars"])
            if len(text) >= 400:
                multi.append({"id": f"{loc}/{s['src']}", "lang": loc, "license": "CC-BY-SA-3.0 OR GPL-2.0+", "text": text})
    (OUT / "multilingual.jsonl.zst").write_bytes(zst([dumps(d) for d in multi]))

    udhr = [d for d in read_jsonl_zst(HERE / "langid-dev" / "udhr.jsonl.zst") if d["lang"] in UDHR_LANGS]
    udhr_rows = []
    for lang in UDHR_LANGS:
        paras = sorted((d for d in udhr if d["lang"] == lang), key=lambda d: d["src"])
        udhr_rows += [{"id": d["src"], "lang": lang, "license": "public domain text", "text": d["text"]} for d in paras[:6]]
    pq.write_table(pa.Table.from_pylist(udhr_rows), OUT / "udhr.parquet", compression="zstd", row_group_size=40)

    expected: dict[str, list[str]] = {"duplicate": [], "near_duplicate": [], "quarantined": []}
    dup_lines = []
    # Exact duplicates after the key normalization: case, whitespace and punctuation changes.
    for j, d in enumerate(rng.sample(en, 6)):
        t = d["text"].upper() if j % 2 else d["text"].replace(" ", "  ").replace(".", " .")
        dup_lines.append(dumps({"id": f"zz-dup-{j}", "license": d["license"], "text": t}))
        expected["duplicate"].append(f"zz-dup-{j}")
    # Near duplicates: 1% of words replaced; each edit breaks up to 5 five-gram shingles, so
    # Jaccard stays near 0.9, above the 0.8 threshold.
    for j, d in enumerate(rng.sample([d for d in en if len(d["text"]) > 5000], 6)):
        dup_lines.append(dumps({"id": f"zz-near-{j}", "license": d["license"], "text": edit_words(d["text"], 0.01, rng)}))
        expected["near_duplicate"].append(f"zz-near-{j}")
    (OUT / "seeded-dups.jsonl").write_bytes(b"".join(l + b"\n" for l in dup_lines))

    good = en[0]["text"][:300]
    broken = [
        (b"\xff\xfe not utf-8 \xc3\x28" + b'{"text": "bad bytes"}', "invalid_utf8"),
        (b'{"text": "unterminated', "bad_json"),
        (b'["a", "json", "array"]', "bad_json"),
        (dumps({"id": "b-missing", "body": good}), "missing_text"),
        (dumps({"id": "b-nonstring", "text": 12345}), "non_string_text"),
        (dumps({"id": "b-empty", "text": "   \n\t "}), "empty_text"),
        (dumps({"id": "b-long", "text": (good + " ") * 400}), "too_long"),
        (dumps({"id": "b-nul", "text": "before\x00after " + good}), "nul_byte"),
        (b'{"id": "b-surrogate", "text": "lone \\ud800 surrogate"}', "invalid_utf8"),
        (b"\x00\x00\x00", "nul_byte"),
    ]
    lines = [dumps({"id": "b-ok-1", "text": "A good record among bad ones. " + good})]
    lines += [raw for raw, _ in broken]
    lines += [b"", dumps({"id": "b-ok-2", "text": "Another good record. " + en[1]["text"][:300]})]
    (OUT / "broken.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    expected["quarantined"] = sorted(r for _, r in broken)

    # Truncated compressed files: complete lines survive, the rest is one truncated_file record.
    tail_docs = [dumps({"id": f"t-{i}", "text": f"Truncation test document {i}. " + en[2 + i]["text"][:400]}) for i in range(30)]
    body = b"".join(l + b"\n" for l in tail_docs)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(body)
    (OUT / "truncated.jsonl.gz").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    z = zstandard.ZstdCompressor(level=3).compress(body)
    (OUT / "truncated.jsonl.zst").write_bytes(z[: len(z) * 2 // 3])
    expected["quarantined"] += ["truncated_file", "truncated_file"]

    (HERE / "sample-expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    print(f"en {len(en)} docs, multilingual {len(multi)}, udhr {len(udhr_rows)}, seeded dups {len(dup_lines)}, broken {len(broken)}")


if __name__ == "__main__":
    main()
