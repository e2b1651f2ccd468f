"""Typed configuration: dataclasses <-> YAML, presets, and ``section.key=value`` overrides.

A config has the sections ``data``, ``model``, ``augment``, ``ctc``, ``optim``, ``stability`` and ``train``. Each key
is declared once, as a dataclass field whose `key` default carries its choices or range and whether it may differ on
resume or per member. Unknown sections or keys are an error that names them; values are checked against the field's
type and declared choices, every numeric key against its range (`RANGES`: finite, sign, integer where the field is
an int) and keys that depend on each other against each other (`validate`). Files and ``--set`` values are read with
YAML 1.2 core-schema scalars (`yaml_load`): ``1e-4`` and ``.5`` are numbers, ``yes``/``no``/``on``/``off`` are
strings, ``017`` is 17.
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
SEED = Range(0, 2**32 - 1)  # numpy's seed range (and the per-rank seeds derived from it stay >= 0)
#: the largest integer any key may hold (int64; torch and numpy refuse more)
INT_MAX = 2**63 - 1

#: ``resume=``: the key may differ between a checkpoint's config and the config it is resumed with (the step budget
#: and what only changes logging/reporting, never the weights); every other key must match
MAY_DIFFER = "may_differ"
#: ``member=``: each member of a ``train.members: K`` run may set its own value (``train.member_overrides``); every
#: other key is shared by all members (what changes the model's shape, the batches or the data)
PER_MEMBER = "per_member"


def key(default: Any, *, choices: tuple = (), range: Optional[Range] = None,
        pattern: Optional[tuple[str, str]] = None, resume: Optional[str] = None, member: Optional[str] = None):
    """A config key: its default and, beside it, the values it takes and how runs treat it.

    ``choices``: the allowed values of a string key (None among them: null allowed). ``range``: the `Range` of a
    numeric key (every int/float key has one; values must also be finite, ints within int64). ``pattern``:
    ``(regex, what is expected)`` for a string key with open-ended values. ``resume=MAY_DIFFER``: may change on
    ``--resume``. ``member=PER_MEMBER``: a member of a batched run may override it. Validation
    (`config_from_dict`), `RANGES`, `resume_may_differ` and `OVERRIDABLE` read these from the field's metadata.
    """
    if resume not in (None, MAY_DIFFER):
        raise ValueError(f"resume must be None or {MAY_DIFFER!r}, got {resume!r}")
    if member not in (None, PER_MEMBER):
        raise ValueError(f"member must be None or {PER_MEMBER!r}, got {member!r}")
    meta = {"choices": tuple(choices), "range": range, "pattern": pattern, "resume": resume, "member": member}
    return field(default=default, metadata={k: v for k, v in meta.items() if v})


@dataclass
class DataConfig:
    path: Optional[str] = None          # b2t24 pickle file or b2t25 folder of session folders
    format: str = key("auto", choices=("auto", "b2t24", "b2t25"))
    synthetic: Optional[dict] = None    # no path: generate this synthetic set (keys: format + SynthSpec fields)
    # days (b2t25: days_per_batch random days x trials with replacement) | random (b2t24: a fresh shuffled full batch
    # every step) | epochs (each trial once per epoch, the epoch's last batch short)
    batching: str = key("days", choices=("days", "random", "epochs"))
    days_per_batch: int = key(4, range=AT_LEAST_1)
    # the split evaluated during training (null = none)
    val_split: Optional[str] = key("val", choices=("train", "val", "test", None))
    # evaluate on the first N validation trials only (None = all)
    max_val_trials: Optional[int] = key(None, range=AT_LEAST_1)
    # data selection (NEJM's dataset keys; none in the presets = all of the data)
    sessions: Optional[list] = None     # session (day) names to use, in this order (day index = position); null = all
    must_include_days: Optional[list] = None  # day indices (negative: from the end) in every 'days' batch
    feature_subset: Optional[list] = None     # feature (channel) indices to keep, in this order; null/[] = all
    bad_trials_dict: Optional[dict] = None    # {session: {block_num: [trial_num, ...]}}: left out of train and val


@dataclass
class ModelConfig:
    n_features: Optional[int] = key(None, range=Range(1, 2**16))  # taken from the data when None
    n_days: Optional[int] = key(None, range=Range(1, 2**16))      # taken from the data when None
    n_classes: int = key(41, range=Range(N_CLASSES, N_CLASSES))
    hidden_size: int = key(768, range=Range(1, 2**14))
    num_layers: int = key(5, range=Range(1, 64))
    bidirectional: bool = False
    # gru (torch.nn.GRU / cuDNN) | ln_gru (fastdecoder.nn.LayerNormGRU)
    rnn: str = key("gru", choices=("gru", "ln_gru"))
    rnn_dropout: float = key(0.4, range=DROPOUT, member=PER_MEMBER)
    input_dropout: float = key(0.2, range=DROPOUT, member=PER_MEMBER)  # after the day layer
    patch_size: int = key(14, range=Range(1, 2**12))
    patch_stride: int = key(4, range=Range(1, 2**12))
    # time_major (b2t25: k*C + c) | channel_major (b2t24, nn.Unfold: c*K + k)
    patch_order: str = key("time_major", choices=("time_major", "channel_major"))
    # input (data transform, b2t25) | model (inside forward, b2t24) | none
    smoothing: str = key("input", choices=("input", "model", "none"))
    smooth_taps: str = key("b2t25", choices=("b2t25", "b2t24"))  # b2t25 (9 taps) | b2t24 (20 taps, centre 9.5)
    learn_h0: bool = True               # b2t25: learnable (1, 1, H) initial state; b2t24: zeros
    day_activation: str = key("softsign", choices=("softsign", "none"))
    head_init: str = key("xavier", choices=("xavier", "default"))  # xavier (b2t25) | default (torch.nn.Linear's, b2t24)
    mask_padding: bool = True           # padding beyond each trial's length stays zero through the noise, offset and
    #                                     smoothing (data transform and in-model); false (both presets, as shipped):
    #                                     they act on the whole zero-padded batch. Configs saved without it: true
    rnn_trainable: bool = True          # false: the recurrence (rnn.*) is frozen (NEJM model.rnn_trainable)
    input_trainable: bool = True        # false: the day layers are frozen (NEJM model.input_network.input_trainable)


@dataclass
class AugmentConfig:
    white_noise_std: float = key(0.0, range=NON_NEGATIVE, member=PER_MEMBER)
    constant_offset_std: float = key(0.0, range=NON_NEGATIVE, member=PER_MEMBER)
    # cut randint(0, random_cut) bins from the start of the batch (0 = off)
    random_cut: int = key(0, range=NON_NEGATIVE)
    time_mask_prob: float = key(0.0, range=PROBABILITY, member=PER_MEMBER)
    time_mask_width: int = key(0, range=NON_NEGATIVE, member=PER_MEMBER)
    time_mask_count: int = key(0, range=Range(0, 2**10), member=PER_MEMBER)
    freq_mask_prob: float = key(0.0, range=PROBABILITY, member=PER_MEMBER)
    freq_mask_width: int = key(0, range=NON_NEGATIVE, member=PER_MEMBER)
    freq_mask_count: int = key(0, range=Range(0, 2**10), member=PER_MEMBER)
    backend: str = key("auto", choices=("auto", "reference", "triton"))
    # auto (philox where the Triton kernel runs, else torch) | philox | torch
    noise: str = key("auto", choices=("auto", "philox", "torch"))


@dataclass
class CTCConfig:
    # mean_batch (b2t25: per-sentence loss, plain batch mean) | mean_target (b2t24: torch 'mean')
    reduction: str = key("mean_batch", choices=("mean_batch", "mean_target"))
    zero_infinity: bool = False
    # exact: (T - K) // S + 1 | shipped: the b2t24 code's floor((T - K) / S)
    output_lengths: str = key("exact", choices=("exact", "shipped"))


@dataclass
class OptimConfig:
    name: str = key("adamw", choices=("adam", "adamw"))  # adam (coupled L2 decay) | adamw (decoupled)
    lr: float = key(0.005, range=POSITIVE, member=PER_MEMBER)
    betas: tuple = (0.9, 0.999)
    eps: float = key(0.1, range=POSITIVE, member=PER_MEMBER)
    weight_decay: float = key(0.001, range=NON_NEGATIVE, member=PER_MEMBER)
    no_decay_bias: bool = True          # weight decay 0 for biases (and norms)
    no_decay_h0: bool = True            # with no_decay_bias, the learnable h0 undecayed too; false (the presets, as
    #                                     NEJM): h0 decays with the main group. Configs saved without it: true
    # day layers' own LR (None = lr); their decay is day_weight_decay
    day_lr: Optional[float] = key(None, range=POSITIVE, member=PER_MEMBER)
    day_weight_decay: float = key(0.0, range=NON_NEGATIVE, member=PER_MEMBER)
    schedule: str = key("warmup_cosine", choices=("constant", "linear", "warmup_cosine", "onecycle", "plateau"),
                        member=PER_MEMBER)
    # linear and warmup_cosine: linear warmup 0 -> lr over these steps
    warmup_steps: int = key(1000, range=NON_NEGATIVE, member=PER_MEMBER)
    # cosine/linear reach lr_min at this step; onecycle: the cycle's length
    decay_steps: int = key(120000, range=AT_LEAST_1, member=PER_MEMBER)
    # end LR of linear/warmup_cosine; floor of the plateau reductions
    lr_min: float = key(1e-4, range=NON_NEGATIVE, member=PER_MEMBER)
    grad_clip: float = key(10.0, range=NON_NEGATIVE, member=PER_MEMBER)  # max grad norm; 0 = off
    fused: bool = True                  # fused AdamW where the device supports it
    # onecycle (torch.optim.lr_scheduler.OneCycleLR, cosine anneal, no momentum cycling): lr is max_lr
    # share of decay_steps spent rising from lr / div_factor to lr
    onecycle_pct_start: float = key(0.3, range=OPEN_UNIT, member=PER_MEMBER)
    onecycle_div_factor: float = key(25.0, range=POSITIVE, member=PER_MEMBER)  # start LR = lr / div_factor
    # final LR = start LR / final_div_factor
    onecycle_final_div_factor: float = key(1e4, range=POSITIVE, member=PER_MEMBER)
    # plateau (ReduceLROnPlateau on the validation PER, mode min, relative threshold): constant lr until then
    plateau_factor: float = key(0.5, range=OPEN_UNIT, member=PER_MEMBER)  # LR multiplied by this at each reduction
    # evaluations without improvement tolerated; the next one reduces
    plateau_patience: int = key(3, range=NON_NEGATIVE, member=PER_MEMBER)
    # relative improvement that counts (PER < best * (1 - threshold))
    plateau_threshold: float = key(1e-4, range=Range(0, 1, hi_open=True), member=PER_MEMBER)
    # evaluations after a reduction during which no reduction happens
    plateau_cooldown: int = key(0, range=NON_NEGATIVE, member=PER_MEMBER)


@dataclass
class StabilityConfig:
    """Guards against the common training failures: NaN/Inf updates, repeated explosions, blank collapse."""
    # stop with an error at the first non-finite loss/gradient (default: skip it)
    abort_on_nonfinite: bool = key(False, member=PER_MEMBER)
    # stop with an error after this many skipped updates in a row (0 = never)
    max_consecutive_skips: int = key(100, range=NON_NEGATIVE, member=PER_MEMBER)
    adaptive_lr: bool = key(False, member=PER_MEMBER)  # reduce the LR when instability repeats
    # a pre-clip grad norm above this is an instability event (non-finite too)
    grad_norm_threshold: float = key(10.0, range=POSITIVE, member=PER_MEMBER)
    # this many events within instability_window steps trigger a reduction
    instability_events: int = key(3, range=AT_LEAST_1, member=PER_MEMBER)
    instability_window: int = key(100, range=AT_LEAST_1, member=PER_MEMBER)
    # LR multiplied by this at each adaptive reduction
    lr_reduction_factor: float = key(0.8, range=OPEN_UNIT, member=PER_MEMBER)
    # adaptive reductions never take the (peak) LR below this
    min_lr: float = key(1e-5, range=NON_NEGATIVE, member=PER_MEMBER)
    max_lr_reductions: int = key(5, range=NON_NEGATIVE, member=PER_MEMBER)
    # collapse/diversity warnings only from this step on (CTC starts blank)
    monitor_after_steps: int = key(1000, range=NON_NEGATIVE)
    # warn when more argmax frames than this are blank (blank collapse)
    blank_threshold: float = key(0.95, range=Range(0, 1, lo_open=True))
    # warn when fewer distinct phonemes than this are predicted
    min_distinct_phonemes: int = key(10, range=NON_NEGATIVE)


@dataclass
class TrainConfig:
    steps: int = key(120000, range=AT_LEAST_1, resume=MAY_DIFFER)
    batch_size: int = key(64, range=Range(1, 2**16))
    eval_every: int = key(2000, range=AT_LEAST_1)
    log_every: int = key(100, range=AT_LEAST_1, resume=MAY_DIFFER)
    checkpoint_every: int = key(2000, range=AT_LEAST_1)
    # init, dropout, masks, noise (and the batches when data_seed is None)
    seed: int = key(0, range=SEED, member=PER_MEMBER)
    # seed of the batch order and random cut (None = train.seed, as before)
    data_seed: Optional[int] = key(None, range=SEED, member=PER_MEMBER)
    members: int = key(1, range=Range(1, 256))  # train K models as one batched model (fastdecoder.members)
    member_overrides: Optional[list] = None  # per-member values: a list of K mappings {section.key: value}
    # shared (every member trains on the same batches) | own (member i draws the batches of data seed
    # (data_seed or seed) + i, as its solo run would)
    member_batch_order: str = key("shared", choices=("shared", "own"))
    device: str = key("auto", pattern=(r"auto|cpu|mps|cuda(:[0-9]+)?", "auto, cpu, mps, cuda or cuda:N"))
    # bf16 | none: bf16 autocast on CUDA; on the CPU only on the fast path where the CPU has native bf16 GEMMs (else,
    # and on the reference path, fp32)
    amp: str = key("bf16", choices=("bf16", "fp16", "none"))
    compile: bool = False
    # pad each batch's time axis up to a multiple of this many bins after the augmentation (0 = off, as the presets
    # ship): few distinct shapes for torch.compile / cuDNN autotuning; losses unchanged (unidirectional models)
    length_bucket: int = key(0, range=Range(0, 2**16))
    deterministic: bool = False         # deterministic algorithms; on the CPU a resumed run is bitwise exact
    eval_batch_size: int = key(64, range=Range(1, 2**16))
    # final evaluation also reports beam-search PER (0 = skip)
    beam_width: int = key(20, range=Range(0, 2**16), resume=MAY_DIFFER)
    threads: int = key(0, range=NON_NEGATIVE, resume=MAY_DIFFER)  # CPU threads for torch (0 = leave torch's default)
    # also log to DIR/tensorboard (needs the tensorboard package)
    tensorboard: bool = key(False, resume=MAY_DIFFER)
    # write DIR/curves.png at the end (needs matplotlib; skipped if missing)
    plot: bool = key(True, resume=MAY_DIFFER)
    # blank fraction / distinct phonemes of the training batch at log steps
    train_monitor: bool = key(True, resume=MAY_DIFFER)
    fast: Optional[bool] = None         # fast path (None = on CUDA): Triton ops, device-resident batches, fused
    #                                     AdamW, torch.compile as configured; false = reference ops, host batching
    # fast path: check each fast op against its reference at start-up; a failing op warns, is logged and falls back
    # to its reference for the run
    fast_selfcheck: bool = key(True, resume=MAY_DIFFER)
    # a failing fast-op self-check stops the run with an error instead
    fast_selfcheck_fatal: bool = key(False, resume=MAY_DIFFER)
    cuda_graphs: bool = False           # fast path on CUDA with length buckets: capture the model's forward and
    #                                     backward once per bucket and replay it (train/cuda_graphs.py); off until
    #                                     the GPU check has measured it
    init_from: Optional[str] = None     # initialise the weights from this run folder or checkpoint file (days
    #                                     matched by session name; train/calibration.py)
    # day layer of a session the init checkpoint lacks: identity (the reference init: eye / zeros) | nearest (copy of
    # the nearest earlier session's)
    init_new_days: str = key("identity", choices=("identity", "nearest"))
    # stop when the validation PER has not improved for early_stopping_val_steps evaluations in a row (NEJM's keys)
    early_stopping: bool = False
    early_stopping_val_steps: int = key(20, range=AT_LEAST_1)


@dataclass
class Config:
    name: str = key("custom", resume=MAY_DIFFER)
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


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "augment": AugmentConfig, "ctc": CTCConfig,
             "optim": OptimConfig, "stability": StabilityConfig, "train": TrainConfig}


def _declared(what: str) -> dict[str, Any]:
    """``section.key`` (and ``name``) -> its declared ``what`` (`key`'s metadata), for every key declaring one, in
    declaration order."""
    out = {f.name: f.metadata[what] for f in dataclasses.fields(Config) if what in f.metadata}
    for sec, cls in _SECTIONS.items():
        out.update({f"{sec}.{f.name}": f.metadata[what] for f in dataclasses.fields(cls) if what in f.metadata})
    return out


#: section.key -> allowed range, for every numeric (int/float) key (declared beside the field: ``key(range=...)``);
#: every value must also be finite, and int keys integers (their type). Cross-key conditions live in `validate`.
RANGES: dict[str, Range] = _declared("range")


def resume_may_differ() -> tuple[str, ...]:
    """The keys (``name`` and ``section.key``) that may differ between a checkpoint's config and the config it is
    resumed with (``key(resume=MAY_DIFFER)``), in declaration order."""
    return tuple(_declared("resume"))


#: section.key that a member may override (``key(member=PER_MEMBER)``; everything else is shared by all members)
OVERRIDABLE = frozenset(_declared("member"))

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
    fields = dataclasses.fields(cls)
    for f in fields:  # the declared choices (`key`), then patterns
        choices, value = f.metadata.get("choices"), getattr(obj, f.name)
        if choices and value not in choices:
            raise ConfigError(f"{name}.{f.name} must be one of {_choice_text(choices)}, got {value!r}"
                              f"{did_you_mean(value, [c for c in choices if c is not None])}")
    for f in fields:
        if "pattern" in f.metadata and not re.fullmatch(f.metadata["pattern"][0], getattr(obj, f.name)):
            raise ConfigError(f"{name}.{f.name} must be {f.metadata['pattern'][1]}, got {getattr(obj, f.name)!r}")
    return obj


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
# its entry of ``train.member_overrides`` applied. Overrides may name only the keys a sweep varies (`OVERRIDABLE`,
# declared with ``key(member=PER_MEMBER)``): what changes the model's shape or the data is shared by construction
# (the batches too, unless the order is own).


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
