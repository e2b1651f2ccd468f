"""The training loop: batches -> augmentation -> the step (``step.TrainStep``: model, CTC loss, guarded, clipped
update); eval on the real validation PER; checkpoints that resume exactly.

One Trainer serves both presets; everything preset-specific comes from the Config. Building a run: the data loads
(``build.load_training_data``), a resumed run's checkpoint is checked against the config, the self-check decides the
op backends on standalone inputs (``selfcheck.decide_backends``), and ``build.build_run`` assembles the parts from
that decision. The loop (``run``): every ``log_every`` steps a record goes to DIR/metrics.jsonl (and the progress
bar / log line), every ``eval_every`` the validation PER (best.pt on the real PER, never of non-finite weights),
every ``checkpoint_every`` DIR/last.pt. SIGTERM/SIGINT finish the step, save last.pt and return normally;
``Trainer(cfg, DIR, resume=True)`` continues from it exactly. summary.json is written whenever training stops.

The concerns live beside it: build.py (assembling a run), step.py (one step), selfcheck.py (backends), device.py,
data.py, rng.py, transforms.py, outputs.py, checkpoint.py (files, resume, load_run), signals.py, stability.py,
monitors.py, optim.py, distributed.py; evaluation is fastdecoder.evaluation.
"""
from __future__ import annotations

import math
import time
from pathlib import Path


from fastdecoder.config import Config
from fastdecoder.errors import UserError
from fastdecoder.evaluation import EvalResult, evaluate
from fastdecoder.train import distributed
from fastdecoder.train.build import build_run, load_training_data, split_training_data
from fastdecoder.checkpoint import restoring, resume_state, save_checkpoint
from fastdecoder.device import autocast_dtype, configure_runtime
from fastdecoder.train.monitors import prediction_stats
from fastdecoder.train.outputs import (Interval, RunOutputs, TrainClock, final_summary, record_abort, say_start,
                                       train_record, val_record)
from fastdecoder.train.rng import seed_everything
from fastdecoder.train.selfcheck import decide_backends
from fastdecoder.train.signals import StopRequest
from fastdecoder.train.stability import NonFiniteError, weights_finite

__all__ = ["Trainer"]


class Trainer:
    """Train a GRUDecoder as ``cfg`` says. ``out_dir`` receives config.yaml, checkpoints, metrics and summary.

    ``resume``: True continues the run in ``out_dir`` from ``out_dir/last.pt`` (or pass the loaded checkpoint
    dict); its config must equal ``cfg`` except the keys in checkpoint.RESUME_MAY_DIFFER. Under torchrun the Trainer
    joins the process group and trains with DistributedDataParallel (see fastdecoder.train.distributed).
    ``eval_hook(trainer, result)`` runs after each evaluation (tune: pruning) and may raise to stop.
    """

    def __init__(self, cfg: Config, out_dir: str | Path | None = None, *, progress: bool = True,
                 resume: bool | dict = False, overwrite: bool = False, eval_hook=None):
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
        self.dataset, cfg = load_training_data(cfg, self.out_dir, self.dist, self.outputs, overwrite=overwrite,
                                               resume=bool(resume))
        state, where = resume_state(resume, cfg, self.out_dir)
        self.cfg = cfg
        self.train_split, self.val_split, bad = split_training_data(cfg, self.dataset, say=self.is_main)
        self.infeasible_trials = len(bad)
        self.reported_infeasible: set[str] = set(bad)

        # decided before anything is built: the fast path and the reference path share everything but the op
        # implementations and the batching
        self.amp_dtype = autocast_dtype(cfg, self.device)
        self.backends = decide_backends(cfg, self.device, self.amp_dtype)
        parts = build_run(cfg, self.device, self.dist, self.backends, self.amp_dtype, self.train_split,
                          self.dataset.day_names, fresh=state is None, reported=self.reported_infeasible)
        self.parts = parts
        self.model, self.optimizer, self.schedule = parts.model, parts.optimizer, parts.schedule
        self.guard, self.monitor, self.scaler, self.early = parts.guard, parts.monitor, parts.scaler, parts.early
        self.sampler, self.resident, self.streams = parts.sampler, parts.resident, parts.streams
        self.augment, self.eval_settings, self.step_fn = parts.augment, parts.eval_settings, parts.step
        self.init_report, self.frozen = parts.init_report, parts.frozen
        self.selfcheck_events = list(self.backends.events)
        self.eval_hook = eval_hook

        self.step = 0
        self.best_per, self.best_step = math.inf, -1
        self.last_val_per: float | None = None
        self.last_eval: EvalResult | None = None
        self.stopped_early: int | None = None  # the step at which train.early_stopping stopped the run
        self.clock = TrainClock()  # training seconds over the run's sessions
        self.resumed_from: int | None = None
        self._saved: dict[str, int] = {}
        self._stop: StopRequest | None = None
        if state is not None:
            with restoring(where):
                self.load_state_dict(state)

    @property
    def history(self) -> list[dict]:
        """Every record written to metrics.jsonl (main rank)."""
        return self.outputs.history

    @property
    def train_seconds(self) -> float:
        """Training seconds of this run's sessions that ended (``clock.elapsed()``: up to now)."""
        return self.clock.seconds

    @property
    def deferred(self) -> bool:
        """The step's update strategy: deferred (no host read per step) or synced (see step.py)."""
        return self.step_fn.deferred

    # -- one step -----------------------------------------------------------------------------------------------
    def next_batch(self):
        """The next training batch on the device: gathered from the resident split (fast path) or padded on the host
        and copied (reference path); both give the same tensors."""
        from fastdecoder.data import collate

        idx = next(self.sampler)
        if self.resident is not None:
            return self.resident.batch(idx, device=self.device)
        return collate(self.train_split, idx).to(self.device, non_blocking=True)

    def train_step(self, batch, *, stats: bool = False, on_phase=None) -> dict:
        """One update (or a skipped one) on ``batch``, then ``step += 1``. Returns loss, grad_norm (pre-clip), lr,
        skipped, stop, events (None for loss, grad_norm and skipped on the deferred step: see ``read_steps``), and
        with ``stats`` the training batch's blank fraction and distinct phonemes. ``on_phase(name)`` after the
        data, forward, backward and optimizer phases (bench timing)."""
        self.model.train()
        if self.dist.enabled:
            self.step_fn.forward.train()  # the DDP wrapper's own flag
        lr = self.schedule.apply(self.step)
        if on_phase is not None:
            on_phase("data")
        batch = self.augment.batch(batch, self.step)
        out, logits, n = self.step_fn(batch, self.step + 1, lr, self._stop_requested, on_phase)
        self.step += 1
        if self.step_fn.pending.full:  # a step outside ``run``, or a log interval beyond PendingSteps.MAX_PENDING
            self.step_fn.replayed = self.step_fn.read_steps()  # those read before stay first in it
        if stats:
            out["blank_fraction"], out["distinct_phonemes"] = prediction_stats(logits, n)
        return out

    def _stop_requested(self) -> bool:
        return self._stop is not None and self._stop.signum is not None

    def read_steps(self) -> list[dict]:
        """The deferred steps not read yet, read and accounted now (``step.TrainStep.read_steps``)."""
        return self.step_fn.read_steps()

    # -- the loop -------------------------------------------------------------------------------------------------
    def fit(self, max_steps: int | None = None) -> dict:
        """Train to ``train.steps`` (or stop early at ``max_steps``, as an interruption would: last.pt is saved and
        the summary says so). SIGTERM/SIGINT stop after the current step the same way. Whatever stops training,
        DIR/summary.json is written (with ``aborted`` naming the error if one ended it)."""
        cfg = self.cfg
        self.outputs.open(cfg, self.resumed_from)
        if self.resumed_from is not None:
            self.outputs.log({"step": self.step, "event": "resume", "lr": self.schedule.current_lr(),
                              "skipped": self.guard.skipped})
        for ev in self.selfcheck_events:  # the start-up self-check's results, into metrics.jsonl
            self.outputs.log({**ev, "step": self.step})
        self.selfcheck_events = []
        if self.is_main:
            say_start(cfg, self.step, self.schedule, self.resumed_from is not None)
        self._stop = StopRequest()
        self._stop.install()
        try:  # the handlers stay until the end, so a signal during the final save/summary cannot tear anything
            self.outputs.start_progress(cfg.train.steps, self.step)
            self.clock.start()
            try:
                interrupted = self.run(max_steps)
                self.outputs.stop_progress()
                self.clock.stop()
                return self._finish(interrupted)
            except BaseException as e:
                self._abort(e)
                raise
        finally:
            self._stop.restore()

    def run(self, max_steps: int | None = None, on_step=None, on_read=None, on_phase=None,
            evaluate: bool = True) -> str | None:
        """Steps until ``train.steps`` (or ``max_steps``, or a stop request), with logging, evaluation and
        checkpoints at their intervals; ``on_step(out)`` after each step, ``on_read(outs)`` with the steps whose
        loss / grad norm were just read (each step on the synced path; on the deferred path those since the last
        read, at log, evaluation and checkpoint steps and at the end), ``on_phase`` as in ``train_step``;
        ``evaluate`` False: no evaluation (bench). Returns why it stopped early (or None)."""
        cfg = self.cfg
        step0, iv = self.step, Interval()
        while self.step < cfg.train.steps:
            will_log = (self.step + 1) % cfg.train.log_every == 0 or self.step + 1 == cfg.train.steps
            out = self.train_step(self.next_batch(), stats=will_log and cfg.train.train_monitor, on_phase=on_phase)
            if on_step is not None:
                on_step(out)
            will_eval = evaluate and self.val_split is not None and (self.step % cfg.train.eval_every == 0
                                                                     or self.step == cfg.train.steps)
            will_save = self.step % cfg.train.checkpoint_every == 0
            ending = (out["stop"] or self.step >= cfg.train.steps
                      or (max_steps is not None and self.step >= max_steps))
            if not out.get("deferred"):
                reads = [out]
            elif will_log or will_eval or will_save or ending or self.step_fn.replayed:
                reads = self.read_steps()
            else:
                reads = []
            for o in reads:
                iv.add(o)
                for ev in o["events"]:
                    self.outputs.log(ev)
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
            self.outputs.interrupted(self.step, self.cfg.train.steps, interrupted)
        summary = self.summarize(self.last_eval, interrupted=interrupted)
        self.outputs.close()
        return summary

    def _abort(self, error: BaseException) -> None:
        """Training stopped on ``error``: record it and write the summary (best effort: the error is what counts)."""
        self.outputs.stop_progress()
        self.clock.stop()
        record_abort(self, error)

    def _log_train(self, iv: Interval, out: dict, session_step0: int) -> None:
        rec = train_record(iv, out, self.step, self.clock.elapsed(), self.guard.skipped, self.schedule.scale)
        if "blank_fraction" in out and self.val_split is None:  # no validation: the training batch is watched
            for ev in self.monitor.check(self.step, out["blank_fraction"], out["distinct_phonemes"], "training-batch"):
                self.outputs.log(ev)
        self.outputs.log(rec)
        t0 = self.clock.t0 if self.clock.t0 is not None else iv.t0
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
            self.outputs.log(val_record(self.step, res, self.dataset.day_names))
            if ev is not None:
                self.outputs.log(ev)
            for e in self.monitor.check(self.step, res.blank_fraction, res.distinct_phonemes, "validation"):
                self.outputs.log(e)
        if per < self.best_per:  # the real PER of this evaluation, not a moving average
            self.best_per, self.best_step = per, self.step
            self.save("best.pt", val_per=per)
        self.outputs.say(f"step {self.step}: val PER {per:.4f} (best {self.best_per:.4f} @ {self.best_step})")
        if self.stopped_early == self.step:
            rec, text = self.early.stop_record(self.step)
            self.outputs.log(rec)
            self.outputs.say(text)
        if self.eval_hook is not None:
            self.eval_hook(self, res)

    def state_dict(self) -> dict:
        """Everything a resume needs (see fastdecoder.checkpoint). A collective under torchrun. Steps still
        waiting in ``pending`` are read and accounted first (their records go out with the next read in ``run``)."""
        if len(self.step_fn.pending):
            self.step_fn.replayed = self.step_fn.read_steps()
        return self.parts.state_dict(self.dist) | {
            "step": self.step, "config": self.cfg.to_dict(), "best_per": self.best_per, "best_step": self.best_step,
            "last_val_per": self.last_val_per, "train_seconds": self.clock.elapsed(),
            "reported_infeasible": sorted(self.reported_infeasible), "day_names": list(self.dataset.day_names)}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``: weights, optimizer, schedule, scaler, RNGs, sampler, monitors, counters."""
        self.parts.load_state_dict(state, self.dist)
        self.step = int(state["step"])
        self.best_per = float(state.get("best_per", math.inf))
        self.best_step = int(state.get("best_step", -1))
        self.last_val_per = state.get("last_val_per")
        self.clock.seconds = float(state.get("train_seconds", 0.0))
        self.reported_infeasible.update(state.get("reported_infeasible", []))
        self.resumed_from = self.step
        self._saved = {"last.pt": self.step}

    def save(self, name: str, **extra) -> None:
        """Write ``out_dir/name`` atomically (main rank). A collective under torchrun: every rank calls it."""
        state = self.state_dict()
        if self.out_dir is not None and self.is_main:
            save_checkpoint({**state, **extra}, self.out_dir / name)
        self._saved[name] = self.step

    # -- the summary ------------------------------------------------------------------------------------------------
    def summarize(self, last_eval: EvalResult | None, interrupted: str | None = None) -> dict:
        """Final evaluation (greedy and native beam search on the validation split) and DIR/summary.json
        (``outputs.final_summary``). An interrupted run skips the final evaluation (it should exit promptly) and
        reports its last one."""
        summary = final_summary(self, interrupted)
        self.outputs.write_summary(summary)
        return summary
