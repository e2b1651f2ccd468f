"""Plain-Python references for CTC decoding: greedy decoding and the textbook prefix beam search.

These are the definitions of "exact" that the native ``fastdecoder.decode.greedy_decode`` / ``beam_search`` are
checked against (by the tests and by ``fastdecoder parity``).

Prefix beam search (Graves 2006, Hannun 2014), in natural-log space. Each beam entry is a distinct prefix (collapsed
label sequence) y with two masses: pb(y), the log-probability of all alignments of the frames so far that collapse to y
and end in blank, and pnb(y), those that end in y's last label. Its score is logsumexp(pb, pnb). Start: {(): pb=0}.
At frame t, with log-probabilities lp[s], every beam prefix y (last label c) contributes to the next frame:

    blank:            pb'(y)     += lse(pb(y), pnb(y)) + lp[blank]
    repeat of c:      pnb'(y)    += pnb(y) + lp[c]              (collapses into y)
    label c again:    pnb'(y+c)  += pb(y) + lp[c]               (needs a blank in between)
    label s != c:     pnb'(y+s)  += lse(pb(y), pnb(y)) + lp[s]

where "+=" is log-sum-exp accumulation, so a prefix reached in several ways holds one merged entry; a prefix whose
mass is zero (-inf, e.g. y+c while pb(y) = -inf) is not a candidate. The next beam is
the ``beam_width`` best prefixes by score; ties (equal float scores) go to the lexicographically smaller token
sequence (a proper prefix sorts first), i.e. the sort key is (-score, tuple(tokens)). The final ranking uses the same
key.

Optional lossy cut ``token_min_logprob``: a label s with lp[s] < token_min_logprob at frame t proposes no prefix that
is not already in the beam; the masses of beam prefixes (blank, repeat, and extensions into a prefix that is already
in the beam) are always kept, so returned scores stay exact sums over the alignments the beam kept.

Token frames: the frame at which each prefix first entered the beam (its last label's emission frame on the path
that first put it there); a hypothesis' frames are those of its prefixes, so they strictly increase.
"""
from __future__ import annotations

import math

NEG_INF = float("-inf")


def lse(a: float, b: float) -> float:
    """log(exp(a) + exp(b)), safe for -inf."""
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


def collapse(path, blank: int = 0) -> tuple:
    """Merge repeats, then drop blanks."""
    out = []
    prev = None
    for s in path:
        if s != prev and s != blank:
            out.append(s)
        prev = s
    return tuple(out)


def greedy_reference(scores, blank: int = 0) -> list[int]:
    """Greedy CTC decoding of one sentence: scores (T, V) indexable as scores[t][s]; first maximum wins ties."""
    path = []
    for row in scores:
        row = [float(v) for v in row]
        path.append(max(range(len(row)), key=lambda s: (row[s], -s)))
    return list(collapse(path, blank))


def prefix_beam_search(lp, beam_width: int, blank: int = 0, nbest: int | None = None,
                       token_min_logprob: float | None = None, return_frames: bool = False):
    """Textbook CTC prefix beam search of one sentence.

    lp: (T, V) natural-log probabilities (anything indexable as lp[t][s] giving floats). Returns up to ``nbest``
    (default ``beam_width``) tuples (tokens, score) best first, or (tokens, score, frames) with ``return_frames``.
    """
    T = len(lp)
    V = len(lp[0]) if T else 0
    beam = {(): (0.0, NEG_INF)}  # prefix -> (pb, pnb)
    first_frame = {(): -1}
    for t in range(T):
        row = [float(x) for x in lp[t]]
        nxt: dict[tuple, list] = {}

        def add(prefix, which, val):
            if val == NEG_INF:  # zero mass (e.g. y+c from a y with no blank-ending alignment): no entry
                return
            e = nxt.get(prefix)
            if e is None:
                e = nxt[prefix] = [NEG_INF, NEG_INF]
            e[which] = lse(e[which], val)

        for y, (pb, pnb) in beam.items():
            tot = lse(pb, pnb)
            c = y[-1] if y else None
            for s in range(V):
                p = row[s]
                if s == blank:
                    add(y, 0, tot + p)
                    continue
                ys = y + (s,)
                cut = ys not in beam and token_min_logprob is not None and p < token_min_logprob
                if s == c:
                    add(y, 1, pnb + p)
                    if not cut:
                        add(ys, 1, pb + p)
                elif not cut:
                    add(ys, 1, tot + p)
        ranked = sorted(((y, lse(*e)) for y, e in nxt.items()), key=lambda kv: (-kv[1], kv[0]))[:beam_width]
        beam = {y: tuple(nxt[y]) for y, _ in ranked}
        for y, _ in ranked:
            first_frame.setdefault(y, t)
    ranked = sorted(((y, lse(*e)) for y, e in beam.items()), key=lambda kv: (-kv[1], kv[0]))
    ranked = ranked[: (beam_width if nbest is None else nbest)]
    if return_frames:
        return [(list(y), s, [first_frame[y[:i + 1]] for i in range(len(y))]) for y, s in ranked]
    return [(list(y), s) for y, s in ranked]


def peaky_log_probs(rng, batch: int, frames: int, vocab: int, blank: int = 0, p_blank: float = 0.6,
                    p_uncertain: float = 0.15, dtype=None):
    """Random CTC-like log-posteriors (B, T, V) as a float32 NumPy array (natural-log softmax of logits).

    Most frames are confident blanks, some hold a confident label spike (often lasting 2-3 frames, as a phoneme
    does), some are uncertain (a few competing classes, often including blank, over a flat rest).
    """
    import numpy as np

    logits = rng.normal(0.0, 1.0, size=(batch, frames, vocab))
    labels = np.array([s for s in range(vocab) if s != blank] or [blank])
    kind = rng.random((batch, frames))
    tok = labels[rng.integers(0, len(labels), size=(batch, frames))]
    hold = rng.random((batch, frames)) < 0.5  # a spike repeats the previous frame's label
    for t in range(1, frames):
        tok[:, t] = np.where(hold[:, t], tok[:, t - 1], tok[:, t])
    b_idx, t_idx = np.meshgrid(np.arange(batch), np.arange(frames), indexing="ij")
    boost = rng.uniform(6.0, 14.0, size=(batch, frames))
    is_blank = kind < p_blank
    is_spike = (kind >= p_blank) & (kind < 1.0 - p_uncertain)
    logits[..., blank] += np.where(is_blank, boost, 0.0)
    logits[b_idx, t_idx, tok] += np.where(is_spike, boost, 0.0)
    unc = ~(is_blank | is_spike)
    if vocab > 1:  # uncertain frames: three competitors (often one is blank) over a flat rest
        for j in range(3):
            c = rng.integers(0, vocab, size=(batch, frames))
            if j == 0:
                c = np.where(rng.random((batch, frames)) < 0.5, blank, c)
            logits[b_idx, t_idx, c] += np.where(unc, rng.uniform(2.0, 5.0, size=(batch, frames)), 0.0)
    logits -= logits.max(-1, keepdims=True)
    out = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return out.astype(dtype or np.float32)
