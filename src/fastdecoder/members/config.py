"""The solo config of each member of a ``train.members: K`` run.

Member i is the run of the base config with ``train.members: 1``, ``train.seed: seed + i`` (unless its overrides
name ``train.seed``), ``train.data_seed``: the shared data seed (the base's ``data_seed``, else its ``seed``) and
its entry of ``train.member_overrides`` applied. Overrides may name only the keys a sweep varies (`OVERRIDABLE`):
what changes the model's shape, the batches or the data is shared by construction.
"""
from __future__ import annotations

from fastdecoder.errors import UserError

#: section.key that a member may override (everything else is shared by all members)
OVERRIDABLE = frozenset({
    "train.seed",
    "model.input_dropout", "model.rnn_dropout",
    "augment.white_noise_std", "augment.constant_offset_std", "augment.time_mask_prob", "augment.time_mask_width",
    "augment.time_mask_count", "augment.freq_mask_prob", "augment.freq_mask_width", "augment.freq_mask_count",
    "optim.lr", "optim.eps", "optim.weight_decay", "optim.day_lr", "optim.day_weight_decay", "optim.schedule",
    "optim.warmup_steps", "optim.decay_steps", "optim.lr_min", "optim.grad_clip", "optim.onecycle_pct_start",
    "optim.onecycle_div_factor", "optim.onecycle_final_div_factor", "optim.plateau_factor", "optim.plateau_patience",
    "optim.plateau_threshold", "optim.plateau_cooldown",
    "stability.abort_on_nonfinite", "stability.max_consecutive_skips", "stability.adaptive_lr",
    "stability.grad_norm_threshold", "stability.instability_events", "stability.instability_window",
    "stability.lr_reduction_factor", "stability.min_lr", "stability.max_lr_reductions",
})


def _error(msg: str) -> UserError:
    from fastdecoder.config import ConfigError

    return ConfigError(msg)


def check_members(cfg) -> None:
    """ConfigError naming the key if ``train.members`` / ``train.member_overrides`` are inconsistent or an override
    is not allowed or invalid (each member's config is built and validated)."""
    member_configs(cfg)


def member_configs(cfg) -> list:
    """The K solo Configs of ``cfg``'s members (validated; ConfigError naming the member and key otherwise)."""
    from fastdecoder.config import config_from_dict

    t = cfg.train
    k = t.members
    ov = t.member_overrides
    if ov is not None:
        if k == 1:
            raise _error("train.member_overrides needs train.members > 1 (a single run takes its values directly)")
        if not isinstance(ov, (list, tuple)):
            raise _error(f"train.member_overrides must be a list of {k} mappings (one per member), got "
                         f"{type(ov).__name__}")
        if len(ov) != k:
            raise _error(f"train.member_overrides has {len(ov)} entries but train.members is {k}: give one mapping "
                         "per member ({} for none)")
    if k > 1 and cfg.model.rnn != "gru":
        raise _error(f"train.members > 1 needs model.rnn: gru (the batched model has no {cfg.model.rnn} yet)")
    if k > 1 and cfg.model.bidirectional:
        raise _error("train.members > 1 needs model.bidirectional: false")
    if k > 1:  # calibration keys the batched trainer does not apply yet: refused rather than silently ignored
        for key, on in (("train.init_from", cfg.train.init_from is not None),
                        ("train.early_stopping", cfg.train.early_stopping),
                        ("model.rnn_trainable", not cfg.model.rnn_trainable),
                        ("model.input_trainable", not cfg.model.input_trainable)):
            if on:
                raise _error(f"train.members > 1 does not support {key} yet: train the members as solo runs")
    data_seed = t.data_seed if t.data_seed is not None else t.seed
    base = cfg.to_dict()
    out = []
    for i in range(k):
        d = {s: (dict(v) if isinstance(v, dict) else v) for s, v in base.items()}
        d["train"].update(members=1, member_overrides=None, seed=t.seed + i, data_seed=data_seed)
        entry = ov[i] if ov is not None else None
        if entry is None:
            entry = {}
        if not isinstance(entry, dict):
            raise _error(f"train.member_overrides[{i}] must be a mapping of section.key: value, got "
                         f"{type(entry).__name__}")
        for key, value in entry.items():
            if key not in OVERRIDABLE:
                raise _error(f"train.member_overrides[{i}]: '{key}' cannot differ between members (allowed: "
                             f"{', '.join(sorted(OVERRIDABLE))})")
            sec, name = key.split(".")
            d[sec][name] = value
        try:
            out.append(config_from_dict(d))
        except UserError as e:
            raise _error(f"train.member_overrides[{i}]: {e}") from None
    seeds = [c.train.seed for c in out]
    if len(set(seeds)) != len(seeds):
        raise _error(f"members must have distinct train.seed values, got {seeds}")
    return out
