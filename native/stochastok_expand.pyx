# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""StochasTok expansion, one document at a time in O(length + draws).

The process and the random stream are those of `stages.stochastok` (see its docstring):
draw d of a document is the 64-bit word mix(mix(key) + (d + 1) * GOLDEN); it picks slot
((word >> 32) * (L + d)) >> 32; slot j < L is the j-th original token, slot L + c the
right piece made by draw c. A pick of a slot that does not exist (draw c split nothing)
is rejected. An accepted pick is an attempt; if the token there has n > 0 splits, split
offsets[t] + (((word & 0xFFFFFFFF) * n) >> 32) replaces it: the left piece stays in the
slot, the right piece goes to slot L + d, right after it. Attempts stop at floor(L * p)
(computed by the caller) or when `cap` replacements were made.

Order is kept as linked lists: each original slot has the chain of pieces that follow it
(`after_orig`), each made slot its successor (`next_made`); inserting after a slot is two
stores, and the output is one walk. No per-replacement copying.
"""
from libc.stdint cimport int32_t, int64_t, uint64_t
from libcpp.vector cimport vector

import numpy as np
cimport numpy as cnp

cnp.import_array()

cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL
cdef int64_t SLOT_LIMIT = 1LL << 32  # slot draws are 32-bit


cdef inline uint64_t mix(uint64_t z) noexcept nogil:
    # splitmix64 finalizer, as stages.stochastok._mix
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef int64_t expand_one(
    const int32_t* tokens, int64_t n_tok, uint64_t key, int64_t due, int64_t cap,
    const int64_t* offsets, const int32_t* left, const int32_t* right,
    int32_t* out, int64_t* attempts_out, int64_t* expanded_out,
    vector[int32_t]& work, vector[int64_t]& after_orig,
    vector[int32_t]& made_token, vector[int64_t]& next_made,
) noexcept nogil:
    """Expand one document into `out`; returns the number of ids written (-1: too long)."""
    cdef int64_t attempts = 0, expanded = 0, d = 0, slot, j, k, n, c
    cdef uint64_t base = mix(key), word
    cdef int32_t t
    cdef int32_t* tok
    cdef int64_t* after
    if due <= 0 or cap <= 0:
        for j in range(n_tok):
            out[j] = tokens[j]
        attempts_out[0] = 0
        expanded_out[0] = 0
        return n_tok
    work.assign(tokens, tokens + n_tok)
    after_orig.assign(n_tok, -1)
    made_token.clear()  # token in the slot made by draw d; -1: draw d made none
    next_made.clear()
    tok = work.data()
    after = after_orig.data()
    while attempts < due and expanded < cap:
        if n_tok + d >= SLOT_LIMIT:
            return -1
        word = mix(base + <uint64_t>(d + 1) * GOLDEN)
        slot = <int64_t>(((word >> 32) * <uint64_t>(n_tok + d)) >> 32)
        made_token.push_back(-1)
        next_made.push_back(-1)
        t = tok[slot] if slot < n_tok else made_token[slot - n_tok]
        if t < 0:
            d += 1
            continue  # the slot was never made: not an attempt
        attempts += 1
        n = offsets[t + 1] - offsets[t]
        if n > 0:
            k = offsets[t] + <int64_t>(((word & 0xFFFFFFFFULL) * <uint64_t>n) >> 32)
            made_token[d] = right[k]
            if slot < n_tok:
                tok[slot] = left[k]
                next_made[d] = after[slot]
                after[slot] = d
            else:
                made_token[slot - n_tok] = left[k]
                next_made[d] = next_made[slot - n_tok]
                next_made[slot - n_tok] = d
            expanded += 1
        d += 1
    k = 0
    for j in range(n_tok):
        out[k] = tok[j]
        k += 1
        c = after[j]
        while c >= 0:
            out[k] = made_token[c]
            k += 1
            c = next_made[c]
    attempts_out[0] = attempts
    expanded_out[0] = expanded
    return k


def expand_flat(
    const int32_t[::1] tokens,
    const int64_t[::1] lengths,
    const uint64_t[::1] keys,
    const int64_t[::1] attempts_due,
    int64_t cap,
    const int64_t[::1] offsets,
    const int32_t[::1] left,
    const int32_t[::1] right,
):
    """Expand documents given flat; returns (ids int32, lengths, attempts, expanded), or
    Nones when a document would need slots beyond 2**32.

    Inputs are validated by the caller (stages.stochastok.expand_flat): ids in range of
    `offsets`, lengths adding up.
    """
    cdef Py_ssize_t n_docs = lengths.shape[0], i
    cdef int64_t total_due = 0, pos = 0, wrote = 0
    for i in range(n_docs):
        total_due += attempts_due[i] if attempts_due[i] > 0 else 0
    # every replacement comes from an attempt, so T + sum(due) bounds the output
    out_arr = np.empty(tokens.shape[0] + total_due, dtype=np.int32)
    out_len_arr = np.empty(n_docs, dtype=np.int64)
    att_arr = np.empty(n_docs, dtype=np.int64)
    exp_arr = np.empty(n_docs, dtype=np.int64)
    cdef int32_t[::1] out = out_arr
    cdef int64_t[::1] out_len = out_len_arr
    cdef int64_t[::1] att = att_arr
    cdef int64_t[::1] exp = exp_arr
    cdef vector[int32_t] work
    cdef vector[int64_t] after_orig, next_made
    cdef vector[int32_t] made_token
    cdef const int32_t* tok_ptr = &tokens[0] if tokens.shape[0] else NULL
    cdef int32_t* out_ptr = &out[0] if out.shape[0] else NULL
    cdef const int32_t* left_ptr = &left[0] if left.shape[0] else NULL
    cdef const int32_t* right_ptr = &right[0] if right.shape[0] else NULL
    cdef int64_t out_pos = 0
    with nogil:
        for i in range(n_docs):
            wrote = expand_one(
                tok_ptr + pos, lengths[i], keys[i], attempts_due[i], cap,
                &offsets[0], left_ptr, right_ptr, out_ptr + out_pos, &att[i], &exp[i],
                work, after_orig, made_token, next_made)
            if wrote < 0:
                break
            out_len[i] = wrote
            pos += lengths[i]
            out_pos += wrote
    if wrote < 0:
        return None, None, None, None
    return out_arr[:out_pos], out_len_arr, att_arr, exp_arr
