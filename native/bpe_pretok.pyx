# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Native pre-tokenizer and word counter for BPE training.

Hand-written scanners for the split presets (gpt2, llama3, o200k) and for the SuperBPE
stage-2 "superword" splitter. Each reproduces what a leftmost-first backtracking regex
engine returns for the preset's pattern (the patterns live in stages/pretokenize.py, which
also builds the character-class table from the `regex` module so both agree on what
\\p{L}, \\p{N}, \\s ... mean). tests/test_bpe_pretokenize.py fuzzes these scanners
against `regex` itself.

Words are counted as raw UTF-8 bytes in a C++ hash map with exact int64 counts; the
byte-level (GPT-2) mapping is applied later, once per distinct word.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, int64_t, uint64_t
from libcpp.string cimport string
from libcpp.vector cimport vector
from libcpp.unordered_map cimport unordered_map
from libcpp.utility cimport pair as cpair
from cython.operator cimport dereference as deref, preincrement as inc

import numpy as np
cimport numpy as cnp

cnp.import_array()

# Character classes, low byte of the table entry (built in stages/pretokenize.py).
cdef enum:
    C_L = 1      # \p{L}
    C_N = 2      # \p{N}
    C_S = 4      # \s
    C_U = 8      # [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
    C_W = 16     # [\p{Ll}\p{Lm}\p{Lo}\p{M}]
    C_NL = 32    # \r or \n
    # High byte: which case-insensitive contraction letter the char matches.
    F_S = 256
    F_T = 512
    F_R = 1024
    F_E = 2048
    F_V = 4096
    F_M = 8192
    F_LL = 16384
    F_D = 32768

PRESETS = {"gpt2": 0, "llama3": 1, "o200k": 2, "superword": 3}
DIGITS = {"native": 0, "l2r3": 1, "r2l3": 2, "single": 3}


cdef inline Py_ssize_t run_of(const uint16_t* c, Py_ssize_t i, Py_ssize_t n, uint16_t mask) noexcept nogil:
    while i < n and (c[i] & mask):
        i += 1
    return i


cdef inline bint is_p(uint16_t x) noexcept nogil:
    # [^\s\p{L}\p{N}]
    return (x & (C_L | C_N | C_S)) == 0


cdef inline Py_ssize_t run_p(const uint16_t* c, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and is_p(c[i]):
        i += 1
    return i


cdef inline Py_ssize_t contraction_cs(const uint32_t* cp, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    # 's|'t|'re|'ve|'m|'ll|'d at i (cp[i] == "'"); returns match length or 0.
    if i + 1 >= n:
        return 0
    cdef uint32_t a = cp[i + 1]
    if a == 115 or a == 116 or a == 109 or a == 100:  # s t m d
        return 2
    if i + 2 < n:
        if (a == 114 or a == 118) and cp[i + 2] == 101:  # re ve
            return 3
        if a == 108 and cp[i + 2] == 108:  # ll
            return 3
    return 0


cdef inline Py_ssize_t contraction_ci(const uint16_t* c, const uint32_t* cp, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    # (?i:'s|'t|'re|'ve|'m|'ll|'d); case folding per the class table.
    if i + 1 >= n or cp[i] != 39:
        return 0
    cdef uint16_t a = c[i + 1]
    if a & (F_S | F_T | F_M | F_D):
        return 2
    if i + 2 < n:
        if (a & (F_R | F_V)) and (c[i + 2] & F_E):
            return 3
        if (a & F_LL) and (c[i + 2] & F_LL):
            return 3
    return 0


cdef inline Py_ssize_t digits_end(const uint16_t* c, Py_ssize_t s, Py_ssize_t n, int digits, bint unbounded) noexcept nogil:
    # End of the digit match starting at s (c[s] is \p{N}).
    cdef Py_ssize_t e = run_of(c, s, n, C_N)
    cdef Py_ssize_t m = e - s
    cdef Py_ssize_t k
    if digits == 0:
        if unbounded:
            return e
        return s + (3 if m > 3 else m)
    if digits == 1:
        return s + (3 if m > 3 else m)
    if digits == 2:
        # \p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N})): the first group takes the remainder.
        k = m % 3
        return s + (3 if k == 0 else k)
    return s + 1


cdef inline Py_ssize_t ws_tail(const uint16_t* c, Py_ssize_t i, Py_ssize_t n, bint with_newline_rule) noexcept nogil:
    # c[i] is \s. Implements [\s*[\r\n]+ |] \s+(?!\S) | \s+
    cdef Py_ssize_t j = run_of(c, i, n, C_S)
    cdef Py_ssize_t k
    if with_newline_rule:
        k = j - 1
        while k >= i:
            if c[k] & C_NL:
                return k + 1
            k -= 1
    if j == n:
        return n
    if j - i >= 2:
        return j - 1
    return j


cdef inline Py_ssize_t scan_gpt2(const uint16_t* c, const uint32_t* cp, Py_ssize_t i, Py_ssize_t n, int digits) noexcept nogil:
    cdef Py_ssize_t k
    cdef bint sp = cp[i] == 32 and i + 1 < n
    if cp[i] == 39:
        k = contraction_cs(cp, i, n)
        if k:
            return i + k
    if sp and (c[i + 1] & C_L):
        return run_of(c, i + 1, n, C_L)
    if c[i] & C_L:
        return run_of(c, i, n, C_L)
    if sp and (c[i + 1] & C_N):
        return digits_end(c, i + 1, n, digits, True)
    if c[i] & C_N:
        return digits_end(c, i, n, digits, True)
    if sp and is_p(c[i + 1]):
        return run_p(c, i + 1, n)
    if is_p(c[i]):
        return run_p(c, i, n)
    return ws_tail(c, i, n, False)


cdef inline Py_ssize_t scan_llama3(const uint16_t* c, const uint32_t* cp, Py_ssize_t i, Py_ssize_t n, int digits) noexcept nogil:
    cdef Py_ssize_t k, j
    if cp[i] == 39:
        k = contraction_ci(c, cp, i, n)
        if k:
            return i + k
    # [^\r\n\p{L}\p{N}]?\p{L}+
    if (c[i] & (C_L | C_N | C_NL)) == 0 and i + 1 < n and (c[i + 1] & C_L):
        return run_of(c, i + 1, n, C_L)
    if c[i] & C_L:
        return run_of(c, i, n, C_L)
    if c[i] & C_N:
        return digits_end(c, i, n, digits, False)
    # ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    if cp[i] == 32 and i + 1 < n and is_p(c[i + 1]):
        j = run_p(c, i + 1, n)
        return run_of(c, j, n, C_NL)
    if is_p(c[i]):
        j = run_p(c, i, n)
        return run_of(c, j, n, C_NL)
    return ws_tail(c, i, n, True)


cdef inline Py_ssize_t match_uw(const uint16_t* c, Py_ssize_t s, Py_ssize_t n) noexcept nogil:
    # [U]*[W]+ with backtracking; returns end or -1.
    if s >= n:
        return -1
    cdef Py_ssize_t q = run_of(c, s, n, C_U)
    cdef Py_ssize_t p
    if q < n and (c[q] & C_W):
        return run_of(c, q, n, C_W)
    p = q - 1
    while p >= s:
        if c[p] & C_W:
            return p + 1
        p -= 1
    return -1


cdef inline Py_ssize_t run_nl_slash(const uint16_t* c, const uint32_t* cp, Py_ssize_t j, Py_ssize_t n) noexcept nogil:
    while j < n and ((c[j] & C_NL) or cp[j] == 47):
        j += 1
    return j


cdef inline Py_ssize_t scan_o200k(const uint16_t* c, const uint32_t* cp, Py_ssize_t i, Py_ssize_t n, int digits) noexcept nogil:
    cdef Py_ssize_t e, j
    cdef bint pre = (c[i] & (C_L | C_N | C_NL)) == 0 and i + 1 < n
    # [^\r\n\p{L}\p{N}]?[U]*[W]+(?i:'s|...)?
    e = -1
    if pre:
        e = match_uw(c, i + 1, n)
    if e < 0:
        e = match_uw(c, i, n)
    if e >= 0:
        return e + contraction_ci(c, cp, e, n)
    # [^\r\n\p{L}\p{N}]?[U]+[W]*(?i:'s|...)?
    if pre and (c[i + 1] & C_U):
        j = run_of(c, run_of(c, i + 1, n, C_U), n, C_W)
        return j + contraction_ci(c, cp, j, n)
    if c[i] & C_U:
        j = run_of(c, run_of(c, i, n, C_U), n, C_W)
        return j + contraction_ci(c, cp, j, n)
    if c[i] & C_N:
        return digits_end(c, i, n, digits, False)
    # ' ?[^\s\p{L}\p{N}]+[\r\n/]*'
    if cp[i] == 32 and i + 1 < n and is_p(c[i + 1]):
        return run_nl_slash(c, cp, run_p(c, i + 1, n), n)
    if is_p(c[i]):
        return run_nl_slash(c, cp, run_p(c, i, n), n)
    return ws_tail(c, i, n, True)


cdef inline Py_ssize_t match_superword_sep(const uint16_t* c, const uint32_t* cp, Py_ssize_t i, Py_ssize_t n, int digits, bint unbounded) noexcept nogil:
    # Separators of the SuperBPE stage-2 splitter; -1 when none matches at i.
    # digits | ' ?[^\s\p{L}\p{N}]{2,}' | '\s*[\r\n]+' | '\s+(?!\S)'
    cdef Py_ssize_t j, k
    if c[i] & C_N:
        return digits_end(c, i, n, digits, unbounded)
    if cp[i] == 32 and i + 2 < n and is_p(c[i + 1]):
        j = run_p(c, i + 1, n)
        if j - i - 1 >= 2:
            return j
    if is_p(c[i]):
        j = run_p(c, i, n)
        if j - i >= 2:
            return j
        return -1
    if c[i] & C_S:
        j = run_of(c, i, n, C_S)
        k = j - 1
        while k >= i:
            if c[k] & C_NL:
                return k + 1
            k -= 1
        if j == n:
            return n
        if j - i >= 2:
            return j - 1
    return -1


cdef class PreTokenizer:
    """Splits text into words with a native preset scanner and counts them.

    `classes` is the uint16 table from stages.pretokenize.char_class_table().
    `base` is the preset whose digit rule applies in superword mode.
    """
    cdef object _classes_ref
    cdef const uint16_t* cls
    cdef int preset
    cdef int digits
    cdef bint unbounded_digits
    cdef unordered_map[string, int64_t] table
    cdef vector[uint32_t] cps
    cdef vector[uint16_t] cbuf
    cdef vector[int64_t] boff
    cdef string utf8
    cdef public int64_t n_sequences
    cdef public int64_t n_words
    cdef public int64_t n_bytes

    def __init__(self, cnp.ndarray classes, str preset, str digits="native", str base="gpt2"):
        if classes.dtype != np.uint16 or classes.ndim != 1 or classes.shape[0] != 0x110000:
            raise ValueError("classes must be the uint16[0x110000] table from char_class_table()")
        if preset not in PRESETS:
            raise ValueError(f"unknown native preset {preset!r}; expected one of {sorted(PRESETS)}")
        if digits not in DIGITS:
            raise ValueError(f"unknown digit mode {digits!r}; expected one of {sorted(DIGITS)}")
        self._classes_ref = np.ascontiguousarray(classes)
        cdef const uint16_t[::1] view = self._classes_ref
        self.cls = &view[0]
        self.preset = PRESETS[preset]
        self.digits = DIGITS[digits]
        # gpt2's native digit rule is unbounded (' ?\p{N}+'); llama3/o200k use {1,3}.
        self.unbounded_digits = (preset == "gpt2") or (preset == "superword" and base == "gpt2")
        self.n_sequences = 0
        self.n_words = 0
        self.n_bytes = 0

    cdef void _load(self, str text):
        # Decode once into code points, classes and UTF-8 byte offsets.
        cdef Py_ssize_t n = len(text)
        cdef Py_ssize_t i = 0
        cdef Py_UCS4 ch
        cdef uint32_t u
        self.cps.resize(n)
        self.cbuf.resize(n)
        self.boff.resize(n + 1)
        self.utf8.clear()
        for ch in text:
            u = <uint32_t>ch
            if 0xD800 <= u <= 0xDFFF:
                u = 0xFFFD  # lone surrogates cannot be UTF-8 encoded
            self.cps[i] = u
            self.cbuf[i] = self.cls[u]
            self.boff[i] = <int64_t>self.utf8.size()
            if u < 0x80:
                self.utf8.push_back(<char>u)
            elif u < 0x800:
                self.utf8.push_back(<char>(0xC0 | (u >> 6)))
                self.utf8.push_back(<char>(0x80 | (u & 0x3F)))
            elif u < 0x10000:
                self.utf8.push_back(<char>(0xE0 | (u >> 12)))
                self.utf8.push_back(<char>(0x80 | ((u >> 6) & 0x3F)))
                self.utf8.push_back(<char>(0x80 | (u & 0x3F)))
            else:
                self.utf8.push_back(<char>(0xF0 | (u >> 18)))
                self.utf8.push_back(<char>(0x80 | ((u >> 12) & 0x3F)))
                self.utf8.push_back(<char>(0x80 | ((u >> 6) & 0x3F)))
                self.utf8.push_back(<char>(0x80 | (u & 0x3F)))
            i += 1
        self.boff[n] = <int64_t>self.utf8.size()

    cdef Py_ssize_t _next_end(self, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
        cdef const uint16_t* c = self.cbuf.data()
        cdef const uint32_t* cp = self.cps.data()
        if self.preset == 0:
            return scan_gpt2(c, cp, i, n, self.digits)
        if self.preset == 1:
            return scan_llama3(c, cp, i, n, self.digits)
        if self.preset == 2:
            return scan_o200k(c, cp, i, n, self.digits)
        return match_superword_sep(c, cp, i, n, self.digits, self.unbounded_digits)

    cdef void _emit(self, Py_ssize_t s, Py_ssize_t e, int64_t weight, vector[int64_t]* spans) noexcept nogil:
        cdef int64_t bs = self.boff[s]
        cdef int64_t be = self.boff[e]
        if spans != NULL:
            spans.push_back(bs)
            spans.push_back(be)
        else:
            self.table[self.utf8.substr(bs, be - bs)] += weight
            self.n_words += weight

    cdef void _split(self, int64_t weight, vector[int64_t]* spans) noexcept nogil:
        cdef Py_ssize_t n = self.cps.size()
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t e
        cdef Py_ssize_t gap = 0
        if self.preset != 3:
            while i < n:
                e = self._next_end(i, n)
                self._emit(i, e, weight, spans)
                i = e
            return
        # Superword mode: separators are isolated, the text between them is a word too.
        while i < n:
            e = self._next_end(i, n)
            if e > i:
                if gap < i:
                    self._emit(gap, i, weight, spans)
                self._emit(i, e, weight, spans)
                i = e
                gap = e
            else:
                i += 1
        if gap < n:
            self._emit(gap, n, weight, spans)

    def add(self, str text, int64_t weight=1):
        """Count the words of one sequence (words never cross sequences)."""
        if weight < 1:
            raise ValueError("weight must be >= 1")
        self._load(text)
        self.n_sequences += 1
        self.n_bytes += <int64_t>self.utf8.size()
        with nogil:
            self._split(weight, NULL)

    def add_many(self, texts):
        cdef str t
        for t in texts:
            self._load(t)
            self.n_sequences += 1
            self.n_bytes += <int64_t>self.utf8.size()
            with nogil:
                self._split(1, NULL)

    def add_pieces(self, pieces, int64_t weight=1):
        """Count already split words (the Python-regex fallback for custom patterns)."""
        cdef bytes b
        for p in pieces:
            b = p.encode("utf-8", "surrogatepass") if isinstance(p, str) else p
            self.table[<string>b] += weight
            self.n_words += weight

    def split(self, str text):
        """The words of `text` as a list of str (for tests and encoders)."""
        cdef vector[int64_t] spans
        self._load(text)
        self._split(1, &spans)
        cdef Py_ssize_t k
        cdef bytes raw = self.utf8
        out = []
        for k in range(0, <Py_ssize_t>spans.size(), 2):
            out.append(raw[spans[k]:spans[k + 1]].decode("utf-8"))
        return out

    def __len__(self):
        return self.table.size()

    def clear(self):
        self.table.clear()

    def items(self):
        """(words: list[bytes], counts: int64 ndarray), in no particular order."""
        cdef Py_ssize_t m = self.table.size()
        counts = np.empty(m, dtype=np.int64)
        cdef int64_t[::1] cv = counts
        words = []
        cdef unordered_map[string, int64_t].iterator it = self.table.begin()
        cdef Py_ssize_t k = 0
        while it != self.table.end():
            words.append(<bytes>deref(it).first)
            cv[k] = deref(it).second
            k += 1
            inc(it)
        return words, counts

    def nbytes_estimate(self):
        """Rough heap footprint of the table (keys + node overhead)."""
        cdef int64_t total = 0
        cdef unordered_map[string, int64_t].iterator it = self.table.begin()
        while it != self.table.end():
            total += 64 + (<int64_t>deref(it).first.size() if deref(it).first.size() > 15 else 0)
            inc(it)
        return total

    # ---- packed word tables: (data uint8, offsets int64, counts int64) -----------------

    def add_packed(self, const uint8_t[::1] data, const int64_t[::1] offsets, const int64_t[::1] counts):
        """Sum a packed word table into this one (the reduce step)."""
        cdef Py_ssize_t w
        cdef const char* base = <const char*>&data[0] if data.shape[0] else <const char*>NULL
        if offsets.shape[0] != counts.shape[0] + 1:
            raise ValueError("offsets must have len(counts) + 1 entries")
        with nogil:
            for w in range(counts.shape[0]):
                self.table[string(base + offsets[w], offsets[w + 1] - offsets[w])] += counts[w]

    def packed(self, int64_t min_count=1):
        """This table as packed arrays, words sorted bytewise; words below min_count left out."""
        cdef vector[string] keys
        cdef unordered_map[string, int64_t].iterator it = self.table.begin()
        cdef int64_t total = 0
        while it != self.table.end():
            if deref(it).second >= min_count:
                keys.push_back(deref(it).first)
                total += deref(it).first.size()
            inc(it)
        _sort_strings(keys)
        data = np.empty(total, dtype=np.uint8)
        offsets = np.empty(keys.size() + 1, dtype=np.int64)
        counts = np.empty(keys.size(), dtype=np.int64)
        cdef uint8_t[::1] dv = data
        cdef int64_t[::1] ov = offsets
        cdef int64_t[::1] cv = counts
        cdef int64_t o = 0
        cdef size_t k, j
        for k in range(keys.size()):
            ov[k] = o
            for j in range(keys[k].size()):
                dv[o + j] = <uint8_t>keys[k][j]
            o += keys[k].size()
            cv[k] = self.table[keys[k]]
        ov[keys.size()] = o
        return data, offsets, counts


cdef extern from "<algorithm>" namespace "std" nogil:
    void std_sort "std::sort"[Iter](Iter first, Iter last)


cdef void _sort_strings(vector[string]& v) noexcept nogil:
    std_sort(v.begin(), v.end())


def partition_packed(const uint8_t[::1] data, const int64_t[::1] offsets, const int64_t[::1] counts, int n_parts):
    """Split a packed table by a stable hash of each word (FNV-1a 64), for the reducers.

    Returns a list of n_parts packed tables. The hash is fixed (not Python's salted hash)
    so every process sends a word to the same partition.
    """
    if n_parts < 1:
        raise ValueError("n_parts must be >= 1")
    cdef Py_ssize_t n = counts.shape[0]
    part = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] pv = part
    cdef Py_ssize_t w, k
    cdef uint64_t h
    with nogil:
        for w in range(n):
            h = 1469598103934665603ULL
            for k in range(offsets[w], offsets[w + 1]):
                h = (h ^ data[k]) * 1099511628211ULL
            pv[w] = <int64_t>(h % <uint64_t>n_parts)
    out = []
    np_data = np.asarray(data)
    np_off = np.asarray(offsets)
    np_cnt = np.asarray(counts)
    lengths = np.diff(np_off)
    for p in range(n_parts):
        idx = np.flatnonzero(part == p)
        sel_len = lengths[idx]
        new_off = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(sel_len, out=new_off[1:])
        if len(idx):
            starts = np_off[:-1][idx]
            # gather the bytes of the selected words
            pos = np.repeat(starts - new_off[:-1], sel_len) + np.arange(new_off[-1], dtype=np.int64)
            new_data = np_data[pos]
        else:
            new_data = np.empty(0, dtype=np.uint8)
        out.append((np.ascontiguousarray(new_data, dtype=np.uint8), new_off, np.ascontiguousarray(np_cnt[idx])))
    return out
