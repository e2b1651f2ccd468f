"""Evaluation: logits over a split, greedy (and beam) PER, per-sentence predictions."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fastdecoder.decode import error_rate, greedy_decode
from fastdecoder.losses import output_lengths


@dataclass
class EvalResult:
    per: float                      # greedy PER (edits / reference phonemes)
    edits: int
    n_ref: int
    loss: float | None              # mean CTC loss over labelled trials (None if unlabelled)
    blank_fraction: float           # share of valid frames whose argmax is blank
    n_trials: int
    indices: np.ndarray = field(repr=False)       # trial indices into the split, in result order
    greedy: list = field(repr=False)              # per trial: predicted ids
    log_probs: list = field(default_factory=list, repr=False)  # per trial: (N_i, V) float32 numpy (if kept)
    beam: list | None = field(default=None, repr=False)
    per_beam: float | None = None
    distinct_phonemes: int = 0      # distinct non-blank classes among the valid frames' argmax (output diversity)


@torch.no_grad()
def evaluate(model, split, *, transform, device, batch_size: int, ctc_cfg, patch_size: int, patch_stride: int,
             max_trials: int | None = None, keep_log_probs: bool = False, amp_dtype=None) -> EvalResult:
    """Greedy-decode ``split`` with ``model``; ``transform(x, lens) -> x`` is the eval-time data transform.

    The CTC loss and PER use exact output lengths as configured (ctc_cfg.output_lengths).
    """
    from fastdecoder.data import eval_batches
    from fastdecoder.losses import ctc_loss

    was_training = model.training
    model.eval()
    hyps, refs, idx_all, lps = [], [], [], []
    loss_sum, loss_n, blank, frames = 0.0, 0, 0, 0
    seen_ids: set[int] = set()
    n_seen = 0
    try:
        for batch in eval_batches(split, batch_size):
            if max_trials is not None and n_seen >= max_trials:
                break
            batch = batch.to(device)
            x = transform(batch.x, batch.x_lens)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x, batch.day, batch.x_lens)
            logits = logits.float()
            n = output_lengths(batch.x_lens, patch_size, patch_stride, ctc_cfg.output_lengths, logits.shape[1])
            if split.targets is not None:
                ok = (batch.y_lens > 0)
                if ok.any():
                    loss = ctc_loss(logits[ok], n[ok], batch.y[ok], batch.y_lens[ok], reduction="mean_batch",
                                    zero_infinity=True)
                    loss_sum += float(loss) * int(ok.sum())
                    loss_n += int(ok.sum())
            lp = logits.log_softmax(-1).cpu()
            nn_ = n.cpu()
            am = lp.argmax(-1)
            valid = torch.arange(lp.shape[1])[None, :] < nn_[:, None]
            blank += int(((am == 0) & valid).sum())
            seen_ids.update(torch.unique(am[valid & (am != 0)]).tolist())
            frames += int(valid.sum())
            hyps.extend(greedy_decode(lp, nn_))
            idx_all.extend(int(i) for i in batch.index)
            if keep_log_probs:
                lps.extend(lp[b, : nn_[b]].numpy() for b in range(lp.shape[0]))
            if split.targets is not None:
                refs.extend(batch.y[b, : batch.y_lens[b]].tolist() for b in range(batch.y.shape[0]))
            n_seen += batch.x.shape[0]
    finally:
        model.train(was_training)
    if max_trials is not None:
        hyps, idx_all, refs, lps = hyps[:max_trials], idx_all[:max_trials], refs[:max_trials], lps[:max_trials]
    per, edits, n_ref = (error_rate(hyps, refs) if refs else (float("nan"), 0, 0))
    return EvalResult(per=per, edits=edits, n_ref=n_ref, loss=(loss_sum / loss_n if loss_n else None),
                      blank_fraction=blank / max(1, frames), n_trials=len(hyps), indices=np.asarray(idx_all),
                      greedy=hyps, log_probs=lps, distinct_phonemes=len(seen_ids))
