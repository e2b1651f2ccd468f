"""One trial: a normal training run in its own folder, its validation PER reported to the pruner at every evaluation.

Outcomes (``TrialOutcome.state``, with ``reason`` in the trial's user attribute ``reason``):

* complete: the value is the best validation PER over the run's evaluations (what DIR/best.pt holds, so
  ``fastdecoder eval --run`` on the folder reproduces it; greedy, or beam search with ``objective='beam'``);
* pruned: the pruner stopped it (its PER at that step was poor against the other trials), its outputs collapsed
  to blanks (the collapse monitor's rule: more than ``stability.blank_threshold`` of the validation frames blank at
  an evaluation from ``stability.monitor_after_steps`` on), or it went non-finite past the stability guard (the
  trainer stopped on NaN/Inf: ``stability.max_consecutive_skips`` skipped updates in a row, non-finite weights, or
  ``abort_on_nonfinite``), its validation PER or loss was not finite, or it diverged: its validation loss
  exceeded ``diverge`` times the untrained model's (evaluated before the first step; 0 turns the rule off);
* failed: its config is invalid (a sampled combination the config rejects), or training raised; the run folder's
  ``error.txt`` holds the traceback.
"""
from __future__ import annotations

import logging
import math
import traceback
from dataclasses import dataclass
from pathlib import Path

from fastdecoder.config import ConfigError
from fastdecoder.tune.space import config_with

log = logging.getLogger("fastdecoder.tune")


class StopTrial(Exception):
    """Raised from the evaluation hook to end a trial early: ``kind`` 'pruned', ``reason`` says why."""

    def __init__(self, reason: str, kind: str = "pruned"):
        super().__init__(reason)
        self.reason, self.kind = reason, kind


@dataclass
class TrialOutcome:
    state: str                 # complete | pruned | failed | interrupted
    value: float | None        # the trial's objective (complete) or its last reported PER (pruned)
    reason: str                # "" for a complete trial
    steps: int                 # training steps done
    interrupted: bool = False  # a signal stopped the worker: do not start another trial


def judge_evaluation(trial, value, res, step: int, cfg, collapsed: bool, untrained_loss: float | None,
                     diverge: float, reported: list) -> None:
    """One evaluation of a trial at ``step``: ``value`` (its objective) appended to ``reported`` and reported to
    ``trial``; StopTrial if it is non-finite, diverged (validation loss over ``diverge`` x ``untrained_loss``),
    collapsed to blanks (``collapsed``: the collapse monitor's verdict) or the pruner prunes it (never at the last
    step, ``cfg.train.steps``: that evaluation completes the trial)."""
    if value is None or not math.isfinite(value):
        raise StopTrial(f"non-finite: validation PER {value} at step {step}")
    reported.append(value)
    trial.report(value, step)
    if res.loss is not None and not math.isfinite(res.loss):
        raise StopTrial(f"non-finite: validation loss {res.loss} at step {step}")
    if res.loss is not None and untrained_loss and diverge and res.loss > diverge * untrained_loss:
        raise StopTrial(f"diverged at step {step}: validation loss {res.loss:.4g} > {diverge:g} x the "
                        f"untrained model's {untrained_loss:.4g}")
    if collapsed:
        c = cfg.stability
        raise StopTrial(f"blank collapse at step {step}: {100 * res.blank_fraction:.1f}% of the validation "
                        f"frames are blank (stability.blank_threshold {c.blank_threshold}, checked from step "
                        f"{c.monitor_after_steps})")
    if step < cfg.train.steps and trial.should_prune():
        raise StopTrial(f"pruned at step {step}: validation PER {value:.4f} ranks poorly among the trials "
                        "at this step")


def run_trial(trial, base: dict, params: dict, run_dir: Path, *, objective: str = "greedy",
              beam_width: int = 20, diverge: float = 3.0, progress: bool = False) -> TrialOutcome:
    """Train ``base`` with ``params`` applied into ``run_dir``, reporting to ``trial`` (an optuna Trial)."""
    from fastdecoder.train.stability import NonFiniteError
    from fastdecoder.train.trainer import Trainer

    try:
        cfg = config_with(base, params)
    except ConfigError as e:
        return TrialOutcome("failed", None, f"invalid config: {e}", 0)
    run_dir.mkdir(parents=True, exist_ok=True)
    reported: list[float] = []
    trainer = None
    untrained_loss = None  # validation loss of the untrained model: the divergence rule's reference

    def on_eval(tr, res) -> None:
        if objective == "beam":
            value = tr.evaluate(decoder="beam", beam_width=beam_width,
                                max_trials=tr.cfg.data.max_val_trials).per_beam
        else:
            value = res.per
        judge_evaluation(trial, value, res, tr.step, tr.cfg, tr.monitor.collapsed, untrained_loss, diverge,
                         reported)

    try:
        trainer = Trainer(cfg, run_dir, progress=progress, eval_hook=on_eval)
        if diverge and trainer.val_split is not None:
            untrained_loss = trainer.evaluate(max_trials=cfg.data.max_val_trials).loss
        summary = trainer.fit()
    except StopTrial as e:
        return TrialOutcome(e.kind, reported[-1] if reported else None, e.reason, trainer.step)
    except NonFiniteError as e:
        first = str(e).splitlines()[0] if str(e) else "non-finite loss or weights"
        return TrialOutcome("pruned", reported[-1] if reported else None, f"non-finite: {first}",
                            trainer.step if trainer is not None else 0)
    except Exception as e:  # noqa: BLE001 - a trial that raises fails alone; the study goes on
        (run_dir / "error.txt").write_text(traceback.format_exc())
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return TrialOutcome("failed", None, f"{type(e).__name__}: {first}",
                            trainer.step if trainer is not None else 0)
    if summary.get("interrupted"):
        return TrialOutcome("failed", None, f"interrupted: {summary['interrupted']}", trainer.step,
                            interrupted=True)
    if trainer.best_step < 0 or not math.isfinite(trainer.best_per):
        return TrialOutcome("failed", None, "no validation PER: the run has no validation split (data.val_split)",
                            trainer.step)
    return TrialOutcome("complete", min(reported) if reported else trainer.best_per, "", trainer.step)
