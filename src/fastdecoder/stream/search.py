"""Stateful searches advanced frame by frame: the native CTC prefix beam search and the word decoder.

Offline decoding (``fastdecoder.decode.beam_search``, ``WordDecoder.decode``) runs the same native search objects over
all frames at once, so a stream fed any split of the frames ends in the same hypotheses.

The stable prefix: every hypothesis the search can still return starts with the longest common prefix of its beam
(each next-frame hypothesis keeps or extends a beam hypothesis), so that prefix never changes once reported.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from fastdecoder import _native, _words
from fastdecoder.decode.beam import _as_array, _beam_width_arg, _int_arg
from fastdecoder.decode.words import WordDecoder, WordHypothesis
from fastdecoder.errors import UserError

__all__ = ["BeamStream", "WordStream"]


def _frames(log_probs, vocab: int) -> np.ndarray:
    """(n, vocab) float32/float64 C-contiguous array from a NumPy array or a tensor (the native bindings' one input
    normalisation, ``decode.beam._as_array``, then the shape this search needs)."""
    if isinstance(log_probs, torch.Tensor):
        log_probs = log_probs.detach().cpu()
    arr = _as_array(log_probs)
    if arr.ndim != 2 or arr.shape[1] != vocab:
        raise UserError(f"log_probs must be (frames, {vocab}), got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr)


class _NativeStream:
    """A native stateful search over one sentence: ``self._native`` advanced by (n, ``self._vocab``) frames."""

    _native: object
    _vocab: int

    def reset(self) -> None:
        self._native.reset()

    def advance(self, log_probs) -> None:
        arr = _frames(log_probs, self._vocab)
        (self._native.advance_f64 if arr.dtype == np.float64 else self._native.advance_f32)(arr)

    @property
    def frames(self) -> int:
        return int(self._native.frames)


class BeamStream(_NativeStream):
    """CTC prefix beam search over one sentence, advanced frame by frame (the GIL is released while advancing).

    ``advance(lp (n, V))`` then ``partial() -> (tokens, stable, log_score)`` (tokens[:stable] is final) and
    ``hypotheses(nbest) -> [(tokens, log_score)]``, equal to ``beam_search`` over all frames advanced so far.
    Inputs follow the decoders' one policy (-inf is probability 0; NaN, +inf and |x| > 1e100 raise ValueError
    naming [frame, class]); a refused block leaves the state unchanged.
    """

    def __init__(self, vocab: int = 41, *, beam_width: int = 20, blank: int = 0,
                 token_min_logprob: float | None = None):
        self.vocab = _int_arg("vocab", vocab, 1)
        self.beam_width = _beam_width_arg(beam_width)
        blank = _int_arg("blank", blank, 0)
        if blank >= self.vocab:
            raise UserError(f"blank={blank} is out of range for {vocab} classes")
        cut = float("-inf") if token_min_logprob is None else float(token_min_logprob)
        if math.isnan(cut):
            raise UserError("token_min_logprob must be a number or None, got NaN")
        self._native = _native.BeamStream(self.vocab, self.beam_width, blank, cut)
        self._vocab = self.vocab

    def partial(self) -> tuple[list[int], int, float]:
        return self._native.partial()

    def hypotheses(self, nbest: int = 1) -> list[tuple[list[int], float]]:
        return self._native.hypotheses(_int_arg("nbest", nbest, 1))


class WordStream(_NativeStream):
    """The lexicon + LM word decoder over one sentence, advanced frame by frame.

    ``partial() -> (words, stable, score)``: the best hypothesis' completed words, of which words[:stable] are final.
    ``finish(nbest)``: the sentence-end hypotheses as ``WordDecoder.decode`` returns them; call it once per sentence
    (then ``reset()``).
    """

    def __init__(self, decoder: WordDecoder):
        if not isinstance(decoder, WordDecoder):
            raise UserError(f"word_decoder must be a fastdecoder.decode.WordDecoder, got {type(decoder).__name__}")
        self.decoder = decoder
        self._words = decoder.lexicon.words
        self._native = _words.WordStream(decoder._native)
        self._vocab = _words.NUM_CLASSES

    def partial(self) -> tuple[list[str], int, float]:
        ids, stable, score = self._native.partial()
        return [self._words[i] for i in ids], stable, score

    def finish(self, nbest: int | None = None) -> list[WordHypothesis]:
        nbest = self.decoder.nbest if nbest is None else _int_arg("nbest", nbest, 1)
        return [WordHypothesis([self._words[i] for i in ids], score, ac, lm)
                for ids, score, ac, lm in self._native.finish(nbest)]
