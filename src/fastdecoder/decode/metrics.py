"""Greedy CTC decoding and error rates (PER/WER), backed by the native extension.

PER over a split = total edit distance / total reference length.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

from fastdecoder import _native
from fastdecoder.errors import UserError
from fastdecoder.decode.beam import _as_array, _as_lengths


def greedy_decode(logits, lengths=None, *, blank: int = 0) -> list[list[int]]:
    """Greedy CTC decoding: argmax per frame, merge repeats, drop blank.

    logits: (B, T, V) float scores (logits or log-probs; argmax is the same), a NumPy array or CPU tensor with any
    strides (normalised like :func:`beam_search`'s input); lengths: (B,) valid frames (default T). Returns one token list per sentence.
    """
    arr = _as_array(logits)
    if arr.ndim != 3:
        raise UserError(f"logits must be (batch, time, classes), got shape {tuple(arr.shape)}")
    B, T, V = arr.shape
    if V < 1:
        raise UserError("logits have an empty class dimension")
    if isinstance(blank, bool) or not isinstance(blank, numbers.Integral) or not 0 <= blank < V:
        raise UserError(f"blank={blank!r} is out of range for {V} classes")
    lens = _as_lengths(lengths, B, T)
    fn = _native.greedy_decode_f64 if arr.dtype == np.float64 else _native.greedy_decode_f32
    return fn(arr, lens, int(blank))


def _flatten(seqs: Sequence[Sequence[int]]):
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    flat = np.fromiter((int(t) for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


def edit_distances(hyps: Sequence[Sequence[int]], refs: Sequence[Sequence[int]]) -> np.ndarray:
    """Levenshtein distance of each (hypothesis, reference) pair of int-token sequences: (B,) int64."""
    if len(hyps) != len(refs):
        raise UserError(f"{len(hyps)} hypotheses but {len(refs)} references")
    h, ho = _flatten(hyps)
    r, ro = _flatten(refs)
    return _native.edit_distance_batch(h, ho, r, ro)


def error_rate(hyps: Sequence[Sequence[int]], refs: Sequence[Sequence[int]]) -> tuple[float, int, int]:
    """(total edits / total reference length, total edits, total reference length)."""
    d = edit_distances(hyps, refs)
    n_ref = sum(len(r) for r in refs)
    edits = int(d.sum())
    return (edits / n_ref if n_ref else float("nan")), edits, n_ref


def word_error_rate(hyp_sentences: Sequence[str], ref_sentences: Sequence[str]) -> tuple[float, int, int]:
    """WER over whitespace-separated words (words are mapped to ints, then the native edit distance)."""
    vocab: dict[str, int] = {}
    enc = lambda s: [vocab.setdefault(w, len(vocab)) for w in s.split()]  # noqa: E731
    return error_rate([enc(s) for s in hyp_sentences], [enc(s) for s in ref_sentences])
