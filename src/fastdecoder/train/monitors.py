"""Output monitors: blank collapse and output diversity, with a clear warning and the usual fixes.

A CTC model that has collapsed predicts blank on (nearly) every frame; one that has lost diversity predicts only a
handful of phonemes. Both are normal for the first few hundred steps, so the warnings start at
``stability.monitor_after_steps``. The statistics are computed at every evaluation (validation split) and, with
``train.train_monitor``, from the training batch's logits at every log step (used for warnings only when there is
no validation split).
"""
from __future__ import annotations

import logging

import torch

from fastdecoder.config import StabilityConfig

log = logging.getLogger("fastdecoder.train")

N_PHONEMES = 40  # ids 1..40 (39 phonemes + SIL)

COLLAPSE_FIXES = (
    "Likely causes and fixes, from runs that collapsed: (1) augmentation too weak for Adam eps 0.1 - use the "
    "b2t25 strengths augment.white_noise_std 1.0 and augment.constant_offset_std 0.2; (2) LR too low or warmup too "
    "long - b2t25 peaks at optim.lr 0.005 after 1000 warmup steps; (3) too few output frames - check "
    "ctc.output_lengths (exact) and the patch size/stride against the trial lengths, and warnings about targets "
    "longer than their frames.")


@torch.no_grad()
def prediction_stats(logits: torch.Tensor, out_lens: torch.Tensor) -> tuple[float, int]:
    """(blank fraction of the valid frames' argmax, number of distinct non-blank classes predicted)."""
    am = logits.detach().argmax(-1)
    valid = torch.arange(am.shape[1], device=am.device)[None, :] < out_lens.to(am.device)[:, None]
    frames = int(valid.sum())
    if frames == 0:
        return 0.0, 0
    blank = int(((am == 0) & valid).sum())
    ids = torch.unique(am[valid & (am != 0)])
    return blank / frames, int(ids.numel())


class CollapseMonitor:
    """Warns once when the outputs enter blank collapse / low diversity, briefly while it lasts, and on recovery."""

    def __init__(self, cfg: StabilityConfig):
        self.cfg = cfg
        self.collapsed = False
        self.low_diversity = False
        self.warnings = 0

    def check(self, step: int, blank_fraction: float, distinct: int, source: str = "validation") -> list[dict]:
        c = self.cfg
        events: list[dict] = []
        if step < c.monitor_after_steps:
            return events
        collapsed = blank_fraction > c.blank_threshold
        if collapsed and not self.collapsed:
            self.warnings += 1
            log.warning("step %d: BLANK COLLAPSE: %.1f%% of the %s output frames are blank (threshold %.0f%%) and only "
                        "%d distinct phonemes are predicted: the model has fallen into CTC's all-blank solution. %s",
                        step, 100 * blank_fraction, source, 100 * c.blank_threshold, distinct, COLLAPSE_FIXES)
            events.append({"step": step, "event": "blank_collapse", "source": source,
                           "blank_fraction": blank_fraction, "distinct_phonemes": distinct})
        elif collapsed:
            log.warning("step %d: still in blank collapse (%.1f%% blank frames on %s)", step, 100 * blank_fraction,
                        source)
        elif self.collapsed:
            log.info("step %d: recovered from blank collapse (%.1f%% blank frames)", step, 100 * blank_fraction)
            events.append({"step": step, "event": "blank_collapse_recovered", "source": source,
                           "blank_fraction": blank_fraction})
        self.collapsed = collapsed
        low = (not collapsed) and distinct < c.min_distinct_phonemes
        if low and not self.low_diversity:
            self.warnings += 1
            log.warning("step %d: LOW OUTPUT DIVERSITY: only %d of %d phonemes are ever predicted on %s (threshold "
                        "%d); the model is collapsing onto a few frequent classes. %s", step, distinct, N_PHONEMES,
                        source, c.min_distinct_phonemes, COLLAPSE_FIXES)
            events.append({"step": step, "event": "low_diversity", "source": source, "distinct_phonemes": distinct})
        elif self.low_diversity and not low and not collapsed:
            events.append({"step": step, "event": "low_diversity_recovered", "source": source,
                           "distinct_phonemes": distinct})
        self.low_diversity = low
        return events

    def state_dict(self) -> dict:
        return {"collapsed": self.collapsed, "low_diversity": self.low_diversity, "warnings": self.warnings}

    def load_state_dict(self, d: dict) -> None:
        self.collapsed = bool(d["collapsed"])
        self.low_diversity = bool(d["low_diversity"])
        self.warnings = int(d["warnings"])
