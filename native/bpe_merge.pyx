# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""BPE merge kernel with the exact semantics of tokenizers' BpeTrainer (trainer.rs).

Two objects split the work so the same code runs on one node or sharded across actors:

* ``WordStore`` owns words (token-id arrays with int64 counts) and, per heap entry, the
  list of words that entry will touch. It applies a merge left to right, without overlap,
  and reports the (pair, delta) changes and which pairs gained occurrences.
* ``MergeState`` owns the global pair counts (int64), the vocabulary and a lazy max-heap
  ordered like HF: count desc, then (left_id, right_id) asc. It picks the next merge.

HF details reproduced on purpose (each changes the merges HF emits):
* a heap entry carries the set of words it was created for; a popped entry merges only
  those words, and a stale entry is re-queued with its word set and the current count;
* the merged pair's own count is never decremented, so a pair formed again later (when a
  merge reuses an existing token string) can be merged a second time;
* new pairs are counted only when the merged length stays below max_token_length;
* merging stops at vocab_size distinct strings, on an empty heap, or when the best count
  is below max(1, min_frequency).
Counts are int64 where HF uses i32 (their issue #2058), so >2^31 counts train correctly.

Entries that tie on (count, pair) are ordered by the step that created them (older
first); HF leaves that order to its heap and hash seeds.
"""
from libc.stdint cimport uint8_t, int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy
from libcpp.string cimport string
from libcpp.vector cimport vector
from libcpp.unordered_map cimport unordered_map
from cython.operator cimport dereference as deref, preincrement as inc

import numpy as np
cimport numpy as cnp

cnp.import_array()

ctypedef uint64_t pair_t

cdef extern from *:
    """
    static inline unsigned long long tm_pack(unsigned int a, unsigned int b) {
        return ((unsigned long long)a << 32) | (unsigned long long)b;
    }
    """
    uint64_t pack "tm_pack"(uint32_t a, uint32_t b) nogil

cdef inline int32_t left_of(pair_t p) noexcept nogil:
    return <int32_t>(p >> 32)

cdef inline int32_t right_of(pair_t p) noexcept nogil:
    return <int32_t><uint32_t>p


cdef struct Entry:
    int64_t count
    pair_t pair
    int32_t step      # -1: initial count; s: created by merge number s


cdef inline bint better(const Entry& a, const Entry& b) noexcept nogil:
    # True when a must pop before b.
    if a.count != b.count:
        return a.count > b.count
    if a.pair != b.pair:
        return a.pair < b.pair
    return a.step < b.step


cdef void heap_push(vector[Entry]& h, Entry e) noexcept nogil:
    h.push_back(e)
    cdef size_t i = h.size() - 1
    cdef size_t parent
    while i > 0:
        parent = (i - 1) >> 1
        if better(e, h[parent]):
            h[i] = h[parent]
            i = parent
        else:
            break
    h[i] = e


cdef Entry heap_pop(vector[Entry]& h) noexcept nogil:
    cdef Entry top = h[0]
    cdef Entry last = h.back()
    h.pop_back()
    cdef size_t n = h.size()
    cdef size_t i = 0
    cdef size_t child
    if n == 0:
        return top
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and better(h[child + 1], h[child]):
            child += 1
        if better(h[child], last):
            h[i] = h[child]
            i = child
        else:
            break
    h[i] = last
    return top


# --------------------------------------------------------------------------------------
# Helpers that turn raw word bytes into symbol arrays (vectorised work outside the loop)
# --------------------------------------------------------------------------------------

def byte_histogram(const uint8_t[::1] data, const int64_t[::1] offsets, const int64_t[::1] counts):
    """Occurrences of each byte value, weighted by word counts (exact int64)."""
    cdef int64_t[::1] hist = np.zeros(256, dtype=np.int64)
    cdef Py_ssize_t w, k
    cdef int64_t c
    with nogil:
        for w in range(counts.shape[0]):
            c = counts[w]
            for k in range(offsets[w], offsets[w + 1]):
                hist[data[k]] += c
    return np.asarray(hist)


def encode_words(const uint8_t[::1] data, const int64_t[::1] offsets, const int32_t[::1] lut, int min_symbols=2):
    """Map each byte through `lut` (-1 = not in the alphabet, dropped as HF does).

    Returns (symbols int32, word offsets int64, kept word indices int64); words with fewer
    than `min_symbols` symbols are left out since they hold no pair.
    """
    cdef Py_ssize_t n = offsets.shape[0] - 1
    cdef vector[int32_t] sym
    cdef vector[int64_t] off
    cdef vector[int64_t] kept
    cdef Py_ssize_t w, k
    cdef int32_t v
    cdef size_t start
    sym.reserve(data.shape[0])
    off.push_back(0)
    with nogil:
        for w in range(n):
            start = sym.size()
            for k in range(offsets[w], offsets[w + 1]):
                v = lut[data[k]]
                if v >= 0:
                    sym.push_back(v)
            if <Py_ssize_t>(sym.size() - start) < min_symbols:
                sym.resize(start)
            else:
                off.push_back(<int64_t>sym.size())
                kept.push_back(w)
    out_sym = np.empty(sym.size(), dtype=np.int32)
    out_off = np.empty(off.size(), dtype=np.int64)
    out_kept = np.empty(kept.size(), dtype=np.int64)
    cdef int32_t[::1] vs = out_sym
    cdef int64_t[::1] vo = out_off
    cdef int64_t[::1] vk = out_kept
    if sym.size():
        memcpy(&vs[0], sym.data(), sym.size() * sizeof(int32_t))
    memcpy(&vo[0], off.data(), off.size() * sizeof(int64_t))
    if kept.size():
        memcpy(&vk[0], kept.data(), kept.size() * sizeof(int64_t))
    return out_sym, out_off, out_kept


# --------------------------------------------------------------------------------------
# WordStore
# --------------------------------------------------------------------------------------

cdef class WordStore:
    """Words of one partition and the per-entry word lists; applies merges.

    Word lists are kept per pair as a flat int32 vector of segments
    [step, n, w_1 .. w_n] (usually one segment per pair).
    """
    cdef vector[int32_t] sym
    cdef vector[int64_t] off
    cdef vector[int32_t] length
    cdef vector[int64_t] wcount
    cdef vector[int32_t] tok_len
    cdef int64_t max_len
    cdef unordered_map[pair_t, vector[int32_t]] lists
    # per-merge scratch
    cdef unordered_map[pair_t, int64_t] deltas
    cdef unordered_map[pair_t, vector[int32_t]] fresh
    cdef vector[pair_t] fresh_order
    # speculative batches: undo log [step, word, len, syms...] and what each step did
    cdef vector[int32_t] undo
    cdef bint logging
    cdef vector[int32_t] batch_steps
    cdef vector[pair_t] batch_consumed_pair
    cdef vector[int32_t] batch_consumed_step
    cdef vector[vector[pair_t]] batch_created

    def __init__(self, const int32_t[::1] symbols, const int64_t[::1] offsets,
                 const int64_t[::1] counts, const int32_t[::1] token_lengths,
                 max_token_length=None):
        cdef Py_ssize_t n = counts.shape[0]
        cdef Py_ssize_t w
        if offsets.shape[0] != n + 1:
            raise ValueError("offsets must have len(counts) + 1 entries")
        if n and offsets[n] != symbols.shape[0]:
            raise ValueError("offsets[-1] must equal len(symbols)")
        if symbols.shape[0]:
            self.sym.assign(&symbols[0], &symbols[0] + symbols.shape[0])
        self.off.resize(n)
        self.length.resize(n)
        self.wcount.resize(n)
        for w in range(n):
            self.off[w] = offsets[w]
            self.length[w] = <int32_t>(offsets[w + 1] - offsets[w])
            if counts[w] < 1:
                raise ValueError("word counts must be >= 1")
            self.wcount[w] = counts[w]
        if token_lengths.shape[0]:
            self.tok_len.assign(&token_lengths[0], &token_lengths[0] + token_lengths.shape[0])
        self.max_len = (1 << 62) if max_token_length is None else int(max_token_length)
        self.logging = False

    @property
    def n_words(self):
        return self.wcount.size()

    @property
    def n_symbols(self):
        cdef int64_t t = 0
        cdef size_t w
        for w in range(self.length.size()):
            t += self.length[w]
        return t

    def initial_pairs(self):
        """Count adjacent pairs (initial pairs always count) and create the step -1 lists.

        Returns (left int32, right int32, count int64) sorted by pair.
        """
        cdef unordered_map[pair_t, int64_t] counts
        cdef size_t w
        cdef int64_t k, base
        cdef pair_t p
        cdef vector[int32_t]* lst
        with nogil:
            for w in range(self.wcount.size()):
                base = self.off[w]
                for k in range(self.length[w] - 1):
                    p = pack(<uint32_t>self.sym[base + k], <uint32_t>self.sym[base + k + 1])
                    counts[p] += self.wcount[w]
                    lst = &self.lists[p]
                    if lst.size() == 0:
                        lst.push_back(-1)
                        lst.push_back(0)
                    if lst.size() == 2 or lst.back() != <int32_t>w:
                        lst.push_back(<int32_t>w)
                        lst[0][1] = lst[0][1] + 1
        return _pairs_to_arrays(counts)

    cdef int _find_segment(self, pair_t p, int32_t step, vector[int32_t]** out_vec, size_t* out_pos) noexcept nogil:
        cdef unordered_map[pair_t, vector[int32_t]].iterator it = self.lists.find(p)
        if it == self.lists.end():
            return 0
        cdef vector[int32_t]* v = &deref(it).second
        cdef size_t i = 0
        while i < v.size():
            if deref(v)[i] == step:
                out_vec[0] = v
                out_pos[0] = i
                return 1
            i += 2 + <size_t>deref(v)[i + 1]
        return 0

    cdef void _erase_segment(self, pair_t p, int32_t step) noexcept nogil:
        cdef vector[int32_t]* v
        cdef size_t pos
        if not self._find_segment(p, step, &v, &pos):
            return
        cdef size_t n = 2 + <size_t>deref(v)[pos + 1]
        v.erase(v.begin() + pos, v.begin() + pos + n)
        if v.size() == 0:
            self.lists.erase(p)

    cdef inline void _change(self, pair_t p, int64_t d) noexcept nogil:
        self.deltas[p] += d

    cdef inline void _gain(self, pair_t p, int64_t d, int32_t w) noexcept nogil:
        self.deltas[p] += d
        cdef vector[int32_t]* v = &self.fresh[p]
        if v.size() == 0:
            self.fresh_order.push_back(p)
            v.push_back(w)
        elif v.back() != w:
            v.push_back(w)

    cdef void _merge_word(self, int32_t w, int32_t a, int32_t b, int32_t new_id, int32_t new_len) noexcept nogil:
        cdef int64_t base = self.off[w]
        cdef int32_t n = self.length[w]
        cdef int32_t* s = self.sym.data() + base
        cdef int64_t c = self.wcount[w]
        cdef int32_t r = 0
        cdef int32_t o = 0
        cdef int32_t prev, nxt, k
        cdef bint touched = False
        # Left to right, non-overlapping; `o` writes the merged word over itself.
        while r < n:
            if s[r] == a and r + 1 < n and s[r + 1] == b:
                if not touched:
                    touched = True
                    if self.logging:
                        self.undo.push_back(self.batch_steps.back())
                        self.undo.push_back(w)
                        self.undo.push_back(n)
                        for k in range(n):
                            self.undo.push_back(s[k])
                if o > 0:
                    prev = s[o - 1]
                    self._change(pack(<uint32_t>prev, <uint32_t>a), -c)
                    if self.tok_len[prev] + new_len < self.max_len:
                        self._gain(pack(<uint32_t>prev, <uint32_t>new_id), c, w)
                if r + 2 < n:
                    nxt = s[r + 2]
                    self._change(pack(<uint32_t>b, <uint32_t>nxt), -c)
                    if new_len + self.tok_len[nxt] < self.max_len:
                        self._gain(pack(<uint32_t>new_id, <uint32_t>nxt), c, w)
                s[o] = new_id
                o += 1
                r += 2
            else:
                s[o] = s[r]
                o += 1
                r += 1
        self.length[w] = o

    cdef void _set_len(self, int32_t new_id, int32_t new_len) noexcept nogil:
        if <size_t>new_id >= self.tok_len.size():
            self.tok_len.resize(new_id + 1, 0)
        self.tok_len[new_id] = new_len

    cdef void apply(self, pair_t p, int32_t entry_step, int32_t new_id, int32_t new_len, int32_t cur_step) noexcept nogil:
        """Merge `p` in the words of entry (p, entry_step); fill deltas/fresh; store new lists."""
        cdef vector[int32_t]* v
        cdef size_t pos, i, n
        cdef vector[int32_t] words
        cdef int32_t a = left_of(p)
        cdef int32_t b = right_of(p)
        self.deltas.clear()
        self.fresh.clear()
        self.fresh_order.clear()
        self._set_len(new_id, new_len)
        if self._find_segment(p, entry_step, &v, &pos):
            n = <size_t>deref(v)[pos + 1]
            words.assign(v.begin() + pos + 2, v.begin() + pos + 2 + n)
            for i in range(n):
                self._merge_word(words[i], a, b, new_id, new_len)
        # New lists are keyed by this merge's step, like HF's per-merge where_to_update.
        cdef vector[int32_t]* dst
        cdef vector[int32_t]* src
        for i in range(self.fresh_order.size()):
            src = &self.fresh[self.fresh_order[i]]
            dst = &self.lists[self.fresh_order[i]]
            dst.push_back(cur_step)
            dst.push_back(<int32_t>src.size())
            dst.insert(dst.end(), src.begin(), src.end())

    def drop(self, const int32_t[::1] left, const int32_t[::1] right, const int32_t[::1] steps):
        """Forget word lists whose entry was never queued (its count was not positive)."""
        cdef Py_ssize_t i
        for i in range(left.shape[0]):
            self._erase_segment(pack(<uint32_t>left[i], <uint32_t>right[i]), steps[i])

    # ---- sharded mode: batches of (possibly speculative) merges ----------------------

    def apply_batch(self, int n_confirmed_prev, cnp.ndarray cmds):
        """Settle the previous batch, then apply the merges in `cmds` in order.

        n_confirmed_prev: how many merges of the previous batch the coordinator kept; the
        others are undone here. cmds: int64 array (m, 6) of rows
        (left, right, entry_step, new_id, new_len, step).
        Returns (step_index int32, left int32, right int32, delta int64, gained uint8):
        the summed changes of each merge of this batch.
        """
        self._settle(n_confirmed_prev)
        cdef const int64_t[:, ::1] c = np.ascontiguousarray(cmds, dtype=np.int64)
        cdef Py_ssize_t m = c.shape[0]
        cdef Py_ssize_t j, i
        cdef vector[int32_t] o_step, o_left, o_right
        cdef vector[int64_t] o_delta
        cdef vector[uint8_t] o_gain
        cdef pair_t p
        cdef unordered_map[pair_t, int64_t].iterator it
        cdef uint8_t gflag
        self.logging = True
        with nogil:
            for j in range(m):
                p = pack(<uint32_t>c[j, 0], <uint32_t>c[j, 1])
                self.batch_steps.push_back(<int32_t>c[j, 5])
                self.batch_consumed_pair.push_back(p)
                self.batch_consumed_step.push_back(<int32_t>c[j, 2])
                self.apply(p, <int32_t>c[j, 2], <int32_t>c[j, 3], <int32_t>c[j, 4], <int32_t>c[j, 5])
                self.batch_created.push_back(self.fresh_order)
                it = self.deltas.begin()
                while it != self.deltas.end():
                    o_step.push_back(<int32_t>j)
                    o_left.push_back(left_of(deref(it).first))
                    o_right.push_back(right_of(deref(it).first))
                    o_delta.push_back(deref(it).second)
                    gflag = 0
                    if self.fresh.count(deref(it).first):
                        gflag = 1
                    o_gain.push_back(gflag)
                    inc(it)
        return (_vec[int32_t](o_step, np.int32), _vec[int32_t](o_left, np.int32),
                _vec[int32_t](o_right, np.int32), _vec[int64_t](o_delta, np.int64),
                _vec[uint8_t](o_gain, np.uint8))

    def settle(self, int n_confirmed):
        """Settle the last batch (at the end of training)."""
        self._settle(n_confirmed)

    cdef int _settle(self, int n_ok) except -1:
        cdef Py_ssize_t m = self.batch_steps.size()
        cdef Py_ssize_t j, i
        cdef size_t pos
        cdef int32_t step, w, n, k
        if n_ok < 0 or n_ok > m:
            raise ValueError(f"n_confirmed {n_ok} out of range for a batch of {m}")
        if n_ok < m:
            # Undo in reverse so each word ends at its state before the first undone step.
            step = self.batch_steps[n_ok]
            # collect segment starts (the log is a sequence of variable-length records)
            starts = []
            pos = 0
            while pos < self.undo.size():
                starts.append(pos)
                pos += 3 + <size_t>self.undo[pos + 2]
            for i in range(len(starts) - 1, -1, -1):
                pos = starts[i]
                if self.undo[pos] < step:
                    break
                w = self.undo[pos + 1]
                n = self.undo[pos + 2]
                for k in range(n):
                    self.sym[self.off[w] + k] = self.undo[pos + 3 + k]
                self.length[w] = n
            for j in range(n_ok, m):
                for i in range(<Py_ssize_t>self.batch_created[j].size()):
                    self._erase_segment(self.batch_created[j][i], self.batch_steps[j])
        for j in range(n_ok):
            self._erase_segment(self.batch_consumed_pair[j], self.batch_consumed_step[j])
        self.undo.clear()
        self.batch_steps.clear()
        self.batch_consumed_pair.clear()
        self.batch_consumed_step.clear()
        self.batch_created.clear()
        self.logging = False
        return 0

    def words(self):
        """Current words as (symbols int32, offsets int64, counts int64)."""
        cdef size_t w, n = self.wcount.size()
        cdef int64_t total = 0
        for w in range(n):
            total += self.length[w]
        sym = np.empty(total, dtype=np.int32)
        off = np.empty(n + 1, dtype=np.int64)
        cnt = np.empty(n, dtype=np.int64)
        cdef int32_t[::1] vs = sym
        cdef int64_t[::1] vo = off
        cdef int64_t[::1] vc = cnt
        cdef int64_t o = 0
        cdef int32_t k
        for w in range(n):
            vo[w] = o
            vc[w] = self.wcount[w]
            for k in range(self.length[w]):
                vs[o + k] = self.sym[self.off[w] + k]
            o += self.length[w]
        vo[n] = o
        return sym, off, cnt


ctypedef fused vec_item:
    int32_t
    int64_t
    uint8_t


cdef object _vec(vector[vec_item]& v, object dtype):
    """A new numpy array of `dtype` (item size = sizeof(vec_item)) holding a copy of `v`."""
    out = np.empty(v.size(), dtype=dtype)
    cdef unsigned char[::1] raw = out.view(np.uint8)
    if v.size():
        memcpy(&raw[0], v.data(), v.size() * sizeof(vec_item))
    return out


cdef object _pairs_to_arrays(unordered_map[pair_t, int64_t]& counts):
    cdef vector[pair_t] keys
    keys.reserve(counts.size())
    cdef unordered_map[pair_t, int64_t].iterator it = counts.begin()
    while it != counts.end():
        keys.push_back(deref(it).first)
        inc(it)
    karr = np.empty(keys.size(), dtype=np.uint64)
    cdef uint64_t[::1] kv = karr
    if keys.size():
        memcpy(&kv[0], keys.data(), keys.size() * sizeof(uint64_t))
    karr.sort()
    n = keys.size()
    left = (karr >> np.uint64(32)).astype(np.int32)
    right = (karr & np.uint64(0xFFFFFFFF)).astype(np.int32)
    cnt = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] cv = cnt
    cdef Py_ssize_t i
    for i in range(<Py_ssize_t>n):
        cv[i] = counts[kv[i]]
    return left, right, cnt


# --------------------------------------------------------------------------------------
# MergeState
# --------------------------------------------------------------------------------------

cdef enum:
    NEXT_STOP = 0
    NEXT_MERGE = 1

# Separator of words in byte-level text: "Ġ" (U+0120) is the space byte, UTF-8 C4 A0.
cdef int count_words_bl(const string& s) noexcept nogil:
    # Number of non-empty pieces when splitting on "Ġ" (SuperBPE's word count).
    cdef size_t i = 0, n = s.size()
    cdef int words = 0
    cdef bint in_word = False
    while i < n:
        if i + 1 < n and <uint8_t>s[i] == 0xC4 and <uint8_t>s[i + 1] == 0xA0:
            in_word = False
            i += 2
            continue
        if not in_word:
            words += 1
            in_word = True
        i += 1
    return words


cdef bint has_colon_space_bl(const string& s) noexcept nogil:
    cdef size_t i
    if s.size() < 3:
        return False
    for i in range(s.size() - 2):
        if <uint8_t>s[i] == 58 and <uint8_t>s[i + 1] == 0xC4 and <uint8_t>s[i + 2] == 0xA0:
            return True
    return False


cdef bint newline_with_text_bl(const string& s) noexcept nogil:
    # True when the token holds a newline ("Ċ" C4 8A or "č" C4 8D) and a non-whitespace char.
    cdef size_t i = 0, n = s.size()
    cdef bint nl = False, other = False
    cdef uint8_t b0, b1
    while i < n:
        b0 = <uint8_t>s[i]
        if b0 == 0xC4 and i + 1 < n:
            b1 = <uint8_t>s[i + 1]
            # Ġ space, ĉ tab, Ċ LF, ċ VT, Č FF, č CR in the byte-level alphabet
            if b1 == 0x8A or b1 == 0x8D:
                nl = True
            elif not (b1 == 0xA0 or b1 == 0x89 or b1 == 0x8B or b1 == 0x8C):
                other = True
            i += 2
            continue
        other = True
        if b0 >= 0xF0:
            i += 4
        elif b0 >= 0xE0:
            i += 3
        elif b0 >= 0xC0:
            i += 2
        else:
            i += 1
    return nl and other


cdef class MergeState:
    """Global pair counts, the lazy heap, the vocabulary and the merges made so far."""
    cdef unordered_map[pair_t, int64_t] counts
    cdef vector[Entry] heap
    cdef vector[string] vocab
    cdef unordered_map[string, int32_t] index
    cdef vector[int32_t] tok_len
    cdef vector[int32_t] merges          # triples: left, right, new id
    cdef int64_t vocab_size
    cdef int64_t min_frequency
    cdef int max_words
    cdef bint ban_colon_space
    cdef bint ban_newline
    cdef public int64_t n_banned
    cdef public int64_t n_stale
    cdef int32_t pending_step

    def __init__(self, vocab, int64_t vocab_size, int64_t min_frequency=0,
                 int max_words=0, bint ban_colon_space=False, bint ban_newline=False):
        """vocab: token strings (str) in id order; specials, alphabet, earlier merges."""
        cdef int32_t i = 0
        cdef bytes b
        for tok in vocab:
            b = tok.encode("utf-8")
            if self.index.count(b):
                raise ValueError(f"duplicate token {tok!r} in the initial vocabulary")
            self.vocab.push_back(b)
            self.index[b] = i
            self.tok_len.push_back(len(tok))
            i += 1
        self.vocab_size = vocab_size
        self.min_frequency = min_frequency
        self.max_words = max_words
        self.ban_colon_space = ban_colon_space
        self.ban_newline = ban_newline
        self.n_banned = 0
        self.n_stale = 0

    def token_lengths(self):
        return _vec[int32_t](self.tok_len, np.int32)

    @property
    def n_vocab(self):
        return self.vocab.size()

    @property
    def n_pairs(self):
        return self.counts.size()

    @property
    def heap_size(self):
        return self.heap.size()

    def add_counts(self, const int32_t[::1] left, const int32_t[::1] right, const int64_t[::1] cnt):
        """Sum (partial) initial pair counts into the global table."""
        cdef Py_ssize_t i
        with nogil:
            for i in range(left.shape[0]):
                self.counts[pack(<uint32_t>left[i], <uint32_t>right[i])] += cnt[i]

    def build_heap(self):
        """Queue one step -1 entry per pair with a positive count."""
        cdef unordered_map[pair_t, int64_t].iterator it = self.counts.begin()
        cdef Entry e
        self.heap.clear()
        self.heap.reserve(self.counts.size())
        while it != self.counts.end():
            if deref(it).second > 0:
                e.count = deref(it).second
                e.pair = deref(it).first
                e.step = -1
                heap_push(self.heap, e)
            inc(it)

    cdef bint _banned(self, const string& s) noexcept nogil:
        if self.ban_colon_space and has_colon_space_bl(s):
            return True
        if self.max_words > 0 and count_words_bl(s) > self.max_words:
            return True
        if self.ban_newline and newline_with_text_bl(s):
            return True
        return False

    cdef int next_merge(self, Entry* out, int32_t* new_id) noexcept nogil:
        """HF's selection loop; on NEXT_MERGE the merge is recorded and the token created."""
        cdef Entry top
        cdef int64_t actual
        cdef string s
        cdef unordered_map[string, int32_t].iterator f
        while True:
            if <int64_t>self.index.size() >= self.vocab_size:
                return NEXT_STOP
            if self.heap.size() == 0:
                return NEXT_STOP
            top = heap_pop(self.heap)
            actual = self.counts[top.pair]
            if top.count != actual:
                top.count = actual
                heap_push(self.heap, top)
                self.n_stale += 1
                continue
            if top.count < 1 or self.min_frequency > top.count:
                return NEXT_STOP
            s = self.vocab[left_of(top.pair)] + self.vocab[right_of(top.pair)]
            if (self.ban_colon_space or self.max_words > 0 or self.ban_newline) and self._banned(s):
                self.n_banned += 1
                continue
            f = self.index.find(s)
            if f != self.index.end():
                new_id[0] = deref(f).second
            else:
                new_id[0] = <int32_t>self.vocab.size()
                self.index[s] = new_id[0]
                self.vocab.push_back(s)
                self.tok_len.push_back(self.tok_len[left_of(top.pair)] + self.tok_len[right_of(top.pair)])
            self.merges.push_back(left_of(top.pair))
            self.merges.push_back(right_of(top.pair))
            self.merges.push_back(new_id[0])
            out[0] = top
            return NEXT_MERGE

    cdef void absorb(self, WordStore ws, int32_t step) noexcept nogil:
        """Apply a store's deltas; queue an entry per gained pair with a positive count."""
        cdef unordered_map[pair_t, int64_t].iterator it = ws.deltas.begin()
        while it != ws.deltas.end():
            self.counts[deref(it).first] += deref(it).second
            inc(it)
        cdef size_t i
        cdef pair_t p
        cdef Entry e
        cdef int64_t c
        for i in range(ws.fresh_order.size()):
            p = ws.fresh_order[i]
            c = self.counts[p]
            if c > 0:
                e.count = c
                e.pair = p
                e.step = step
                heap_push(self.heap, e)
            else:
                ws._erase_segment(p, step)

    def train_local(self, WordStore ws, progress=None, int every=256):
        """Single-node merge loop. `progress(n_merges)` is called every `every` merges."""
        cdef Entry e
        cdef int32_t new_id
        cdef int32_t step = <int32_t>(self.merges.size() // 3)
        cdef int r
        cdef int since = 0
        while True:
            with nogil:
                while since < every:
                    r = self.next_merge(&e, &new_id)
                    if r == NEXT_STOP:
                        break
                    ws.apply(e.pair, e.step, new_id, self.tok_len[new_id], step)
                    self.absorb(ws, step)
                    step += 1
                    since += 1
            if progress is not None:
                progress(step)
            if since < every:
                break
            since = 0
        return step

    # ---- sharded mode ----------------------------------------------------------------

    def next_exact(self):
        """Pop the next merge exactly as HF would: (left, right, entry_step, new_id, new_len, step) or None."""
        cdef Entry e
        cdef int32_t new_id
        cdef int32_t step = <int32_t>(self.merges.size() // 3)
        if self.next_merge(&e, &new_id) == NEXT_STOP:
            return None
        return (left_of(e.pair), right_of(e.pair), e.step, new_id, self.tok_len[new_id], step)

    def speculate(self, first, int k, int max_pops=0):
        """Guess the merges that follow `first` from the current counts, without changing state.

        Entries are popped, the valid ones (stored count == current count) become guesses,
        and every popped entry is pushed back unchanged, so the real heap evolves exactly
        as in single-node mode. Returns an int64 array (m, 6) starting with `first`.
        """
        rows = [first]
        if k <= 1:
            return np.asarray(rows, dtype=np.int64)
        if max_pops <= 0:
            max_pops = 8 * k
        cdef vector[Entry] aside
        cdef Entry top
        cdef int64_t actual
        cdef string s
        cdef int32_t nid
        cdef int32_t step = first[5]
        cdef int32_t next_free = <int32_t>self.vocab.size()
        cdef unordered_map[string, int32_t] overlay
        cdef unordered_map[string, int32_t].iterator f
        cdef int pops = 0
        seen = {(first[0], first[1])}
        cdef int32_t total_vocab = <int32_t>self.index.size()
        while len(rows) < k and self.heap.size() > 0 and pops < max_pops:
            if total_vocab >= self.vocab_size:
                break
            top = heap_pop(self.heap)
            aside.push_back(top)
            pops += 1
            actual = self.counts[top.pair]
            if top.count != actual:
                continue
            if top.count < 1 or self.min_frequency > top.count:
                break
            key = (left_of(top.pair), right_of(top.pair))
            if key in seen:
                continue
            s = self.vocab[left_of(top.pair)] + self.vocab[right_of(top.pair)]
            if (self.ban_colon_space or self.max_words > 0 or self.ban_newline) and self._banned(s):
                continue
            f = self.index.find(s)
            if f != self.index.end():
                nid = deref(f).second
            else:
                f = overlay.find(s)
                if f != overlay.end():
                    nid = deref(f).second
                else:
                    nid = next_free
                    overlay[s] = nid
                    next_free += 1
                    total_vocab += 1
            seen.add(key)
            step += 1
            rows.append((key[0], key[1], top.step, nid,
                         self.tok_len[key[0]] + self.tok_len[key[1]], step))
        cdef size_t i
        for i in range(aside.size()):
            heap_push(self.heap, aside[i])
        return np.asarray(rows, dtype=np.int64)

    def absorb_arrays(self, int32_t step, left, right, delta, gained):
        """Apply summed deltas of one merge; queue gained pairs. Returns the dropped pairs
        (count not positive) as (left, right) arrays for the stores to forget."""
        cdef const int32_t[::1] l = left
        cdef const int32_t[::1] r = right
        cdef const int64_t[::1] d = delta
        cdef const uint8_t[::1] g = gained
        cdef Py_ssize_t i
        cdef pair_t p
        cdef Entry e
        cdef int64_t c
        cdef vector[int32_t] dl, dr
        cdef unordered_map[pair_t, int32_t] queued   # a pair gained in several stores is queued once
        with nogil:
            for i in range(l.shape[0]):
                self.counts[pack(<uint32_t>l[i], <uint32_t>r[i])] += d[i]
            for i in range(l.shape[0]):
                if g[i]:
                    p = pack(<uint32_t>l[i], <uint32_t>r[i])
                    if queued.count(p):
                        continue
                    queued[p] = 1
                    c = self.counts[p]
                    if c > 0:
                        e.count = c
                        e.pair = p
                        e.step = step
                        heap_push(self.heap, e)
                    else:
                        dl.push_back(l[i])
                        dr.push_back(r[i])
        return _vec[int32_t](dl, np.int32), _vec[int32_t](dr, np.int32)

    def merges_array(self):
        """(n, 3) int32: left id, right id, new id, in merge order (duplicates kept)."""
        return _vec[int32_t](self.merges, np.int32).reshape(-1, 3)

    def vocab_tokens(self):
        """Token strings in id order."""
        cdef bytes b
        out = []
        for i in range(self.vocab.size()):
            b = self.vocab[i]
            out.append(b.decode("utf-8"))
        return out

