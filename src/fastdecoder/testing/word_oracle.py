"""A plain-Python oracle of the native word decoder (lexicon + n-gram CTC prefix beam search over words) and a
generator of peaky word posteriors: what the word tests, the fuzz run and the word benchmarks compare against.

``word_beam_oracle(lp, prons, lm, beam=...)``: lp (T, 41) log-posteriors; prons {word: [phoneme id tuple, ...]}.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from fastdecoder.phonemes import PHONEME_TO_ID, SIL

__all__ = ["NEG", "PRONS", "PRON_IDS", "make_posteriors", "word_beam_oracle"]

NEG = float("-inf")
LN10 = math.log(10.0)


def lse(a, b):
    if a < b:
        a, b = b, a
    if b == NEG:
        return a
    return a + math.log1p(math.exp(b - a))


def word_beam_oracle(lp, prons, lm=None, *, beam, lm_weight=0.5, word_bonus=0.0, blank_penalty=0.0, cut=None,
                     lookahead=False, nbest=None):
    """prons: word -> list of tuples of class ids. Returns [(words, score, acoustic, lm)] best first."""
    children = defaultdict(dict)
    words_at = defaultdict(list)
    for w, ps in prons.items():
        for p in ps:
            for i in range(len(p)):
                children[p[:i]][p[i]] = p[:i + 1]
            if w not in words_at[p]:
                words_at[p].append(w)
    lm_cache = {}

    def lm_of(h):  # natural-log LM probability of the words of h (no </s>)
        if lm is None:
            return 0.0
        if h not in lm_cache:
            lm_cache[h] = sum(lm.log_prob(w, ["<s>", *h[:i]]) for i, w in enumerate(h))
        return lm_cache[h]

    la = defaultdict(float)
    if lookahead and lm is not None:
        best = defaultdict(lambda: NEG)
        for w, ps in prons.items():
            for p in ps:
                for i in range(1, len(p) + 1):
                    best[p[:i]] = max(best[p[:i]], lm.log_prob(w))
        for k, v in best.items():
            la[k] = lm_weight * min(0.0, v)

    def extra(h, n):
        return lm_weight * lm_of(h) + word_bonus * len(h) + la[n]

    beam_ = {((), ()): (0.0, NEG)}
    for t in range(len(lp)):
        row = [float(v) for v in lp[t]]
        nxt = {}

        def add(key, which, val):
            if val == NEG:
                return
            e = nxt.setdefault(key, [NEG, NEG])
            e[which] = lse(e[which], val)

        for (h, n), (pb, pnb) in beam_.items():
            tot = lse(pb, pnb)
            last = n[-1] if n else (SIL if h else None)
            add((h, n), 0, tot + row[0] - blank_penalty)
            if last is not None:
                add((h, n), 1, pnb + row[last])
            for s, child in children[n].items():
                if cut is not None and row[s] < cut and (h, child) not in beam_:
                    continue
                add((h, child), 1, (pb if s == last else tot) + row[s])
            for w in words_at.get(n, []):
                key = (h + (w,), ())
                if cut is not None and row[SIL] < cut and key not in beam_:
                    continue
                add(key, 1, tot + row[SIL])
        ranked = sorted(nxt.items(), key=lambda kv: -(lse(*kv[1]) + extra(*kv[0])))
        beam_ = {k: tuple(v) for k, v in ranked[:beam]}

    finals = {}
    for (h, n), (pb, pnb) in beam_.items():
        ctc = lse(pb, pnb)
        if n == ():
            finals[h] = lse(finals.get(h, NEG), ctc)
        else:
            for w in words_at.get(n, []):
                finals[h + (w,)] = lse(finals.get(h + (w,), NEG), ctc)
    out = []
    for h, ctc in finals.items():
        end = lm.log_prob("</s>", ["<s>", *h]) if lm is not None else 0.0
        total_lm = lm_of(h) + end
        out.append((list(h), ctc + lm_weight * total_lm + word_bonus * len(h), ctc, total_lm))
    out.sort(key=lambda r: -r[1])
    if not out and not beam_:  # every hypothesis lost its mass (-inf inputs): nothing decoded
        return []
    if not out:
        (h, n), (pb, pnb) = max(beam_.items(), key=lambda kv: lse(*kv[1]) + extra(*kv[0]))
        out = [(list(h), lse(pb, pnb) + extra(h, n), lse(pb, pnb), lm_of(h))]
    return out[:nbest] if nbest else out


# A small lexicon with the hard cases: homophones (right/write, two/too), several pronunciations (read, the, a),
# words that are prefixes of others (a / about, in / inn... , to / tool), one-phoneme words.
PRONS = {
    "a": ["AH", "EY"], "about": ["AH B AW T"], "the": ["DH AH", "DH IY"], "right": ["R AY T"], "write": ["R AY T"],
    "read": ["R IY D", "R EH D"], "red": ["R EH D"], "two": ["T UW"], "too": ["T UW"], "to": ["T UW", "T AH"],
    "tool": ["T UW L"], "in": ["IH N"], "it": ["IH T"], "eat": ["IY T"], "tea": ["T IY"], "owe": ["OW"],
    "dog": ["D AO G"], "cat": ["K AE T"], "at": ["AE T"],
}
PRON_IDS = {w: [tuple(PHONEME_TO_ID[p] for p in v.split()) for v in vs] for w, vs in PRONS.items()}


def make_posteriors(rng, sentences, prons, *, confuse=0.3, peak=4.0, noise=0.8, final_sil=True):
    """(B, T, 41) float32 log-posteriors and lengths for word sentences (first pronunciation of each word)."""
    rows_all = []
    for s in sentences:
        phones = []
        for i, w in enumerate(s):
            phones += prons[w]
            if final_sil or i + 1 < len(s):
                phones.append(SIL)
        rows = []
        for p in phones:
            c = int(rng.integers(1, 40)) if rng.random() < confuse else None
            for _ in range(int(rng.integers(2, 5))):
                z = rng.normal(0.0, noise, 41)
                z[p] += peak
                z[0] += 1.5
                if c is not None:
                    z[c] += peak + rng.normal(0.0, 1.0)
                rows.append(z)
            for _ in range(int(rng.integers(0, 3))):
                z = rng.normal(0.0, noise, 41)
                z[0] += peak + 1.0
                rows.append(z)
        rows_all.append(np.array(rows))
    T = max(len(r) for r in rows_all)
    x = np.zeros((len(rows_all), T, 41))
    for i, r in enumerate(rows_all):
        x[i, : len(r)] = r
    x = torch.from_numpy(x).log_softmax(-1).numpy().astype(np.float32)
    return x, np.array([len(r) for r in rows_all], dtype=np.int64)
