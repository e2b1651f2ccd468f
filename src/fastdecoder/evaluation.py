"""The one evaluation path: a model over a split -> log-probs -> greedy / beam / word hypotheses -> PER, WER.

Used by the trainer (validation PER, best.pt), ``fastdecoder eval``, ``bench`` and the streaming and ensemble code.
``EvalSettings.from_config(cfg, device)`` holds what must match the training run for a checkpoint's PER to
reproduce exactly besides the model itself: the autocast dtype and the batch size. The eval-time transform (and its
op backend) and the output lengths are the model's (``GRUDecoder.infer``, the path ``predict`` runs too).

    settings = EvalSettings.from_config(cfg, device)
    res = evaluate(model, split, settings, decoder="beam", beam_width=20)   # res.per (greedy), res.per_beam
    lp = split_log_probs(model, split, settings)                             # per-trial (N_i, 41) log-probs
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fastdecoder.decode.padding import pad_log_probs
from fastdecoder.errors import UserError
from fastdecoder.losses import ctc_loss

__all__ = ["EvalSettings", "EvalResult", "SplitLogProbs", "evaluate", "split_log_probs", "beam_hypotheses",
           "pad_log_probs", "check_compatible", "evaluate_runs", "RunsEvaluation", "per_by_day", "day_names_of"]

DECODERS = ("greedy", "beam", "words")


@dataclass(frozen=True)
class EvalSettings:
    """How a split is scored: where, in batches of how many trials, under which autocast dtype (None = fp32). The
    eval transform and the output lengths are the model's own (``GRUDecoder.infer``)."""
    device: torch.device
    batch_size: int
    autocast_dtype: torch.dtype | None = None

    @classmethod
    def from_config(cls, cfg, device: torch.device) -> "EvalSettings":
        """The settings a training run with ``cfg`` on ``device`` evaluates with (same batch size, same autocast)."""
        from fastdecoder.device import autocast_dtype

        return cls(device=device, batch_size=cfg.train.eval_batch_size, autocast_dtype=autocast_dtype(cfg, device))


@dataclass
class SplitLogProbs:
    """Per trial of a split (in ``indices`` order): log_probs[k] (N_k, V) float32 over its N_k valid frames."""
    indices: np.ndarray
    log_probs: list
    lengths: np.ndarray          # (n,) int64 N_k


@dataclass
class EvalResult:
    per: float                      # greedy PER (edits / reference phonemes); NaN without labels
    edits: int
    n_ref: int
    loss: float | None              # mean CTC loss over labelled trials (None if unlabelled)
    blank_fraction: float           # share of valid frames whose argmax is blank
    n_trials: int
    indices: np.ndarray = field(repr=False)       # trial indices into the split, in result order
    greedy: list = field(repr=False)              # per trial: greedy ids
    log_probs: list = field(default_factory=list, repr=False)  # per trial: (N_i, V) float32 (kept for beam/words)
    distinct_phonemes: int = 0      # distinct non-blank classes among the valid frames' argmax (output diversity)
    beam: list | None = field(default=None, repr=False)  # decoder="beam": per trial the best prefix's ids
    per_beam: float | None = None   # decoder="beam" on a labelled split
    beam_width: int | None = None
    words: object | None = field(default=None, repr=False)  # decoder="words": a decode.WordEvaluation
    per_day: dict = field(default_factory=dict)     # labelled split: day index -> per_by_day's record (greedy)

    @property
    def hypotheses(self) -> list:
        """The chosen decoder's hypotheses: word strings, beam ids or greedy ids."""
        if self.words is not None:
            return self.words.hypotheses
        return self.beam if self.beam is not None else self.greedy


def per_by_day(hyps: Sequence, refs: Sequence, days) -> dict:
    """Greedy (or any) hypotheses scored per day (session): day index -> {"per", "edits", "phonemes", "trials"}.

    ``days``: (n,) the day of each (hypothesis, reference) pair. The days' edits and phonemes sum to the split's, so
    the split's PER is sum(edits) / sum(phonemes) over the days (not the mean of the days' PERs).
    """
    from fastdecoder.decode.metrics import edit_distances

    days = np.asarray(days, dtype=np.int64).reshape(-1)
    if len(days) != len(refs):
        raise ValueError(f"{len(refs)} references but {len(days)} day indices")
    d = edit_distances(hyps, refs)
    n = np.fromiter((len(r) for r in refs), dtype=np.int64, count=len(refs))
    out = {}
    for day in np.unique(days):
        m = days == day
        e, k = int(d[m].sum()), int(n[m].sum())
        out[int(day)] = {"per": e / k if k else float("nan"), "edits": e, "phonemes": k, "trials": int(m.sum())}
    return out


def day_names_of(per_day: dict, names: Sequence[str] | None) -> dict:
    """``per_day`` keyed by session name (``names[day]``) instead of day index."""
    return {(names[d] if names is not None and d < len(names) else str(d)): v for d, v in per_day.items()}


def check_compatible(model, split, where: str = "the data") -> None:
    """UserError if ``split`` has more days (sessions) or another feature width than ``model`` was built for."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or len(split) == 0:
        return
    top = int(np.max(split.day))
    if top >= cfg.n_days:
        raise UserError(f"{where} holds trials of day (session) index {top}, but the model has day layers for "
                        f"{cfg.n_days} days only (0..{cfg.n_days - 1}): evaluate on the data it was trained on, or "
                        "a subset of its sessions in the same order")
    width = split.features[0].shape[1]
    if width != cfg.n_features:
        raise UserError(f"{where} has {width} features per bin, the model expects {cfg.n_features}")


@torch.no_grad()
def _batches(model, split, s: EvalSettings, max_trials: int | None):
    """Per eval batch: (batch on the device, float32 logits, output lengths), through ``model.infer``."""
    from fastdecoder.data import eval_batches

    n_seen = 0
    for batch in eval_batches(split, s.batch_size):
        if max_trials is not None and n_seen >= max_trials:
            return
        batch = batch.to(s.device)
        logits, n = model.infer(batch.x, batch.day, batch.x_lens, autocast_dtype=s.autocast_dtype)
        yield batch, logits, n
        n_seen += batch.x.shape[0]


def _host_log_probs(logits: torch.Tensor, n: torch.Tensor):
    """(log-probs (B, N, V) and lengths (B,) on the host, per-trial (N_b, V) NumPy views over the valid frames)."""
    lp, n_host = logits.log_softmax(-1).cpu(), n.cpu()
    return lp, n_host, [lp[b, : n_host[b]].numpy() for b in range(lp.shape[0])]


class _EvalMode:
    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def split_log_probs(model, split, settings: EvalSettings, *, max_trials: int | None = None) -> SplitLogProbs:
    """Per-trial log-probs over the valid output frames (the inputs of beam search, word decoding, ensembles)."""
    check_compatible(model, split)
    idx, lps, lens = [], [], []
    with _EvalMode(model):
        for batch, logits, n in _batches(model, split, settings, max_trials):
            _, n_host, trials = _host_log_probs(logits, n)
            idx.extend(int(i) for i in batch.index)
            lps.extend(trials)
            lens.extend(int(v) for v in n_host)
    k = len(idx) if max_trials is None else min(len(idx), max_trials)
    return SplitLogProbs(indices=np.asarray(idx[:k], dtype=np.int64), log_probs=lps[:k],
                         lengths=np.asarray(lens[:k], dtype=np.int64))


def beam_hypotheses(log_probs: list, beam_width: int) -> list:
    """Best prefix (ids) of the native CTC prefix beam search for each (N_i, V) array."""
    from fastdecoder.decode import beam_search

    if not log_probs:
        return []
    arr, lens = pad_log_probs(log_probs)
    return [h[0][0] for h in beam_search(arr, lens, beam_width=beam_width)]


def evaluate(model, split, settings: EvalSettings, *, decoder: str = "greedy", beam_width: int = 20,
             word_decoder=None, max_trials: int | None = None, keep_log_probs: bool = False) -> EvalResult:
    """Score ``model`` on ``split``: greedy PER, CTC loss, blank fraction, and (``decoder``) beam PER or WER.

    decoder: "greedy"; "beam" (native prefix beam search of ``beam_width``); "words" (``word_decoder``, a
    decode.WordDecoder, against the split's transcriptions). ``max_trials``: the first N trials only.
    """
    from fastdecoder.decode import error_rate, evaluate_words, greedy_decode

    if decoder not in DECODERS:
        raise UserError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if decoder == "words" and word_decoder is None:
        raise ValueError("decoder='words' needs word_decoder=")
    check_compatible(model, split)
    labelled = split.targets is not None
    keep = keep_log_probs or decoder != "greedy"
    hyps, refs, idx_all, lps = [], [], [], []
    loss_sum, loss_n, blank, frames = 0.0, 0, 0, 0
    seen_ids: set[int] = set()
    with _EvalMode(model):
        for batch, logits, n in _batches(model, split, settings, max_trials):
            if labelled:
                ok = (batch.y_lens > 0)
                if ok.any():
                    loss = ctc_loss(logits[ok], n[ok], batch.y[ok], batch.y_lens[ok], reduction="mean_batch",
                                    zero_infinity=True)
                    loss_sum += float(loss) * int(ok.sum())
                    loss_n += int(ok.sum())
            lp, nn_, trials = _host_log_probs(logits, n)
            am = lp.argmax(-1)
            valid = torch.arange(lp.shape[1])[None, :] < nn_[:, None]
            blank += int(((am == 0) & valid).sum())
            seen_ids.update(torch.unique(am[valid & (am != 0)]).tolist())
            frames += int(valid.sum())
            hyps.extend(greedy_decode(lp, nn_))
            idx_all.extend(int(i) for i in batch.index)
            if keep:
                lps.extend(trials)
            if labelled:
                refs.extend(batch.y[b, : batch.y_lens[b]].tolist() for b in range(batch.y.shape[0]))
    if max_trials is not None:
        hyps, idx_all, refs, lps = hyps[:max_trials], idx_all[:max_trials], refs[:max_trials], lps[:max_trials]
    per, edits, n_ref = (error_rate(hyps, refs) if refs else (float("nan"), 0, 0))
    res = EvalResult(per=per, edits=edits, n_ref=n_ref, loss=(loss_sum / loss_n if loss_n else None),
                     blank_fraction=blank / max(1, frames), n_trials=len(hyps), indices=np.asarray(idx_all),
                     greedy=hyps, log_probs=lps, distinct_phonemes=len(seen_ids))
    if refs:
        res.per_day = per_by_day(hyps, refs, split.day[res.indices])
    if decoder == "beam":
        res.beam, res.beam_width = beam_hypotheses(lps, beam_width), beam_width
        if refs:
            res.per_beam = error_rate(res.beam, refs)[0]
    elif decoder == "words":
        if split.transcriptions is None:
            raise UserError("word decoding needs the split's transcriptions (WER), and this split has none")
        res.words = evaluate_words(lps, [split.transcriptions[i] for i in res.indices], decoder=word_decoder)
    return res


# -- ensembles of runs --------------------------------------------------------------------------------------------
@dataclass
class RunsEvaluation:
    """Members' evaluations of one split and the ensemble's (``result``; with one run, that run's own result)."""

    names: list[str]
    configs: list
    steps: list[int]
    members: list          # per run: EvalResult with log_probs kept
    result: object          # EvalResult of the averaged log-probs (greedy PER, log_probs kept)
    dataset: object
    split: object


def _ensemble_result(members, names, split):
    """An EvalResult for the averaged log-probs of ``members`` (greedy PER; no CTC loss)."""
    from fastdecoder.decode.metrics import error_rate, greedy_decode
    from fastdecoder.decode.ensemble import ensemble_log_probs

    lps = ensemble_log_probs([r.log_probs for r in members], names=names)
    arr, lens = pad_log_probs(lps)
    hyps = greedy_decode(arr, lens)
    per, edits, n_ref, per_day = float("nan"), 0, 0, {}
    if split.targets is not None:
        refs = [split.targets[i].tolist() for i in members[0].indices]
        per, edits, n_ref = error_rate(hyps, refs)
        per_day = per_by_day(hyps, refs, split.day[members[0].indices])
    argmax = np.concatenate([lp.argmax(-1) for lp in lps]) if lps else np.zeros(0, dtype=np.int64)
    return replace(members[0], per=per, edits=edits, n_ref=n_ref, loss=None, greedy=hyps, log_probs=lps,
                   per_day=per_day,
                   blank_fraction=float((argmax == 0).mean()) if argmax.size else 0.0,
                   distinct_phonemes=len(set(argmax[argmax != 0].tolist())))


def evaluate_runs(runs: Sequence, split_name: str = "val", *, checkpoint: str = "best", data=None,
                  device="cpu") -> RunsEvaluation:
    """Evaluate each run folder on ``split_name`` of one dataset (``data``, default the first run's) and average
    their log-posteriors.

    The members' greedy PERs are in ``members[i].per``, the ensemble's in ``result.per``. Runs must share the
    output framing and the data's feature count (ValueError naming the key and the runs otherwise).
    """
    from fastdecoder.data import load_dataset
    from fastdecoder.decode.ensemble import check_framing
    from fastdecoder.data.selection import select_run_data
    from fastdecoder.checkpoint import load_run, run_data_path
    from fastdecoder.device import resolve_device

    device = device if isinstance(device, torch.device) else resolve_device(str(device), "device")

    if not runs:
        raise UserError("evaluate_runs needs at least one run folder")
    names = [str(r) for r in runs]
    loaded = [load_run(Path(r), checkpoint, device) for r in runs]
    configs = [cfg for cfg, _, _ in loaded]
    data_path = run_data_path(configs[0], runs[0], data)
    ds = select_run_data(load_dataset(data_path, "auto"), configs, names)
    if split_name not in ds.splits:
        raise UserError(f"{data_path} has no '{split_name}' split (has: {', '.join(ds.splits)})")
    split = ds.splits[split_name]
    check_framing(configs, names, ds.n_features)
    members = []
    for cfg, model, _ in loaded:
        # each member as its own training run scored it: same transform, same autocast (the one evaluation path)
        members.append(evaluate(model, split, EvalSettings.from_config(cfg, device), keep_log_probs=True))
    for name, res in zip(names[1:], members[1:]):
        if not np.array_equal(res.indices, members[0].indices):
            raise UserError(f"run {name} evaluated the trials of '{split_name}' in another order than {names[0]}")
    result = members[0] if len(members) == 1 else _ensemble_result(members, names, split)
    return RunsEvaluation(names=names, configs=configs, steps=[int(s["step"]) for _, _, s in loaded],
                          members=members, result=result, dataset=ds, split=split)
