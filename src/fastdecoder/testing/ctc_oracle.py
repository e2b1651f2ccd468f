"""Plain-Python oracles for CTC decoding. The textbook prefix beam search (the definition of "exact" that the native
``fastdecoder.decode.beam_search`` is tested against) lives in the package, ``fastdecoder.decode.reference``, so that
``fastdecoder parity`` can use it too; this file adds the brute-force alignment sum.
"""
from __future__ import annotations

import itertools

from fastdecoder.decode.reference import NEG_INF, collapse, lse, peaky_log_probs, prefix_beam_search  # noqa: F401


def brute_force_prefix_scores(lp, blank: int = 0) -> dict:
    """log P(y) = log sum over all V^T alignments collapsing to y, for every reachable label sequence y."""
    T = len(lp)
    V = len(lp[0]) if T else 0
    acc: dict[tuple, float] = {}
    for path in itertools.product(range(V), repeat=T):
        s = sum(float(lp[t][path[t]]) for t in range(T))
        y = collapse(path, blank)
        acc[y] = lse(acc.get(y, NEG_INF), s)
    return acc


def number_of_prefixes(T: int, V: int) -> int:
    """Label sequences of length <= T over V - 1 labels (an upper bound on the prefixes a beam can hold)."""
    return sum((V - 1) ** n for n in range(T + 1))
