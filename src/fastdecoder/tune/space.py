"""The YAML search space of ``fastdecoder tune``: one entry per dotted config key, sampled through an Optuna trial.

An entry is a distribution or a plain value that fixes the key::

    optim.lr: {type: float, low: 1.0e-4, high: 1.0, log: true}
    optim.warmup_steps: {type: int, low: 0, high: 200, step: 10}
    optim.schedule: {type: categorical, choices: [warmup_cosine, constant]}
    optim.decay_steps: {type: int, low: 200, high: 400, when: {optim.schedule: warmup_cosine}}
    train.steps: 200

``when`` makes a key conditional: it is sampled (or fixed) only where every named earlier key holds one of the
listed values (a value or a list); elsewhere the config's own value stays. Keys are sampled in file order, so a
``when`` may only name keys above it. Every key must exist in the config and every bound or choice must be a value
the key accepts (its type and range), checked when the space is loaded.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastdecoder.config import _SECTIONS, RANGES, ConfigError, Config, config_from_dict, yaml_load

SPACES_PACKAGE = "fastdecoder.tune.spaces"  # an example space per preset, shipped as package data


@dataclass(frozen=True)
class Param:
    """One entry: ``key`` (section.key), ``kind`` float | int | categorical | fixed, its bounds or choices."""

    key: str
    kind: str
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple = ()
    value: Any = None
    when: dict = field(default_factory=dict)  # earlier key -> tuple of values enabling this one

    def active(self, chosen: dict) -> bool:
        return all(chosen.get(k, _MISSING) in vals for k, vals in self.when.items())

    def sample(self, trial) -> Any:
        """The value for ``trial`` (an optuna Trial or FixedTrial)."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        return self.value


_MISSING = object()


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def sample(self, trial, base: dict | None = None) -> dict:
        """{section.key: value} for the active entries, in file order; ``base`` (a config dict) supplies the values
        of keys a ``when`` names but the space does not set."""
        chosen: dict[str, Any] = {}
        if base is not None:
            for p in self.params:
                for k in p.when:
                    sec, name = k.split(".")
                    chosen.setdefault(k, base.get(sec, {}).get(name))
        out: dict[str, Any] = {}
        for p in self.params:
            if p.active(chosen):
                out[p.key] = chosen[p.key] = p.sample(trial)
        return out


def apply_params(base: dict, params: dict) -> dict:
    """A copy of the config dict ``base`` with ``{section.key: value}`` set."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in params.items():
        sec, name = key.split(".")
        raw.setdefault(sec, {})
        raw[sec][name] = list(value) if isinstance(value, tuple) else value
    return raw


def config_with(base: dict, params: dict) -> Config:
    """The validated Config of ``base`` with ``params`` applied (ConfigError names a bad combination)."""
    return config_from_dict(apply_params(base, params))


def _field_type(key: str):
    sec, name = key.split(".")
    hints = typing.get_type_hints(_SECTIONS[sec])
    tp = hints[name]
    if typing.get_origin(tp) is typing.Union:
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or key.count(".") != 1:
        raise ConfigError(f"search space key {key!r} must look like section.key (e.g. optim.lr)")
    sec, name = key.split(".")
    if sec not in _SECTIONS:
        raise ConfigError(f"search space key '{key}': unknown section '{sec}' (known: {', '.join(_SECTIONS)})")
    if name not in {f.name for f in dataclasses.fields(_SECTIONS[sec])}:
        raise ConfigError(f"search space key '{key}': '{sec}' has no key '{name}'")
    return key


def _check_value(key: str, v: Any, what: str) -> Any:
    """``v`` must be a value ``key`` accepts (numeric: right type, finite, in its range)."""
    tp = _field_type(key)
    if tp in (int, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"search space '{key}': {what} must be a finite number, got {v!r}")
        if tp is int and not float(v).is_integer():
            raise ConfigError(f"search space '{key}': {what} must be an integer, got {v!r}")
        r = RANGES.get(key)
        if r is not None and v not in r:
            raise ConfigError(f"search space '{key}': {what} {v!r} is outside the key's range ({r})")
        return int(v) if tp is int else float(v)
    return v


def _parse_entry(key: str, entry: Any, seen: list[str]) -> Param:
    if not isinstance(entry, dict) or "type" not in entry:
        if isinstance(entry, dict):
            raise ConfigError(f"search space '{key}': a mapping needs 'type' (float, int or categorical); to fix a "
                              "key to a mapping value is not supported")
        return Param(key, "fixed", value=_check_value(key, entry, "the fixed value"))
    entry = dict(entry)
    kind = entry.pop("type")
    when_raw = entry.pop("when", None) or {}
    if not isinstance(when_raw, dict):
        raise ConfigError(f"search space '{key}': 'when' must map earlier keys to a value or a list of values")
    when = {}
    for k, vals in when_raw.items():
        _check_key(k)
        if k not in seen:
            raise ConfigError(f"search space '{key}': 'when' names '{k}', which is not an entry above it")
        when[k] = tuple(vals) if isinstance(vals, list) else (vals,)
    allowed = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
               "categorical": {"choices"}}
    if kind not in allowed:
        raise ConfigError(f"search space '{key}': type must be float, int or categorical, got {kind!r}")
    extra = set(entry) - allowed[kind]
    if extra:
        raise ConfigError(f"search space '{key}': unknown field(s) {', '.join(sorted(extra))} for type {kind}")
    tp = _field_type(key)
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"search space '{key}': choices must be a non-empty list")
        for c in choices:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise ConfigError(f"search space '{key}': choice {c!r} must be a number, string, boolean or null")
        return Param(key, kind, choices=tuple(_check_value(key, c, "choice") for c in choices), when=when)
    if tp not in (int, float) or (kind == "float" and tp is int):
        raise ConfigError(f"search space '{key}': type {kind} does not fit the key (a {tp.__name__})")
    for need in ("low", "high"):
        if need not in entry:
            raise ConfigError(f"search space '{key}': type {kind} needs '{need}'")
    low = _check_value(key, entry["low"], "low")
    high = _check_value(key, entry["high"], "high")
    if kind == "int" and (not float(low).is_integer() or not float(high).is_integer()):
        raise ConfigError(f"search space '{key}': type int needs integer low and high")
    if not low < high:
        raise ConfigError(f"search space '{key}': low ({low}) must be below high ({high})")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"search space '{key}': log must be true or false")
    if log and low <= 0:
        raise ConfigError(f"search space '{key}': log: true needs low > 0, got {low}")
    step = entry.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0 or not math.isfinite(step):
            raise ConfigError(f"search space '{key}': step must be a positive number, got {step!r}")
        if log:
            raise ConfigError(f"search space '{key}': step and log: true cannot be combined")
    if kind == "int":
        return Param(key, kind, int(low), int(high), log, int(step) if step is not None else None, when=when)
    return Param(key, kind, float(low), float(high), log, float(step) if step is not None else None, when=when)


def parse_space(raw: Any, where: str = "the search space") -> SearchSpace:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where} must be a non-empty mapping of section.key entries")
    params, seen = [], []
    for key, entry in raw.items():
        _check_key(key)
        params.append(_parse_entry(key, entry, seen))
        seen.append(key)
    return SearchSpace(tuple(params))


def load_space(path_or_name: str | Path) -> SearchSpace:
    """A YAML file, or the name of a shipped example space (``demo``, ``b2t25``, ``b2t24``)."""
    import importlib.resources

    p = Path(path_or_name)
    if p.is_file():
        text, where = p.read_text(), str(p)
    else:
        res = importlib.resources.files(SPACES_PACKAGE) / f"{path_or_name}.yaml"
        if isinstance(path_or_name, str) and "/" not in path_or_name and res.is_file():
            text, where = res.read_text(), f"example space '{path_or_name}'"
        else:
            raise ConfigError(f"--space '{path_or_name}' is neither a file nor an example space "
                              f"(examples: {', '.join(example_spaces())})")
    try:
        raw = yaml_load(text)
    except Exception as e:  # noqa: BLE001 - yaml's errors: one line naming the file
        raise ConfigError(f"{where} is not valid YAML: {e}") from None
    return parse_space(raw, where)


def example_spaces() -> list[str]:
    import importlib.resources

    return sorted(p.name[:-5] for p in importlib.resources.files(SPACES_PACKAGE).iterdir()
                  if p.name.endswith(".yaml"))


def with_lr_range(space: SearchSpace, lr_find_json: str | Path) -> SearchSpace:
    """``space`` with ``optim.lr`` sampled log-uniformly from a tenth of an lr-find suggestion up to ten times it,
    capped at the LR where that ramp diverged (its last LR): ``tune --lr-range lr_find.json``."""
    import json

    try:
        found = json.loads(Path(lr_find_json).read_text())
        suggestion, last = float(found["suggestion"]), float(found["lrs"][-1])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ConfigError(f"--lr-range {lr_find_json}: not an lr_find.json with a suggestion ({e})") from None
    if not (math.isfinite(suggestion) and suggestion > 0):
        raise ConfigError(f"--lr-range {lr_find_json}: the suggestion {suggestion} is not a positive number")
    low, high = suggestion / 10, min(suggestion * 10, last) if last > suggestion else suggestion * 10
    lr = Param("optim.lr", "float", low, high, True)
    params = [p for p in space.params if p.key != "optim.lr"]
    return SearchSpace((lr, *params))
