"""One training step, read top to bottom: (augmented) batch -> forward + CTC loss under autocast -> backward ->
guarded, clipped update.

Two update strategies share one grad-norm / clip helper (:func:`clip_by_norm`):

* synced (the reference path; fp16, torchrun, an unfused optimizer): one host read per step (loss, grad norm and the
  stop flag, reduced over ranks); the stability guard decides on the host whether the update applies;
* deferred (the fast path with a fused optimizer, one process, no GradScaler): no host read at all; a non-finite loss
  or grad norm skips the update on the device through the fused optimizer's ``found_inf``, and loss / grad norm wait
  in ``pending`` until :meth:`TrainStep.read_steps` (at a log interval, evaluation, checkpoint or the end).

The batch carries everything the step needs on the host (lengths after the cut, target lengths), so the step never
reads back into the split or the augmenter.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch

from fastdecoder.losses import ctc_loss, output_lengths
from fastdecoder.ops.day_affine import plan_day_groups
from fastdecoder.train import distributed
from fastdecoder.train.stability import PendingSteps

log = logging.getLogger("fastdecoder.train")

__all__ = ["TrainStep", "TargetFeasibility", "clip_by_norm", "compile_step", "pad_to_bucket",
           "skip_flag"]


def pad_to_bucket(x: torch.Tensor, bucket: int) -> torch.Tensor:
    """(B, T, C) zero padded in time up to the next multiple of ``bucket`` bins (0: unchanged). The new bins lie
    past every trial's length, so outputs and losses of a unidirectional model do not change."""
    pad = -x.shape[1] % bucket if bucket > 0 else 0
    return torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x


def compile_step(fn, length_bucket: int, backend="inductor", max_len: int | None = None):
    """torch.compile of the step's forward and loss (``TrainStep._forward_loss``): with length buckets one static
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


def clip_by_norm(model: torch.nn.Module, max_norm: float) -> tuple[list, torch.Tensor]:
    """(parameters with a gradient, their total pre-clip grad norm () on the device); the gradients are clipped to
    ``max_norm`` in place (0: not clipped). A non-finite norm makes the clipped gradients NaN: such a step is
    skipped by either strategy, so the synced one clips only the updates it applies (``max_norm`` 0 here)."""
    params = [p for p in model.parameters() if p.grad is not None]
    gnorm = torch.nn.utils.get_total_norm([p.grad for p in params], error_if_nonfinite=False)
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, gnorm)
    return params, gnorm


class TargetFeasibility:
    """Which targets of a batch cannot fit their output frames after this step's cut (CTC would give an infinite
    loss), from the batch's host lengths; each such trial is reported once per run."""

    def __init__(self, cfg, need_frames: np.ndarray, target_lengths: np.ndarray, trial_ids: list[str],
                 reported: set[str]):
        self.cfg = cfg
        self.need_frames = need_frames          # (n,) frames each training target needs (repeats count)
        self.target_lengths = target_lengths    # (n,) phonemes per training target, for the message
        self.trial_ids = trial_ids
        self.reported = reported                # trial ids already reported (saved with the run's state)

    def check(self, batch, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """(bad (B,) bool, frames (B,) int64) on the host (equal to losses.infeasible_targets; no device read)."""
        m = self.cfg.model
        frames = output_lengths(batch.host_lens, m.patch_size, m.patch_stride, self.cfg.ctc.output_lengths,
                                max_frames)
        bad = self.need_frames[batch.index] > frames
        for b in np.flatnonzero(bad):
            i = int(batch.index[b])
            if self.trial_ids[i] not in self.reported:
                self.reported.add(self.trial_ids[i])
                log.warning("trial %s: target of %d phonemes cannot fit its %d output frames (CTC loss %s)",
                            self.trial_ids[i], int(self.target_lengths[i]), int(frames[b]),
                            "zeroed by zero_infinity" if self.cfg.ctc.zero_infinity else "infinite")
        return bad, frames


class TrainStep:
    """Forward + loss and the update of one training step, decided once per run (see ``fastdecoder.train.build``).

    ``forward``: the model's forward (DDP-wrapped under torchrun); ``graphs``: train.cuda_graphs' captured forward +
    backward, or None; ``compiled``: the forward + loss through torch.compile; ``deferred``: the update strategy.
    """

    def __init__(self, cfg, model, forward, optimizer, guard, feasibility: TargetFeasibility, *, device, dist,
                 amp_dtype, scaler, deferred: bool, compiled: bool, graphs, plan_days: bool, target_width: int,
                 max_len: int):
        self.cfg, self.model, self.forward, self.optimizer, self.guard = cfg, model, forward, optimizer, guard
        self.feasibility = feasibility
        self.device, self.dist, self.amp_dtype, self.scaler = device, dist, amp_dtype, scaler
        self.deferred, self.compiled, self.graphs = deferred, compiled, graphs
        self.plan_days, self.target_width = plan_days, target_width
        self.forward_loss = (compile_step(self._forward_loss, cfg.train.length_bucket, max_len=max_len)
                             if compiled else self._forward_loss)
        self.pending = PendingSteps(cfg.train.log_every, device)
        self.replayed: list[dict] = []  # steps read early (``pending`` full, a checkpoint), not yet given to ``run``

    def __call__(self, batch, step_no: int, lr: float, stop_requested=lambda: False, on_phase=None):
        """One update (or a skipped one) on the augmented ``batch``. Returns (out, logits (B, N, V), frames (B,)):
        out holds loss, grad_norm (pre-clip), lr, skipped, stop, events (deferred: loss, grad_norm and skipped None,
        ``deferred`` True). ``stop_requested()``: whether a stop was requested, asked after the backward pass (a
        signal during the step counts for it)."""
        cfg, m = self.cfg, self.cfg.model
        x = pad_to_bucket(batch.x, cfg.train.length_bucket)
        max_frames = (x.shape[1] - m.patch_size) // m.patch_stride + 1  # the frames the patching gives
        bad, frames = self.feasibility.check(batch, max_frames)
        infeasible = bool(bad.any())
        if self.deferred:  # host length tensors: F.ctc_loss copies device ones to the host
            n = torch.from_numpy(frames)
            y_lens = torch.from_numpy(np.asarray(batch.host_y_lens, dtype=np.int64))
        else:
            n = output_lengths(batch.x_lens, m.patch_size, m.patch_stride, cfg.ctc.output_lengths, max_frames)
            y_lens = batch.y_lens
        y = batch.y
        if cfg.train.length_bucket:  # one target width for the run: the loss region keeps its shape too
            y = torch.nn.functional.pad(y, (0, self.target_width - y.shape[1]))
        day_groups = self._day_groups(batch)
        if self.graphs is not None:  # train.cuda_graphs: this shape's captured forward + backward (cuda_graphs.py)
            logits = self.graphs(x, batch.day, batch.x_lens, day_groups)
            loss = self.loss(logits, n, y, y_lens)
        else:
            logits, loss = self.forward_loss(x, batch.day, batch.x_lens, n, y, y_lens, day_groups)
        if on_phase is not None:
            on_phase("forward")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if on_phase is not None:
            on_phase("backward")
        update = self._deferred_update if self.deferred else self._synced_update
        out = update(loss, step_no, lr, infeasible, stop_requested)
        if on_phase is not None:
            on_phase("optimizer")
        return out, logits, n

    def _day_groups(self, batch):
        """The day layer's grouping of ``batch`` planned from its host copy of the days (ops.day_affine), on the
        fast path: on the CPU always, on a device with the 'days' batching (the same group sizes every step, so the
        compiled shapes stay static). None: the op decides (a device ``day`` keeps the gather)."""
        if not self.plan_days or batch.host_day is None:
            return None
        return plan_day_groups(batch.host_day, self.cfg.model.n_days, self.device)

    def _forward_loss(self, x, day, lens, n, y, y_lens, day_groups=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, N, V), CTC loss) of the step, under the run's autocast; compiled with ``train.compile``."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.forward(x, day, lens, day_groups)
        return logits, self.loss(logits, n, y, y_lens)

    def loss(self, logits, n, y, y_lens) -> torch.Tensor:
        """The step's CTC loss of logits (B, N, V) (outside autocast)."""
        return ctc_loss(logits, n, y, y_lens, reduction=self.cfg.ctc.reduction,
                        zero_infinity=self.cfg.ctc.zero_infinity)

    # -- the two update strategies -------------------------------------------------------------------------------
    def _deferred_update(self, loss, step_no: int, lr: float, infeasible: bool, stop_requested: bool) -> dict:
        """Clip and apply the update unless the loss or grad norm is non-finite, decided on the device; no host
        read. The loss and grad norm wait in ``pending`` for ``read_steps``."""
        _, gnorm = clip_by_norm(self.model, self.cfg.optim.grad_clip)
        loss_d = loss.detach().float()
        self.optimizer.found_inf = skip_flag(loss_d, gnorm)  # the fused kernels skip the update (and Adam's step)
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf
        self.pending.put(step_no, lr, infeasible, loss_d, gnorm)
        return {"loss": None, "grad_norm": None, "lr": lr, "skipped": None, "stop": stop_requested(), "events": [],
                "deferred": True}

    def read_steps(self) -> list[dict]:
        """The steps waiting in ``pending`` (deferred strategy), read with one host read and accounted by the
        stability guard in order, exactly as the synced strategy does per step: skip counts, events, high-grad-norm
        counts, adaptive-LR reductions and the consecutive-skip / abort_on_nonfinite stops (which therefore act at
        this read, not at the step itself). Returns a dict per step (loss, grad_norm, lr, skipped, events), those
        read earlier because ``pending`` was full first."""
        outs, self.replayed = self.replayed, []
        for step_no, lr, infeasible, loss_f, gn in self.pending.read():
            apply, events = self.guard.observe(step_no, loss_f, gn, loss_finite=math.isfinite(loss_f),
                                               grad_finite=math.isfinite(gn), infeasible=infeasible)
            outs.append({"step": step_no, "loss": loss_f, "grad_norm": gn, "lr": lr, "skipped": not apply,
                         "events": events})
        return outs

    def _synced_update(self, loss, step_no: int, lr: float, infeasible: bool, stop_requested: bool) -> dict:
        """The guard decides on the host (one read per step); the update is clipped and applied, or skipped."""
        params, gnorm = clip_by_norm(self.model, 0.0)
        loss_d = loss.detach().float()
        flags = torch.stack([(~torch.isfinite(loss_d)).float(), (~torch.isfinite(gnorm)).float(),
                             torch.tensor(float(stop_requested()), device=loss_d.device)])
        distributed.all_reduce_max_(flags, self.dist)
        loss_nf, grad_nf, stop, loss_f, gn = torch.cat([flags, loss_d.reshape(1), gnorm.float().reshape(1)]).tolist()
        events: list[dict] = []
        if self.scaler is not None and not loss_nf and grad_nf:
            # fp16 overflow: the GradScaler skips this step and lowers its scale (expected now and then)
            self.guard.overflow_skips += 1
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = True
        else:
            apply, events = self.guard.observe(
                step_no, loss_f, gn, loss_finite=not loss_nf, grad_finite=not grad_nf, infeasible=infeasible,
                bad_params=lambda: [nm for nm, p in self.model.named_parameters()
                                    if p.grad is not None and not bool(torch.isfinite(p.grad).all())])
            skipped = not apply
            if apply and self.cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grads_with_norm_(params, self.cfg.optim.grad_clip, gnorm)
            if self.scaler is not None:
                if apply:
                    self.scaler.step(self.optimizer)
                self.scaler.update()
            elif apply:
                self.optimizer.step()
            if not apply:
                self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_f, "grad_norm": gn, "lr": lr, "skipped": skipped, "stop": bool(stop), "events": events}
