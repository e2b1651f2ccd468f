"""K trials asked together (``tune --members K``) trained as one batched model: a ``train.members: K`` run whose
member i carries trial i's parameters (fastdecoder.train.members).

* Member i's config is the trial's config with ``train.seed`` = the base seed + i and ``train.data_seed`` = the
  base's data seed (the members share their batches and need distinct seeds); the trial's ``config_params`` record
  both, so best.yaml reproduces the member's run and ``train --config`` on it gives the member's losses.
* Each member's evaluations go to its own trial (value, report, pruning, divergence, collapse: the rules of a solo
  trial, fastdecoder.tune.objective); a member the rules stop is stopped while the others train on. A member its
  stability guard stops (non-finite) is pruned; a member whose evaluation raises is failed; if the batched run
  itself raises, every trial of the batch fails with the reason.
* Folders: DIR/trials/batch_NNNN is the batched run (NNNN the first trial's number), its member-i a normal run
  folder; DIR/trials/trial_NNNN is a symbolic link to its member's folder (``eval --run`` takes either).
* What cannot be batched is trained one trial after another, with a line saying why: sampled values of keys a
  member may not override (fastdecoder.config.OVERRIDABLE: the model's shape, the batches, the data) that differ
  between the trials of the ask, or a base config the batched trainer refuses (not a unidirectional GRU, fp16,
  CUDA graphs, compile, ...).
"""
from __future__ import annotations

import logging
import math
import os
import traceback
from pathlib import Path

from fastdecoder.config import OVERRIDABLE, config_from_dict
from fastdecoder.errors import UserError
from fastdecoder.tune.objective import StopTrial, TrialOutcome, judge_evaluation
from fastdecoder.tune.space import apply_params, config_with

log = logging.getLogger("fastdecoder.tune")


def members_config(base: dict, params_list: list[dict]):
    """(the ``train.members: K`` Config whose member i has ``params_list[i]`` applied, '') or (None, why they
    cannot be members of one run). ConfigError if a trial's own config is invalid (as a solo trial it fails)."""
    solo = [config_with(base, p).to_dict() for p in params_list]  # ConfigError: that trial's combination
    keys = sorted({k for p in params_list for k in p})
    shared, overrides = {}, [{} for _ in params_list]
    for key in keys:
        sec, name = key.split(".")
        values = [d[sec][name] for d in solo]  # each trial's value (the base's where its params lack the key)
        if key in OVERRIDABLE:
            for ov, v in zip(overrides, values):
                ov[key] = v
        elif all(v == values[0] for v in values):
            shared[key] = values[0]
        else:
            return None, (f"'{key}' differs between the trials ({', '.join(map(repr, values))}) but is shared by "
                          "the members of a batched run (they may differ only in the keys "
                          "fastdecoder.config.OVERRIDABLE lists: seeds, dropout, augmentation, optimizer, schedule "
                          "and stability settings)")
    raw = apply_params(base, shared)
    raw["train"] = {**raw["train"], "members": len(params_list), "member_overrides": overrides}
    try:
        return config_from_dict(raw), ""
    except UserError as e:
        return None, str(e)


def member_config_params(cfg, k: int, params: dict) -> dict:
    """The trial's parameters as member ``k`` of ``cfg`` trains them: ``params`` plus its seeds."""
    t = cfg.train
    seed = params.get("train.seed", t.seed + k)
    return {**params, "train.seed": seed, "train.data_seed": t.data_seed if t.data_seed is not None else t.seed}


def link_member(trial_dir: Path, member: Path) -> None:
    """DIR/trials/trial_NNNN -> its member's folder (a relative symbolic link)."""
    if trial_dir.is_symlink() or trial_dir.is_file():
        trial_dir.unlink()
    elif trial_dir.is_dir():
        raise UserError(f"{trial_dir} exists and is not a member's link")
    trial_dir.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(member, trial_dir.parent), trial_dir)


def run_members(trials: list, cfg, batch_dir: Path, trial_dirs: list[Path], *, objective: str = "greedy",
                beam_width: int = 20, diverge: float = 3.0, progress: bool = False) -> list[TrialOutcome] | str:
    """Train ``cfg`` (a ``train.members: K`` config from members_config) into ``batch_dir``, member k reporting to
    ``trials[k]`` and linked from ``trial_dirs[k]``. The trials' outcomes, or why the batched trainer refused the
    config (a string: nothing was trained; train the trials one by one)."""
    from fastdecoder.evaluation import evaluate
    from fastdecoder.train.members import MembersTrainer, member_dir

    K = len(trials)
    reported: list[list[float]] = [[] for _ in range(K)]
    verdicts: dict[int, tuple[str, str]] = {}  # member -> (state, reason) decided at an evaluation
    untrained: list[float | None] = [None] * K  # the divergence rule's reference, per member

    def on_eval(k: int, step: int, res) -> str | None:
        m = mt.members[k]
        try:
            if objective == "beam":
                value = evaluate(m.solo, mt.val_split, m.eval_settings, decoder="beam", beam_width=beam_width,
                                 max_trials=m.cfg.data.max_val_trials).per_beam
            else:
                value = res.per
            judge_evaluation(trials[k], value, res, step, m.cfg, m.monitor.collapsed, untrained[k], diverge,
                             reported[k])
        except StopTrial as e:
            verdicts[k] = (e.kind, e.reason)
            return e.reason
        except Exception as e:  # noqa: BLE001 - this member's trial fails; the other members go on
            (member_dir(batch_dir, k) / "error.txt").write_text(traceback.format_exc())
            verdicts[k] = ("failed", _first_line(e))
            return verdicts[k][1]
        return None

    try:
        mt = MembersTrainer(cfg, batch_dir, progress=progress, eval_hook=on_eval)
    except UserError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - as a solo trial whose trainer cannot be built: failed, the study goes on
        batch_dir.mkdir(parents=True, exist_ok=True)
        (batch_dir / "error.txt").write_text(traceback.format_exc())
        return [TrialOutcome("failed", None, f"the batched run raised {_first_line(e)}", 0)] * K
    for k in range(K):
        link_member(trial_dirs[k], member_dir(batch_dir, k))
    try:
        if diverge and mt.val_split is not None:
            for k, m in enumerate(mt.members):
                untrained[k] = evaluate(m.solo, mt.val_split, m.eval_settings,
                                        max_trials=m.cfg.data.max_val_trials).loss
        summary = mt.fit()
    except Exception as e:  # noqa: BLE001 - the batched run raised: every trial of it fails; the study goes on
        text = traceback.format_exc()
        (batch_dir / "error.txt").write_text(text)
        for k in range(K):
            (member_dir(batch_dir, k) / "error.txt").write_text(text)
        return [TrialOutcome("failed", None, f"the batched run raised {_first_line(e)}", mt.step)] * K
    interrupted = summary.get("interrupted")
    signalled = interrupted is not None and interrupted != "every member stopped"
    outcomes = []
    for k, m in enumerate(mt.members):
        last = reported[k][-1] if reported[k] else None
        if k in verdicts:
            state, reason = verdicts[k]
            outcomes.append(TrialOutcome(state, last, reason, m.stopped_at))
        elif m.stopped is not None:  # its guard stopped it: non-finite loss, gradients or weights
            first = m.stopped.strip().splitlines()[0] if m.stopped.strip() else "non-finite loss or weights"
            outcomes.append(TrialOutcome("pruned", last, f"non-finite: {first}", m.stopped_at))
        elif signalled:
            outcomes.append(TrialOutcome("failed", None, f"interrupted: {interrupted}", mt.step, interrupted=True))
        elif m.best_step < 0 or not math.isfinite(m.best_per):
            outcomes.append(TrialOutcome("failed", None, "no validation PER: the run has no validation split "
                                                         "(data.val_split)", mt.step))
        else:
            outcomes.append(TrialOutcome("complete", min(reported[k]) if reported[k] else m.best_per, "", mt.step))
    return outcomes


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
