"""Ensembles of runs: the per-frame average of several models' phoneme posteriors.

The ensemble's log-posterior of class v at frame t is the log of the members' mean probability,
``log(1/M * sum_m exp(lp_m[t, v]))`` (log-sum-exp over members minus ``log M``, computed stably; a class that every
member gives probability 0 stays at -inf). Rows still sum to 1 in probability, so the average decodes with any
decoder (greedy, beam search, words). Members must produce the same output framing: the same number of frames for
every trial (same patch size / stride and output-length formula) and the same classes.

:func:`ensemble_log_probs` is the arithmetic; :func:`evaluate_runs` loads several run folders, evaluates each on one
split of one dataset and returns the members' results and the ensemble's.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from fastdecoder.errors import UserError

__all__ = ["ensemble_log_probs", "check_framing", "FRAMING_KEYS"]

# Config keys (section, key) that fix a run's output frames per trial and its classes.
FRAMING_KEYS = (("model", "patch_size"), ("model", "patch_stride"), ("ctc", "output_lengths"),
                ("model", "n_classes"))


def _name(names: Sequence[str] | None, m: int) -> str:
    return f"member {m} ({names[m]})" if names is not None else f"member {m}"


def _members_as_lists(members, lengths) -> tuple[list[list[np.ndarray]], tuple | None]:
    """Each member -> a list of per-trial (N_i, V) float arrays; the padded (B, T, V) shape of the first member if
    the inputs were padded batches, else None."""
    if not members:
        raise UserError("an ensemble needs at least one member")
    padded = not isinstance(members[0], (list, tuple))
    out = []
    for m, mem in enumerate(members):
        if isinstance(mem, (list, tuple)) == padded:
            raise UserError("ensemble members must all be lists of (N_i, V) arrays or all (B, T, V) arrays")
        if padded:
            arr = np.asarray(mem.detach().cpu().numpy() if hasattr(mem, "detach") else mem)
            if arr.ndim != 3:
                raise UserError(f"member {m}: log-probs must be (batch, time, classes), got shape {arr.shape}")
            lens = np.full(arr.shape[0], arr.shape[1]) if lengths is None else np.asarray(lengths)
            if lens.shape != (arr.shape[0],) or (lens < 0).any() or (lens > arr.shape[1]).any():
                raise UserError(f"lengths must be (batch,) = ({arr.shape[0]},) values in 0..{arr.shape[1]}, "
                                 f"got {lens.tolist() if lens.size < 20 else lens.shape}")
            out.append([arr[b, : int(lens[b])] for b in range(arr.shape[0])])
        else:
            if lengths is not None:
                raise UserError("lengths must be None when members are lists of (N_i, V) arrays")
            out.append([np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x) for x in mem])
    return out, (tuple(members[0].shape) if padded else None)


def ensemble_log_probs(members, lengths=None, *, names: Sequence[str] | None = None):
    """Average M members' log-posteriors frame by frame: ``logsumexp_m(lp_m) - log M``.

    Args:
        members: M items, all of one form: a list of per-trial (N_i, V) log-prob arrays (NumPy or torch), or a
            padded (B, T, V) array with ``lengths``.
        lengths: (B,) valid frames per trial, with padded members only (default: all T).
        names: optional member names (e.g. run folders) used in error messages.

    Returns:
        The same form as the inputs: a list of (N_i, V) arrays, or a (B, T, V) array (frames past a trial's length
        are 0). dtype: float64 if any member is float64, else float32. The sum runs in float64.

    Raises ValueError naming the member and trial when members differ in trial count, frames of a trial or classes,
    or when a used frame holds NaN or +inf.
    """
    lists, padded_shape = _members_as_lists(list(members), lengths)
    if names is not None and len(names) != len(lists):
        raise UserError(f"{len(names)} names for {len(lists)} members")
    M, B = len(lists), len(lists[0])
    for m, mem in enumerate(lists[1:], 1):
        if len(mem) != B:
            raise UserError(f"{_name(names, m)} has {len(mem)} trials, {_name(names, 0)} has {B}")
    dtype = np.float64 if any(x.dtype == np.float64 for mem in lists for x in mem) else np.float32
    out = []
    for b in range(B):
        ref = lists[0][b]
        for m in range(M):
            x = lists[m][b]
            if x.ndim != 2:
                raise UserError(f"{_name(names, m)}, trial {b}: log-probs must be (frames, classes), got shape "
                                 f"{x.shape}")
            if x.shape != ref.shape:
                what = "output frames" if x.shape[0] != ref.shape[0] else "classes"
                raise UserError(f"{_name(names, m)} and {_name(names, 0)} differ in {what} at trial {b}: "
                                 f"{x.shape} vs {ref.shape} (members must share the output framing: patch size, "
                                 "stride, output-length formula and classes)")
            bad = np.isnan(x) | (x == np.inf)
            if bad.any():
                t, v = (int(i) for i in np.argwhere(bad)[0])
                raise UserError(f"{_name(names, m)}, trial {b}: log-prob [{t}, {v}] is {x[t, v]} (NaN or +inf)")
        stack = np.stack([lists[m][b] for m in range(M)]).astype(np.float64, copy=False)
        avg = stack[0] if M == 1 else np.logaddexp.reduce(stack, axis=0) - math.log(M)
        out.append(avg.astype(dtype, copy=False))
    if padded_shape is None:
        return out
    arr = np.zeros(padded_shape, dtype=dtype)
    for b, x in enumerate(out):
        arr[b, : x.shape[0]] = x
    return arr


def check_framing(configs, names: Sequence[str], n_features: int | None = None) -> None:
    """Raise ValueError naming the key and the runs when run configs differ in output framing or classes, or when a
    run's feature count differs from the data's (``n_features``)."""
    for sec, key in FRAMING_KEYS:
        vals = [getattr(getattr(c, sec), key) for c in configs]
        if any(v != vals[0] for v in vals):
            listing = ", ".join(f"{n}: {v!r}" for n, v in zip(names, vals))
            raise UserError(f"runs differ in {sec}.{key} ({listing}): an ensemble needs the same output framing")
    if n_features is not None:
        for n, c in zip(names, configs):
            if c.model.n_features != n_features:
                raise UserError(f"run {n} takes {c.model.n_features} features, the data has {n_features}")
