"""Calibration to new sessions: initialise from an earlier run, freeze parts of the model, stop early.

NEJM's trainer has the keys this mirrors: ``init_from_checkpoint`` / ``init_checkpoint_path`` (here
``train.init_from``), ``model.rnn_trainable`` (freezes every parameter whose name holds ``gru``: the recurrence;
here ``model.rnn_trainable`` freezes ``rnn.*``), ``model.input_network.input_trainable`` (freezes the ``day``
parameters; here ``model.input_trainable``) and ``early_stopping`` / ``early_stopping_val_steps``.

Differences, all named: NEJM's ``init_from_checkpoint`` loads the whole checkpoint strictly (same sessions, same
shapes) together with the optimizer, the LR scheduler's position and the best validation PER; ``train.init_from``
loads the weights only (the schedule, optimizer and best PER start fresh) and matches the day layers by session
name, so a calibration run may add, drop or reorder sessions. A session the checkpoint lacks gets a new day layer:
``identity`` (the reference's own initialisation: identity weights, zero biases) or ``nearest`` (a copy of the
nearest earlier session's layer, by session name, which sorts by date in both formats' names; the earliest
session's when none is earlier).
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastdecoder.errors import UserError

log = logging.getLogger("fastdecoder.train")

#: the day-layer parameters (one slice per day along dim 0)
DAY_PARAMS = ("day_weights", "day_biases")
#: model keys that fix the shapes and meaning of the weights: they must agree between the init run and this one
ARCHITECTURE_KEYS = ("n_features", "n_classes", "hidden_size", "num_layers", "bidirectional", "rnn", "patch_size",
                     "patch_stride", "patch_order", "smoothing", "smooth_taps", "learn_h0", "day_activation")


def is_rnn_param(name: str) -> bool:
    """A parameter of the recurrence (what NEJM's ``rnn_trainable: false`` freezes: its names holding 'gru')."""
    return name.startswith("rnn.")


def is_day_param(name: str) -> bool:
    """A day-layer parameter (what NEJM's ``input_trainable: false`` freezes: its names holding 'day')."""
    return name in DAY_PARAMS


def freeze(model: torch.nn.Module, model_cfg) -> list[str]:
    """Set ``requires_grad = False`` on the recurrence (``model.rnn_trainable: false``) and/or the day layers
    (``model.input_trainable: false``). A frozen parameter gets no gradient, so the optimizer never touches it (no
    update, no weight decay). Returns the frozen names."""
    frozen = []
    for name, p in model.named_parameters():
        if (not model_cfg.rnn_trainable and is_rnn_param(name)) or \
                (not model_cfg.input_trainable and is_day_param(name)):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def init_checkpoint_path(source: str | Path) -> Path:
    """``train.init_from``: a checkpoint file, or a run folder (its best.pt, else its last.pt)."""
    p = Path(source)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise UserError(f"train.init_from: run folder {p} holds no best.pt or last.pt")
    if not p.is_file():
        raise UserError(f"train.init_from: {p} is neither a run folder nor a checkpoint file")
    return p


def checkpoint_sessions(state: dict, where: Path) -> list[str]:
    """The session (day) names of a checkpoint's day layers, in day-index order."""
    names = state.get("day_names")
    if names:
        return [str(n) for n in names]
    saved = (state.get("config") or {}).get("data") or {}
    if saved.get("sessions"):
        return [str(n) for n in saved["sessions"]]
    path = saved.get("path")
    if path and Path(path).is_dir():  # a b2t25 folder: its session folders, sorted, are the days
        from fastdecoder.data.b2t25 import session_folders

        return [s.name for s in session_folders(Path(path))]
    raise UserError(f"train.init_from: {where} does not record its session names (an older checkpoint whose data "
                    f"{path or '(none)'} is not at hand), so its day layers cannot be matched to sessions")


@dataclass
class InitReport:
    """What ``init_from_checkpoint`` did: the checkpoint, sessions matched, and each new session's source."""

    checkpoint: str
    matched: list[str] = field(default_factory=list)
    new: dict[str, str] = field(default_factory=dict)  # new session -> "identity" or the session it was copied from

    def as_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "matched_sessions": self.matched, "new_sessions": self.new}


def _architecture_mismatch(saved_model: dict, model_cfg) -> list[str]:
    out = []
    for k in ARCHITECTURE_KEYS:
        if k in saved_model and saved_model[k] != getattr(model_cfg, k):
            out.append(f"model.{k}: checkpoint {saved_model[k]!r}, this run {getattr(model_cfg, k)!r}")
    return out


def nearest_earlier(name: str, candidates: list[str]) -> str:
    """The candidate that sorts last before ``name`` (session names sort by date); the first one if none does."""
    ordered = sorted(candidates)
    k = bisect.bisect_left(ordered, name)
    return ordered[k - 1] if k > 0 else ordered[0]


def init_from_checkpoint(model: torch.nn.Module, source: str | Path, day_names: list[str], model_cfg,
                         new_days: str = "identity") -> InitReport:
    """Load the weights of ``source`` (run folder or checkpoint) into ``model``, whose days are ``day_names``.

    Every parameter but the day layers is copied as is (the architectures must agree: UserError naming the keys
    otherwise); day d of this run takes the day layer of the checkpoint's session of the same name, and a session
    the checkpoint lacks keeps the reference initialisation (``identity``) or takes a copy of the nearest earlier
    session's layer (``nearest``)."""
    from fastdecoder.checkpoint import load_checkpoint

    path = init_checkpoint_path(source)
    state = load_checkpoint(path)
    why = _architecture_mismatch((state.get("config") or {}).get("model") or {}, model_cfg)
    if why:
        raise UserError(f"train.init_from: {path} has another architecture than this run: {'; '.join(why)}")
    base_days = checkpoint_sessions(state, path)
    weights = state["model"]
    own = model.state_dict()
    for k in DAY_PARAMS:
        if k in weights and weights[k].shape[0] != len(base_days):
            raise UserError(f"train.init_from: {path} has {weights[k].shape[0]} day layers but records "
                            f"{len(base_days)} sessions")
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        raise UserError(f"train.init_from: {path} does not fit this model (missing: {', '.join(missing) or 'none'}; "
                        f"unexpected: {', '.join(unexpected) or 'none'})")
    report = InitReport(checkpoint=str(path))
    index = {n: i for i, n in enumerate(base_days)}
    with torch.no_grad():
        for k, t in own.items():
            src = weights[k]
            if k in DAY_PARAMS:
                continue
            if src.shape != t.shape:
                raise UserError(f"train.init_from: {path}: {k} has shape {tuple(src.shape)}, this model "
                                f"{tuple(t.shape)}")
            t.copy_(src)
        for d, name in enumerate(day_names):
            if name in index:
                source_day = index[name]
                report.matched.append(name)
            elif new_days == "nearest":
                near = nearest_earlier(name, base_days)
                source_day = index[near]
                report.new[name] = near
            else:
                report.new[name] = "identity"
                continue  # the model's own initialisation: identity weights, zero biases
            for k in DAY_PARAMS:
                own[k][d].copy_(weights[k][source_day])
    return report


class EarlyStopping:
    """NEJM's early stopping on the validation PER: an evaluation improves when its PER is below the best so far, or
    equal to it with a lower validation loss; after ``patience`` evaluations in a row without improvement training
    stops. With evaluations every E steps and the last improvement at step b, it stops at step b + patience * E
    (the evaluation that counts the ``patience``-th miss), if that is within ``train.steps``."""

    def __init__(self, patience: int):
        self.patience = int(patience)
        self.best_per = float("inf")
        self.best_loss = float("inf")
        self.misses = 0

    def observe(self, per: float, loss: float | None) -> bool:
        """Account one evaluation; True when training should stop now."""
        loss = float("inf") if loss is None else float(loss)
        if per < self.best_per or (per == self.best_per and loss < self.best_loss):
            self.best_per, self.best_loss, self.misses = per, loss, 0
        else:
            self.misses += 1
        return self.misses >= self.patience

    def stop_record(self, step: int) -> tuple[dict, str]:
        """(the metrics.jsonl event, the line to print) when it stops training at ``step``."""
        return ({"step": step, "event": "early_stopping", "evaluations_without_improvement": self.misses,
                 "best_val_per": self.best_per},
                f"step {step}: the validation PER has not improved in {self.misses} evaluations "
                "(train.early_stopping_val_steps): stopping early")

    def state_dict(self) -> dict:
        return {"best_per": self.best_per, "best_loss": self.best_loss, "misses": self.misses}

    def load_state_dict(self, d: dict) -> None:
        self.best_per, self.best_loss, self.misses = float(d["best_per"]), float(d["best_loss"]), int(d["misses"])
