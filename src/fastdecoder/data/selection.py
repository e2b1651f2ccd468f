"""Data selection as NEJM's dataset keys do it: a list of sessions, a subset of feature channels, bad trials left out.

``select_data(dataset, data_cfg)`` applies ``data.sessions`` (the sessions to use, in the listed order: day index =
position in the list, as NEJM's ``dataset.sessions``), ``data.feature_subset`` (the channels kept, in the listed
order, in every split; an empty list keeps all, as NEJM's ``if feature_subset:``) and ``data.bad_trials_dict``
(``{session: {block_num: [trial_num, ...]}}``: those trials leave the train and val splits; the test split is never
thinned, a submission needs every trial). Training and evaluation apply the same selection, so a run's day indices
and input width are the same wherever its data is read.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from fastdecoder.data.dataset import DataFormatError, Dataset, Split

log = logging.getLogger("fastdecoder.data")

#: splits that bad trials are removed from (never "test")
BAD_TRIAL_SPLITS = ("train", "val")


def _did_you_mean(word: str, choices) -> str:
    from fastdecoder.config import did_you_mean

    return did_you_mean(word, choices)


def take_trials(split: Split, keep: np.ndarray, day_map: np.ndarray | None = None) -> Split:
    """The trials ``keep`` (int indices, in order) of ``split``; ``day_map[old_day]`` gives each kept trial's new
    day index where given."""
    keep = np.asarray(keep, dtype=np.int64)
    pick = [int(i) for i in keep]
    day = split.day[keep]
    if day_map is not None:
        day = day_map[day]
    return Split(features=[split.features[i] for i in pick],
                 targets=[split.targets[i] for i in pick] if split.targets is not None else None,
                 day=day, trial_ids=[split.trial_ids[i] for i in pick],
                 transcriptions=[split.transcriptions[i] for i in pick] if split.transcriptions is not None else None,
                 block=split.block[keep] if split.block is not None else None,
                 trial_num=split.trial_num[keep] if split.trial_num is not None else None)


def select_sessions(ds: Dataset, sessions: list[str]) -> Dataset:
    """Only the listed sessions, in the listed order (day index = position in ``sessions``)."""
    index = {name: d for d, name in enumerate(ds.day_names)}
    for name in sessions:
        if name not in index:
            raise DataFormatError(f"data.sessions: {ds.path or 'the data'} has no session '{name}'"
                                  f"{_did_you_mean(name, ds.day_names)} (sessions: {', '.join(ds.day_names)})")
    day_map = np.full(ds.n_days, -1, dtype=np.int64)
    for new, name in enumerate(sessions):
        day_map[index[name]] = new
    splits = {}
    for name, split in ds.splits.items():
        keep = np.flatnonzero(day_map[split.day] >= 0)
        if keep.size:
            splits[name] = take_trials(split, keep, day_map)
    if not splits:
        raise DataFormatError(f"data.sessions: the sessions {', '.join(sessions)} hold no trials")
    return Dataset(format=ds.format, n_features=ds.n_features, n_days=len(sessions), day_names=list(sessions),
                   splits=splits, path=ds.path)


def select_features(ds: Dataset, subset: list[int]) -> Dataset:
    """Only the feature channels ``subset`` (in that order) of every trial."""
    bad = [c for c in subset if not 0 <= c < ds.n_features]
    if bad:
        raise DataFormatError(f"data.feature_subset: channel {bad[0]} is outside 0..{ds.n_features - 1} (the data "
                              f"has {ds.n_features} features)")
    cols = np.asarray(subset, dtype=np.int64)
    splits = {name: replace(s, features=[np.ascontiguousarray(f[:, cols]) for f in s.features])
              for name, s in ds.splits.items()}
    return Dataset(format=ds.format, n_features=len(subset), n_days=ds.n_days, day_names=ds.day_names,
                   splits=splits, path=ds.path)


def drop_bad_trials(ds: Dataset, bad_trials: dict) -> tuple[Dataset, int]:
    """The dataset without the trials ``bad_trials`` names ({session: {block: [trial_num]}}) in its train and val
    splits; returns (dataset, trials removed). Needs block and trial numbers (the b2t25 format stores them)."""
    wanted = {(str(sess), str(block), int(t)) for sess, blocks in bad_trials.items()
              for block, trials in blocks.items() for t in trials}
    unknown = sorted({str(s) for s in bad_trials} - set(ds.day_names))
    if unknown:
        log.warning("data.bad_trials_dict names sessions the data does not hold: %s", ", ".join(unknown))
    splits, removed = dict(ds.splits), 0
    for name in BAD_TRIAL_SPLITS:
        split = ds.splits.get(name)
        if split is None or not wanted:
            continue
        if split.block is None or split.trial_num is None:
            raise DataFormatError(f"data.bad_trials_dict needs each trial's block and trial number, which the "
                                  f"{ds.format} data in {ds.path or 'the dataset'} does not store (b2t25 does)")
        drop = np.array([(ds.day_names[d], str(b), int(t)) in wanted
                         for d, b, t in zip(split.day, split.block, split.trial_num)], dtype=bool)
        if drop.any():
            removed += int(drop.sum())
            if drop.all():
                raise DataFormatError(f"data.bad_trials_dict removes every trial of the '{name}' split")
            splits[name] = take_trials(split, np.flatnonzero(~drop))
    out = Dataset(format=ds.format, n_features=ds.n_features, n_days=ds.n_days, day_names=ds.day_names,
                  splits=splits, path=ds.path)
    return out, removed


def select_data(ds: Dataset, data_cfg) -> Dataset:
    """``ds`` with ``data.sessions``, ``data.bad_trials_dict`` and ``data.feature_subset`` applied (each off when
    null); unchanged when all are off."""
    if data_cfg.sessions is not None:
        ds = select_sessions(ds, list(data_cfg.sessions))
    if data_cfg.bad_trials_dict:
        ds, removed = drop_bad_trials(ds, data_cfg.bad_trials_dict)
        log.info("data.bad_trials_dict: %d trials left out of the train and val splits", removed)
    if data_cfg.feature_subset:
        ds = select_features(ds, list(data_cfg.feature_subset))
    return ds


#: the selection keys that fix a run's day indices and input width
SELECTION_KEYS = ("sessions", "feature_subset", "bad_trials_dict")


def select_run_data(ds: Dataset, configs: list, names: list[str]) -> Dataset:
    """``ds`` with the data selection of the runs ``configs`` (their ``data`` sections) applied, as their training
    applied it; runs that selected differently cannot share one dataset (UserError naming the key and the runs)."""
    from fastdecoder.errors import UserError

    first = configs[0].data
    for cfg, name in zip(configs[1:], names[1:]):
        for key in SELECTION_KEYS:
            if getattr(cfg.data, key) != getattr(first, key):
                raise UserError(f"runs {names[0]} and {name} select different data (data.{key}): evaluate them "
                                "separately")
    return select_data(ds, first)

