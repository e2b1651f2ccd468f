"""Files ``fastdecoder eval`` writes for other tools: a split's log-probabilities (``--save-logits``) and its word
n-best lists with their scores (``--save-nbest``, for LLM merging of several decoders' outputs).

``save_logits`` writes an ``.npz`` (``numpy.load(path)`` reads it without pickle):

    log_probs     (sum N_k, 41) float32   natural-log posteriors of every trial's valid output frames, concatenated
    lengths       (n,) int64              N_k, frames of trial k (``load_logits`` splits log_probs per trial)
    trial_index   (n,) int64              the trial's index in the split (the data's order)
    day           (n,) int64              day (session) index
    session       (n,) str                session name
    trial_id      (n,) str                the loader's trial id (b2t25: session/file/group)
    split         ()   str                split name

``save_nbest`` writes one JSON line per trial: ``trial``, ``trial_id``, ``session``, ``words`` (the n-best
sentences best first, each with ``acoustic``, ``ngram``, ``neural`` (when scored), ``n_words`` and ``total`` under the
weights that chose the best), ``phonemes`` (the CTC prefix beam search's n-best phoneme strings with their
log-scores) and, on a labelled split, ``reference``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from fastdecoder.errors import writing
from fastdecoder.phonemes import ids_to_text

__all__ = ["save_logits", "load_logits", "save_nbest"]


def save_logits(path, log_probs: Sequence[np.ndarray], indices, split, day_names: Sequence[str],
                split_name: str) -> Path:
    """Write per-trial (N_k, V) log-probs of ``split``'s trials ``indices`` (in that order) to ``path`` (.npz)."""
    path = Path(path)
    indices = np.asarray(indices, dtype=np.int64)
    lengths = np.asarray([len(x) for x in log_probs], dtype=np.int64)
    v = log_probs[0].shape[1] if len(log_probs) else 41
    flat = (np.concatenate([np.asarray(x, dtype=np.float32) for x in log_probs]) if len(log_probs)
            else np.zeros((0, v), np.float32))
    day = split.day[indices] if len(indices) else np.zeros(0, np.int64)
    with writing(path, "logits file"), open(path, "wb") as f:
        np.savez(f, log_probs=flat, lengths=lengths, trial_index=indices, day=day,
                 session=np.asarray([day_names[d] for d in day], dtype=str),
                 trial_id=np.asarray([split.trial_ids[i] for i in indices], dtype=str), split=np.asarray(split_name))
    return path


def load_logits(path) -> dict:
    """A :func:`save_logits` file as a dict: its arrays, and ``per_trial``, the list of (N_k, V) arrays."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    out["per_trial"] = np.split(out["log_probs"], np.cumsum(out["lengths"])[:-1]) if len(out["lengths"]) else []
    return out


def save_nbest(path, split_words, log_probs: Sequence[np.ndarray], beam_width: int, indices, split,
               day_names: Sequence[str]) -> Path:
    """Write the n-best file of a split decoded into words (a ``decode.rescore.SplitWords``), with the phoneme n-best
    lists of the CTC prefix beam search of ``beam_width`` over the same per-trial log-probs (the word decoder's
    n-best count, at most ``beam_width``)."""
    from fastdecoder.decode import beam_search
    from fastdecoder.decode.padding import pad_log_probs

    path = Path(path)
    nb, weights = split_words.nbest, split_words.weights
    phoneme_nbest = []
    if len(log_probs):
        arr, lens = pad_log_probs(list(log_probs))
        phoneme_nbest = beam_search(arr, lens, beam_width=beam_width,
                                    nbest=min(int(split_words.report["nbest"]), beam_width))
    totals = nb.totals(weights)
    with writing(path, "n-best file"), open(path, "w") as f:
        for k, i in enumerate(indices):
            lo, hi = int(nb.offsets[k]), int(nb.offsets[k + 1])
            order = sorted(range(lo, hi), key=lambda h: -totals[h])     # stable: ties keep the decoder's order
            words = []
            for h in order:
                rec = {"text": nb.sentences[h], "acoustic": float(nb.acoustic[h]), "ngram": float(nb.ngram[h]),
                       "n_words": int(nb.n_words[h]), "total": float(totals[h])}
                if nb.neural is not None:
                    rec["neural"] = float(nb.neural[h])
                words.append(rec)
            d = int(split.day[i])
            rec = {"trial": int(i), "trial_id": split.trial_ids[i], "session": day_names[d],
                   "weights": weights.__dict__, "words": words,
                   "phonemes": [{"phonemes": ids_to_text(ids), "score": float(score)}
                                for ids, score, *_ in phoneme_nbest[k]]}
            if split.transcriptions is not None:
                rec["reference"] = split.transcriptions[i]
            f.write(json.dumps(rec) + "\n")
    return path
