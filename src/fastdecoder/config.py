"""Typed configuration: dataclasses <-> YAML, presets, and ``section.key=value`` overrides.

A config has the sections ``data``, ``model``, ``augment``, ``ctc``, ``optim``, ``stability`` and ``train``. Unknown
sections or keys are an error that names them; values are checked against the field's type.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from fastdecoder.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(UserError):
    """A config file or override is malformed: the message names the key."""


@dataclass
class DataConfig:
    path: Optional[str] = None          # b2t24 pickle file or b2t25 folder of session folders
    format: str = "auto"                # auto | b2t24 | b2t25
    synthetic: Optional[dict] = None    # no path: generate this synthetic set (keys: format + SynthSpec fields)
    batching: str = "days"              # days (b2t25: days_per_batch random days x trials with replacement) | random
    days_per_batch: int = 4
    val_split: str = "val"
    max_val_trials: Optional[int] = None  # evaluate on the first N validation trials only (None = all)


@dataclass
class ModelConfig:
    n_features: Optional[int] = None    # taken from the data when None
    n_days: Optional[int] = None        # taken from the data when None
    n_classes: int = 41
    hidden_size: int = 768
    num_layers: int = 5
    bidirectional: bool = False
    rnn: str = "gru"                    # gru (torch.nn.GRU / cuDNN) | ln_gru (fastdecoder.nn.LayerNormGRU)
    rnn_dropout: float = 0.4
    input_dropout: float = 0.2          # after the day layer
    patch_size: int = 14
    patch_stride: int = 4
    patch_order: str = "time_major"     # time_major (b2t25: k*C + c) | channel_major (b2t24, nn.Unfold: c*K + k)
    smoothing: str = "input"            # input (data transform, b2t25) | model (inside forward, b2t24) | none
    smooth_taps: str = "b2t25"          # b2t25 (9 taps) | b2t24 (20 taps, centre 9.5)
    learn_h0: bool = True               # b2t25: learnable (1, 1, H) initial state; b2t24: zeros
    day_activation: str = "softsign"
    head_init: str = "xavier"           # xavier (b2t25) | default (torch.nn.Linear's, b2t24)


@dataclass
class AugmentConfig:
    white_noise_std: float = 0.0
    constant_offset_std: float = 0.0
    random_cut: int = 0                 # cut randint(0, random_cut) bins from the start of the batch (0 = off)
    time_mask_prob: float = 0.0
    time_mask_width: int = 0
    time_mask_count: int = 0
    freq_mask_prob: float = 0.0
    freq_mask_width: int = 0
    freq_mask_count: int = 0
    backend: str = "auto"               # auto | reference | triton


@dataclass
class CTCConfig:
    reduction: str = "mean_batch"       # mean_batch (b2t25: per-sentence loss, plain batch mean) | mean_target (b2t24: torch 'mean')
    zero_infinity: bool = False
    output_lengths: str = "exact"       # exact: (T - K) // S + 1 | shipped: the b2t24 code's floor((T - K) / S)


@dataclass
class OptimConfig:
    name: str = "adamw"                 # adam (coupled L2 decay) | adamw (decoupled)
    lr: float = 0.005
    betas: tuple = (0.9, 0.999)
    eps: float = 0.1
    weight_decay: float = 0.001
    no_decay_bias: bool = True          # weight decay 0 for biases (and norms)
    day_lr: Optional[float] = None      # day layers' own LR (None = lr); their decay is day_weight_decay
    day_weight_decay: float = 0.0
    schedule: str = "warmup_cosine"     # constant | linear | warmup_cosine | onecycle | plateau
    warmup_steps: int = 1000            # linear and warmup_cosine: linear warmup 0 -> lr over these steps
    decay_steps: int = 120000           # cosine/linear reach lr_min at this step; onecycle: the cycle's length
    lr_min: float = 1e-4                # end LR of linear/warmup_cosine; floor of the plateau reductions
    grad_clip: float = 10.0             # max grad norm; 0 = off
    fused: bool = True                  # fused AdamW where the device supports it
    # onecycle (torch.optim.lr_scheduler.OneCycleLR, cosine anneal, no momentum cycling): lr is max_lr
    onecycle_pct_start: float = 0.3     # share of decay_steps spent rising from lr / div_factor to lr
    onecycle_div_factor: float = 25.0   # start LR = lr / div_factor
    onecycle_final_div_factor: float = 1e4  # final LR = start LR / final_div_factor
    # plateau (ReduceLROnPlateau on the validation PER, mode min, relative threshold): constant lr until then
    plateau_factor: float = 0.5         # LR multiplied by this at each reduction
    plateau_patience: int = 3           # evaluations without improvement tolerated; the next one reduces
    plateau_threshold: float = 1e-4     # relative improvement that counts (PER < best * (1 - threshold))
    plateau_cooldown: int = 0           # evaluations after a reduction during which no reduction happens


@dataclass
class StabilityConfig:
    """Guards against the failures of ../shared/seeds: NaN/Inf updates, repeated explosions, blank collapse."""
    abort_on_nonfinite: bool = False    # stop with an error at the first non-finite loss/gradient (default: skip it)
    max_consecutive_skips: int = 100    # stop with an error after this many skipped updates in a row (0 = never)
    adaptive_lr: bool = False           # reduce the LR when instability repeats
    grad_norm_threshold: float = 10.0   # a pre-clip grad norm above this is an instability event (non-finite too)
    instability_events: int = 3         # this many events within instability_window steps trigger a reduction
    instability_window: int = 100
    lr_reduction_factor: float = 0.8    # LR multiplied by this at each adaptive reduction
    min_lr: float = 1e-5                # adaptive reductions never take the (peak) LR below this
    max_lr_reductions: int = 5
    monitor_after_steps: int = 1000     # collapse/diversity warnings only from this step on (CTC starts blank)
    blank_threshold: float = 0.95       # warn when more argmax frames than this are blank (blank collapse)
    min_distinct_phonemes: int = 10     # warn when fewer distinct phonemes than this are predicted


@dataclass
class TrainConfig:
    steps: int = 120000
    batch_size: int = 64
    eval_every: int = 2000
    log_every: int = 100
    checkpoint_every: int = 2000
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    amp: str = "bf16"                   # bf16 | none (bf16 autocast only on CUDA)
    compile: bool = False
    deterministic: bool = False         # deterministic algorithms; on the CPU a resumed run is bitwise exact
    eval_batch_size: int = 64
    beam_width: int = 20                # final evaluation also reports beam-search PER (0 = skip)
    threads: int = 0                    # CPU threads for torch (0 = leave torch's default)
    tensorboard: bool = False           # also log to DIR/tensorboard (needs the tensorboard package)
    plot: bool = True                   # write DIR/curves.png at the end (needs matplotlib; skipped if missing)
    train_monitor: bool = True          # blank fraction / distinct phonemes of the training batch at log steps
    fast: Optional[bool] = None         # fast path (None = on CUDA): Triton ops, device-resident batches, fused
    #                                     AdamW, torch.compile as configured; false = reference ops, host batching


@dataclass
class Config:
    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ctc: CTCConfig = field(default_factory=CTCConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return d


_CHOICES = {
    ("data", "format"): ("auto", "b2t24", "b2t25"),
    ("data", "batching"): ("days", "random"),
    ("model", "rnn"): ("gru", "ln_gru"),
    ("model", "patch_order"): ("time_major", "channel_major"),
    ("model", "smoothing"): ("input", "model", "none"),
    ("model", "smooth_taps"): ("b2t25", "b2t24"),
    ("model", "day_activation"): ("softsign", "none"),
    ("model", "head_init"): ("xavier", "default"),
    ("augment", "backend"): ("auto", "reference", "triton"),
    ("ctc", "reduction"): ("mean_batch", "mean_target"),
    ("ctc", "output_lengths"): ("exact", "shipped"),
    ("optim", "name"): ("adam", "adamw"),
    ("optim", "schedule"): ("constant", "linear", "warmup_cosine", "onecycle", "plateau"),
    ("train", "amp"): ("bf16", "fp16", "none"),
}


def _coerce(where: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` (int/float/bool/str/tuple/dict, Optional)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(where, value, args[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if tp is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(float(v) for v in value)
        raise ConfigError(f"{where} must be a list, got {value!r}")
    if tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return value


def _build_section(cls, name: str, raw: Any):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"section '{name}' must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown key '{name}.{key}' (known keys of '{name}': {', '.join(sorted(known))})")
    kwargs = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in raw.items()}
    obj = cls(**kwargs)
    for (sec, key), choices in _CHOICES.items():
        if sec == name and getattr(obj, key) not in choices:
            raise ConfigError(f"{name}.{key} must be one of {', '.join(choices)}, got {getattr(obj, key)!r}")
    return obj


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "augment": AugmentConfig, "ctc": CTCConfig,
             "optim": OptimConfig, "stability": StabilityConfig, "train": TrainConfig}


def config_from_dict(raw: dict) -> Config:
    """Build a validated Config from a plain dict (as read from YAML)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    for key in raw:
        if key not in _SECTIONS and key != "name":
            raise ConfigError(f"unknown section '{key}' (known: name, {', '.join(_SECTIONS)})")
    sections = {k: _build_section(cls, k, raw.get(k)) for k, cls in _SECTIONS.items()}
    cfg = Config(name=str(raw.get("name", "custom")), **sections)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks, with messages that name the key."""
    t, o, m, a = cfg.train, cfg.optim, cfg.model, cfg.augment
    positive = {"train.steps": t.steps, "train.batch_size": t.batch_size, "train.eval_every": t.eval_every,
                "train.log_every": t.log_every, "train.checkpoint_every": t.checkpoint_every,
                "train.eval_batch_size": t.eval_batch_size, "model.hidden_size": m.hidden_size,
                "model.num_layers": m.num_layers, "model.patch_size": m.patch_size,
                "model.patch_stride": m.patch_stride, "data.days_per_batch": cfg.data.days_per_batch}
    for k, v in positive.items():
        if v < 1:
            raise ConfigError(f"{k} must be >= 1, got {v}")
    for k, v in {"optim.lr": o.lr, "optim.eps": o.eps}.items():
        if not v > 0:
            raise ConfigError(f"{k} must be > 0, got {v}")
    for k, v in {"optim.weight_decay": o.weight_decay, "optim.grad_clip": o.grad_clip, "optim.lr_min": o.lr_min,
                 "augment.white_noise_std": a.white_noise_std, "augment.constant_offset_std": a.constant_offset_std,
                 "augment.random_cut": a.random_cut, "train.beam_width": t.beam_width}.items():
        if v < 0:
            raise ConfigError(f"{k} must be >= 0, got {v}")
    for k, v in {"model.rnn_dropout": m.rnn_dropout, "model.input_dropout": m.input_dropout,
                 "augment.time_mask_prob": a.time_mask_prob, "augment.freq_mask_prob": a.freq_mask_prob}.items():
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{k} must lie in [0, 1], got {v}")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {list(o.betas)}")
    if o.schedule in ("warmup_cosine", "linear") and o.decay_steps <= o.warmup_steps:
        raise ConfigError(f"optim.decay_steps ({o.decay_steps}) must exceed optim.warmup_steps ({o.warmup_steps})")
    if o.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
    if o.schedule == "onecycle":
        if o.decay_steps < 2:
            raise ConfigError(f"optim.decay_steps (the onecycle length) must be >= 2, got {o.decay_steps}")
        if not 0.0 < o.onecycle_pct_start < 1.0:
            raise ConfigError(f"optim.onecycle_pct_start must lie in (0, 1), got {o.onecycle_pct_start}")
        for k, v in {"optim.onecycle_div_factor": o.onecycle_div_factor,
                     "optim.onecycle_final_div_factor": o.onecycle_final_div_factor}.items():
            if not v > 0:
                raise ConfigError(f"{k} must be > 0, got {v}")
    if not 0.0 < o.plateau_factor < 1.0:
        raise ConfigError(f"optim.plateau_factor must lie in (0, 1), got {o.plateau_factor}")
    for k, v in {"optim.plateau_patience": o.plateau_patience, "optim.plateau_threshold": o.plateau_threshold,
                 "optim.plateau_cooldown": o.plateau_cooldown}.items():
        if v < 0:
            raise ConfigError(f"{k} must be >= 0, got {v}")
    s_ = cfg.stability
    if not 0.0 < s_.lr_reduction_factor < 1.0:
        raise ConfigError(f"stability.lr_reduction_factor must lie in (0, 1), got {s_.lr_reduction_factor}")
    if not 0.0 < s_.blank_threshold <= 1.0:
        raise ConfigError(f"stability.blank_threshold must lie in (0, 1], got {s_.blank_threshold}")
    if not s_.grad_norm_threshold > 0:
        raise ConfigError(f"stability.grad_norm_threshold must be > 0, got {s_.grad_norm_threshold}")
    for k, v in {"stability.instability_events": s_.instability_events,
                 "stability.instability_window": s_.instability_window}.items():
        if v < 1:
            raise ConfigError(f"{k} must be >= 1, got {v}")
    for k, v in {"stability.max_consecutive_skips": s_.max_consecutive_skips, "stability.min_lr": s_.min_lr,
                 "stability.max_lr_reductions": s_.max_lr_reductions,
                 "stability.monitor_after_steps": s_.monitor_after_steps,
                 "stability.min_distinct_phonemes": s_.min_distinct_phonemes, "train.threads": t.threads}.items():
        if v < 0:
            raise ConfigError(f"{k} must be >= 0, got {v}")
    if cfg.data.path is None and cfg.data.synthetic is None:
        pass  # a path may still come from the command line (--data); checked when the data is loaded


def resolve_config_path(path_or_name: str | Path) -> Path:
    """A YAML path, or a preset name (``b2t25``, ``b2t24``, ``demo``) looked up in ``configs/``."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    preset = CONFIG_DIR / f"{path_or_name}.yaml"
    if preset.is_file():
        return preset
    presets = ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))) if CONFIG_DIR.is_dir() else "none found"
    raise ConfigError(f"config '{path_or_name}' is neither a file nor a preset (presets: {presets})")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key '{key}' must look like section.key")
    return parts, yaml.safe_load(value)


def load_config(path_or_name: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or preset name) and apply ``section.key=value`` overrides."""
    path = resolve_config_path(path_or_name)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    return config_from_dict(apply_overrides(raw, overrides))


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """A copy of the raw config dict with ``section.key=value`` overrides applied."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for ov in overrides or []:
        (sec, key), value = parse_override(ov)
        if sec not in _SECTIONS:
            raise ConfigError(f"unknown section '{sec}' in override '{ov}'")
        raw.setdefault(sec, {})
        if raw[sec] is None:
            raw[sec] = {}
        raw[sec][key] = value
    return raw


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_diff(a: dict, b: dict, ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """Keys whose values differ between two config dicts (as ``Config.to_dict`` gives), as ``section.key``."""
    out = []
    for sec in sorted(set(a) | set(b)):
        va, vb = a.get(sec), b.get(sec)
        if isinstance(va, dict) or isinstance(vb, dict):
            va, vb = va or {}, vb or {}
            for k in sorted(set(va) | set(vb)):
                key = f"{sec}.{k}"
                x, y = va.get(k), vb.get(k)
                if isinstance(x, tuple):
                    x = list(x)
                if isinstance(y, tuple):
                    y = list(y)
                if key not in ignore and x != y:
                    out.append((key, x, y))
        elif sec not in ignore and va != vb:
            out.append((sec, va, vb))
    return out
