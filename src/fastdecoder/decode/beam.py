"""Native CTC prefix beam search: exact, multithreaded over the batch.

The algorithm is the textbook prefix beam search in natural-log space (one merged entry per prefix; blank- and
label-ending mass combined with log-sum-exp); ``csrc/beam_search.hpp`` states it, ``tests/ctc_oracle.py`` is the
plain-Python definition it is tested against. Pruning is lossless: only extensions that provably cannot enter the beam
are skipped, so results equal the unpruned search. ``token_min_logprob`` is an optional lossy cut.

Tie rule (equal float scores, which only symmetric inputs produce): the lexicographically smaller token sequence
ranks first, a proper prefix before its extensions.

Input policy, the same for every native decoder (``beam_search``, ``WordDecoder``): a log-probability is ``-inf``
(probability 0: a prefix of zero mass is no hypothesis) or a finite value with ``|x| <= 1e100`` (every finite
float32 value; the bound keeps sums over any number of frames finite). NaN, +inf and larger magnitudes in a used
frame raise ValueError naming ``[b, t, v]``. Limits, checked before anything is allocated: ``beam_width <=
MAX_BEAM_WIDTH`` (65536), ``T < 2**31`` frames, ``num_threads`` above ``MAX_THREADS_PER_CORE`` (4) x the cores is
clamped with a warning; if the system refuses to start a thread, decoding continues on those already running.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch

from fastdecoder import _native
from fastdecoder.errors import UserError

__all__ = ["beam_search", "num_cpu_threads", "MAX_BEAM_WIDTH", "MAX_THREADS_PER_CORE"]

MAX_BEAM_WIDTH = int(_native.MAX_BEAM_WIDTH)
MAX_THREADS_PER_CORE = int(_native.MAX_THREADS_PER_CORE)
_MAX_FRAMES = 2**31 - 1


def num_cpu_threads() -> int:
    """Threads that ``num_threads=0`` uses (std::thread::hardware_concurrency())."""
    return int(_native.hardware_threads())


def _as_array(log_probs) -> np.ndarray:
    """The one input normalisation of every native binding: a float32/float64 NumPy view of an array or CPU tensor
    (other float / integer dtypes converted), copied only when it is misaligned or its strides are not whole
    elements."""
    if isinstance(log_probs, torch.Tensor):
        if log_probs.device.type != "cpu":
            raise UserError(
                f"log_probs is a {log_probs.device.type} tensor; beam_search runs on the CPU: pass "
                "log_probs.cpu() (one copy of (B, T, V) floats)"
            )
        t = log_probs.detach()
        if t.dtype not in (torch.float32, torch.float64):
            if t.is_complex() or t.dtype == torch.bool:
                raise UserError(f"log_probs must be a float tensor, got {t.dtype}")
            t = t.float()  # float16 / bfloat16 / integers
        if t.is_neg():
            t = t.resolve_neg()
        return t.numpy()  # a view with the tensor's strides (no copy)
    arr = np.asarray(log_probs)
    if arr.dtype not in (np.float32, np.float64):
        if arr.dtype.kind not in "fiu":
            raise UserError(f"log_probs must be a float array, got dtype {arr.dtype}")
        arr = arr.astype(np.float32 if arr.dtype.itemsize <= 4 else np.float64)
    if not arr.flags.aligned or any(s % arr.itemsize for n, s in zip(arr.shape, arr.strides) if n > 1):
        arr = np.array(arr)  # a misaligned start or strides that are not whole elements (a structured field)
    return arr


def _as_lengths(lengths, B: int, T: int) -> np.ndarray:
    if lengths is None:
        return np.full(B, T, dtype=np.int64)
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.detach().cpu().numpy()
    lens = np.asarray(lengths)
    if lens.ndim == 0:
        lens = lens.reshape(1)
    if lens.ndim != 1 or lens.shape[0] != B:
        raise UserError(f"lengths must have shape ({B},), got {tuple(lens.shape)}")
    if lens.dtype.kind == "f":
        if not np.all(np.isfinite(lens)) or np.any(lens != np.round(lens)):
            raise UserError("lengths must be whole numbers of frames")
    elif lens.dtype.kind not in "iub":
        raise UserError(f"lengths must be integers, got dtype {lens.dtype}")
    lens = lens.astype(np.int64)
    if B and (lens.min() < 0 or lens.max() > T):
        bad = int(np.flatnonzero((lens < 0) | (lens > T))[0])
        raise UserError(f"lengths must lie in [0, T={T}]; lengths[{bad}] = {int(lens[bad])}")
    return np.ascontiguousarray(lens)


def _int_arg(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise UserError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise UserError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def _beam_width_arg(value) -> int:
    return _int_arg("beam_width", value, 1, MAX_BEAM_WIDTH)


def _num_threads_arg(value) -> int:
    """num_threads >= 0; above MAX_THREADS_PER_CORE x the cores it is clamped there, with a warning."""
    n = _int_arg("num_threads", value, 0)
    limit = MAX_THREADS_PER_CORE * num_cpu_threads()
    if n > limit:
        warnings.warn(f"num_threads={n} exceeds {MAX_THREADS_PER_CORE} x the {num_cpu_threads()} hardware threads; "
                      f"using {limit}", RuntimeWarning, stacklevel=3)
        n = limit
    return n


def beam_search(log_probs, lengths=None, *, beam_width: int = 20, blank: int = 0, nbest: int = 1,
                token_min_logprob: float | None = None, num_threads: int = 0, return_frames: bool = False):
    """Exact CTC prefix beam search over a batch.

    Args:
        log_probs: (B, T, V) natural-log probabilities (e.g. ``logits.log_softmax(-1)``), float32 or float64, a NumPy
            array or a CPU torch tensor with any strides. Values in the used frames: -inf (probability 0) or finite
            with ``|x| <= 1e100``; NaN / +inf raise ValueError naming [b, t, v] (the module docstring's policy).
        lengths: (B,) valid frames per sentence (default: all T). A sentence of 0 frames decodes to ``[]``, score 0.
        beam_width: prefixes kept per frame (1 <= beam_width <= MAX_BEAM_WIDTH = 65536). Beam 1 equals greedy decoding on confident posteriors (each
            frame's best class far above the rest); on uncertain frames it ranks merged prefix mass instead.
        blank: the CTC blank class.
        nbest: hypotheses returned per sentence (1 <= nbest <= beam_width); fewer when fewer prefixes exist.
        token_min_logprob: optional lossy cut: a label whose log-probability at a frame is below this proposes no new
            prefix there (e.g. -5). Prefixes already in the beam keep all their mass. None = exact.
        num_threads: decoding threads (0 = all cores; at most 4 per core, larger requests are clamped with a
            warning); the GIL is released while decoding. Results do not depend on it.
        return_frames: also return, per token, the frame at which its prefix first entered the beam.

    Returns:
        One list per sentence of up to ``nbest`` tuples (empty when -inf inputs leave no prefix of non-zero mass) ``(tokens, log_score)`` (or ``(tokens, log_score, frames)``),
        best first; ``log_score`` is the log of the total probability of the alignments of that prefix that the beam
        kept (the full prefix probability when the beam never dropped one of its ancestors).
    """
    arr = _as_array(log_probs)
    if arr.ndim != 3:
        raise UserError(f"log_probs must be (batch, time, classes), got shape {tuple(arr.shape)}")
    B, T, V = arr.shape
    if V < 1:
        raise UserError("log_probs has an empty class dimension (V = 0)")
    if T > _MAX_FRAMES:
        raise UserError(f"log_probs has {T} frames; at most {_MAX_FRAMES} are supported")
    blank = _int_arg("blank", blank, 0)
    if blank >= V:
        raise UserError(f"blank={blank} is out of range for {V} classes")
    beam_width = _beam_width_arg(beam_width)
    nbest = _int_arg("nbest", nbest, 1)
    if nbest > beam_width:
        raise UserError(f"nbest={nbest} exceeds beam_width={beam_width}: the beam holds at most beam_width prefixes")
    num_threads = _num_threads_arg(num_threads)
    if token_min_logprob is None:
        cut = float("-inf")
    else:
        cut = float(token_min_logprob)
        if np.isnan(cut):
            raise UserError("token_min_logprob must be a number or None, got NaN")
    lens = _as_lengths(lengths, B, T)
    fn = _native.beam_search_f64 if arr.dtype == np.float64 else _native.beam_search_f32
    # The native side reports values outside the policy as ValueError naming [b, t, v].
    return fn(arr, lens, beam_width, blank, nbest, cut, bool(return_frames), num_threads)
