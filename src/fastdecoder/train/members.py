"""Training K members as one batched model (``train.members: K``): member i is the run ``fastdecoder train`` gives
alone with member i's config (fastdecoder.config.member_configs).

Per step: one batch from the sampler of the shared data seed (and its random cut), or with
``train.member_batch_order: own`` one batch per member from its own sampler and cut (its data seed), gathered from
the one stored training split and padded to a common (trials, bins); per member its own augmentation noise and
masks (its RunStreams), its dropout masks (its own generator: the solo run's torch global stream, drawn at its own
batch's shapes), its LR from its own schedule; one batched forward (fastdecoder.members.model), per-member CTC
losses, one backward of their sum (members share no parameter, so each member's gradients are its own loss's);
per-member pre-clip grad
norms, one host read, each member's InstabilityGuard decides its update; per-member clipping and one per-member
AdamW step (fastdecoder.members.optim) that leaves skipped members exactly as they were. A member that its guard
stops (abort_on_nonfinite, max_consecutive_skips, non-finite weights at an evaluation) is stopped and reported;
the others go on.

Output: DIR/config.yaml (the K-member config), DIR/member-i/ each a normal run folder (config.yaml = member i's solo
config, best.pt, last.pt, metrics.jsonl, summary.json, curves.png), DIR/summary.json (each member's validation PER
on its best.pt as ``eval`` gives it, and the ensemble's over the members' best.pt), DIR/curves.png (the members'
curves overlaid). Each member's checkpoints are solo checkpoints: ``load_run``, ``eval --run``, ``stream`` and even
``train --resume`` take a member folder as it is. ``MembersTrainer(cfg, DIR, resume=True)`` resumes every member
from its last.pt.
"""
from __future__ import annotations

import json
import logging
import math
from collections import deque
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from fastdecoder.config import Config, config_diff, save_config
from fastdecoder.data.dataset import training_splits
from fastdecoder.errors import UserError, writing
from fastdecoder.evaluation import EvalSettings, evaluate
from fastdecoder.losses import output_lengths
from fastdecoder.config import member_configs
from fastdecoder.members.model import BatchedGRUDecoder
from fastdecoder.members.optim import MemberAdam
from fastdecoder.checkpoint import CheckpointError, check_resumable, load_checkpoint, save_checkpoint
from fastdecoder.train.run_data import config_sampler, prepare_dataset, target_min_frames, warn_short_and_infeasible
from fastdecoder.device import autocast_dtype, build_model, configure_runtime, resolve_device
from fastdecoder.train.monitors import CollapseMonitor, prediction_stats
from fastdecoder.train.optim import LRSchedule, build_optimizer, param_groups
from fastdecoder.train.outputs import Interval, RunOutputs, TrainClock, final_eval_fields, prepare_run_folder
from fastdecoder.train.rng import CUT_STREAM, RunStreams, seed_everything
from fastdecoder.train.signals import StopRequest
from fastdecoder.train.step import TargetFeasibility, pad_to_bucket
from fastdecoder.train.stability import InstabilityGuard, NonFiniteError
from fastdecoder.train.transforms import EvalTransform, TrainAugmentation

log = logging.getLogger("fastdecoder.train")

__all__ = ["MembersTrainer", "member_dir"]

#: steps whose per-member losses ``MembersTrainer.history`` keeps
HISTORY = 10_000


def member_dir(out_dir: Path, k: int) -> Path:
    return Path(out_dir) / f"member-{k}"


class _Member:
    """What one member keeps apart from the others: config, solo model (for evaluation and its checkpoint layout),
    schedule, guard, monitor, random streams, outputs and bookkeeping."""

    def __init__(self, k: int, cfg: Config, solo, out_dir: Path | None, progress_plot: bool):
        self.k, self.cfg, self.solo = k, cfg, solo
        self.dir = member_dir(out_dir, k) if out_dir is not None else None
        self.outputs = RunOutputs(self.dir, True, tensorboard=False, plot=progress_plot, progress=False)
        self.interval = Interval()
        self.best_per, self.best_step = math.inf, -1
        self.last_val_per: float | None = None
        self.last_eval = None
        self.stopped: str | None = None  # why this member stopped training (None: it trains)
        self.stopped_at: int | None = None  # the step it stopped at
        self.saved: dict[str, int] = {}


class MembersTrainer:
    """Train ``cfg.train.members`` members of ``cfg`` as one batched model (see the module docstring); CPU or one
    CUDA device, one process. ``resume=True`` continues from DIR/member-i/last.pt."""

    def __init__(self, cfg: Config, out_dir: str | Path | None = None, *, progress: bool = True,
                 resume: bool = False, eval_hook=None):
        from fastdecoder.train import distributed

        if distributed.env_info().enabled:
            raise UserError("train.members > 1 runs in one process; start it without torchrun")
        if cfg.model.bidirectional:
            raise UserError("train.members > 1 needs model.bidirectional: false")
        if cfg.train.amp == "fp16" or cfg.train.cuda_graphs or cfg.train.compile:
            raise UserError("train.members > 1 runs without train.amp: fp16, train.cuda_graphs and train.compile")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.device = resolve_device(cfg.train.device)
        configure_runtime(cfg.train, self.device)
        if self.out_dir is not None:
            prepare_run_folder(self.out_dir)
        seed_everything(cfg.train.seed)
        self.dataset, data_path = prepare_dataset(cfg, self.out_dir)
        cfg = replace(cfg, data=replace(cfg.data, path=str(data_path), format=self.dataset.format),
                      model=replace(cfg.model, n_features=self.dataset.n_features, n_days=self.dataset.n_days))
        self.cfg = cfg
        cfgs = member_configs(cfg)
        self.k = len(cfgs)
        self.train_split, self.val_split = training_splits(self.dataset, cfg.data.val_split, cfg.model.n_classes)
        bad = warn_short_and_infeasible(cfg, self.train_split, self.val_split, say=True)
        self.infeasible_trials = len(bad)
        data_seed = cfgs[0].train.data_seed
        self.own_batches = cfg.train.member_batch_order == "own"
        # one sampler of the shared data seed, or each member's own (its data seed: its solo run's batches)
        self.samplers = [config_sampler(c, self.train_split, c.train.data_seed)
                         for c in (cfgs if self.own_batches else cfgs[:1])]
        self.sampler = self.samplers[0]
        self.cut = np.random.default_rng(data_seed + CUT_STREAM)  # the shared random cut (as the solo runs draw it)

        # each member built as its solo Trainer builds it: seeded, then the model (the init draws from the global
        # torch generator, and its dropout stream continues from there)
        self.members: list[_Member] = []
        self.dropout: list[torch.Generator] = []
        for k, c in enumerate(cfgs):
            seed_everything(c.train.seed)
            solo = build_model(c, self.device)
            self.dropout.append(torch.Generator().manual_seed(0))
            self.dropout[-1].set_state(torch.get_rng_state())
            m = _Member(k, c, solo, self.out_dir, cfg.train.plot)
            m.template = build_optimizer(solo, replace(c.optim, fused=False), self.device)  # checkpoint layout
            m.groups = SimpleNamespace(param_groups=[{"name": g["name"], "base_lr": g["base_lr"], "lr": g["lr"]}
                                                     for g in m.template.param_groups])
            m.schedule = LRSchedule(m.groups, c.optim)
            m.guard = InstabilityGuard(c.stability, m.schedule)
            m.monitor = CollapseMonitor(c.stability)
            m.streams = RunStreams(c.train.seed, self.device, cut_seed=c.train.data_seed)
            if self.own_batches:  # the member draws its own cut from its own stream, as its solo run does
                m.augment = TrainAugmentation(c, EvalTransform(solo), m.streams)
            else:
                m.streams.cut = self.cut
                no_cut = replace(c, augment=replace(c.augment, random_cut=0))  # the cut is drawn once, for all
                m.augment = TrainAugmentation(no_cut, EvalTransform(solo), m.streams)
            m.eval_settings = EvalSettings.from_config(c, self.device)
            self.members.append(m)
        self.model = BatchedGRUDecoder([m.solo for m in self.members]).to(self.device)
        # parameter groups of the solo run (main / no_decay / day), by the solo parameters' names
        solo0 = self.members[0].solo
        names = {id(p): n for n, p in solo0.named_parameters()}
        group_of = {}
        for gi, g in enumerate(param_groups(solo0, cfgs[0].optim)):
            for p in g["params"]:
                group_of[names[id(p)]] = gi
        self.group_names = [g["name"] for g in self.members[0].groups.param_groups]
        self.param_names = list(self.model.solo_names)
        params = [self.model.solo_parameter(n) for n in self.param_names]
        self.optimizer = MemberAdam(params, [group_of[n] for n in self.param_names], self.k, cfg.optim.betas,
                                    decoupled=cfg.optim.name == "adamw")
        # the torch optimizer's parameter order (its state_dict's indices) -> solo parameter names
        self.template_names = [names[id(p)] for g in self.members[0].template.param_groups for p in g["params"]]
        self.amp_dtype = autocast_dtype(self.members[0].cfg, self.device)
        self.step = 0
        self.clock = TrainClock()  # training seconds over the run's sessions
        self.resumed_from: int | None = None
        self.reported_infeasible: set[str] = set(bad)
        self.feasibility = TargetFeasibility(cfg, target_min_frames(self.train_split),
                                             np.asarray(self.train_split.target_lengths, dtype=np.int64),
                                             self.train_split.trial_ids, self.reported_infeasible)
        self._stop: StopRequest | None = None
        # the last HISTORY steps: the members' losses, grad norms, lrs and skips (metrics.jsonl holds the records)
        self.history: deque[dict] = deque(maxlen=HISTORY)
        #: eval_hook(k, step, result) -> reason or None, after member k's evaluation (members[k].solo holds the
        #: evaluated weights during the call); a reason stops member k as its guard would (tune: pruning)
        self.eval_hook = eval_hook
        if resume:
            self._resume()

    # -- one step ---------------------------------------------------------------------------------------------
    def next_batch(self):
        """The step's batch; with ``train.member_batch_order: own`` a list of K batches (member k's own)."""
        from fastdecoder.data import collate

        batches = [collate(self.train_split, next(s)).to(self.device) for s in self.samplers]
        return batches if self.own_batches else batches[0]

    def _weights(self, k: int) -> dict[str, list[float]]:
        """Member k's LR and weight decay per parameter group, as its solo optimizer holds them now."""
        o = self.members[k].cfg.optim
        wd = {"main": o.weight_decay, "no_decay": 0.0, "day": o.day_weight_decay}
        return {"lr": [g["lr"] for g in self.members[k].groups.param_groups],
                "wd": [wd[g["name"]] for g in self.members[k].groups.param_groups]}

    def train_step(self, batch) -> dict:
        """One update of every training member (or a skipped one), then ``step += 1``. Returns per-member
        losses, grad norms (pre-clip), lrs, skipped flags and events."""
        K, cfg = self.k, self.cfg
        self.model.train()
        step_no = self.step + 1
        lrs = [m.schedule.apply(self.step) for m in self.members]
        if isinstance(batch, (list, tuple)):
            return self._finish_step(step_no, lrs, *self._own_batches(batch))
        x, lens = batch.x, batch.x_lens
        cut = 0
        if cfg.augment.random_cut > 0:
            cut = int(self.cut.integers(0, cfg.augment.random_cut))
            if cut:
                x = x[:, cut:]
                lens = (lens - cut).clamp(min=1)
        xs = [pad_to_bucket(m.augment(x, lens, self.step)[0], cfg.train.length_bucket)  # K (B, T, C): not stacked
              for m in self.members]
        mdl = cfg.model
        max_frames = (xs[0].shape[1] - mdl.patch_size) // mdl.patch_stride + 1
        host_lens = np.maximum(batch.host_lens - cut, 1)  # the batch's host lengths, cut as on the device
        bad, _ = self.feasibility.check(replace(batch, host_lens=host_lens, cut=cut), max_frames)
        infeasible = bool(bad.any())
        n = output_lengths(lens, mdl.patch_size, mdl.patch_stride, cfg.ctc.output_lengths, max_frames)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model(xs, batch.day.cpu().numpy(), lens, self.dropout, frames=n)
        B, N, V = logits.shape[1:]
        log_probs = logits.float().log_softmax(-1).reshape(K * B, N, V).transpose(0, 1)
        per = F.ctc_loss(log_probs, batch.y.repeat(K, 1), n.repeat(K), batch.y_lens.repeat(K), blank=0,
                         reduction="none", zero_infinity=cfg.ctc.zero_infinity).view(K, B)
        if cfg.ctc.reduction == "mean_target":
            per = per / batch.y_lens.clamp(min=1).to(per.dtype)
        losses = per.mean(1)
        return self._finish_step(step_no, lrs, logits, n.expand(K, -1), losses, [infeasible] * K)

    def _own_batches(self, batches) -> tuple:
        """Each member's own batch (``train.member_batch_order: own``): augmented at its own shape as its solo run
        augments it, padded to the members' largest (trials, bins), one batched forward and per-member CTC losses
        over its own trials. Returns (logits, frames (K, B), losses (K,), infeasible per member)."""
        K, cfg, mdl = self.k, self.cfg, self.cfg.model
        xs, lens, frames_dev, infeasible = [], [], [], []
        for m, batch in zip(self.members, batches):
            batch = m.augment.batch(batch, self.step)  # x, x_lens and host_lens after this member's own cut
            x, ln = pad_to_bucket(batch.x, cfg.train.length_bucket), batch.x_lens  # as the solo run pads
            max_frames = (x.shape[1] - mdl.patch_size) // mdl.patch_stride + 1
            bad, _ = self.feasibility.check(batch, max_frames)
            infeasible.append(bool(bad.any()))
            xs.append(x)
            lens.append(ln)
            frames_dev.append(output_lengths(ln, mdl.patch_size, mdl.patch_stride, cfg.ctc.output_lengths,
                                             max_frames))
        shapes = [tuple(x.shape[:2]) for x in xs]
        B = max(b for b, _ in shapes)
        T = max(t for _, t in shapes)
        S = max(int(b.y.shape[1]) for b in batches)
        dev = xs[0].device
        # padding: bins past a batch's end (a unidirectional model's valid outputs do not see them) and, where a
        # sampler gave fewer trials, placeholder trials (one bin-long target) left out of that member's loss
        x_all = xs[0].new_zeros(K, B, T, xs[0].shape[2])
        lens_all = torch.full((K, B), T, dtype=torch.int64, device=dev)
        n_all = torch.ones((K, B), dtype=torch.int64, device=dev)
        y_all = torch.ones((K, B, S), dtype=torch.int64, device=dev)
        y_lens = torch.ones((K, B), dtype=torch.int64, device=dev)
        day = np.zeros((K, B), dtype=np.int64)
        for k, (batch, (b, t)) in enumerate(zip(batches, shapes)):
            x_all[k, :b, :t] = xs[k]
            lens_all[k, :b] = lens[k]
            n_all[k, :b] = frames_dev[k]
            y_all[k, :b, :batch.y.shape[1]] = batch.y
            y_lens[k, :b] = batch.y_lens
            day[k, :b] = batch.day.cpu().numpy()
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model(x_all, day, lens_all, self.dropout, member_shapes=shapes, frames=n_all)
        N, V = logits.shape[2:]
        log_probs = logits.float().log_softmax(-1).reshape(K * B, N, V).transpose(0, 1)
        per = F.ctc_loss(log_probs, y_all.view(K * B, S), n_all.view(-1), y_lens.view(-1), blank=0,
                         reduction="none", zero_infinity=cfg.ctc.zero_infinity).view(K, B)
        if cfg.ctc.reduction == "mean_target":
            per = per / y_lens.clamp(min=1).to(per.dtype)
        if all(b == B for b, _ in shapes):
            losses = per.mean(1)
        else:
            losses = torch.stack([per[k, :b].mean() for k, (b, _) in enumerate(shapes)])
        valid_frames = n_all.clone()  # the monitor's frames: none in the placeholder trials
        for k, (b, _) in enumerate(shapes):
            valid_frames[k, b:] = 0
        return logits, valid_frames, losses, infeasible

    def _finish_step(self, step_no: int, lrs: list, logits: torch.Tensor, n: torch.Tensor, losses: torch.Tensor,
                     infeasible: list[bool]) -> dict:
        """Backward of the members' summed losses, per-member guard, clipping and update (see ``train_step``)."""
        K = self.k
        self.model.zero_grad(set_to_none=True)
        losses.sum().backward()
        params = [p for p in self.optimizer.params if p.grad is not None]
        norms = torch.stack([torch.linalg.vector_norm(p.grad.reshape(K, -1), dim=1) for p in params])
        gnorm = torch.linalg.vector_norm(norms, dim=0)  # (K,) each member's total norm, as get_total_norm
        vals = torch.cat([losses.detach().float(), gnorm.float()]).tolist()  # the step's one host read
        loss_h, gn_h = vals[:K], vals[K:]
        apply, events = [False] * K, [[] for _ in range(K)]
        for k, m in enumerate(self.members):
            if m.stopped is not None:
                continue
            try:
                apply[k], events[k] = m.guard.observe(step_no, loss_h[k], gn_h[k],
                                                      loss_finite=math.isfinite(loss_h[k]),
                                                      grad_finite=math.isfinite(gn_h[k]),
                                                      infeasible=infeasible[k],
                                                      bad_params=lambda k=k: self._nonfinite_grads(k))
            except NonFiniteError as e:
                events[k] = [self._stop_member(m, str(e), step_no)]
        clip = torch.tensor([m.cfg.optim.grad_clip if (apply[k] and m.cfg.optim.grad_clip > 0) else 0.0
                             for k, m in enumerate(self.members)], dtype=torch.float32, device=gnorm.device)
        if bool((clip > 0).any()):
            coef = torch.where(clip > 0, (clip / (gnorm + 1e-6)).clamp(max=1.0), torch.ones_like(clip))
            for p in params:
                p.grad.mul_(coef.view(K, *([1] * (p.dim() - 1))))
        hyper = [self._weights(k) for k in range(K)]
        n_groups = len(self.group_names)
        self.optimizer.step(lr=[[hyper[k]["lr"][g] for k in range(K)] for g in range(n_groups)],
                            weight_decay=[[hyper[k]["wd"][g] for k in range(K)] for g in range(n_groups)],
                            eps=[m.cfg.optim.eps for m in self.members], apply=apply)
        self.model.zero_grad(set_to_none=True)
        self.step = step_no
        out = {"step": step_no, "loss": loss_h, "grad_norm": gn_h, "lr": lrs, "skipped": [not a for a in apply],
               "events": events, "logits": logits.detach(), "n": n}
        return out

    def _nonfinite_grads(self, k: int) -> list[str]:
        return [n for n, p in zip(self.param_names, self.optimizer.params)
                if p.grad is not None and not bool(torch.isfinite(p.grad[k]).all())]

    def _stop_member(self, m: _Member, reason: str, step: int) -> dict:
        m.stopped, m.stopped_at = reason, step
        log.error("member %d stopped at step %d: %s; the other members go on", m.k, step, reason)
        return {"step": step, "event": "member_stopped", "reason": reason}

    # -- the loop ---------------------------------------------------------------------------------------------
    def fit(self, max_steps: int | None = None) -> dict:
        """Train to ``train.steps`` (or ``max_steps``, or a SIGTERM/SIGINT: last.pt of every member is saved), then
        the members' summaries and DIR/summary.json. Returns the top summary."""
        cfg = self.cfg
        if self.out_dir is not None:
            with writing(self.out_dir / "config.yaml"):
                save_config(cfg, self.out_dir / "config.yaml")
        for m in self.members:
            m.outputs.open(m.cfg, self.resumed_from)
            if self.resumed_from is not None:
                m.outputs.log({"step": self.step, "event": "resume", "lr": m.schedule.current_lr(),
                               "skipped": m.guard.skipped})
        self._stop = StopRequest()
        self._stop.install()
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.train.steps, initial=self.step, desc=f"train x{self.k}", unit="step",
                       dynamic_ncols=True)
        self.clock.start()
        interrupted = None
        try:
            while self.step < cfg.train.steps:
                out = self.train_step(self.next_batch())
                self.history.append({k: out[k] for k in ("step", "loss", "grad_norm", "lr", "skipped")})
                for k, m in enumerate(self.members):
                    if m.stopped is None or out["events"][k]:
                        m.interval.add({"loss": out["loss"][k], "grad_norm": out["grad_norm"][k]})
                    for ev in out["events"][k]:
                        m.outputs.log(ev)
                if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
                    self._log_train(out)
                    if bar is not None:
                        bar.set_postfix({f"loss{k}": f"{v:.3f}" for k, v in enumerate(out["loss"])}, refresh=False)
                if self.val_split is not None and (self.step % cfg.train.eval_every == 0
                                                   or self.step == cfg.train.steps):
                    self._eval_and_track()
                if self.step % cfg.train.checkpoint_every == 0:
                    self.save("last.pt")
                if bar is not None:
                    bar.update(1)
                if all(m.stopped is not None for m in self.members):
                    interrupted = "every member stopped"
                    break
                if self.step >= cfg.train.steps:
                    break
                if self._stop.signum is not None:
                    interrupted = self._stop.name
                    break
                if max_steps is not None and self.step >= max_steps:
                    interrupted = "max_steps"
                    break
            if bar is not None:
                bar.close()
            self.clock.stop()
            return self._finish(interrupted)
        finally:
            self._stop.restore()

    @property
    def train_seconds(self) -> float:
        """Training seconds of this run's sessions that ended (``clock.elapsed()``: up to now)."""
        return self.clock.seconds

    def _log_train(self, out: dict) -> None:
        for k, m in enumerate(self.members):
            if m.stopped is not None and not m.interval.steps:
                continue
            rec = m.interval.record(self.step, out["lr"][k], self.clock.elapsed()) | {"skipped": m.guard.skipped}
            if m.schedule.scale != 1.0:
                rec["lr_scale"] = m.schedule.scale
            if m.cfg.train.train_monitor:
                rec["train_blank_fraction"], rec["train_distinct_phonemes"] = prediction_stats(out["logits"][k],
                                                                                              out["n"][k])
            m.outputs.log(rec)
            m.interval = Interval()

    def _load_solo(self, m: _Member):
        m.solo.load_state_dict(self.model.member_state_dict(m.k))
        return m.solo

    def _eval_and_track(self) -> None:
        for m in self.members:
            if m.stopped is not None:
                continue
            solo = self._load_solo(m)
            if not all(bool(torch.isfinite(t).all()) for t in solo.state_dict().values() if t.is_floating_point()):
                m.outputs.log(self._stop_member(m, f"step {self.step}: the weights became non-finite (NaN/Inf)",
                                                self.step))
                continue
            res = evaluate(solo, self.val_split, m.eval_settings, max_trials=m.cfg.data.max_val_trials)
            m.last_val_per, m.last_eval = res.per, res
            ev = m.schedule.on_eval(self.step, res.per)
            m.outputs.log({"step": self.step, "val_per": res.per, "val_loss": res.loss,
                           "blank_fraction": res.blank_fraction, "distinct_phonemes": res.distinct_phonemes})
            if ev is not None:
                m.outputs.log(ev)
            for e in m.monitor.check(self.step, res.blank_fraction, res.distinct_phonemes, "validation"):
                m.outputs.log(e)
            if res.per < m.best_per:
                m.best_per, m.best_step = res.per, self.step
                self._save_member(m, "best.pt", val_per=res.per)
            why = self.eval_hook(m.k, self.step, res) if self.eval_hook is not None else None
            if why:
                m.outputs.log(self._stop_member(m, why, self.step))
        pers = " ".join(f"{m.last_val_per:.4f}" if m.stopped is None else "stopped" for m in self.members)
        log.info("step %d: members' val PER %s", self.step, pers)

    # -- checkpoints: one solo checkpoint per member --------------------------------------------------------------
    def member_state_dict(self, k: int) -> dict:
        """Member k's checkpoint in the solo Trainer's layout (``Trainer.state_dict``)."""
        m = self.members[k]
        states = dict(zip(self.param_names, self.optimizer.member_state(k)))
        opt = m.template.state_dict()
        opt["state"] = {i: states[n] for i, n in enumerate(self.template_names) if states[n] is not None}
        for g, mine in zip(opt["param_groups"], m.groups.param_groups):
            g["lr"] = mine["lr"]
        rng = m.streams.state_dict()
        rng["torch"] = self.dropout[k].get_state()  # the solo run's dropout stream is torch's global generator
        return {"model": self.model.member_state_dict(k), "step": self.step, "config": m.cfg.to_dict(),
                "optimizer": opt, "schedule": m.schedule.state_dict(), "scaler": None,
                "sampler": self.samplers[k if self.own_batches else 0].state_dict(), "rng": rng, "world_size": 1,
                "stability": m.guard.state_dict(), "monitor": m.monitor.state_dict(), "best_per": m.best_per,
                "best_step": m.best_step, "last_val_per": m.last_val_per, "train_seconds": self.clock.elapsed(),
                "reported_infeasible": sorted(self.reported_infeasible), "member_stopped": m.stopped}

    def _save_member(self, m: _Member, name: str, **extra) -> None:
        if m.dir is not None:
            save_checkpoint({**self.member_state_dict(m.k), **extra}, m.dir / name)
        m.saved[name] = self.step

    def save(self, name: str) -> None:
        for m in self.members:
            self._save_member(m, name)

    def _resume(self) -> None:
        from fastdecoder.checkpoint import RESUME_MAY_DIFFER, ResumeError

        if self.out_dir is None:
            raise ResumeError("resume needs the run folder holding member-i/last.pt")
        states = []
        for m in self.members:
            where = m.dir / "last.pt"
            state = load_checkpoint(where)
            check_resumable(state, where)
            want, saved = m.cfg.to_dict(), dict(state["config"])
            for d in (want, saved):
                d["data"] = dict(d["data"])
                if d["data"].get("path"):
                    d["data"]["path"] = str(Path(d["data"]["path"]).resolve())
            diffs = config_diff(saved, want, ignore=RESUME_MAY_DIFFER)
            if diffs:
                lines = "; ".join(f"{k}: checkpoint {a!r}, requested {b!r}" for k, a, b in diffs)
                raise ResumeError(f"cannot resume from {where}: member {m.k}'s config differs in {lines}")
            states.append((where, state))
        steps = {int(s["step"]) for _, s in states}
        if len(steps) != 1:
            raise ResumeError(f"the members' last.pt are at different steps {sorted(steps)}: not one run's")
        for (where, state), m in zip(states, self.members):
            try:
                self.model.load_member(m.k, state["model"])
                by_name = {n: None for n in self.param_names}
                for i, n in enumerate(self.template_names):
                    by_name[n] = state["optimizer"]["state"].get(i, state["optimizer"]["state"].get(str(i)))
                self.optimizer.load_member_state(m.k, [by_name[n] for n in self.param_names])
                m.schedule.load_state_dict(state["schedule"])
                m.guard.load_state_dict(state["stability"])
                m.monitor.load_state_dict(state["monitor"])
                rng = state["rng"]
                m.streams.load_state_dict(rng)  # masks (and the shared cut: the same state in every member)
                self.dropout[m.k].set_state(rng["torch"])
                m.best_per = float(state.get("best_per", math.inf))
                m.best_step = int(state.get("best_step", -1))
                m.last_val_per = state.get("last_val_per")
                m.stopped = state.get("member_stopped")
                m.saved = {"last.pt": int(state["step"])}
            except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
                raise CheckpointError(f"checkpoint {where} cannot resume this run: {e}") from None
        for s, (where, state) in zip(self.samplers, states):
            try:
                s.load_state_dict(state["sampler"])
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"checkpoint {where} cannot resume this run: {e}") from None
        self.step = steps.pop()
        self.clock.seconds = float(states[0][1].get("train_seconds", 0.0))
        self.resumed_from = self.step

    # -- the end --------------------------------------------------------------------------------------------------
    def _finish(self, interrupted: str | None) -> dict:
        for m in self.members:
            if m.saved.get("last.pt") != self.step:
                self._save_member(m, "last.pt")
        summaries = []
        for m in self.members:
            s = self._member_summary(m, interrupted)
            m.outputs.write_summary(s)
            m.outputs.close()
            summaries.append(s)
        top = {"name": self.cfg.name, "members": self.k, "steps": self.step,
               "train_seconds": round(self.train_seconds, 3),
               "member_steps_per_second": (round(self.k * self.step / self.train_seconds, 3)
                                           if self.train_seconds else None),
               "device": str(self.device), "member_batch_order": self.cfg.train.member_batch_order,
               "data_seed": None if self.own_batches else self.members[0].cfg.train.data_seed,
               "member": [{"folder": f"member-{m.k}", "seed": m.cfg.train.seed, "data_seed": m.cfg.train.data_seed,
                           "best_step": m.best_step,
                           "skipped_updates": m.guard.skipped, "stopped": m.stopped} for m in self.members]}
        if interrupted is not None:
            top["interrupted"] = interrupted
        self._ensemble_summary(top)
        if self.out_dir is not None:
            path = self.out_dir / "summary.json"
            with writing(path):
                path.write_text(json.dumps(top, indent=2) + "\n")
            if self.cfg.train.plot:
                try:
                    plot_members(self.out_dir, [m.dir for m in self.members])
                except ImportError:
                    log.info("matplotlib is not installed: no curves.png")
                except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
                    log.warning("could not draw the members' curves: %s", e)
        return top

    def _member_summary(self, m: _Member, interrupted: str | None) -> dict:
        c = m.cfg
        s = {"name": c.name, "steps": self.step, "train_seconds": round(self.train_seconds, 3),
             "device": str(self.device), "world_size": 1, "n_features": c.model.n_features, "n_days": c.model.n_days,
             "parameters": sum(p.numel() for p in m.solo.parameters()), "skipped_updates": m.guard.skipped,
             "high_grad_norm_steps": m.guard.high_grad_norm_steps, "lr_reductions": m.schedule.adaptive_reductions,
             "plateau_reductions": m.schedule.plateau_reductions, "final_lr": m.schedule.current_lr(),
             "infeasible_trials": self.infeasible_trials, "monitor_warnings": m.monitor.warnings,
             "member": m.k, "members": self.k}
        if self.resumed_from is not None:
            s["resumed_from"] = self.resumed_from
        if m.stopped is not None:
            s["aborted"] = m.stopped
        if interrupted is not None or m.stopped is not None:
            if interrupted is not None:
                s["interrupted"] = interrupted
            if self.val_split is not None:
                s.update(val_per=m.last_val_per, best_val_per=m.best_per if m.best_step >= 0 else None,
                         best_step=m.best_step)
        elif self.val_split is not None:
            bw = c.train.beam_width
            res = evaluate(self._load_solo(m), self.val_split, m.eval_settings,
                           decoder="beam" if bw > 0 else "greedy", beam_width=bw)
            s.update(final_eval_fields(res, m.best_per, m.best_step, self.step, bw))
        return s

    def _ensemble_summary(self, top: dict) -> None:
        """Each member's validation PER on its best.pt (the ``eval`` path) and the ensemble's over them."""
        if self.out_dir is None or self.val_split is None:
            return
        have = [m for m in self.members if (m.dir / "best.pt").is_file()]
        if not have:
            return
        from fastdecoder.evaluation import evaluate_runs

        runs = evaluate_runs([m.dir for m in have], self.cfg.data.val_split or "val", checkpoint="best",
                             device=self.device)
        for m, res in zip(have, runs.members):
            top["member"][m.k]["val_per_best"] = res.per
        top["ensemble_val_per"] = runs.result.per
        top["ensemble_members"] = [f"member-{m.k}" for m in have]


def plot_members(out_dir: Path, member_dirs: list[Path], out: Path | None = None) -> Path:
    """DIR/curves.png: the members' training loss and validation PER against step, overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastdecoder.train.plot import read_metrics

    fig, (ax_loss, ax_per) = plt.subplots(1, 2, figsize=(11, 4))
    for d in member_dirs:
        recs = read_metrics(d / "metrics.jsonl") if (d / "metrics.jsonl").is_file() else []
        tr = [(r["step"], r["loss"]) for r in recs if "event" not in r and isinstance(r.get("loss"), (int, float))]
        ev = [(r["step"], r["val_per"]) for r in recs if isinstance(r.get("val_per"), (int, float))]
        if tr:
            ax_loss.plot(*zip(*tr), label=d.name)
        if ev:
            ax_per.plot(*zip(*ev), marker="o", label=d.name)
    ax_loss.set(xlabel="step", ylabel="training CTC loss", title="loss")
    ax_per.set(xlabel="step", ylabel="validation PER", title="PER")
    for ax in (ax_loss, ax_per):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out) if out is not None else Path(out_dir) / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
