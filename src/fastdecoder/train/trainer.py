"""The training loop: batches -> augmentation -> model -> CTC loss -> guarded, clipped update; eval on the real
validation PER; checkpoints that resume exactly.

One Trainer serves both presets; everything preset-specific comes from the Config. Per step (``train_step``): the
LR from the schedule (with its plateau/adaptive reductions), augmentation, forward, CTC loss, backward, the pre-clip
grad norm; a non-finite loss or gradient skips the update (stability.py), otherwise the gradient is clipped and
applied. Every ``log_every`` steps a record goes to DIR/metrics.jsonl (and the progress bar / log line), every
``eval_every`` the validation PER (best.pt on the real PER, never of non-finite weights), every
``checkpoint_every`` DIR/last.pt. SIGTERM/SIGINT finish the step, save last.pt and return normally;
``Trainer(cfg, DIR, resume=True)`` continues from it exactly. summary.json is written whenever training stops.

The concerns live beside it: device.py (device, runtime, backends, autocast), data.py (dataset, feasibility,
sampler, resident batches), rng.py (seeds, RNG capture), transforms.py (augmentation, eval transform),
outputs.py (metrics, TensorBoard, progress, summary, plots), checkpoint.py (files, load_run), signals.py,
stability.py, monitors.py, optim.py, distributed.py; evaluation is fastdecoder.evaluation.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fastdecoder.config import Config, config_diff, resume_may_differ
from fastdecoder.data.dataset import training_splits
from fastdecoder.errors import UserError
from fastdecoder.evaluation import EvalResult, EvalSettings, evaluate
from fastdecoder.losses import ctc_loss, output_lengths
from fastdecoder.ops.day_affine import plan_day_groups
from fastdecoder.train import distributed
from fastdecoder.train.calibration import EarlyStopping, freeze, init_from_checkpoint
from fastdecoder.train.checkpoint import (CheckpointError, check_resumable, check_state_shapes, load_checkpoint,
                                          load_run, save_checkpoint)
from fastdecoder.train.data import (check_days_per_batch, make_resident, make_sampler, prepare_dataset,
                                    target_min_frames, warn_family_mismatch, warn_short_and_infeasible)
from fastdecoder.train.device import autocast_dtype, build_model, configure_runtime, ops_backend, use_fast_path
from fastdecoder.train.monitors import CollapseMonitor, prediction_stats
from fastdecoder.train.optim import LRSchedule, build_optimizer, describe_schedule, lr_multiplier
from fastdecoder.train.outputs import Interval, RunOutputs, clear_run, final_eval_fields, prepare_run_folder
from fastdecoder.train.rng import RunStreams, rank_seed, seed_everything
from fastdecoder.train.signals import StopRequest
from fastdecoder.train.stability import InstabilityGuard, NonFiniteError, PendingSteps
from fastdecoder.train.transforms import EvalTransform, TrainAugmentation

log = logging.getLogger("fastdecoder.train")

# kept importable under their old names
from fastdecoder.train.device import resolve_device  # noqa: E402,F401

__all__ = ["Trainer", "ResumeError", "RESUME_MAY_DIFFER", "prepare_dataset", "load_run", "resolve_device",
           "seed_everything", "beam_per"]


def host_output_lengths(lens: np.ndarray, patch_size: int, patch_stride: int, mode: str,
                        max_frames: int) -> np.ndarray:
    """losses.output_lengths in numpy, for host copies of the lengths: (B,) int64 bins -> (B,) int64 frames."""
    if mode == "exact":
        n = np.maximum((lens - patch_size) // patch_stride + 1, 1)
    else:  # shipped: C-style truncation toward zero, then >= 0
        n = np.maximum(np.trunc((lens - patch_size) / patch_stride).astype(np.int64), 0)
    return np.minimum(n, max_frames).astype(np.int64)


def pad_to_bucket(x: torch.Tensor, bucket: int) -> torch.Tensor:
    """(B, T, C) zero padded in time up to the next multiple of ``bucket`` bins (0: unchanged). The new bins lie
    past every trial's length, so outputs and losses of a unidirectional model do not change."""
    pad = -x.shape[1] % bucket if bucket > 0 else 0
    return torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x


def compile_step(fn, length_bucket: int, backend="inductor", max_len: int | None = None):
    """torch.compile of the step's forward and loss (``Trainer._forward_loss``): with length buckets one static
    graph per bucket (dynamo's recompile limit raised to the number of buckets ``max_len`` bins need), dynamo's
    automatic dynamic shapes without. Graphs break where dynamo cannot trace (F.ctc_loss, whose output shape
    depends on data; nn.GRU on CUDA) and resume after it, so day layer, patching, head, log-softmax and the loss's
    reduction are compiled around them."""
    if length_bucket > 0 and max_len:
        limit = -(-max_len // length_bucket) + 1
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    return torch.compile(fn, backend=backend, dynamic=False if length_bucket > 0 else None)


def skip_flag(loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    """() float32 on the device: 1.0 if the loss or the grad norm is non-finite (the fused optimizers' found_inf)."""
    return (~(torch.isfinite(loss) & torch.isfinite(grad_norm))).to(torch.float32)


class ResumeError(UserError):
    """``--resume`` cannot continue this run (config mismatch, checkpoint not resumable); says why."""


#: keys that may differ between a checkpoint's config and the config a run is resumed with: the step budget, and
#: what only changes logging/reporting (never the weights); declared beside each field (config.key(resume=...)).
RESUME_MAY_DIFFER = resume_may_differ()


def weights_finite(model: torch.nn.Module) -> bool:
    """True if every parameter and buffer is finite (one host sync)."""
    flags = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


class Trainer:
    """Train a GRUDecoder as ``cfg`` says. ``out_dir`` receives config.yaml, checkpoints, metrics and summary.

    ``resume``: True continues the run in ``out_dir`` from ``out_dir/last.pt`` (or pass the loaded checkpoint
    dict); its config must equal ``cfg`` except the keys in RESUME_MAY_DIFFER. Under torchrun the Trainer joins
    the process group and trains with DistributedDataParallel (see fastdecoder.train.distributed).
    """

    def __init__(self, cfg: Config, out_dir: str | Path | None = None, *, progress: bool = True,
                 resume: bool | dict = False, overwrite: bool = False):
        if cfg.train.members > 1:
            raise UserError(f"train.members is {cfg.train.members}: train it with fastdecoder.train.members."
                            "MembersTrainer (fastdecoder train does so)")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.dist, self.device = distributed.setup(cfg.train.device)
        self.is_main = self.dist.is_main
        configure_runtime(cfg.train, self.device)
        self.outputs = RunOutputs(self.out_dir, self.is_main, tensorboard=cfg.train.tensorboard,
                                  plot=cfg.train.plot, progress=progress)
        seed_everything(cfg.train.seed)

        # the main rank writes the synthetic data (if any) first; the others then read it. Nothing of the run folder
        # is created or cleared before the data has loaded.
        if self.is_main:
            self.dataset, data_path = prepare_dataset(cfg, self.out_dir)
        distributed.barrier(self.dist)
        if not self.is_main:
            self.dataset, data_path = prepare_dataset(cfg, self.out_dir)
        if self.out_dir is not None and self.is_main:
            if overwrite:
                clear_run(self.out_dir)
            prepare_run_folder(self.out_dir)
            self.outputs.open_log(append=bool(resume))
        if self.is_main:
            warn_family_mismatch(cfg.name, self.dataset.format, data_path)
        # stored absolute: the run folder's config.yaml names the data wherever eval runs from
        cfg = replace(cfg, data=replace(cfg.data, path=str(Path(data_path).resolve()), format=self.dataset.format))
        cfg = replace(cfg, model=replace(cfg.model, n_features=self.dataset.n_features, n_days=self.dataset.n_days))
        state, where = self._resume_state(resume, cfg)
        self.cfg = cfg
        self.train_split, self.val_split = training_splits(self.dataset, cfg.data.val_split, cfg.model.n_classes)
        check_days_per_batch(cfg, self.train_split)
        bad = warn_short_and_infeasible(cfg, self.train_split, self.val_split, say=self.is_main)
        self.infeasible_trials = len(bad)
        self.reported_infeasible: set[str] = set(bad)
        self._need_frames = target_min_frames(self.train_split)  # (n,) frames each training target needs
        self._target_width = max(1, int(np.max(self.train_split.target_lengths, initial=0)))  # the longest target

        # The fast path and the reference path share everything but the op implementations and the batching.
        self.fast = use_fast_path(cfg, self.device)
        self.ops_backend = ops_backend(cfg, self.device)
        self.model = build_model(cfg, self.device)
        self.init_report = None
        if cfg.train.init_from and state is None:  # a resumed run has its own weights
            self.init_report = init_from_checkpoint(self.model, cfg.train.init_from, self.dataset.day_names,
                                                    cfg.model, cfg.train.init_new_days)
            if self.is_main:
                r = self.init_report
                log.info("initialised from %s: %d sessions matched, %d new (%s)", r.checkpoint, len(r.matched),
                         len(r.new), ", ".join(f"{k} <- {v}" for k, v in r.new.items()) or "none")
        self.frozen = freeze(self.model, cfg.model)
        if self.frozen and self.is_main:
            log.info("frozen: %d parameter tensors (%s)", len(self.frozen), ", ".join(self.frozen))
        self.optimizer = build_optimizer(self.model, replace(cfg.optim, fused=cfg.optim.fused and self.fast),
                                         self.device)
        self.schedule = LRSchedule(self.optimizer, cfg.optim)
        self.guard = InstabilityGuard(cfg.stability, self.schedule)
        self.monitor = CollapseMonitor(cfg.stability)
        self.amp_dtype = autocast_dtype(cfg, self.device)
        on_cuda = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if (on_cuda and cfg.train.amp == "fp16") else None
        self.rank_seed = rank_seed(cfg.train.seed, self.dist.rank)
        if self.dist.rank > 0:
            torch.manual_seed(self.rank_seed)  # dropout
        self.ddp = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if on_cuda else None)
        fwd = self.ddp if self.ddp is not None else self.model
        if cfg.train.length_bucket and cfg.model.bidirectional:
            raise UserError(f"train.length_bucket is {cfg.train.length_bucket} but model.bidirectional is true: the "
                            "backward direction would see the extra padding and change the loss; set "
                            "train.length_bucket: 0")
        self.forward = fwd  # the model's forward (DDP-wrapped under torchrun)
        self.compiled = bool(cfg.train.compile and on_cuda and self.fast)
        self.forward_loss = (compile_step(self._forward_loss, cfg.train.length_bucket,
                                          max_len=int(self.train_split.lengths.max()))
                             if self.compiled else self._forward_loss)
        data_seed = cfg.train.data_seed if cfg.train.data_seed is not None else cfg.train.seed
        self.data_rank_seed = rank_seed(data_seed, self.dist.rank)  # batches and random cut (train.data_seed)
        self.sampler = make_sampler(cfg, self.train_split, self.data_rank_seed)
        self.resident = make_resident(self.train_split, self.device) if self.fast else None
        self._plan_days = self.fast and (self.device.type == "cpu" or cfg.data.batching == "days")
        self.deferred = False  # set after the self-check below (which may fall back to the unfused optimizer)
        self.pending = PendingSteps(cfg.train.log_every, self.device)
        self._replayed: list[dict] = []  # steps read because ``pending`` filled up outside ``run``
        self.phase_hook = None  # phase_hook(name) after each phase of a step (bench timing); None in training
        self.eval_hook = None  # eval_hook(trainer, result) after each evaluation (tune: pruning); may raise to stop
        self.streams = RunStreams(self.rank_seed, self.device, cut_seed=self.data_rank_seed)
        self.eval_settings = EvalSettings.from_config(cfg, self.device)
        self.eval_transform: EvalTransform = self.eval_settings.transform
        # bf16 augmentation output where the next op is the day layer's bf16 matmul (the same rounding autocast does)
        augment_dtype = (torch.bfloat16 if self.amp_dtype == torch.bfloat16 and cfg.model.smoothing != "model"
                         else None)
        self.augment = TrainAugmentation(cfg, self.eval_transform, self.streams, out_dtype=augment_dtype)
        self.step = 0
        self.best_per = math.inf
        self.best_step = -1
        self.last_val_per: float | None = None
        self.last_eval: EvalResult | None = None
        self.early = EarlyStopping(cfg.train.early_stopping_val_steps) if cfg.train.early_stopping else None
        self.stopped_early: int | None = None  # the step at which train.early_stopping stopped the run
        self.train_seconds = 0.0
        self.resumed_from: int | None = None
        self._saved: dict[str, int] = {}
        self._session: tuple[float, float] | None = None  # (perf_counter at fit start, train_seconds before)
        self._stop: StopRequest | None = None
        if state is not None:
            try:
                self.load_state_dict(state)
            except KeyError as e:
                raise CheckpointError(f"checkpoint {where} cannot resume this run: it lacks {e}") from None
            except (TypeError, ValueError, IndexError, RuntimeError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise CheckpointError(f"checkpoint {where} cannot resume this run: {first}") from None
        from fastdecoder.train.selfcheck import check_fast_path  # each fast op vs its reference; falls back on a fail

        self.selfcheck_events = check_fast_path(self)
        # no host read inside a step where the fused optimizer can skip an update on the device (see train_step)
        self.deferred = (self.fast and not self.dist.enabled and self.scaler is None
                         and bool(self.optimizer.defaults.get("fused")))
        self.graphs = None  # train.cuda_graphs: the captured forward + backward per shape (train/cuda_graphs.py)
        if cfg.train.cuda_graphs:
            from fastdecoder.train.cuda_graphs import StepGraphs, refusal

            why = refusal(cfg, self.device, self.fast, self.deferred)
            if why:
                raise UserError(why)
            self.graphs = StepGraphs(self.model, cfg.model, self.amp_dtype, self.device)
            if self.compiled:  # the graphs capture the eager forward; the compiled step would go unused
                log.info("train.cuda_graphs: the captured forward is the eager model's (train.compile is not used)")
                self.compiled, self.forward_loss = False, self._forward_loss

    @property
    def history(self) -> list[dict]:
        """Every record written to metrics.jsonl (main rank)."""
        return self.outputs.history

    def _resume_state(self, resume: bool | dict, cfg: Config):
        """(checkpoint dict, where it came from) to resume from, checked against ``cfg``; (None, None) if new."""
        if not resume:
            return None, None
        if isinstance(resume, dict):
            state, where = resume, (self.out_dir / "last.pt" if self.out_dir is not None else "checkpoint")
        else:
            if self.out_dir is None:
                raise ResumeError("resume needs the run folder (out_dir) holding last.pt")
            where = self.out_dir / "last.pt"
            state = load_checkpoint(where)
        check_resumable(state, where)
        self._check_resume_config(cfg, state["config"], where)
        check_state_shapes(cfg, state["model"], where)  # before the model is built
        return state, where

    def _check_resume_config(self, cfg: Config, saved: dict, where) -> None:
        want = cfg.to_dict()
        saved = {k: (dict(v) if isinstance(v, dict) else v) for k, v in saved.items()}
        # a key added after the checkpoint was written: the run trained as its default (new keys default to the
        # behaviour that came before them), so it is compared as that default
        for sec, defaults in Config().to_dict().items():
            if isinstance(defaults, dict) and isinstance(saved.get(sec), dict):
                saved[sec] = {**defaults, **saved[sec]}
        for d in (want, saved):
            p = (d.get("data") or {}).get("path")
            if p:
                d["data"]["path"] = str(Path(p).resolve())
        diffs = config_diff(saved, want, ignore=RESUME_MAY_DIFFER)
        if diffs:
            lines = "; ".join(f"{k}: checkpoint {a!r}, requested {b!r}" for k, a, b in diffs)
            raise ResumeError(f"cannot resume from {where}: the requested config differs from the checkpoint's in "
                              f"{lines}. Only {', '.join(RESUME_MAY_DIFFER[1:])} may change on resume (drop --config "
                              "to resume with the checkpoint's own config, or start a new run in another --out).")

    # -- one step -----------------------------------------------------------------------------------------------
    def train_transform(self, x: torch.Tensor, lens: torch.Tensor):
        """This step's training augmentation of (x, lens) (see transforms.TrainAugmentation)."""
        return self.augment(x, lens, self.step)

    def next_batch(self):
        """The next training batch on the device: gathered from the resident split (fast path) or padded on the host
        and copied (reference path); both give the same tensors."""
        from fastdecoder.data import collate

        idx = next(self.sampler)
        if self.resident is not None:
            return self.resident.batch(idx, device=self.device)
        return collate(self.train_split, idx).to(self.device, non_blocking=True)

    def train_step(self, batch, *, stats: bool = False) -> dict:
        """One update (or a skipped one), then ``step += 1``. Returns loss, grad_norm (pre-clip), lr, skipped,
        stop, events, and with ``stats`` the training batch's blank fraction and distinct phonemes.

        Reference path (and fp16 / torchrun / a non-fused optimizer): one host sync per step (the loss / grad-norm /
        stop flags, reduced over ranks), the guard decides on the host. Deferred path (``self.deferred``: the fast
        path with a fused optimizer, one process, no GradScaler): no host read at all; the update is skipped on the
        device through the fused optimizer's ``found_inf`` and loss / grad norm go to ``self.pending``, read and
        accounted at the next ``read_steps()`` (log interval, evaluation, checkpoint, end): then ``loss``,
        ``grad_norm`` and ``skipped`` are None here and ``deferred`` is True, and the CTC length tensors are host
        copies. Both paths take the infeasible-target check from host copies of the lengths.
        """
        cfg = self.cfg
        (self.ddp if self.ddp is not None else self.model).train()
        step_no = self.step + 1
        lr = self.schedule.apply(self.step)
        if self.phase_hook is not None:
            self.phase_hook("data")
        x, lens = self.augment(batch.x, batch.x_lens, self.step)
        x = pad_to_bucket(x, cfg.train.length_bucket)
        m = cfg.model
        max_frames = (x.shape[1] - m.patch_size) // m.patch_stride + 1  # the frames the patching gives
        bad, frames = self._infeasible_in(batch, max_frames)
        infeasible = bool(bad.any())
        if infeasible:
            self._report_infeasible(batch, bad, frames)
        if self.deferred:  # host length tensors: F.ctc_loss copies device ones to the host
            n = torch.from_numpy(frames)
            y_lens = torch.from_numpy(np.asarray(self.train_split.target_lengths[batch.index], dtype=np.int64))
        else:
            n = output_lengths(lens, m.patch_size, m.patch_stride, cfg.ctc.output_lengths, max_frames)
            y_lens = batch.y_lens
        y = batch.y
        if cfg.train.length_bucket:  # one target width for the run: the loss region keeps its shape too
            y = torch.nn.functional.pad(y, (0, self._target_width - y.shape[1]))
        if self.graphs is not None:  # train.cuda_graphs: this shape's captured forward + backward (cuda_graphs.py)
            logits = self.graphs(x, batch.day, lens, self._day_groups(batch))
            loss = self._loss(logits, n, y, y_lens)
        else:
            logits, loss = self.forward_loss(x, batch.day, lens, n, y, y_lens, self._day_groups(batch))
        if self.phase_hook is not None:
            self.phase_hook("forward")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.phase_hook is not None:
            self.phase_hook("backward")
        if self.deferred:
            out = self._deferred_update(loss, step_no, lr, infeasible)
        else:
            out = self._synced_update(loss, step_no, lr, infeasible)
        if self.phase_hook is not None:
            self.phase_hook("optimizer")
        if stats:
            out["blank_fraction"], out["distinct_phonemes"] = prediction_stats(logits, n)
        return out

    def _day_groups(self, batch):
        """The day layer's grouping of ``batch`` planned from its host copy of the days (ops.day_affine), on the
        fast path: on the CPU always, on a device with the 'days' batching (the same group sizes every step, so the
        compiled shapes stay static). None: the op decides (a device ``day`` keeps the gather)."""
        if not self._plan_days or batch.host_day is None:
            return None
        return plan_day_groups(batch.host_day, self.cfg.model.n_days, self.device)

    def _forward_loss(self, x, day, lens, n, y, y_lens, day_groups=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, N, V), CTC loss) of the step, under the run's autocast; compiled with ``train.compile``."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.forward(x, day, lens, day_groups)
        return logits, self._loss(logits, n, y, y_lens)

    def _loss(self, logits, n, y, y_lens) -> torch.Tensor:
        """The step's CTC loss of logits (B, N, V) (outside autocast)."""
        return ctc_loss(logits, n, y, y_lens, reduction=self.cfg.ctc.reduction,
                        zero_infinity=self.cfg.ctc.zero_infinity)

    def _deferred_update(self, loss: torch.Tensor, step_no: int, lr: float, infeasible: bool) -> dict:
        """Clip and apply the update unless the loss or grad norm is non-finite, decided on the device; no host
        read. The loss and grad norm wait in ``self.pending`` for ``read_steps``."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        gnorm = torch.nn.utils.get_total_norm([p.grad for p in params], error_if_nonfinite=False)
        loss_d = loss.detach().float()
        if self.cfg.optim.grad_clip > 0:  # a non-finite norm makes the grads NaN: that update is skipped anyway
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.optim.grad_clip, gnorm)
        self.optimizer.found_inf = skip_flag(loss_d, gnorm)  # the fused kernels skip the update (and Adam's step)
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf
        self.step = step_no
        self.pending.put(step_no, lr, infeasible, loss_d, gnorm)
        if self.pending.full:  # train_step outside ``run``, or a log interval beyond PendingSteps.MAX_PENDING
            self._replayed = self.read_steps()
        stop = self._stop is not None and self._stop.signum is not None
        return {"loss": None, "grad_norm": None, "lr": lr, "skipped": None, "stop": stop, "events": [],
                "deferred": True}

    def read_steps(self) -> list[dict]:
        """The steps waiting in ``self.pending`` (deferred path), read with one host read and accounted by the
        stability guard in order, exactly as the synced path does per step: skip counts, events, high-grad-norm
        counts, adaptive-LR reductions and the consecutive-skip / abort_on_nonfinite stops (which therefore act at
        this read, not at the step itself). Returns a dict per step (loss, grad_norm, lr, skipped, events)."""
        outs = self._replayed
        self._replayed = []
        for step_no, lr, infeasible, loss_f, gn in self.pending.read():
            apply, events = self.guard.observe(step_no, loss_f, gn, loss_finite=math.isfinite(loss_f),
                                               grad_finite=math.isfinite(gn), infeasible=infeasible)
            outs.append({"step": step_no, "loss": loss_f, "grad_norm": gn, "lr": lr, "skipped": not apply,
                         "events": events})
        return outs

    def _synced_update(self, loss: torch.Tensor, step_no: int, lr: float, infeasible: bool) -> dict:
        """The guard decides on the host (one read per step); the update is clipped and applied, or skipped."""
        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.grad is not None]
        gnorm = torch.nn.utils.get_total_norm([p.grad for p in params], error_if_nonfinite=False)
        loss_d = loss.detach().float()
        stop_local = self._stop is not None and self._stop.signum is not None
        flags = torch.stack([(~torch.isfinite(loss_d)).float(), (~torch.isfinite(gnorm)).float(),
                             torch.tensor(float(stop_local), device=loss_d.device)])
        distributed.all_reduce_max_(flags, self.dist)
        loss_nf, grad_nf, stop, loss_f, gn = torch.cat([flags, loss_d.reshape(1), gnorm.float().reshape(1)]).tolist()
        events: list[dict] = []
        if self.scaler is not None and not loss_nf and grad_nf:
            # fp16 overflow: the GradScaler skips this step and lowers its scale (expected now and then)
            self.guard.overflow_skips += 1
            self.scaler.step(self.optimizer)
            self.scaler.update()
            apply, skipped = False, True
        else:
            apply, events = self.guard.observe(
                step_no, loss_f, gn, loss_finite=not loss_nf, grad_finite=not grad_nf, infeasible=infeasible,
                bad_params=lambda: [nm for nm, p in self.model.named_parameters()
                                    if p.grad is not None and not bool(torch.isfinite(p.grad).all())])
            skipped = not apply
            if apply and cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grads_with_norm_(params, cfg.optim.grad_clip, gnorm)
            if self.scaler is not None:
                if apply:
                    self.scaler.step(self.optimizer)
                self.scaler.update()
            elif apply:
                self.optimizer.step()
            if not apply:
                self.optimizer.zero_grad(set_to_none=True)
        self.step = step_no
        return {"loss": loss_f, "grad_norm": gn, "lr": lr, "skipped": skipped, "stop": bool(stop), "events": events}

    def _infeasible_in(self, batch, max_frames: int):
        """(bad (B,) bool, frames (B,) int64) on the host: targets longer than their output frames after this
        step's cut, from the host copies of the lengths (equal to losses.infeasible_targets; no device read)."""
        lens = np.asarray(self.train_split.lengths[batch.index], dtype=np.int64)
        if self.augment.last_cut:
            lens = np.maximum(lens - self.augment.last_cut, 1)  # as TrainAugmentation cut them on the device
        c = self.cfg
        frames = host_output_lengths(lens, c.model.patch_size, c.model.patch_stride, c.ctc.output_lengths,
                                     max_frames)
        return self._need_frames[batch.index] > frames, frames

    def _report_infeasible(self, batch, bad, frames) -> None:
        for b in np.flatnonzero(bad):
            tid = self.train_split.trial_ids[int(batch.index[b])]
            if tid not in self.reported_infeasible:
                self.reported_infeasible.add(tid)
                log.warning("trial %s: target of %d phonemes cannot fit its %d output frames (CTC loss %s)", tid,
                            int(self.train_split.target_lengths[batch.index[b]]), int(frames[b]),
                            "zeroed by zero_infinity" if self.cfg.ctc.zero_infinity else "infinite")

    # -- the loop -------------------------------------------------------------------------------------------------
    def fit(self, max_steps: int | None = None) -> dict:
        """Train to ``train.steps`` (or stop early at ``max_steps``, as an interruption would: last.pt is saved and
        the summary says so). SIGTERM/SIGINT stop after the current step the same way. Whatever stops training,
        DIR/summary.json is written (with ``aborted`` naming the error if one ended it)."""
        cfg = self.cfg
        self.outputs.open(cfg, self.resumed_from)
        if self.resumed_from is not None:
            self._log_metrics({"step": self.step, "event": "resume", "lr": self.schedule.current_lr(),
                               "skipped": self.guard.skipped})
        for ev in self.selfcheck_events:  # the start-up self-check's results, into metrics.jsonl
            self._log_metrics({**ev, "step": self.step})
        self.selfcheck_events = []
        if self.is_main:
            text, warn = describe_schedule(cfg.optim, cfg.train.steps)
            log.info("%s", text)
            if warn:
                log.warning("%s", warn)
        if self.resumed_from is not None and self.is_main:
            log.info("resuming at step %d of %d (LR %.3g, reductions so far x%.3g)", self.step, cfg.train.steps,
                     self.schedule.peak_lr * lr_multiplier(self.step, cfg.optim), self.schedule.scale)
            if self.step >= cfg.train.steps:
                log.warning("the checkpoint is already at step %d >= train.steps (%d): nothing to train; raise it "
                            "with --set train.steps=N to continue", self.step, cfg.train.steps)
        self._stop = StopRequest()
        self._stop.install()
        try:  # the handlers stay until the end, so a signal during the final save/summary cannot tear anything
            self.outputs.start_progress(cfg.train.steps, self.step)
            self._session = (time.perf_counter(), self.train_seconds)
            try:
                interrupted = self.run(max_steps)
                self.outputs.stop_progress()
                self.train_seconds, self._session = self._elapsed(), None
                return self._finish(interrupted)
            except BaseException as e:
                self._abort(e)
                raise
        finally:
            self._stop.restore()

    def run(self, max_steps: int | None = None, on_step=None, on_read=None) -> str | None:
        """Steps until ``train.steps`` (or ``max_steps``, or a stop request), with logging, evaluation and
        checkpoints at their intervals; ``on_step(out)`` after each step, ``on_read(outs)`` with the steps whose
        loss / grad norm were just read (each step on the synced path; on the deferred path those since the last
        read, at log, evaluation and checkpoint steps and at the end). Returns why it stopped early (or None)."""
        cfg = self.cfg
        step0, iv = self.step, Interval()
        while self.step < cfg.train.steps:
            will_log = (self.step + 1) % cfg.train.log_every == 0 or self.step + 1 == cfg.train.steps
            out = self.train_step(self.next_batch(), stats=will_log and cfg.train.train_monitor)
            if on_step is not None:
                on_step(out)
            will_eval = self.val_split is not None and (self.step % cfg.train.eval_every == 0
                                                        or self.step == cfg.train.steps)
            will_save = self.step % cfg.train.checkpoint_every == 0
            ending = (out["stop"] or self.step >= cfg.train.steps
                      or (max_steps is not None and self.step >= max_steps))
            if not out.get("deferred"):
                reads = [out]
            elif will_log or will_eval or will_save or ending or self._replayed:
                reads = self.read_steps()
            else:
                reads = []
            for o in reads:
                iv.add(o)
                for ev in o["events"]:
                    self._log_metrics(ev)
            if on_read is not None and reads:
                on_read(reads)
            if will_log:
                self._log_train(iv, out, step0)
                iv = Interval()
            if will_eval:
                self._eval_and_track()
            if will_save:
                self.save("last.pt")
            self.outputs.advance()
            if self.step >= cfg.train.steps:
                break  # finished: a signal that came with the last step changes nothing
            if self.stopped_early == self.step:
                break  # train.early_stopping: finished early (final evaluation and summary as at the end)
            if out["stop"]:
                return self._stop.name if self._stop is not None and self._stop.name else \
                    "a signal received by another rank"
            if max_steps is not None and self.step >= max_steps:
                return "max_steps"
        return None

    def _finish(self, interrupted: str | None) -> dict:
        if self._saved.get("last.pt") != self.step:
            self.save("last.pt")
        if interrupted is not None:
            self._log_metrics({"step": self.step, "event": "interrupted", "reason": interrupted})
            where = f"saved {self.out_dir / 'last.pt'}" if self.out_dir is not None else "no out_dir: nothing saved"
            self.outputs.say(f"stopped at step {self.step} of {self.cfg.train.steps} ({interrupted}); {where}; "
                             "continue with: fastdecoder train --out DIR --resume")
        summary = self.summarize(self.last_eval, interrupted=interrupted)
        self.outputs.close()
        return summary

    def _abort(self, error: BaseException) -> None:
        """Training stopped on ``error``: record it and write the summary (best effort: the error is what counts)."""
        self.outputs.stop_progress()
        if self._session is not None:
            self.train_seconds, self._session = self._elapsed(), None
        reason = str(error) if isinstance(error, (NonFiniteError, UserError)) else f"{type(error).__name__}: {error}"
        try:
            self._log_metrics({"step": self.step, "event": "aborted", "reason": reason})
            self.outputs.write_summary(self._base_summary() | {"aborted": reason})
            self.outputs.close()
        except Exception as e:  # noqa: BLE001 - e.g. the disk that is full
            log.warning("could not write the summary of the aborted run: %s", e)

    def _log_metrics(self, rec: dict) -> None:
        self.outputs.log(rec)

    def _log_train(self, iv: Interval, out: dict, session_step0: int) -> None:
        rec = iv.record(self.step, out["lr"], self._elapsed()) | {"skipped": self.guard.skipped}
        if self.schedule.scale != 1.0:
            rec["lr_scale"] = self.schedule.scale
        if "blank_fraction" in out:
            rec["train_blank_fraction"] = out["blank_fraction"]
            rec["train_distinct_phonemes"] = out["distinct_phonemes"]
            if self.val_split is None:
                for ev in self.monitor.check(self.step, out["blank_fraction"], out["distinct_phonemes"],
                                             "training-batch"):
                    self._log_metrics(ev)
        self._log_metrics(rec)
        t0 = self._session[0] if self._session is not None else iv.t0
        overall = (self.step - session_step0) / max(time.perf_counter() - t0, 1e-9)
        self.outputs.show_train(rec, self.guard.skipped, steps=self.cfg.train.steps, overall_rate=overall)

    # -- evaluation and checkpoints --------------------------------------------------------------------------------
    def evaluate(self, split=None, *, keep_log_probs=False, max_trials=None, decoder: str = "greedy",
                 beam_width: int = 20) -> EvalResult:
        """The validation split (or ``split``) through the one evaluation path, with this run's settings."""
        split = split if split is not None else self.val_split
        return evaluate(self.model, split, self.eval_settings, decoder=decoder, beam_width=beam_width,
                        max_trials=max_trials, keep_log_probs=keep_log_probs)

    def _eval_and_track(self) -> None:
        if not weights_finite(self.model):
            raise NonFiniteError(f"step {self.step}: the weights became non-finite (NaN/Inf), so they are not "
                                 "saved as best.pt and training cannot continue. Lower optim.lr, clip gradients "
                                 "(optim.grad_clip) or set stability.adaptive_lr: true.")
        res, per = None, float("nan")
        if self.is_main:
            res = self.evaluate(max_trials=self.cfg.data.max_val_trials)
            per = res.per
        per = distributed.broadcast_float(per, self.dist, self.device)
        self.last_val_per = per
        if self.early is not None:
            loss = distributed.broadcast_float(res.loss if res is not None else float("nan"), self.dist, self.device)
            if self.early.observe(per, loss):
                self.stopped_early = self.step
        ev = self.schedule.on_eval(self.step, per)
        if self.is_main:
            self.last_eval = res
            self._log_metrics({"step": self.step, "val_per": res.per, "val_loss": res.loss,
                               "blank_fraction": res.blank_fraction, "distinct_phonemes": res.distinct_phonemes,
                               "val_per_day": {self.dataset.day_names[d]: v["per"] for d, v in res.per_day.items()}})
            if ev is not None:
                self._log_metrics(ev)
            for e in self.monitor.check(self.step, res.blank_fraction, res.distinct_phonemes, "validation"):
                self._log_metrics(e)
        if per < self.best_per:  # the real PER of this evaluation, not a moving average
            self.best_per, self.best_step = per, self.step
            self.save("best.pt", val_per=per)
        self.outputs.say(f"step {self.step}: val PER {per:.4f} (best {self.best_per:.4f} @ {self.best_step})")
        if self.stopped_early == self.step:
            self._log_metrics({"step": self.step, "event": "early_stopping", "evaluations_without_improvement":
                               self.early.misses, "best_val_per": self.early.best_per})
            self.outputs.say(f"step {self.step}: the validation PER has not improved in {self.early.misses} "
                             f"evaluations (train.early_stopping_val_steps): stopping early")
        if self.eval_hook is not None:
            self.eval_hook(self, res)

    def state_dict(self) -> dict:
        """Everything a resume needs (see fastdecoder.train.checkpoint). A collective under torchrun. Steps still
        waiting in ``pending`` are read and accounted first (their records go out with the next read in ``run``)."""
        if len(self.pending):
            self._replayed = self.read_steps()
        mine = {"rank": self.dist.rank, "sampler": self.sampler.state_dict(), "rng": self.streams.state_dict()}
        ranks = distributed.gather_objects(mine, self.dist)
        d = {"model": self.model.state_dict(), "step": self.step, "config": self.cfg.to_dict(),
             "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
             "scaler": self.scaler.state_dict() if self.scaler is not None else None,
             "sampler": ranks[0]["sampler"], "rng": ranks[0]["rng"], "world_size": self.dist.world_size,
             "stability": self.guard.state_dict(), "monitor": self.monitor.state_dict(),
             "best_per": self.best_per, "best_step": self.best_step, "last_val_per": self.last_val_per,
             "train_seconds": self._elapsed(), "reported_infeasible": sorted(self.reported_infeasible),
             "day_names": list(self.dataset.day_names),
             "early_stopping": self.early.state_dict() if self.early is not None else None}
        if self.dist.enabled:
            d["rank_states"] = ranks
        return d

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``: weights, optimizer, schedule, scaler, RNGs, sampler, monitors, counters."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        saved_ws = int(state.get("world_size", 1))
        ranks = state.get("rank_states")
        rank = self.dist.rank
        if ranks and rank < len(ranks):
            mine = ranks[rank]
        elif rank == 0:
            mine = {"sampler": state["sampler"], "rng": state["rng"]}
        else:
            mine = None
        if saved_ws != self.dist.world_size and self.is_main:
            log.warning("the checkpoint was written by %d process(es), this run has %d: weights, optimizer and "
                        "schedule resume exactly, the per-rank data streams do not", saved_ws, self.dist.world_size)
        if mine is not None:
            self.sampler.load_state_dict(mine["sampler"])
            self.streams.load_state_dict(mine["rng"])
        self.guard.load_state_dict(state["stability"])
        self.monitor.load_state_dict(state["monitor"])
        self.step = int(state["step"])
        self.best_per = float(state.get("best_per", math.inf))
        self.best_step = int(state.get("best_step", -1))
        self.last_val_per = state.get("last_val_per")
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.reported_infeasible.update(state.get("reported_infeasible", []))
        if self.early is not None and state.get("early_stopping"):
            self.early.load_state_dict(state["early_stopping"])
        self.resumed_from = self.step
        self._saved = {"last.pt": self.step}

    def _elapsed(self) -> float:
        """Training seconds over all sessions of this run, up to now."""
        if self._session is None:
            return self.train_seconds
        t0, before = self._session
        return before + time.perf_counter() - t0

    def save(self, name: str, **extra) -> None:
        """Write ``out_dir/name`` atomically (main rank). A collective under torchrun: every rank calls it."""
        state = self.state_dict()
        if self.out_dir is not None and self.is_main:
            save_checkpoint({**state, **extra}, self.out_dir / name)
        self._saved[name] = self.step

    # -- the summary ------------------------------------------------------------------------------------------------
    def _base_summary(self) -> dict:
        cfg = self.cfg
        return {"name": cfg.name, "steps": self.step, "train_seconds": round(self.train_seconds, 3),
                "batches_per_second": (round(self.step / self.train_seconds, 3) if self.train_seconds else None),
                "device": str(self.device), "world_size": self.dist.world_size, "n_features": cfg.model.n_features,
                "n_days": cfg.model.n_days, "parameters": sum(p.numel() for p in self.model.parameters()),
                "skipped_updates": self.guard.skipped, "high_grad_norm_steps": self.guard.high_grad_norm_steps,
                "lr_reductions": self.schedule.adaptive_reductions,
                "plateau_reductions": self.schedule.plateau_reductions, "final_lr": self.schedule.current_lr(),
                "infeasible_trials": self.infeasible_trials, "monitor_warnings": self.monitor.warnings,
                **({"overflow_skips": self.guard.overflow_skips} if self.scaler is not None else {}),
                **({"resumed_from": self.resumed_from} if self.resumed_from is not None else {}),
                **({"early_stopped_at": self.stopped_early} if self.stopped_early is not None else {}),
                **({"init_from": self.init_report.as_dict()} if self.init_report is not None else {}),
                **({"frozen": self.frozen} if self.frozen else {})}

    def summarize(self, last_eval: EvalResult | None, interrupted: str | None = None) -> dict:
        """Final evaluation (greedy and native beam search on the validation split) and DIR/summary.json.

        An interrupted run skips the final evaluation (it should exit promptly) and reports its last one.
        """
        cfg = self.cfg
        summary = self._base_summary()
        if self.dist.enabled:
            digests = distributed.gather_objects(distributed.weights_digest(self.model), self.dist)
            summary["rank_weight_sha256"] = digests
            summary["ranks_identical"] = len(set(digests)) == 1
            if len(set(digests)) != 1 and self.is_main:
                log.error("the ranks' weights differ at the end of training: %s", digests)
        if interrupted is not None:
            summary["interrupted"] = interrupted
            if self.val_split is not None:
                summary.update(val_per=self.last_val_per, best_val_per=(self.best_per if self.best_step >= 0
                                                                        else None), best_step=self.best_step)
        elif self.val_split is not None and self.is_main:
            bw = cfg.train.beam_width
            res = self.evaluate(decoder="beam" if bw > 0 else "greedy", beam_width=bw)
            summary.update(final_eval_fields(res, self.best_per, self.best_step, self.step, bw))
        self.outputs.write_summary(summary)
        return summary


def beam_per(res: EvalResult, split, beam_width: int) -> tuple[float, int]:
    """(PER of the native CTC prefix beam search over the log-probs kept in ``res``, beam_width); kept for callers
    of the former API: new code passes decoder="beam" to fastdecoder.evaluation.evaluate."""
    from fastdecoder.decode import error_rate
    from fastdecoder.evaluation import beam_hypotheses

    if not res.log_probs:
        return float("nan"), beam_width
    refs = [split.targets[i].tolist() for i in res.indices]
    return error_rate(beam_hypotheses(res.log_probs, beam_width), refs)[0], beam_width
