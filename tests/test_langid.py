"""Language-ID stage: API units and accuracy on the in-repo dev sets (udhr, handbook).

The accuracy tests print per-language tables (see them with `pytest -s`); the same tables
go to benchmarks/RESULTS.md through `python benchmarks/langid_accuracy.py`.
"""

from __future__ import annotations

import importlib.util
import logging
import pickle
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from stages.langid import (
    AUTO_CEIL,
    AUTO_FLOOR,
    BACKENDS,
    DEFAULT_MAX_CHARS,
    MIN_DOCS_FOR_AUTO,
    UNKNOWN,
    LanguageIdentifier,
    auto_threshold,
    bundled_fasttext_model,
    drop_reasons,
    fasttext_model_labels,
    fit_thresholds,
    normalize_cld2_code,
    normalize_fasttext_label,
    supported_languages,
)

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    # The benchmark owns the loaders, the locale mappings and `evaluate`; reuse them so the
    # test and RESULTS.md measure the same thing. benchmarks/ is not a package: load by path.
    path = ROOT / "benchmarks" / "langid_accuracy.py"
    spec = importlib.util.spec_from_file_location("langid_accuracy", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


bench = _load_bench()

FR = "Bonjour à tous, nous allons parler aujourd'hui de la façon de configurer le réseau."
EN = "The quick brown fox jumps over the lazy dog while the farmer watches from the barn."
DE = "Die Konfiguration des Netzwerks wird in diesem Kapitel ausführlich beschrieben."


@pytest.fixture(scope="module", params=BACKENDS)
def ident(request):
    return LanguageIdentifier(request.param)


# ---------------------------------------------------------------- labels


def test_fasttext_label_normalization():
    assert normalize_fasttext_label("__label__en") == "en"
    assert normalize_fasttext_label("__label__eng_Latn") == "eng_Latn"  # GlotLID style kept
    assert normalize_fasttext_label("zh") == "zh"


def test_cld2_code_normalization():
    assert normalize_cld2_code("iw") == "he"
    assert normalize_cld2_code("jw") == "jv"
    assert normalize_cld2_code("zh-Hant") == "zh"
    assert normalize_cld2_code("fr") == "fr"
    for not_a_language in ("un", "xx-Latn", "xxx", "zzp", ""):
        assert normalize_cld2_code(not_a_language) == UNKNOWN


def test_supported_languages():
    ft = supported_languages("fasttext")
    assert len(ft) == 176  # lid.176
    assert {"en", "no", "nn", "zh", "hr", "sr", "bs", "sh"} <= ft
    assert "nb" not in ft and UNKNOWN not in ft
    cld = supported_languages("pycld2")
    assert {"en", "he", "jv", "zh", "no", "nn"} <= cld
    assert not {"iw", "jw", "zh-Hant", UNKNOWN} & cld
    assert not any(c.startswith(("xx-", "zz")) for c in cld)


def _fake_fasttext_header(labels: list[str], words: list[str]) -> bytes:
    """A fastText file cut after its dictionary: enough for fasttext_model_labels."""
    head = struct.pack("<ii", 793712314, 12) + struct.pack("<12i", *range(12)) + struct.pack("<d", 1e-4)
    entries = words + labels
    head += struct.pack("<iiiqq", len(entries), len(words), len(labels), 1000, 0)
    for i, e in enumerate(entries):
        head += e.encode() + b"\0" + struct.pack("<qb", 10, 1 if i >= len(words) else 0)
    return head


def test_model_labels_glotlid_style(tmp_path):
    path = tmp_path / "glot.bin"
    labels = ["__label__eng_Latn", "__label__fra_Latn", "__label__srp_Cyrl"]
    path.write_bytes(_fake_fasttext_header(labels, ["the", "de", "и"]))
    assert fasttext_model_labels(str(path)) == labels
    ident = LanguageIdentifier("fasttext", model_path=str(path))
    assert ident.supported_languages() == {"eng_Latn", "fra_Latn", "srp_Cyrl"}


def test_model_labels_rejects_other_files(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"not a model at all, just some bytes" * 4)
    with pytest.raises(ValueError, match="not a fastText model"):
        fasttext_model_labels(str(path))


# ---------------------------------------------------------------- construction, pickling


def test_bad_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        LanguageIdentifier("fasttext", model_path=str(tmp_path / "missing.ftz"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown language-ID backend"):
        LanguageIdentifier("langdetect")
    with pytest.raises(ValueError, match="model_path must be None"):
        LanguageIdentifier("pycld2", model_path="lid.176.ftz")
    with pytest.raises(ValueError, match="max_chars"):
        LanguageIdentifier(max_chars=0)


def test_local_model_path(tmp_path):
    # Any fastText-format model by path; here a copy of the bundled one.
    path = tmp_path / "copy.ftz"
    shutil.copy(bundled_fasttext_model(), path)
    ident = LanguageIdentifier("fasttext", model_path=str(path))
    assert ident.predict([FR, EN])[0] == ["fr", "en"]
    assert ident.supported_languages() == supported_languages("fasttext")


def test_pickles_without_model(ident):
    ident.predict([EN])  # loads the model
    blob = pickle.dumps(ident)
    assert len(blob) < 1024  # the model is not shipped
    copy = pickle.loads(blob)
    assert copy._model is None and copy.model_path == ident.model_path
    a, b = ident.predict([FR, DE]), copy.predict([FR, DE])
    assert a[0] == b[0] and np.array_equal(a[1], b[1])


# ---------------------------------------------------------------- predict


def test_predict_basics(ident):
    labels, scores = ident.predict([FR, EN, DE])
    assert labels == ["fr", "en", "de"]
    assert scores.dtype == np.float32 and scores.shape == (3,)
    assert ((scores > 0.5) & (scores <= 1.0)).all()


def test_predict_empty_and_undetectable(ident):
    texts = ["", None, "   \n\t ", "12345 678 -- 90%", "!!! ... ???"]
    labels, scores = ident.predict(texts)
    assert labels == [UNKNOWN] * len(texts)
    assert scores.tolist() == [0.0] * len(texts)
    labels, scores = ident.predict([])
    assert labels == [] and scores.shape == (0,)


def test_predict_survives_bad_characters(ident):
    # Newlines (fastText reads one line), a lone surrogate (cannot be UTF-8 encoded),
    # control characters and non-characters (CLD2 calls them invalid UTF-8).
    texts = [EN.replace(" ", "\n"), EN + " \ud800 " + EN, EN + "\x01\x7f\ufdd0\uffff" + EN]
    labels, scores = ident.predict(texts)
    assert labels == ["en", "en", "en"]
    assert (scores > 0).all()


def test_predict_classifies_a_bounded_prefix():
    # An English head longer than max_chars, then much French: only the head is read.
    text = " ".join([EN] * 4) + " " + " ".join([FR] * 60)
    assert LanguageIdentifier(max_chars=300).predict([text])[0] == ["en"]
    assert LanguageIdentifier(max_chars=10**9).predict([text])[0] == ["fr"]


# ---------------------------------------------------------------- thresholds


def test_auto_threshold_rule():
    s = np.array([0.6, 0.7, 0.8, 0.9, 1.0])
    assert auto_threshold(s) == pytest.approx(0.8 - np.std(s))
    assert auto_threshold(np.full(10, 1.0)) == AUTO_CEIL  # capped
    assert auto_threshold(np.array([0.0, 1.0] * 10)) == AUTO_FLOOR  # floored


def test_fit_thresholds(caplog):
    rng = np.random.default_rng(0)
    en = rng.uniform(0.6, 1.0, MIN_DOCS_FOR_AUTO)
    labels = ["en"] * MIN_DOCS_FOR_AUTO + ["hr"] * 3 + ["de"] * 2
    scores = np.concatenate([en, [0.4, 0.5, 0.6], [0.9, 0.95]])
    with caplog.at_level(logging.WARNING, logger="stages.langid"):
        got = fit_thresholds(labels, scores, {"en": "auto", "hr": "auto", "de": 0.7, "fr": 0}, default=0.45)
    assert got == {
        "en": pytest.approx(max(AUTO_FLOOR, min(AUTO_CEIL, np.median(en) - np.std(en)))),
        "hr": 0.45,  # 3 docs < MIN_DOCS_FOR_AUTO: default, with a note
        "de": 0.7,
        "fr": 0.0,
    }
    assert "'hr'" in caplog.text and "falls back" in caplog.text
    assert "'en'" not in caplog.text


@pytest.mark.parametrize("bad", ["high", "AUTO", 1.5, -0.1, True, None])
def test_fit_thresholds_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="threshold"):
        fit_thresholds(["en"], [0.9], {"en": bad}, default=0.5)


def test_length_mismatch():
    with pytest.raises(ValueError, match="same length"):
        fit_thresholds(["en", "fr"], [0.9], {}, default=0.5)
    with pytest.raises(ValueError, match="same length"):
        drop_reasons(["en"], [0.9, 0.8], None, {}, 0.5)


def test_drop_reasons():
    labels = ["en", "en", "fr", "de", "un", "hr"]
    scores = np.array([0.9, 0.2, 0.95, 0.5, 0.0, 0.4], dtype=np.float32)
    thresholds = {"en": 0.5, "hr": 0.3}
    assert drop_reasons(labels, scores, ["en", "fr", "hr"], thresholds, default=0.6) == [
        None, "language_score", None, "language", "language", None,
    ]
    # No keep list: every label may stay, each judged on its score ("fr", "de" get 0.6).
    assert drop_reasons(labels, scores, None, thresholds, default=0.6) == [
        None, "language_score", None, "language_score", "language_score", None,
    ]
    # A score equal to its threshold is kept.
    assert drop_reasons(["en"], [0.5], None, {"en": 0.5}, 0.9) == [None]


# ---------------------------------------------------------------- accuracy on the dev sets


@pytest.fixture(scope="module")
def udhr():
    return bench.load_udhr()


@pytest.fixture(scope="module")
def handbook():
    return bench.load_handbook()


@pytest.fixture(scope="module")
def long_handbook(handbook):
    return [d for d in handbook if d.nbytes >= bench.MIN_DOC_BYTES]


@pytest.fixture(scope="module")
def evals(udhr, handbook, long_handbook):
    out = {}
    for backend in BACKENDS:
        ident = LanguageIdentifier(backend)
        for name, docs in (("udhr", udhr), ("handbook", handbook), ("handbook_long", long_handbook)):
            out[name, backend] = bench.evaluate(ident, docs)
    return out


def _report(title, evals, name):
    print()
    print(bench.per_language_table(title, {b: evals[name, b] for b in BACKENDS}))
    print(bench.summary_table([(name, b, evals[name, b]) for b in BACKENDS]))


def test_dev_sets_are_as_described(udhr, handbook, long_handbook):
    assert len({d.group for d in udhr}) == 141
    assert len({d.group for d in handbook}) == 26
    assert len(long_handbook) >= 1000


def test_handbook_acceptance(evals):
    """Acceptance: handbook documents >= 1 KB, accuracy >= 0.97 over the languages lid.176
    supports (all 25 languages with such documents; da-DK has none). Measured: 1.0000."""
    _report("handbook, documents >= 1 KB", evals, "handbook_long")
    ev = evals["handbook_long", "fasttext"]
    assert len(ev.supported_rows()) == len(ev.rows) == 25
    assert ev.micro >= 0.97
    assert ev.macro >= 0.97


def test_handbook_pycld2_floor(evals):
    """pycld2 on the same documents. Measured: micro 0.9988, macro 0.9892 (hr-HR: 3 of 4,
    one read as bs). Floors leave room for one or two more misses."""
    ev = evals["handbook_long", "pycld2"]
    assert len(ev.supported_rows()) == 25
    assert ev.micro >= 0.99
    assert ev.macro >= 0.97


def test_handbook_all_documents(evals):
    """All handbook documents, short ones included. Measured: fasttext micro 0.9985, macro
    0.9895; pycld2 0.9959, 0.9838; hr-HR is the weak spot (0.73 / 0.64, read as
    sr/sh/bs/cs), as expected for Croatian/Serbian/Bosnian."""
    _report("handbook, all documents", evals, "handbook")
    for backend, micro, macro in (("fasttext", 0.99, 0.97), ("pycld2", 0.98, 0.96)):
        ev = evals["handbook", backend]
        assert ev.micro >= micro and ev.macro >= macro, backend


def test_udhr_floors(evals):
    """udhr: short paragraphs (median 149 chars), 141 languages, many unknown to lid.176.
    Measured over supported languages: fasttext 96 languages, micro 0.8150, macro 0.8097;
    pycld2 126 languages, micro 0.9386, macro 0.9382. Both include the suspect labels
    listed in bench.UDHR_SUSPECT. Floors are the measured values minus about 0.03."""
    _report("udhr", evals, "udhr")
    ft, cld = evals["udhr", "fasttext"], evals["udhr", "pycld2"]
    assert len(ft.supported_rows()) == 96
    assert len(cld.supported_rows()) == 126
    assert ft.micro >= 0.78 and ft.macro >= 0.78
    assert cld.micro >= 0.91 and cld.macro >= 0.91


def test_prefix_bound_costs_no_accuracy(long_handbook, evals):
    """DEFAULT_MAX_CHARS is chosen for speed; on long documents it must match full-length
    classification (measured: both 1.0000 micro)."""
    full = bench.evaluate(LanguageIdentifier(max_chars=10**12), long_handbook)
    bounded = evals["handbook_long", "fasttext"]
    assert DEFAULT_MAX_CHARS == LanguageIdentifier().max_chars
    assert bounded.micro >= full.micro - 0.002


def test_auto_thresholds_on_real_scores(evals):
    """The FineWeb-2 rule over real scores: clamped, and the default below
    MIN_DOCS_FOR_AUTO documents. (What it drops is tabulated in RESULTS.md.)"""
    ev = evals["handbook", "fasttext"]
    labels = np.asarray(ev.labels, dtype=object)
    langs = sorted({lab for lab in ev.labels if lab != UNKNOWN})
    got = fit_thresholds(ev.labels, ev.scores, {lang: "auto" for lang in langs}, default=0.5)
    assert set(got) == set(langs)
    for lang, thr in got.items():
        own = ev.scores[labels == lang]
        if len(own) >= MIN_DOCS_FOR_AUTO:
            assert AUTO_FLOOR <= thr <= AUTO_CEIL
            assert thr == pytest.approx(auto_threshold(own))
        else:
            assert thr == 0.5, lang
