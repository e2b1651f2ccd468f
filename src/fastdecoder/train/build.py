"""Assemble a training run from its config and the backends decided for it (``selfcheck.decide_backends``): data
and its splits, model, optimizer, schedule, stability machinery, sampler, augmentation and the step. Everything is
decided before it is built; nothing here is changed afterwards.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fastdecoder.data.dataset import training_splits
from fastdecoder.errors import UserError
from fastdecoder.evaluation import EvalSettings
from fastdecoder.train import distributed
from fastdecoder.train.calibration import EarlyStopping, freeze, init_from_checkpoint
from fastdecoder.train.run_data import (check_days_per_batch, config_sampler, make_resident, prepare_dataset,
                                        target_min_frames, warn_family_mismatch, warn_short_and_infeasible)
from fastdecoder.device import build_model
from fastdecoder.train.monitors import CollapseMonitor
from fastdecoder.train.optim import LRSchedule, build_optimizer
from fastdecoder.train.outputs import clear_run, prepare_run_folder
from fastdecoder.train.rng import RunStreams, rank_seed
from fastdecoder.train.selfcheck import Backends
from fastdecoder.train.stability import InstabilityGuard
from fastdecoder.train.step import TargetFeasibility, TrainStep
from fastdecoder.train.transforms import EvalTransform, TrainAugmentation

log = logging.getLogger("fastdecoder.train")

__all__ = ["RunParts", "build_run", "load_training_data", "split_training_data"]


def load_training_data(cfg, out_dir: Path | None, dist, outputs, *, overwrite: bool, resume: bool):
    """(dataset, cfg with the data's path, format, features and days filled in). The main rank writes synthetic
    data (if any) first; the others then read it. Nothing of the run folder is created or cleared before the data
    has loaded."""
    if dist.is_main:
        dataset, data_path = prepare_dataset(cfg, out_dir)
    distributed.barrier(dist)
    if not dist.is_main:
        dataset, data_path = prepare_dataset(cfg, out_dir)
    if out_dir is not None and dist.is_main:
        if overwrite:
            clear_run(out_dir)
        prepare_run_folder(out_dir)
        outputs.open_log(append=resume)
    if dist.is_main:
        warn_family_mismatch(cfg.name, dataset.format, data_path)
    # stored absolute: the run folder's config.yaml names the data wherever eval runs from
    cfg = replace(cfg, data=replace(cfg.data, path=str(Path(data_path).resolve()), format=dataset.format))
    cfg = replace(cfg, model=replace(cfg.model, n_features=dataset.n_features, n_days=dataset.n_days))
    return dataset, cfg


def split_training_data(cfg, dataset, *, say: bool):
    """(training split, validation split or None, ids of the training trials whose targets cannot fit their output
    frames) of the loaded ``dataset``: UserError where data.days_per_batch cannot be met, warnings (``say``) about
    short and infeasible trials."""
    train_split, val_split = training_splits(dataset, cfg.data.val_split, cfg.model.n_classes)
    check_days_per_batch(cfg, train_split)
    return train_split, val_split, warn_short_and_infeasible(cfg, train_split, val_split, say=say)


@dataclass
class RunParts:
    """What a Trainer runs: built by :func:`build_run`."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    guard: InstabilityGuard
    monitor: CollapseMonitor
    scaler: object                  # torch.amp.GradScaler under fp16 on CUDA, else None
    sampler: object                 # the training batches' index stream (resumable)
    resident: object                # the training split on the device (fast path), else None
    streams: RunStreams             # the run's random streams (noise, masks, cut)
    eval_settings: EvalSettings
    augment: TrainAugmentation
    step: TrainStep
    early: EarlyStopping | None
    init_report: object             # what train.init_from matched, or None
    frozen: list

    def state_dict(self, dist) -> dict:
        """The parts' states for a checkpoint (a collective under torchrun: every rank's sampler and RNG states are
        gathered, rank 0's at the top level)."""
        mine = {"rank": dist.rank, "sampler": self.sampler.state_dict(), "rng": self.streams.state_dict()}
        ranks = distributed.gather_objects(mine, dist)
        d = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
             "schedule": self.schedule.state_dict(),
             "scaler": self.scaler.state_dict() if self.scaler is not None else None,
             "sampler": ranks[0]["sampler"], "rng": ranks[0]["rng"], "world_size": dist.world_size,
             "stability": self.guard.state_dict(), "monitor": self.monitor.state_dict(),
             "early_stopping": self.early.state_dict() if self.early is not None else None}
        if dist.enabled:
            d["rank_states"] = ranks
        return d

    def load_state_dict(self, state: dict, dist) -> None:
        """Restore the parts from a checkpoint: weights, optimizer, schedule, scaler, this rank's sampler and RNG
        streams, stability guard, collapse monitor, early stopping."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        mine = distributed.own_rank_state(state, dist)
        if mine is not None:
            self.sampler.load_state_dict(mine["sampler"])
            self.streams.load_state_dict(mine["rng"])
        self.guard.load_state_dict(state["stability"])
        self.monitor.load_state_dict(state["monitor"])
        if self.early is not None and state.get("early_stopping"):
            self.early.load_state_dict(state["early_stopping"])


def build_run(cfg, device: torch.device, dist, backends: Backends, amp_dtype, train_split, day_names, *,
              fresh: bool, reported: set[str]) -> RunParts:
    """The parts of a run of ``cfg`` (data already loaded, ``train_split`` its training trials). ``fresh``: a new
    run (``train.init_from`` applies); a resumed one loads its own weights afterwards."""
    model = build_model(cfg, device, backends)
    init_report = None
    if cfg.train.init_from and fresh:
        init_report = init_from_checkpoint(model, cfg.train.init_from, day_names, cfg.model, cfg.train.init_new_days)
        if dist.is_main:
            r = init_report
            log.info("initialised from %s: %d sessions matched, %d new (%s)", r.checkpoint, len(r.matched),
                     len(r.new), ", ".join(f"{k} <- {v}" for k, v in r.new.items()) or "none")
    frozen = freeze(model, cfg.model)
    if frozen and dist.is_main:
        log.info("frozen: %d parameter tensors (%s)", len(frozen), ", ".join(frozen))
    optimizer = build_optimizer(model, replace(cfg.optim, fused=backends.fused_optimizer), device)
    schedule = LRSchedule(optimizer, cfg.optim)
    guard = InstabilityGuard(cfg.stability, schedule)
    on_cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if (on_cuda and cfg.train.amp == "fp16") else None
    seed = rank_seed(cfg.train.seed, dist.rank)
    if dist.rank > 0:
        torch.manual_seed(seed)  # dropout
    forward = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if on_cuda else None)
    if cfg.train.length_bucket and cfg.model.bidirectional:
        raise UserError(f"train.length_bucket is {cfg.train.length_bucket} but model.bidirectional is true: the "
                        "backward direction would see the extra padding and change the loss; set "
                        "train.length_bucket: 0")
    data_seed = cfg.train.data_seed if cfg.train.data_seed is not None else cfg.train.seed
    data_rank_seed = rank_seed(data_seed, dist.rank)  # batches and random cut (train.data_seed)
    sampler = config_sampler(cfg, train_split, data_rank_seed)
    resident = make_resident(train_split, device) if backends.resident else None
    streams = RunStreams(seed, device, cut_seed=data_rank_seed)
    eval_settings = EvalSettings.from_config(cfg, device)
    # bf16 augmentation output where the next op is the day layer's bf16 matmul (the same rounding autocast does)
    augment_dtype = torch.bfloat16 if amp_dtype == torch.bfloat16 and cfg.model.smoothing != "model" else None
    augment = TrainAugmentation(cfg, EvalTransform(model), streams, out_dtype=augment_dtype)
    # no host read inside a step where the fused optimizer can skip an update on the device
    deferred = backends.fast and not dist.enabled and scaler is None and backends.fused_optimizer
    compiled = bool(cfg.train.compile and on_cuda and backends.fast)
    graphs = None  # train.cuda_graphs: the captured forward + backward per shape (train/cuda_graphs.py)
    if cfg.train.cuda_graphs:
        from fastdecoder.train.cuda_graphs import StepGraphs, refusal

        why = refusal(cfg, device, backends.fast, deferred)
        if why:
            raise UserError(why)
        graphs = StepGraphs(model, cfg.model, amp_dtype, device)
        if compiled:  # the graphs capture the eager forward; the compiled step would go unused
            log.info("train.cuda_graphs: the captured forward is the eager model's (train.compile is not used)")
            compiled = False
    feasibility = TargetFeasibility(cfg, target_min_frames(train_split),
                                    np.asarray(train_split.target_lengths, dtype=np.int64), train_split.trial_ids,
                                    reported)
    step = TrainStep(cfg, model, forward, optimizer, guard, feasibility, device=device, dist=dist,
                     amp_dtype=amp_dtype, scaler=scaler, deferred=deferred, compiled=compiled, graphs=graphs,
                     plan_days=backends.fast and (device.type == "cpu" or cfg.data.batching == "days"),
                     target_width=max(1, int(np.max(train_split.target_lengths, initial=0))),
                     max_len=int(train_split.lengths.max()))
    early = EarlyStopping(cfg.train.early_stopping_val_steps) if cfg.train.early_stopping else None
    return RunParts(model=model, optimizer=optimizer, schedule=schedule, guard=guard,
                    monitor=CollapseMonitor(cfg.stability), scaler=scaler, sampler=sampler, resident=resident,
                    streams=streams, eval_settings=eval_settings, augment=augment, step=step, early=early,
                    init_report=init_report, frozen=frozen)
