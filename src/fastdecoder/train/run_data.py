"""A run's data: the dataset (or the configured synthetic set, written once through the real file formats), the
check that every target fits its output frames, the batch sampler and the device-resident training split."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from fastdecoder.config import Config
from fastdecoder.data.resident import ResidentSplit
from fastdecoder.errors import UserError, writing
from fastdecoder.losses import min_frames_for_target, output_lengths

log = logging.getLogger("fastdecoder.train")

#: the resident training split goes to pinned host memory when it would take more than this share of free GPU memory
RESIDENT_GPU_SHARE = 0.4


def prepare_dataset(cfg: Config, out_dir: Path | None):
    """Load ``cfg.data.path``, or write the configured synthetic set (through the real file formats) and load it.

    The synthetic set lives in OUT/data (``runs/synthetic/data`` without an out_dir) and is rewritten when
    ``data.synthetic`` changed since it was written (data.synthetic's own stamp says so). The data selection keys
    (``data.sessions``, ``data.feature_subset``, ``data.bad_trials_dict``; data/selection.py) apply to either.
    Returns (dataset, path).
    """
    from fastdecoder.data.selection import select_data

    ds, path = _load_or_synthesize(cfg, out_dir)
    return select_data(ds, cfg.data), path


def _load_or_synthesize(cfg: Config, out_dir: Path | None):
    from fastdecoder.data import SynthSpec, load_dataset, write_synthetic
    from fastdecoder.data.synthetic import written_from

    if cfg.data.path:
        return load_dataset(cfg.data.path, cfg.data.format), Path(cfg.data.path)
    if cfg.data.synthetic is None:
        raise UserError("no data: pass --data PATH (a b2t24 pickle or a b2t25 folder) or set data.synthetic")
    spec_raw = dict(cfg.data.synthetic)
    fmt = spec_raw.pop("format", "b2t25")
    known = set(SynthSpec.__dataclass_fields__)
    for k in spec_raw:
        if k not in known:
            raise UserError(f"unknown key 'data.synthetic.{k}' (known: format, {', '.join(sorted(known))})")
    spec = SynthSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec_raw.items()})
    root = (out_dir if out_dir is not None else Path("runs/synthetic")) / "data"
    path = root / ("synthetic_b2t24.pkl" if fmt == "b2t24" else "synthetic_b2t25")
    if not written_from(path, fmt, spec):
        if path.exists():
            log.info("data.synthetic changed since %s was written: regenerating it", path)
        with writing(root, "synthetic data folder"):
            root.mkdir(parents=True, exist_ok=True)
            write_synthetic(path, fmt, spec)
    return load_dataset(path, fmt), path


#: the presets' names, which are also the data formats they were written for
PRESET_FAMILIES = ("b2t24", "b2t25")


def warn_family_mismatch(config_name: str, data_format: str, data_path) -> bool:
    """Warn (and return True) when a b2t24/b2t25 config (a preset, or a config whose ``base:`` chain keeps its
    name) trains on data of the other format: the preset's recipe (front end, smoothing, batching) is that of the
    other competition."""
    if config_name in PRESET_FAMILIES and data_format in PRESET_FAMILIES and config_name != data_format:
        log.warning("config '%s' is the %s recipe but %s holds %s data: its front end, smoothing and batching are "
                    "not those of that data's reference (use --config %s, or name your config otherwise to silence "
                    "this)", config_name, config_name, data_path, data_format, data_format)
        return True
    return False


def target_min_frames(split) -> np.ndarray:
    """(n,) int64 output frames each trial's target needs (losses.min_frames_for_target); zeros without labels."""
    if split.targets is None or len(split) == 0:
        return np.zeros(len(split), dtype=np.int64)
    L = max(1, int(split.target_lengths.max()))
    y = torch.zeros(len(split), L, dtype=torch.int64)
    for i, t in enumerate(split.targets):
        y[i, : len(t)] = torch.from_numpy(np.asarray(t, dtype=np.int64))
    return min_frames_for_target(y, torch.from_numpy(split.target_lengths)).numpy()


def infeasible_trials(split, cfg: Config) -> list[tuple[str, int, int]]:
    """(trial id, target phonemes, output frames) of the trials whose target CTC cannot align to their frames."""
    if split is None or split.targets is None or len(split) == 0:
        return []
    frames = output_lengths(torch.from_numpy(split.lengths), cfg.model.patch_size, cfg.model.patch_stride,
                            cfg.ctc.output_lengths).numpy()
    bad = np.flatnonzero(target_min_frames(split) > frames)
    return [(split.trial_ids[i], int(split.target_lengths[i]), int(frames[i])) for i in bad]


def warn_short_and_infeasible(cfg: Config, train_split, val_split, *, say: bool) -> list[str]:
    """Warn about trials shorter than one patch and (naming them) targets longer than their output frames.

    Returns the ids of the infeasible training trials.
    """
    K = cfg.model.patch_size
    short = [tid for f, tid in zip(train_split.features, train_split.trial_ids) if len(f) < K]
    if short and say:
        log.warning("%d training trials are shorter than one patch (%d bins), e.g. %s", len(short), K,
                    ", ".join(short[:3]))
    train_bad: list[str] = []
    for name, split in (("training", train_split), ("validation", val_split)):
        bad = infeasible_trials(split, cfg)
        if not bad:
            continue
        if name == "training":
            train_bad = [b[0] for b in bad]
        if say:
            consequence = ("their CTC loss is zeroed (ctc.zero_infinity)" if cfg.ctc.zero_infinity else
                           "their CTC loss is infinite and every batch holding one is skipped")
            log.warning("%d %s trials have targets longer than their output frames (CTC cannot align them; %s): "
                        "%s%s", len(bad), name, consequence,
                        ", ".join(f"{tid} ({n} phonemes, {f} frames)" for tid, n, f in bad[:10]),
                        " ..." if len(bad) > 10 else "")
    return train_bad


def check_days_per_batch(cfg: Config, train_split) -> None:
    """UserError unless the training split has trials on at least ``data.days_per_batch`` days (the 'days' batching
    draws that many distinct days per batch without replacement; NEJM's trainer refuses fewer days the same way)."""
    if cfg.data.batching != "days":
        return
    days = int(np.unique(train_split.day).size)
    if cfg.data.days_per_batch > days:
        raise UserError(f"data.days_per_batch is {cfg.data.days_per_batch} but the training data has trials on only "
                        f"{days} day{'s' if days != 1 else ''}: every batch draws data.days_per_batch distinct days "
                        f"(without replacement, as the NEJM trainer does); set data.days_per_batch to at most {days}")


def config_sampler(cfg: Config, train_split, seed: int):
    """The training batch sampler of ``data.batching`` (days: b2t25's days x trials; random: cffan's fresh shuffled
    batch per step; epochs: each trial once per epoch)."""
    from fastdecoder.data.batching import make_sampler as sampler_for

    try:
        return sampler_for(cfg.data.batching, train_split, cfg.train.batch_size, cfg.data.days_per_batch, seed=seed,
                           must_include_days=cfg.data.must_include_days, n_days=cfg.model.n_days)
    except ValueError as e:  # a must-include day the training split does not hold: the config's fault
        raise UserError(str(e)) from None


def make_resident(train_split, device: torch.device) -> ResidentSplit:
    """The training split packed on the device (batches built there); pinned host memory if it would take more
    than RESIDENT_GPU_SHARE of the free GPU memory."""
    if device.type == "cuda":
        need = sum(f.nbytes for f in train_split.features)
        free, _ = torch.cuda.mem_get_info(device)
        if need > RESIDENT_GPU_SHARE * free:
            log.info("training split (%.1f GB) kept in pinned host memory", need / 1e9)
            return ResidentSplit(train_split, "cpu", pin=True)
    return ResidentSplit(train_split, device)
