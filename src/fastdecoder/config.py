"""Typed configuration: dataclasses <-> YAML, presets, and ``section.key=value`` overrides.

A config has the sections ``data``, ``model``, ``augment``, ``ctc``, ``optim``, ``stability`` and ``train``. Unknown
sections or keys are an error that names them; values are checked against the field's type, every numeric key
against its range (`RANGES`: finite, sign, integer where the field is an int) and keys that depend on each other
against each other (`validate`). Files and ``--set`` values are read with YAML 1.2 core-schema scalars
(`yaml_load`): ``1e-4`` and ``.5`` are numbers, ``yes``/``no``/``on``/``off`` are strings, ``017`` is 17.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from fastdecoder.errors import UserError
from fastdecoder.limits import short_repr
from fastdecoder.phonemes import N_CLASSES

PRESETS_PACKAGE = "fastdecoder.presets"  # the presets' YAML files, shipped as package data


class ConfigError(UserError):
    """A config file or override is malformed: the message names the key."""


@dataclass
class DataConfig:
    path: Optional[str] = None          # b2t24 pickle file or b2t25 folder of session folders
    format: str = "auto"                # auto | b2t24 | b2t25
    synthetic: Optional[dict] = None    # no path: generate this synthetic set (keys: format + SynthSpec fields)
    batching: str = "days"              # days (b2t25: days_per_batch random days x trials with replacement) |
    #                                     random (b2t24: a fresh shuffled full batch every step) | epochs (each trial
    #                                     once per epoch, the epoch's last batch short)
    days_per_batch: int = 4
    val_split: Optional[str] = "val"   # train | val | test: the split evaluated during training (null = none)
    max_val_trials: Optional[int] = None  # evaluate on the first N validation trials only (None = all)
    # data selection (NEJM's dataset keys; none in the presets = all of the data)
    sessions: Optional[list] = None     # session (day) names to use, in this order (day index = position); null = all
    must_include_days: Optional[list] = None  # day indices (negative: from the end) in every 'days' batch
    feature_subset: Optional[list] = None     # feature (channel) indices to keep, in this order; null/[] = all
    bad_trials_dict: Optional[dict] = None    # {session: {block_num: [trial_num, ...]}}: left out of train and val


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
    mask_padding: bool = True           # padding beyond each trial's length stays zero through the noise, offset and
    #                                     smoothing (data transform and in-model); false (both presets, as shipped):
    #                                     they act on the whole zero-padded batch. Configs saved without it: true
    rnn_trainable: bool = True          # false: the recurrence (rnn.*) is frozen (NEJM model.rnn_trainable)
    input_trainable: bool = True        # false: the day layers are frozen (NEJM model.input_network.input_trainable)


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
    noise: str = "auto"                 # auto (philox where the Triton kernel runs, else torch) | philox | torch


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
    no_decay_h0: bool = True            # with no_decay_bias, the learnable h0 undecayed too; false (the presets, as
    #                                     NEJM): h0 decays with the main group. Configs saved without it: true
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
    """Guards against the common training failures: NaN/Inf updates, repeated explosions, blank collapse."""
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
    seed: int = 0                       # init, dropout, masks, noise (and the batches when data_seed is None)
    data_seed: Optional[int] = None     # seed of the batch order and random cut (None = train.seed, as before)
    members: int = 1                    # train K models as one batched model (fastdecoder.members)
    member_overrides: Optional[list] = None  # per-member values: a list of K mappings {section.key: value}
    member_batch_order: str = "shared"  # shared (every member trains on the same batches) | own (member i draws
    #                                     the batches of data seed (data_seed or seed) + i, as its solo run would)
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    amp: str = "bf16"                   # bf16 | none: bf16 autocast on CUDA; on the CPU only on the fast path
    #                                     where the CPU has native bf16 GEMMs (else, and on the reference path, fp32)
    compile: bool = False
    length_bucket: int = 0              # pad each batch's time axis up to a multiple of this many bins after the
    #                                     augmentation (0 = off, as the presets ship): few distinct shapes for
    #                                     torch.compile / cuDNN autotuning; losses unchanged (unidirectional models)
    deterministic: bool = False         # deterministic algorithms; on the CPU a resumed run is bitwise exact
    eval_batch_size: int = 64
    beam_width: int = 20                # final evaluation also reports beam-search PER (0 = skip)
    threads: int = 0                    # CPU threads for torch (0 = leave torch's default)
    tensorboard: bool = False           # also log to DIR/tensorboard (needs the tensorboard package)
    plot: bool = True                   # write DIR/curves.png at the end (needs matplotlib; skipped if missing)
    train_monitor: bool = True          # blank fraction / distinct phonemes of the training batch at log steps
    fast: Optional[bool] = None         # fast path (None = on CUDA): Triton ops, device-resident batches, fused
    #                                     AdamW, torch.compile as configured; false = reference ops, host batching
    fast_selfcheck: bool = True         # fast path: check each fast op against its reference at start-up; a
    #                                     failing op warns, is logged and falls back to its reference for the run
    fast_selfcheck_fatal: bool = False  # a failing fast-op self-check stops the run with an error instead
    cuda_graphs: bool = False           # fast path on CUDA with length buckets: capture the model's forward and
    #                                     backward once per bucket and replay it (train/cuda_graphs.py); off until
    #                                     the GPU check has measured it
    init_from: Optional[str] = None     # initialise the weights from this run folder or checkpoint file (days
    #                                     matched by session name; train/calibration.py)
    init_new_days: str = "identity"     # day layer of a session the init checkpoint lacks: identity (the reference
    #                                     init: eye / zeros) | nearest (copy of the nearest earlier session's)
    early_stopping: bool = False        # stop when the validation PER has not improved for
    early_stopping_val_steps: int = 20  # this many evaluations in a row (NEJM's early_stopping_val_steps)


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
    ("data", "batching"): ("days", "random", "epochs"),
    ("data", "val_split"): ("train", "val", "test", None),
    ("model", "rnn"): ("gru", "ln_gru"),
    ("model", "patch_order"): ("time_major", "channel_major"),
    ("model", "smoothing"): ("input", "model", "none"),
    ("model", "smooth_taps"): ("b2t25", "b2t24"),
    ("model", "day_activation"): ("softsign", "none"),
    ("model", "head_init"): ("xavier", "default"),
    ("augment", "backend"): ("auto", "reference", "triton"),
    ("augment", "noise"): ("auto", "philox", "torch"),
    ("ctc", "reduction"): ("mean_batch", "mean_target"),
    ("ctc", "output_lengths"): ("exact", "shipped"),
    ("optim", "name"): ("adam", "adamw"),
    ("optim", "schedule"): ("constant", "linear", "warmup_cosine", "onecycle", "plateau"),
    ("train", "amp"): ("bf16", "fp16", "none"),
    ("train", "init_new_days"): ("identity", "nearest"),
    ("train", "member_batch_order"): ("shared", "own"),
}
#: string keys with a pattern rather than a fixed set of choices: key -> (regex, what is expected)
_PATTERNS = {
    ("train", "device"): (r"auto|cpu|mps|cuda(:[0-9]+)?", "auto, cpu, mps, cuda or cuda:N"),
}


@dataclass(frozen=True)
class Range:
    """The values a numeric key may take: ``lo`` .. ``hi`` (None = unbounded), each end inclusive unless open."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v: float) -> bool:
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below

    def __str__(self) -> str:
        lo, hi = _number_str(self.lo), _number_str(self.hi)
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {lo}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {hi}"
        if self.lo == self.hi:
            return lo
        return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"


def _number_str(v: Optional[float]) -> str:
    """1 -> '1', 4294967295 -> '4294967295', 1e-05 -> '1e-05'."""
    if v is None:
        return "none"
    return str(int(v)) if float(v).is_integer() and abs(v) < 2**63 else f"{v:g}"


AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, lo_open=True)
PROBABILITY = Range(0, 1)                       # [0, 1]
DROPOUT = Range(0, 1, hi_open=True)             # [0, 1): p = 1 would zero every activation
OPEN_UNIT = Range(0, 1, lo_open=True, hi_open=True)  # (0, 1): multiplicative factors that must shrink
#: the largest integer any key may hold (int64; torch and numpy refuse more)
INT_MAX = 2**63 - 1

#: section.key -> allowed range, for every numeric (int/float) key; every value must also be finite, and int keys
#: integers (their type). Cross-key conditions live in `validate`.
RANGES: dict[str, Range] = {
    "data.days_per_batch": AT_LEAST_1, "data.max_val_trials": AT_LEAST_1,
    "model.n_features": Range(1, 2**16), "model.n_days": Range(1, 2**16),
    "model.n_classes": Range(N_CLASSES, N_CLASSES),
    "model.hidden_size": Range(1, 2**14), "model.num_layers": Range(1, 64), "model.rnn_dropout": DROPOUT,
    "model.input_dropout": DROPOUT, "model.patch_size": Range(1, 2**12), "model.patch_stride": Range(1, 2**12),
    "augment.white_noise_std": NON_NEGATIVE, "augment.constant_offset_std": NON_NEGATIVE,
    "augment.random_cut": NON_NEGATIVE, "augment.time_mask_prob": PROBABILITY, "augment.time_mask_width": NON_NEGATIVE,
    "augment.time_mask_count": Range(0, 2**10), "augment.freq_mask_prob": PROBABILITY,
    "augment.freq_mask_width": NON_NEGATIVE, "augment.freq_mask_count": Range(0, 2**10),
    "optim.lr": POSITIVE, "optim.eps": POSITIVE, "optim.weight_decay": NON_NEGATIVE, "optim.day_lr": POSITIVE,
    "optim.day_weight_decay": NON_NEGATIVE, "optim.warmup_steps": NON_NEGATIVE, "optim.decay_steps": AT_LEAST_1,
    "optim.lr_min": NON_NEGATIVE, "optim.grad_clip": NON_NEGATIVE, "optim.onecycle_pct_start": OPEN_UNIT,
    "optim.onecycle_div_factor": POSITIVE, "optim.onecycle_final_div_factor": POSITIVE,
    "optim.plateau_factor": OPEN_UNIT, "optim.plateau_patience": NON_NEGATIVE,
    "optim.plateau_threshold": Range(0, 1, hi_open=True), "optim.plateau_cooldown": NON_NEGATIVE,
    "stability.max_consecutive_skips": NON_NEGATIVE, "stability.grad_norm_threshold": POSITIVE,
    "stability.instability_events": AT_LEAST_1, "stability.instability_window": AT_LEAST_1,
    "stability.lr_reduction_factor": OPEN_UNIT, "stability.min_lr": NON_NEGATIVE,
    "stability.max_lr_reductions": NON_NEGATIVE, "stability.monitor_after_steps": NON_NEGATIVE,
    "stability.blank_threshold": Range(0, 1, lo_open=True), "stability.min_distinct_phonemes": NON_NEGATIVE,
    "train.steps": AT_LEAST_1, "train.batch_size": Range(1, 2**16), "train.eval_every": AT_LEAST_1,
    "train.log_every": AT_LEAST_1, "train.checkpoint_every": AT_LEAST_1,
    "train.seed": Range(0, 2**32 - 1),  # numpy's seed range (and the per-rank seeds derived from it stay >= 0)
    "train.data_seed": Range(0, 2**32 - 1), "train.members": Range(1, 256),
    "train.eval_batch_size": Range(1, 2**16), "train.beam_width": Range(0, 2**16), "train.threads": NON_NEGATIVE,
    "train.length_bucket": Range(0, 2**16), "train.early_stopping_val_steps": AT_LEAST_1,
}

#: YAML 1.2 core-schema scalars (https://yaml.org/spec/1.2.2/#1032-tag-resolution): tag, regex, possible first chars
_YAML12_SCALARS = (
    ("tag:yaml.org,2002:bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("tag:yaml.org,2002:null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    ("tag:yaml.org,2002:float",
     r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)", "-+0123456789."),
)
_SCALAR_RE = {tag: re.compile(f"^(?:{rx})$") for tag, rx, _ in _YAML12_SCALARS}
_INT_RE, _FLOAT_RE = _SCALAR_RE["tag:yaml.org,2002:int"], _SCALAR_RE["tag:yaml.org,2002:float"]


def _yaml12_int(text: str) -> int:
    return int(text[2:], 8 if text[1] == "o" else 16) if text[:2] in ("0o", "0x") else int(text)


def _yaml12_float(text: str) -> float:
    return float(text.lower().replace(".inf", "inf").replace(".nan", "nan"))


class Yaml12Loader(yaml.SafeLoader):
    """yaml.SafeLoader with YAML 1.2 core-schema plain scalars instead of YAML 1.1's: ``1e-4``, ``1E5``, ``.5``,
    ``-.inf`` are floats; ``017`` is 17; ``yes``/``no``/``on``/``off``, ``1:30`` and dates stay strings. Aliases are
    refused (a ComposerError naming the line)."""

    #: deepest nesting of lists and mappings accepted (a config needs 3; deeper would exhaust Python's stack)
    MAX_DEPTH = 64

    def compose_node(self, parent, index):
        """Aliases (``*name``) are refused: a few lines of them can expand to gigabytes (billion laughs); so is
        nesting deeper than `MAX_DEPTH`."""
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, f"found the alias *{event.anchor}: YAML aliases are not "
                                              "allowed in configs (write the value out)", event.start_mark)
        depth = getattr(self, "_depth", 0)
        if depth >= self.MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"lists and mappings nested more than {self.MAX_DEPTH} "
                                              "levels deep", event.start_mark)
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if not tag.endswith((":bool", ":null", ":int", ":float", ":timestamp",
                                                                    ":value"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _tag, _, _first in _YAML12_SCALARS:
    Yaml12Loader.add_implicit_resolver(_tag, _SCALAR_RE[_tag], list(_first))
Yaml12Loader.add_constructor("tag:yaml.org,2002:int", lambda ld, node: _yaml12_int(ld.construct_scalar(node)))
Yaml12Loader.add_constructor("tag:yaml.org,2002:float", lambda ld, node: _yaml12_float(ld.construct_scalar(node)))


def yaml_load(text: str) -> Any:
    """Parse YAML text with YAML 1.2 core-schema scalars (`Yaml12Loader`)."""
    return yaml.load(text, Loader=Yaml12Loader)


def _number_text(value: Any) -> Any:
    """A string that spells a YAML 1.2 number (a quoted ``"1e-4"``) -> that number; anything else unchanged."""
    if isinstance(value, str):
        text = value.strip()
        if _INT_RE.match(text):
            return _yaml12_int(text)
        if _FLOAT_RE.match(text):
            return _yaml12_float(text)
    return value


def _coerce(where: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` (int/float/bool/str/tuple/dict, Optional)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(where, value, args[0])
    if tp in (int, float):
        value = _number_text(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {short_repr(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {short_repr(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a number, got {short_repr(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {short_repr(value)}")
    if tp is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(f"{where}[{i}]", v, float) for i, v in enumerate(value))
        raise ConfigError(f"{where} must be a list, got {short_repr(value)}")
    if tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{where} must be a mapping, got {short_repr(value)}")
    if tp is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"{where} must be a list, got {short_repr(value)}")
    return value


def did_you_mean(word: str, choices, prefix: str = "") -> str:
    """``"; did you mean 'PREFIX+X'?"`` for the choice X closest to ``word`` (difflib), or ``""`` when none is."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def _choice_text(choices: tuple) -> str:
    return ", ".join("null" if c is None else c for c in choices)


def _build_section(cls, name: str, raw: Any):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"section '{name}' must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown key '{name}.{key}'{did_you_mean(key, known, f'{name}.')} (known keys of '{name}': "
                              f"{', '.join(sorted(known))})")
    kwargs = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in raw.items()}
    obj = cls(**kwargs)
    for (sec, key), choices in _CHOICES.items():
        if sec == name and getattr(obj, key) not in choices:
            raise ConfigError(f"{name}.{key} must be one of {_choice_text(choices)}, got {getattr(obj, key)!r}"
                              f"{did_you_mean(getattr(obj, key), [c for c in choices if c is not None])}")
    for (sec, key), (pattern, expected) in _PATTERNS.items():
        if sec == name and not re.fullmatch(pattern, getattr(obj, key)):
            raise ConfigError(f"{name}.{key} must be {expected}, got {getattr(obj, key)!r}")
    return obj


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "augment": AugmentConfig, "ctc": CTCConfig,
             "optim": OptimConfig, "stability": StabilityConfig, "train": TrainConfig}


def numeric_keys() -> dict[str, type]:
    """``section.key`` -> int or float, for every numeric field of every section (Optional ones included)."""
    out = {}
    for sec, cls in _SECTIONS.items():
        for key, tp in typing.get_type_hints(cls).items():
            base = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is typing.Union \
                else [tp]
            if base[0] in (int, float):
                out[f"{sec}.{key}"] = base[0]
    return out


def config_from_dict(raw: dict) -> Config:
    """Build a validated Config from a plain dict (as read from YAML)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    for key in raw:
        if key not in _SECTIONS and key != "name":
            raise ConfigError(f"unknown section '{key}'{did_you_mean(key, [*_SECTIONS, 'name'])} (known: name, "
                              f"{', '.join(_SECTIONS)})")
    sections = {k: _build_section(cls, k, raw.get(k)) for k, cls in _SECTIONS.items()}
    cfg = Config(name=str(raw.get("name", "custom")), **sections)
    validate(cfg)
    return cfg


def check_ranges(cfg: Config) -> None:
    """Every numeric key finite, within int64 if an int, and inside its `RANGES` entry; ConfigError naming it."""
    for key, tp in numeric_keys().items():
        sec, name = key.split(".")
        v = getattr(getattr(cfg, sec), name)
        if v is None:
            continue
        if not math.isfinite(v):
            raise ConfigError(f"{key} must be a finite number, got {v}")
        if tp is int and abs(v) > INT_MAX:
            raise ConfigError(f"{key} must be an integer of at most {INT_MAX} (int64), got {v}")
        allowed = RANGES.get(key)
        if allowed is not None and v not in allowed:
            raise ConfigError(f"{key} must be {'an integer ' if tp is int else ''}{allowed}, got {_number_str(v)}")


def validate(cfg: Config) -> None:
    """Ranges of every numeric key (`check_ranges`), then cross-key checks, with messages that name the keys."""
    o, m, s_ = cfg.optim, cfg.model, cfg.stability
    if m.n_classes != N_CLASSES:  # before the generic range check: this message says why
        raise ConfigError(f"model.n_classes must be {N_CLASSES} (CTC blank + 39 phonemes + SIL: the label inventory "
                          f"of both data formats, ids 0..{N_CLASSES - 1}), got {m.n_classes}")
    check_ranges(cfg)
    if len(o.betas) != 2 or not all(math.isfinite(b) and 0.0 <= b < 1.0 for b in o.betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {list(o.betas)}")
    if o.schedule in ("warmup_cosine", "linear") and o.decay_steps <= o.warmup_steps:
        raise ConfigError(f"optim.decay_steps ({o.decay_steps}) must exceed optim.warmup_steps ({o.warmup_steps})")
    if o.schedule == "onecycle" and o.decay_steps < 2:
        raise ConfigError(f"optim.decay_steps (the onecycle length) must be >= 2, got {o.decay_steps}")
    if s_.min_distinct_phonemes > m.n_classes - 1:
        raise ConfigError(f"stability.min_distinct_phonemes ({s_.min_distinct_phonemes}) must not exceed the "
                          f"{m.n_classes - 1} non-blank classes (model.n_classes - 1)")
    if cfg.train.members > 1 or cfg.train.member_overrides is not None:
        check_members(cfg)
    # data.path / data.synthetic may both be unset: a path may still come from the command line (--data)
    _validate_selection(cfg)
    if cfg.train.early_stopping and cfg.data.val_split is None:
        raise ConfigError("train.early_stopping needs a validation split (data.val_split is null)")


def _int_list(key: str, value: list, lo: Optional[int] = None) -> None:
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{key}[{i}] must be an integer, got {v!r}")
        if lo is not None and v < lo:
            raise ConfigError(f"{key}[{i}] must be >= {lo}, got {v}")


def _validate_selection(cfg: Config) -> None:
    """The data-selection keys' shapes (their values against the data are checked when it loads)."""
    d = cfg.data
    if d.sessions is not None:
        if not d.sessions or not all(isinstance(x, str) and x for x in d.sessions):
            raise ConfigError(f"data.sessions must be a non-empty list of session names, got {d.sessions!r}")
        dup = sorted({x for x in d.sessions if d.sessions.count(x) > 1})
        if dup:
            raise ConfigError(f"data.sessions lists {', '.join(dup)} more than once")
    if d.must_include_days is not None:
        _int_list("data.must_include_days", d.must_include_days)
        if d.must_include_days and d.batching != "days":
            raise ConfigError(f"data.must_include_days needs data.batching: days (got {d.batching!r})")
        if len(d.must_include_days) > d.days_per_batch:
            raise ConfigError(f"data.must_include_days lists {len(d.must_include_days)} days but data.days_per_batch "
                              f"is {d.days_per_batch}: every batch holds at most that many days")
    if d.feature_subset is not None:
        _int_list("data.feature_subset", d.feature_subset, lo=0)
    if d.bad_trials_dict is not None:
        for session, blocks in d.bad_trials_dict.items():
            where = f"data.bad_trials_dict[{session!r}]"
            if not isinstance(blocks, dict):
                raise ConfigError(f"{where} must map block numbers to lists of trial numbers, got {blocks!r}")
            for block, trials in blocks.items():
                if isinstance(block, bool) or not (isinstance(block, int) or (isinstance(block, str)
                                                                               and block.isdigit())):
                    raise ConfigError(f"{where}: block {block!r} must be a block number")
                if not isinstance(trials, list):
                    raise ConfigError(f"{where}[{block!r}] must be a list of trial numbers, got {trials!r}")
                _int_list(f"{where}[{block!r}]", trials, lo=0)


def preset_names() -> list[str]:
    """The presets shipped with the package (``b2t24``, ``b2t25``, ``demo``)."""
    return sorted(p.name[:-5] for p in importlib.resources.files(PRESETS_PACKAGE).iterdir()
                  if p.name.endswith(".yaml"))


def resolve_config_path(path_or_name: str | Path):
    """A YAML path, or a preset name (``b2t25``, ``b2t24``, ``demo``): a file of the package's presets, read with
    ``importlib.resources`` (a ``Path`` or a ``Traversable``; both have ``read_text``)."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    if isinstance(path_or_name, str) and path_or_name in preset_names():
        return importlib.resources.files(PRESETS_PACKAGE) / f"{path_or_name}.yaml"
    hint = did_you_mean(path_or_name, preset_names())
    raise ConfigError(f"config '{path_or_name}' is neither a file nor a preset{hint} (presets: "
                      f"{', '.join(preset_names())})")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], the value parsed as YAML 1.2: ``optim.lr=1e-4`` is a number)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key '{key}' must look like section.key")
    try:
        return parts, yaml_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{short_repr(text)}': the value is not valid YAML: "
                          f"{' '.join(str(e).split())}") from None


def load_config(path_or_name: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or preset name), with its ``base:`` chain, and apply ``section.key=value`` overrides."""
    return config_from_dict(apply_overrides(read_config_raw(path_or_name), overrides))


def _read_yaml_mapping(path) -> dict:
    try:
        raw = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    return raw


def _resolve_base(base: Any, including) -> Any:
    """``base:`` of the config file ``including``: a file path (relative ones against the including file's folder)
    or a preset name."""
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{including}: base must be a preset name or a YAML file path, got {short_repr(base)}")
    if isinstance(including, Path) and not Path(base).is_absolute():
        candidate = including.parent / base
        if candidate.is_file():
            return candidate
    if Path(base).is_absolute() and Path(base).is_file():
        return Path(base)
    if base in preset_names():
        return importlib.resources.files(PRESETS_PACKAGE) / f"{base}.yaml"
    raise ConfigError(f"{including}: base '{base}' is neither a file (relative paths are read against the folder of "
                      f"{including}) nor a preset{did_you_mean(base, preset_names())} (presets: "
                      f"{', '.join(preset_names())})")


def _source_key(path) -> str:
    return str(path.resolve()) if isinstance(path, Path) else f"preset:{path.name}"


def read_config_raw(path_or_name: str | Path) -> dict:
    """The raw config dict of a YAML file or preset with its ``base:`` chain merged in: ``base: PRESET_OR_FILE``
    starts from that config, and every section key the file sets replaces the base's (``name`` too). A cycle of
    bases is refused, naming the chain."""
    path = resolve_config_path(path_or_name)
    chain: list[str] = []
    layers: list[dict] = []
    while True:
        key = _source_key(path)
        if key in chain:
            raise ConfigError(f"config base cycle: {' -> '.join(chain + [key])}")
        chain.append(key)
        raw = dict(_read_yaml_mapping(path))
        base = raw.pop("base", None)
        layers.append(raw)
        if base is None:
            break
        path = _resolve_base(base, Path(path) if isinstance(path, Path) else path)
    merged: dict = {}
    for raw in reversed(layers):  # the root base first, the named file last
        for sec, value in raw.items():
            if isinstance(value, dict) and isinstance(merged.get(sec), dict):
                merged[sec] = {**merged[sec], **value}
            else:
                merged[sec] = value
    return merged


def show_config(path_or_name: str | Path, overrides: list[str] | None = None) -> str:
    """The resolved config (``base:`` chain, overrides, defaults) as YAML text: what a run with it would use."""
    cfg = load_config(path_or_name, overrides)
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """A copy of the raw config dict with ``section.key=value`` overrides applied."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for ov in overrides or []:
        (sec, key), value = parse_override(ov)
        if sec not in _SECTIONS:
            raise ConfigError(f"unknown section '{sec}' in override '{ov}'{did_you_mean(sec, _SECTIONS)}")
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


# ---------------------------------------------------------------------------------------------------------------
# Members (train.members: K): the solo config of each member.
#
# The solo config of each member of a ``train.members: K`` run.
#
# Member i is the run of the base config with ``train.members: 1``, ``train.seed: seed + i`` (unless its overrides
# name ``train.seed``), ``train.data_seed``: with ``train.member_batch_order: shared`` the shared data seed D (the
# base's ``data_seed``, else its ``seed``), with ``own`` D + i (unless its overrides name ``train.data_seed``), and
# its entry of ``train.member_overrides`` applied. Overrides may name only the keys a sweep varies (`OVERRIDABLE`):
# what changes the model's shape or the data is shared by construction (the batches too, unless the order is own).
#: section.key that a member may override (everything else is shared by all members)
OVERRIDABLE = frozenset({
    "train.seed", "train.data_seed",
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
    return ConfigError(msg)


def check_members(cfg) -> None:
    """ConfigError naming the key if ``train.members`` / ``train.member_overrides`` are inconsistent or an override
    is not allowed or invalid (each member's config is built and validated)."""
    member_configs(cfg)


def member_configs(cfg) -> list:
    """The K solo Configs of ``cfg``'s members (validated; ConfigError naming the member and key otherwise)."""
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
    own = t.member_batch_order == "own"
    base = cfg.to_dict()
    out = []
    for i in range(k):
        d = {s: (dict(v) if isinstance(v, dict) else v) for s, v in base.items()}
        d["train"].update(members=1, member_overrides=None, member_batch_order="shared", seed=t.seed + i,
                          data_seed=data_seed + i if own else data_seed)
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
            if key == "train.data_seed" and not own:
                raise _error(f"train.member_overrides[{i}]: 'train.data_seed' differs between members only with "
                             "train.member_batch_order: own (shared: every member trains on the same batches)")
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
