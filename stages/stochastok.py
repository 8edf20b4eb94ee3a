"""StochasTok: split tokens into two in-vocabulary pieces at random, decoding to the same bytes.

Split table
    For every token of two or more bytes, all ways to cut its bytes into two tokens that are
    both in the vocabulary (special/added tokens never take part). Every prefix of every
    token gets a polynomial hash from one cumulative sum over all token bytes, the matching
    suffix hash follows from it, and both are looked up among the hashes of whole tokens:
    O(total token bytes) hash lookups, vectorized; each split found is then checked byte for
    byte. (`SplitTable.build_with_tries` does the same with dict tries, walking every token
    once each way; it is the fallback if two whole-token hashes ever collide.) Stored as
    CSR arrays.

Expansion with proportion p (the paper's process, DESIGN.md)
    A document of L tokens gets N = floor(L * p) attempts. Each attempt picks a uniformly
    random position of the *current* sequence; if the token there has splits, it is replaced
    by one chosen uniformly (pieces can be split again by later attempts). With
    `max_num_to_expand`, attempts stop once that many replacements were made. Every
    replacement keeps the bytes, so the expanded ids decode to exactly the original bytes.

Two backends, identical output (`expand_flat(backend=...)`)
    "native" (the default) runs the process below one document at a time in compiled code
    (native/stochastok_expand.pyx): a draw is a few integer operations, a replacement two
    linked-list stores, the output one walk; O(length + draws), about 4 ns per token at
    p = 0.1 against about 18 for "numpy", the vectorized form described next, which is the
    cross-check: both are tested against each other and against a sequential oracle, bit
    for bit (benchmarks/bench_encode.py times both on the same corpus).

How the numpy backend is vectorized (same draws, no per-replacement list work)
    Positions are identified with *slots*: slot j < L is the j-th original token, and the
    replacement made by draw d keeps its left piece in the slot it split and puts its right
    piece in the new slot L + d. Draw d picks a slot uniformly in [0, L + d) and is an
    attempt only if that slot is alive (original, or made by an earlier successful draw);
    otherwise it is rejected and the next draw tried. Conditioned on acceptance the pick is
    uniform over the current sequence, which is exactly the reference process. A draw
    depends only on the previous visit to its slot and, for an appended slot, on the draw
    that made it; all draws of a group of documents are resolved together, level by level
    along those dependencies (a handful of numpy passes), and the order is rebuilt without
    per-replacement work: a split piece sits right after the slot that was split, newer
    pieces first.

Randomness
    Each document's draws are a fixed counter-based stream (splitmix64 over a 64-bit key;
    `draw_stream`), the key is blake2b of (run seed, document id), never Python's
    ``hash()``. A document's result depends only on its ids, key, p and cap: not on batch
    composition, worker count or order. How many draws are resolved at once (`budget`) is
    only a speed knob: a document that runs out is redone with twice as many, which gives
    the result an unlimited budget would.
"""
from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_U32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)


class StochasTokMode(str, enum.Enum):
    """What the encode step emits: plain ids, expanded ids (the paper's default), or both."""

    OFF = "off"
    EXPAND = "expand"
    BOTH = "both"


# -- seeds and random streams ------------------------------------------------------------
def document_key(run_seed: int, doc_id) -> int:
    """Stable 64-bit key of a document's random stream (blake2b of seed and id)."""
    digest = hashlib.blake2b(
        f"{int(run_seed)}\x1f{doc_id}".encode(), digest_size=8, person=b"tm-stochastok"
    ).digest()
    return int.from_bytes(digest, "little")


def document_keys(run_seed: int, doc_ids: Iterable) -> np.ndarray:
    return np.fromiter((document_key(run_seed, d) for d in doc_ids), dtype=np.uint64)


def _mix(z: np.ndarray) -> np.ndarray:
    # splitmix64 finalizer; uint64 arrays wrap on overflow, which is what we want
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _uniform_below(raw: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Map uniform 64-bit words to [0, n) by multiply-shift on the high 32 bits (n < 2**32)."""
    return (((raw >> _U32) * n.astype(np.uint64)) >> _U32).astype(np.int64)


def budget(length: int | np.ndarray, attempts: int | np.ndarray, round_: int = 0):
    """Draws to resolve at once for a document (doubling per retry round).

    Only a speed knob: draws are a fixed stream, so a larger budget gives the same result.
    Estimate: draw d accepts with probability (L + s) / (L + d); with half the attempts
    succeeding, N attempts need about N + N^2 / 4L draws; 5% + 16 on top.
    """
    length = np.maximum(np.asarray(length, dtype=np.int64), 1)
    attempts = np.asarray(attempts, dtype=np.int64)
    base = ((attempts + attempts * attempts // (4 * length)) * 21) // 20 + 16
    return np.where(attempts > 0, base << round_, 0)


def draw_stream(key: int, count: int) -> np.ndarray:
    """The 64-bit words of a document's first `count` draws.

    Draw d picks slot `pick(word, L + d)` (high 32 bits) and, if that token splits, split
    `pick_low(word, n_splits)` (low 32 bits).
    """
    return _draw_words(_mix(np.full(count, key, dtype=np.uint64)),
                       np.arange(count, dtype=np.uint64))


def _draw_words(base: np.ndarray, counters: np.ndarray) -> np.ndarray:
    return _mix(base + (counters + np.uint64(1)) * _GOLDEN)


def pick(raw: np.ndarray, n) -> np.ndarray:
    """Index in [0, n) from the high 32 bits of draw words (bias below n / 2**32)."""
    return _uniform_below(np.asarray(raw, dtype=np.uint64), np.asarray(n))


def pick_low(raw: np.ndarray, n) -> np.ndarray:
    """Index in [0, n) from the low 32 bits of draw words."""
    low = np.asarray(raw, dtype=np.uint64) & _LOW32
    return ((low * np.asarray(n).astype(np.uint64)) >> _U32).astype(np.int64)


# -- split table -------------------------------------------------------------------------
_HASH_P = 0x100000001B3  # odd, so it has an inverse modulo 2**64
_HASH_Q = pow(_HASH_P, -1, 2**64)


def _powers(base: int, n: int) -> np.ndarray:
    out = np.empty(max(n, 1), dtype=np.uint64)
    value = 1
    for i in range(out.size):  # n is the longest token: a few dozen steps
        out[i] = value
        value = (value * base) % 2**64
    return out


def _hash_splits(tokens: list[bytes], ids: np.ndarray):
    """(owner, left, right) id triples of every split, ordered by owner then cut, or None
    when two tokens' hashes collide. `tokens` are distinct, with their `ids`."""
    n = len(tokens)
    empty = np.zeros(0, np.int64)
    if n == 0:
        return empty, empty, empty
    lens = np.fromiter(map(len, tokens), np.int64, n)
    buf = np.frombuffer(b"".join(tokens), np.uint8)
    starts = np.zeros(n, np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    owner = np.repeat(np.arange(n), lens)
    u = np.arange(buf.size) - starts[owner]  # position inside its token
    p_pow = _powers(_HASH_P, int(lens.max()) + 1)
    q_pow = _powers(_HASH_Q, int(lens.max()) + 1)
    # hash of t[:j] = sum_u (t[u] + 1) * P^(j-1-u) = P^(j-1) * sum_u (t[u] + 1) * Q^u (mod 2^64)
    csum = np.cumsum((buf.astype(np.uint64) + np.uint64(1)) * q_pow[u])
    before = np.where(starts > 0, csum[np.maximum(starts - 1, 0)], np.uint64(0))
    prefix_hash = p_pow[u] * (csum - before[owner])  # hash of t[:u + 1]
    whole = prefix_hash[starts + lens - 1]
    order = np.argsort(whole, kind="stable")
    sorted_hash = whole[order]
    if (sorted_hash[1:] == sorted_hash[:-1]).any():
        return None

    def lookup(h: np.ndarray, length: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(sorted_hash, h), n - 1)
        hit = order[at]
        return np.where((sorted_hash[at] == h) & (lens[hit] == length), hit, -1)

    cut_pos = np.flatnonzero(u < lens[owner] - 1)  # cut after this byte
    k = owner[cut_pos]
    j = u[cut_pos] + 1
    left = lookup(prefix_hash[cut_pos], j)
    suffix_hash = whole[k] - prefix_hash[cut_pos] * p_pow[lens[k] - j]
    right = lookup(suffix_hash, lens[k] - j)
    keep = (left >= 0) & (right >= 0)
    k, j, left, right = k[keep], j[keep], left[keep], right[keep]
    # exact check of every split found: left piece == t[:j], right piece == t[j:]
    ok = _same_bytes(buf, starts[k], starts[left], j) & _same_bytes(
        buf, starts[k] + j, starts[right], lens[k] - j
    )
    return ids[k[ok]], ids[left[ok]], ids[right[ok]]


def _same_bytes(buf, a_start, b_start, length) -> np.ndarray:
    """Per pair i: buf[a_start[i]:+length[i]] == buf[b_start[i]:+length[i]]."""
    m = length.size
    pair = np.repeat(np.arange(m), length)
    off = np.arange(pair.size) - np.repeat(np.cumsum(length) - length, length)
    differs = buf[a_start[pair] + off] != buf[b_start[pair] + off]
    return np.bincount(pair[differs], minlength=m) == 0


@dataclass(frozen=True)
class SplitTable:
    """Binary splits per token id, CSR: splits of t are (left[i], right[i]) for i in
    range(offsets[t], offsets[t + 1]), ordered by cut position."""

    offsets: np.ndarray
    left: np.ndarray
    right: np.ndarray

    @property
    def vocab_size(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def counts(self) -> np.ndarray:
        """Number of splits per token id."""
        cached = self.__dict__.get("_counts")
        if cached is None:
            cached = np.diff(self.offsets)
            object.__setattr__(self, "_counts", cached)  # frozen: cache by hand
        return cached

    def splits(self, token: int) -> list[tuple[int, int]]:
        a, b = int(self.offsets[token]), int(self.offsets[token + 1])
        return list(zip(self.left[a:b].tolist(), self.right[a:b].tolist()))

    def as_dict(self) -> dict[int, list[tuple[int, int]]]:
        """{token: [(left, right), ...]} for splittable tokens (int keys, unlike a JSON cache)."""
        return {t: self.splits(t) for t in np.flatnonzero(self.counts).tolist()}

    @classmethod
    def build(cls, token_bytes: Sequence[bytes | None]) -> SplitTable:
        """Split table of a vocabulary given as id -> bytes (None for special tokens).

        Vectorized: one polynomial hash per prefix of every token (a cumulative sum over
        all token bytes), suffix hashes derived from it, both looked up in the sorted hashes
        of whole tokens; the splits found are then compared byte for byte, so a hash
        collision can never produce a wrong split. If two tokens' hashes collide (which
        could hide a split) the exact trie build is used instead. If two ids share the same
        bytes, the lower id is used as a piece.
        """
        id_of: dict[bytes, int] = {}
        for idx, tb in enumerate(token_bytes):
            if tb and tb not in id_of:
                id_of[tb] = idx
        found = _hash_splits(list(id_of), np.fromiter(id_of.values(), np.int64, len(id_of)))
        if found is None:
            return cls.build_with_tries(token_bytes)
        return cls._from_triples(len(token_bytes), *found)

    @classmethod
    def _from_triples(cls, vocab_size: int, owner, left, right) -> SplitTable:
        """CSR from (owner, left, right) triples already ordered by owner, then cut."""
        offsets = np.zeros(vocab_size + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner, minlength=vocab_size), out=offsets[1:])
        return cls(offsets=offsets, left=np.asarray(left, np.int32),
                   right=np.asarray(right, np.int32))

    @classmethod
    def build_with_tries(cls, token_bytes: Sequence[bytes | None]) -> SplitTable:
        """The same table from a prefix trie and a reversed-suffix trie (dicts keyed by
        node * 256 + byte): every token is walked once each way."""
        id_of: dict[bytes, int] = {}
        for idx, tb in enumerate(token_bytes):
            if tb and tb not in id_of:
                id_of[tb] = idx
        fwd_child: dict[int, int] = {}
        rev_child: dict[int, int] = {}
        fwd_tok = [-1]
        rev_tok = [-1]
        for tb, idx in id_of.items():
            for child, node_tok, seq in ((fwd_child, fwd_tok, tb), (rev_child, rev_tok, tb[::-1])):
                node = 0
                for byte in seq:
                    key = node * 256 + byte
                    nxt = child.get(key)
                    if nxt is None:
                        nxt = len(node_tok)
                        child[key] = nxt
                        node_tok.append(-1)
                    node = nxt
                node_tok[node] = idx
        lefts: list[int] = []
        rights: list[int] = []
        owners: list[int] = []
        for tb, idx in id_of.items():
            n = len(tb)
            if n < 2:
                continue
            prefix_id = [-1] * n  # prefix_id[j] = id of tb[:j]
            node = 0
            for j in range(n - 1):
                node = fwd_child.get(node * 256 + tb[j])
                if node is None:
                    break
                prefix_id[j + 1] = fwd_tok[node]
            found = []
            node = 0
            for k in range(n - 1):  # suffix of length k + 1 starts at cut n - k - 1
                node = rev_child.get(node * 256 + tb[n - 1 - k])
                if node is None:
                    break
                cut = n - 1 - k
                if prefix_id[cut] >= 0 and rev_tok[node] >= 0:
                    found.append((prefix_id[cut], rev_tok[node]))
            for left, right in reversed(found):  # by cut position
                owners.append(idx)
                lefts.append(left)
                rights.append(right)
        return cls._from_triples(len(token_bytes), np.asarray(owners, np.int64), lefts, rights)


# -- expansion ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Expansion:
    """Expanded documents (flat) with per-document counters."""

    tokens: np.ndarray
    lengths: np.ndarray
    attempts: np.ndarray  # attempts made: floor(L * p), fewer only if the cap stopped them
    expanded: np.ndarray  # replacements made

    @property
    def total_attempts(self) -> int:
        return int(self.attempts.sum())

    @property
    def total_expanded(self) -> int:
        return int(self.expanded.sum())


def attempts_for(lengths, p: float) -> np.ndarray:
    """floor(L * p) per document, computed like the reference (float product, truncated)."""
    return np.floor(np.asarray(lengths, dtype=np.int64) * float(p)).astype(np.int64)


def _excl_cumsum(x: np.ndarray) -> np.ndarray:
    out = np.zeros(x.size + 1, dtype=np.int64)
    np.cumsum(x, out=out[1:])
    return out


def _per_doc(cumulative: np.ndarray, draw_off: np.ndarray) -> np.ndarray:
    """Per-document totals from an inclusive cumulative sum over all draws."""
    padded = np.concatenate(([0], cumulative))
    return padded[draw_off[1:]] - padded[draw_off[:-1]]


def _expand_round(tokens, lengths, keys, n_att, table: SplitTable, cap: int, round_: int):
    """One vectorized pass; returns outputs and which documents ran out of draws.

    Slots are numbered globally: original slot = token index t < T, the slot created by
    draw g = T + g. Only draw-sized and token-sized arrays are allocated.
    """
    n_docs = lengths.size
    n_tok = tokens.size
    tok_off = _excl_cumsum(lengths)
    draws = budget(lengths, n_att, round_)
    if draws.size and int((lengths + draws).max()) >= 2**32:
        raise ValueError("document too long for StochasTok's 32-bit slot draws")
    draw_off = _excl_cumsum(draws)
    total = int(draw_off[-1])
    counts = table.counts

    doc = np.repeat(np.arange(n_docs), draws)
    start_d = draw_off[doc]
    len_d = lengths[doc]
    local = np.arange(total, dtype=np.int64) - start_d
    words = _draw_words(_mix(keys)[doc], local.astype(np.uint64))
    # draw d picks among the slots that exist by then: [0, L + d)
    r = pick(words, len_d + local) - len_d
    # r >= 0: the slot made by this document's draw r; r < 0: original token L + r
    appended = r >= 0
    creator = np.where(appended, start_d + r, -1)
    gslot = np.where(appended, n_tok + creator, tok_off[1:][doc] + r)

    # previous visit to the same slot; only slots seen more than once need the (stable,
    # time-ordered) sort
    seen = np.bincount(gslot, minlength=n_tok + total)
    multi = np.flatnonzero(seen[gslot] > 1)
    order = multi[np.argsort(gslot[multi], kind="stable")]
    prev = np.full(total, -1, dtype=np.int64)
    same = gslot[order[1:]] == gslot[order[:-1]]
    prev[order[1:][same]] = order[:-1][same]

    tok_in = np.full(total, -1, dtype=np.int64)
    valid = ~appended  # original slots are always alive; made slots are settled below
    succ = np.zeros(total, dtype=bool)
    split = np.full(total, -1, dtype=np.int64)
    offsets = table.offsets

    def settle(idx: np.ndarray, t: np.ndarray, known_valid: bool = False) -> None:
        # t: the token each draw found (-1 where the draw was rejected)
        n = counts[t] if known_valid else np.where(t >= 0, counts[np.maximum(t, 0)], 0)
        ok = n > 0 if known_valid else valid[idx] & (n > 0)
        succ[idx] = ok
        sel = idx[ok]
        split[sel] = offsets[t[ok]] + pick_low(words[sel], n[ok])

    first_mask = valid & (prev < 0)  # first visits to original slots: no dependency
    first_orig = np.flatnonzero(first_mask)
    t_first = tokens[gslot[first_orig]]
    tok_in[first_orig] = t_first
    settle(first_orig, t_first, known_valid=True)
    resolved = first_mask
    pending = np.flatnonzero(~first_mask)
    dep = np.where(prev[pending] >= 0, prev[pending], creator[pending])
    while pending.size:
        is_ready = resolved[dep]
        ready = pending[is_ready]
        if not ready.size:  # dependencies point backwards in time, so this cannot happen
            raise AssertionError("StochasTok draw dependencies did not resolve")
        # a revisited slot holds the left piece if the previous visit split it
        chained = ready[prev[ready] >= 0]
        p_ = prev[chained]
        valid[chained] = valid[p_]
        tok_in[chained] = tok_in[p_]
        hit = succ[p_]
        tok_in[chained[hit]] = table.left[split[p_[hit]]]
        # the first visit to a made slot finds the right piece of the split that made it
        fresh = ready[prev[ready] < 0]
        c_ = creator[fresh]
        made_ok = succ[c_]
        valid[fresh] = made_ok
        tok_in[fresh[made_ok]] = table.right[split[c_[made_ok]]]
        settle(ready, tok_in[ready])
        resolved[ready] = True
        pending, dep = pending[~is_ready], dep[~is_ready]

    # which draws are attempts that happened: the first N accepted, until the cap is hit
    cum_valid = np.cumsum(valid)
    att_no = cum_valid - np.concatenate(([0], cum_valid))[start_d]
    made = valid & (att_no <= n_att[doc])
    if cap < np.iinfo(np.int64).max:
        cum_succ = np.cumsum(succ)
        succ_before = cum_succ - succ - np.concatenate(([0], cum_succ))[start_d]
        made &= succ_before < cap
    applied = made & succ
    accepted = _per_doc(cum_valid, draw_off)
    attempts = _per_doc(np.cumsum(made), draw_off)
    a = np.flatnonzero(applied)
    expanded = np.bincount(doc[a], minlength=n_docs)
    short = (accepted < n_att) & (expanded < cap)

    # rebuild: nodes are the applied draws (each made one new slot)
    n_new = a.size
    if not n_new:
        return tokens.astype(np.int32), lengths + expanded, attempts, expanded, short
    a_parent = gslot[a]
    a_split = split[a]
    a_left = table.left[a_split]
    node_final = table.right[a_split].astype(np.int32)
    node_of_draw = np.full(total, -1, dtype=np.int64)
    node_of_draw[a] = np.arange(n_new)
    # sibling rank (1 = newest: the newest piece split off a slot sits right after it); the
    # newest split also leaves the slot its final (left) piece. Slots split twice or more
    # were visited twice or more, so they are among `order` (slot, then time).
    rank = np.ones(n_new, dtype=np.int64)
    o_applied = applied[order]
    if o_applied.any():
        o_slot = gslot[order]
        run_start = np.flatnonzero(np.r_[True, o_slot[1:] != o_slot[:-1]])
        run = np.cumsum(np.r_[True, o_slot[1:] != o_slot[:-1]]) - 1
        upto = np.cumsum(o_applied)  # applied visits so far, over all runs
        at_end = upto[np.r_[run_start[1:] - 1, o_slot.size - 1]]
        at_start = upto[run_start] - o_applied[run_start]
        later = at_end[run] - upto + o_applied  # applied visits from this one to the run end
        shared = o_applied & (at_end[run] - at_start[run] > 1)
        rank[node_of_draw[order[shared]]] = later[shared]
    newest = np.flatnonzero(rank == 1)
    slot = a_parent[newest]
    is_orig = slot < n_tok
    root_final = slot[is_orig], a_left[newest[is_orig]]
    node_final[node_of_draw[slot[~is_orig] - n_tok]] = a_left[newest[~is_orig]]
    # root token and depth of every node
    root = a_parent.copy()
    depth = np.ones(n_new, dtype=np.int64)
    up = np.flatnonzero(root >= n_tok)
    while up.size:
        root[up] = gslot[root[up] - n_tok]
        depth[up] += 1
        up = up[root[up] >= n_tok]
    # output slot of node = its root + 1 + nodes of earlier roots + rank inside its group;
    # only groups of two or more nodes need ordering (root, sibling ranks by depth)
    group = np.bincount(root, minlength=n_tok)
    before = _excl_cumsum(group)
    within = np.zeros(n_new, dtype=np.int64)
    busy = np.flatnonzero(group[root] > 1)
    # groups whose pieces were all split off the original token need no key sort: the
    # newest piece comes first, so the place inside the group is the sibling rank
    deep_root = np.zeros(n_tok, dtype=bool)
    deep_root[root[busy][depth[busy] > 1]] = True
    flat = busy[~deep_root[root[busy]]]
    within[flat] = rank[flat] - 1
    busy = busy[deep_root[root[busy]]]
    if busy.size:
        parent_node = np.where(
            a_parent >= n_tok, node_of_draw[np.maximum(a_parent - n_tok, 0)], -1
        )
        max_depth = int(depth[busy].max())
        key_rows = np.zeros((max_depth, busy.size), dtype=np.int64)
        cur = busy.copy()
        cur_depth = depth[busy]
        for _ in range(max_depth):
            on = np.flatnonzero(cur >= 0)
            key_rows[cur_depth[on] - 1, on] = rank[cur[on]]
            cur[on] = parent_node[cur[on]]
            cur_depth[on] -= 1
        placed = busy[np.lexsort((*key_rows[::-1], root[busy]))]
        rp = root[placed]
        gfirst = np.r_[True, rp[1:] != rp[:-1]]
        within[placed] = np.arange(placed.size) - np.maximum.accumulate(
            np.where(gfirst, np.arange(placed.size), 0)
        )
    ins = root + 1 + before[root] + within
    out = np.empty(n_tok + n_new, dtype=np.int32)
    keep = np.ones(n_tok + n_new, dtype=bool)
    keep[ins] = False
    out[keep] = tokens
    out[ins] = node_final
    split_root, left_piece = root_final  # a split original keeps its last left piece
    out[split_root + before[split_root]] = left_piece
    return out, lengths + expanded, attempts, expanded, short


#: Documents are expanded in groups of about this many tokens: the random accesses of a
#: group then stay in cache (measured ~1.5x faster than one large batch).
CHUNK_TOKENS = 1 << 18


def _expand_docs(tokens, lengths, keys, n_att, table, cap):
    """Expand a group of documents, redoing those whose draw budget ran short."""
    out, out_len, attempts, expanded, short = _expand_round(
        tokens, lengths, keys, n_att, table, cap, 0
    )
    round_ = 0
    while short.any():
        round_ += 1
        if round_ > 40:
            raise AssertionError("StochasTok draw budget did not converge")
        redo = np.flatnonzero(short)
        offs = _excl_cumsum(lengths)
        sub_tokens = np.concatenate([tokens[offs[i] : offs[i + 1]] for i in redo])
        s_out, s_len, s_att, s_exp, s_short = _expand_round(
            sub_tokens, lengths[redo], keys[redo], n_att[redo], table, cap, round_
        )
        pieces = np.split(out, _excl_cumsum(out_len)[1:-1])
        for j, piece in enumerate(np.split(s_out, _excl_cumsum(s_len)[1:-1])):
            pieces[redo[j]] = piece
        out = np.concatenate(pieces)
        out_len[redo], attempts[redo], expanded[redo] = s_len, s_att, s_exp
        short = np.zeros_like(short)
        short[redo] = s_short
    return out, out_len, attempts, expanded


#: Expansion backends: the compiled kernel (default) and the vectorized numpy code above.
BACKENDS = ("native", "numpy")


def expand_flat(
    tokens: np.ndarray,
    lengths: np.ndarray,
    keys: np.ndarray,
    table: SplitTable,
    p: float,
    *,
    max_num_to_expand: int | None = None,
    backend: str = "native",
) -> Expansion:
    """Expand a batch of documents given flat (`tokens`, `lengths`), one key per document.

    `keys` come from `document_keys(run_seed, doc_ids)`. Returns int32 ids. The cap
    `max_num_to_expand` applies per document, like the reference. `backend` "native" runs
    the process one document at a time in compiled code (native/stochastok_expand.pyx,
    about 4x faster); "numpy" runs the vectorized code of this module. Both give the same
    ids and counters, bit for bit (tested against each other and a sequential oracle).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    tokens = np.asarray(tokens)
    lengths = np.asarray(lengths, dtype=np.int64)
    keys = np.asarray(keys, dtype=np.uint64)
    if not (np.isfinite(p) and p >= 0):
        raise ValueError(f"p must be a finite number >= 0, got {p}")
    if keys.shape != lengths.shape:
        raise ValueError("one key per document is needed")
    if int(lengths.sum()) != tokens.size:
        raise ValueError("lengths do not add up to the number of tokens")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= table.vocab_size):
        raise ValueError(
            f"token ids must lie in [0, {table.vocab_size}) of the split table's vocabulary"
        )
    if max_num_to_expand is not None and max_num_to_expand < 0:
        raise ValueError("max_num_to_expand must be >= 0 or None")
    cap = np.iinfo(np.int64).max if max_num_to_expand is None else int(max_num_to_expand)
    n_att = attempts_for(lengths, p)
    if backend == "native":
        from native import stochastok_expand

        contiguous = np.ascontiguousarray  # the kernel takes C-contiguous buffers
        out, out_len, attempts, expanded = stochastok_expand.expand_flat(
            contiguous(tokens, dtype=np.int32), contiguous(lengths), contiguous(keys), n_att, cap,
            contiguous(table.offsets, dtype=np.int64), contiguous(table.left, dtype=np.int32),
            contiguous(table.right, dtype=np.int32))
        if out is None:
            raise ValueError("document too long for StochasTok's 32-bit slot draws")
        return Expansion(out, out_len, attempts, expanded)
    offs = _excl_cumsum(lengths)
    group = offs[:-1] // CHUNK_TOKENS
    cuts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if lengths.size else []
    bounds = [*map(int, cuts), int(lengths.size)]
    parts = [
        _expand_docs(tokens[offs[a] : offs[b]], lengths[a:b], keys[a:b], n_att[a:b], table, cap)
        for a, b in pairwise(bounds)
    ]
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return Expansion(np.zeros(0, np.int32), empty, empty.copy(), empty.copy())
    return Expansion(
        tokens=np.concatenate([x[0] for x in parts]).astype(np.int32, copy=False),
        lengths=np.concatenate([x[1] for x in parts]),
        attempts=np.concatenate([x[2] for x in parts]),
        expanded=np.concatenate([x[3] for x in parts]),
    )


def expand(
    ids: Sequence[int] | np.ndarray,
    table: SplitTable,
    p: float,
    key: int,
    *,
    max_num_to_expand: int | None = None,
    backend: str = "native",
) -> Expansion:
    """Expand one document (convenience over `expand_flat`)."""
    arr = np.asarray(ids, dtype=np.int64).ravel()
    return expand_flat(
        arr,
        np.array([arr.size]),
        np.array([key], dtype=np.uint64),
        table,
        p,
        max_num_to_expand=max_num_to_expand,
        backend=backend,
    )
