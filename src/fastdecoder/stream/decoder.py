"""StreamingDecoder: push 20 ms bins of one trial, get the phonemes (and words) decoded so far, and which part of
them is final; ``finish()`` gives what offline decoding of the whole trial gives.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastdecoder.decode.beam import _beam_width_arg, _int_arg
from fastdecoder.errors import UserError
from fastdecoder.stream.frontend import IncrementalFrontend
from fastdecoder.stream.search import BeamStream, WordStream

__all__ = ["StreamingDecoder", "Partial", "Final"]


@dataclass
class Partial:
    """The state after a push. ``phonemes[:stable]`` (and ``words[:words_stable]``) can no longer change."""
    phonemes: list[int]            # the current best phoneme ids (1..40; 40 = SIL)
    stable: int                    # length of the final prefix of ``phonemes``
    bins: int                      # input bins consumed in this trial so far
    frames: int                    # output frames decoded so far
    words: list[str] | None = None  # completed words of the best word hypothesis (with a word decoder)
    words_stable: int = 0

    @property
    def final_phonemes(self) -> list[int]:
        return self.phonemes[: self.stable]

    @property
    def final_words(self) -> list[str]:
        return (self.words or [])[: self.words_stable]


@dataclass
class Final:
    """The end of a trial: n-best phoneme hypotheses ``(tokens, log_score)`` and, with a word decoder, n-best words."""
    hypotheses: list                 # [(phoneme ids, log_score)], best first
    bins: int
    frames: int
    words: list | None = None        # [WordHypothesis], best first
    log_probs: np.ndarray = field(default=None, repr=False)  # (frames, 41) float32: the trial's log-probabilities

    @property
    def phonemes(self) -> list[int]:
        return self.hypotheses[0][0] if self.hypotheses else []

    @property
    def text(self) -> str:
        return self.words[0].text if self.words else ""


class StreamingDecoder:
    """Incremental decoding of a causal (unidirectional) GRUDecoder: the eval transform, model and CTC beam search
    (and optionally the word decoder) advanced as bins arrive. One trial at a time; one decoder per stream (streams in
    separate threads run concurrently: the native searches release the GIL).

    Args:
        model: a unidirectional :class:`fastdecoder.model.GRUDecoder`. Pushes always give its eval-mode
            log-probabilities (no dropout) with the weights it holds at that push, whatever mode the caller puts it
            in; its mode is left as the caller sets it.
        beam_width, token_min_logprob: the phoneme prefix beam search (as :func:`fastdecoder.decode.beam_search`).
        nbest: phoneme hypotheses returned by :meth:`finish`.
        word_decoder: an optional :class:`fastdecoder.decode.WordDecoder` (its beam, LM and weights are used).
        device: where the model runs.

    Latency: smoothing needs half its taps of lookahead (b2t25: 4 bins = 80 ms), and an output frame needs its whole
    patch (14 bins), so frame j is decoded once bin 4 j + 13 + 4 has arrived.
    """

    def __init__(self, model, *, beam_width: int = 20, nbest: int = 1, token_min_logprob: float | None = None,
                 word_decoder=None, device="cpu"):
        self.frontend = IncrementalFrontend(model, device)
        self.model = self.frontend.model
        beam_width = _beam_width_arg(beam_width)  # checked first: an error names the argument that is wrong
        self.nbest = _int_arg("nbest", nbest, 1)
        if self.nbest > beam_width:
            raise UserError(f"nbest={nbest} exceeds beam_width={beam_width}")
        self.beam = BeamStream(model.cfg.n_classes, beam_width=beam_width, token_min_logprob=token_min_logprob)
        if word_decoder is not None and model.cfg.n_classes != 41:
            raise UserError(f"the word decoder needs 41 output classes (blank, 39 phonemes, SIL); the model has "
                             f"{model.cfg.n_classes}")
        self.words = None if word_decoder is None else WordStream(word_decoder)
        self._state = "idle"  # idle (no trial) | open | finished
        self._log_probs: list[np.ndarray] = []
        self._taken = 0  # blocks of _log_probs already handed out by take_log_probs()

    @classmethod
    def from_run(cls, run_dir, checkpoint: str = "best", *, device="cpu", **kwargs) -> "StreamingDecoder":
        """A decoder for the model of a run folder written by ``fastdecoder train --out`` (best.pt / last.pt)."""
        from fastdecoder.checkpoint import load_run

        if not Path(run_dir).is_dir():
            raise FileNotFoundError(f"run folder {run_dir} does not exist")
        _, model, _ = load_run(run_dir, checkpoint, device)
        return cls(model, device=device, **kwargs)

    @property
    def n_features(self) -> int:
        return self.frontend.n_features

    @property
    def lookahead_bins(self) -> int:
        """Bins of future input the smoothing needs before it can emit a bin (b2t25: 4 = 80 ms)."""
        return self.frontend.lookahead

    def reset(self, day: int) -> None:
        """Start a trial recorded on day ``day`` (0 <= day < n_days); forgets any previous trial."""
        if isinstance(day, (bool, np.bool_)) or not isinstance(day, (int, np.integer)):
            raise UserError(f"day must be an integer day index, got {day!r}")
        self.frontend.reset(int(day))  # the model checks the range
        self.beam.reset()
        if self.words is not None:
            self.words.reset()
        self._log_probs = []
        self._taken = 0
        self._state = "open"

    def _check_open(self, what: str) -> None:
        if self._state == "idle":
            raise RuntimeError(f"{what} before reset(day): start a trial first")
        if self._state == "finished":
            raise RuntimeError(f"{what} after finish(): the trial is closed; call reset(day) to start the next one")

    def _as_bins(self, bins) -> torch.Tensor:
        C = self.n_features
        if isinstance(bins, torch.Tensor):
            if bins.is_complex() or bins.dtype == torch.bool:
                raise UserError(f"bins must be float, got {bins.dtype}")
            x = bins.detach().to(self.frontend.device, torch.float32)
        else:
            arr = np.asarray(bins)
            if arr.dtype.kind not in "fiu":
                raise UserError(f"bins must be a float array, got dtype {arr.dtype}")
            x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(self.frontend.device)
        if x.dim() != 2 or x.shape[1] != C:
            raise UserError(f"bins must be (n, {C}) (n bins of {C} features), got shape {tuple(x.shape)}")
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            t, c = (int(i) for i in bad.nonzero()[0])
            raise UserError(f"bins has a non-finite value ({float(x[t, c])}) at bin {t}, feature {c} of this push; "
                             "nothing of this push was used (the stream is unchanged)")
        return x

    def push(self, bins) -> Partial:
        """Feed ``bins`` (n, C) float32 (n >= 0) of the open trial; returns the partial result.

        Bad input (shape, dtype, NaN/Inf) raises ValueError and leaves the stream as it was.
        """
        self._check_open("push")
        x = self._as_bins(bins)
        if x.shape[0]:
            self._decode(self.frontend.push(x))
        return self.partial()

    def _decode(self, lp: torch.Tensor) -> None:
        if lp.shape[0] == 0:
            return
        arr = lp.numpy()
        try:
            self.beam.advance(arr)
            if self.words is not None:
                self.words.advance(arr)
        except ValueError as e:  # finite bins in, non-finite log-probs out: the model itself is broken
            self._state = "finished"
            raise UserError(f"the model produced non-finite log-probabilities (are its weights finite?): {e}; "
                             "the trial is closed") from None
        self._log_probs.append(arr)

    def take_log_probs(self) -> np.ndarray:
        """(n, V) float32: the log-probabilities of the frames decoded since the last call (or since reset)."""
        new, self._taken = self._log_probs[self._taken:], len(self._log_probs)
        if not new:
            return np.zeros((0, self.model.cfg.n_classes), np.float32)
        return new[0] if len(new) == 1 else np.concatenate(new)

    def partial(self) -> Partial:
        tokens, stable, _ = self.beam.partial()
        out = Partial(phonemes=tokens, stable=stable, bins=self.frontend.bins_received, frames=self.beam.frames)
        if self.words is not None:
            out.words, out.words_stable, _ = self.words.partial()
        return out

    def finish(self, nbest: int | None = None) -> Final:
        """End the trial: flush the smoothing lookahead, decode the last frames; returns the final hypotheses
        (``nbest`` phoneme hypotheses, default the constructor's; the word decoder's own nbest for words)."""
        self._check_open("finish")
        nbest = self.nbest if nbest is None else _int_arg("nbest", nbest, 1)
        self._decode(self.frontend.finish())
        self._state = "finished"
        V = self.model.cfg.n_classes
        lps = np.concatenate(self._log_probs) if self._log_probs else np.zeros((0, V), np.float32)
        return Final(hypotheses=self.beam.hypotheses(nbest), bins=self.frontend.bins_received, frames=self.beam.frames,
                     words=None if self.words is None else self.words.finish(), log_probs=lps)

    def decode_trial(self, bins, day: int, *, chunk: int | None = None) -> Final:
        """Convenience: reset(day), push ``bins`` (all at once, or ``chunk`` bins at a time), finish()."""
        self.reset(day)
        x = self._as_bins(bins)
        step = x.shape[0] if not chunk else _int_arg("chunk", chunk, 1)
        for i in range(0, x.shape[0], max(step, 1)):
            self.push(x[i:i + step])
        return self.finish()
