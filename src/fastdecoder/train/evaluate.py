"""Former home of the evaluation code (kept importable): see fastdecoder.evaluation, the one evaluation path."""
from __future__ import annotations

import torch

from fastdecoder.evaluation import EvalResult, EvalSettings
from fastdecoder.evaluation import evaluate as _evaluate

__all__ = ["EvalResult", "evaluate"]


def evaluate(model, split, *, transform, device, batch_size: int, ctc_cfg, patch_size: int, patch_stride: int,
             max_trials: int | None = None, keep_log_probs: bool = False, amp_dtype=None, **decode) -> EvalResult:
    """fastdecoder.evaluation.evaluate with the settings given one by one."""
    s = EvalSettings(transform=transform, device=torch.device(device), batch_size=batch_size, ctc_cfg=ctc_cfg,
                     patch_size=patch_size, patch_stride=patch_stride, autocast_dtype=amp_dtype)
    return _evaluate(model, split, s, max_trials=max_trials, keep_log_probs=keep_log_probs, **decode)
