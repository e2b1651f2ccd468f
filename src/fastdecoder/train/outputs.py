"""What a run writes and shows: DIR/metrics.jsonl (its records), TensorBoard, the progress bar / log lines,
summary.json (finished, interrupted or aborted), plots.

Only the main rank writes. Every write that fails for a reason of the machine (disk full, read-only, a file where
the folder should be) becomes a UserError naming the file.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
import weakref
from pathlib import Path

from fastdecoder.config import save_config
from fastdecoder.errors import UserError, writing
from fastdecoder.train import distributed
from fastdecoder.train.stability import NonFiniteError

log = logging.getLogger("fastdecoder.train")
#: the lines that go to DIR/train.log only (what the progress bar shows in their place on the terminal)
_run_log = logging.getLogger("fastdecoder.runlog")
_run_log.propagate = False
_run_log.setLevel(logging.INFO)

#: the run folder's log file: every fastdecoder log line of the run, and the step lines the progress bar replaces
TRAIN_LOG = "train.log"


def default_run_dir(config_name: str, root: str | Path = "runs") -> Path:
    """``runs/<config name>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``, ... if taken): where ``train`` without ``--out``
    writes."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in config_name) or "run"
    base = Path(root) / f"{safe}-{stamp}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def clear_run(out: Path) -> None:
    """Delete an earlier run's files from ``out`` (checkpoints, metrics, summary, curves, predictions, saved
    rescoring weights, train.log, TensorBoard); anything else in the folder stays."""
    for f in (list(out.glob("*.pt")) + list(out.glob(".*.pt.*.tmp")) + list(out.glob("predictions_*.jsonl"))
              + list(out.glob("rescore_weights*.json"))
              + [out / "metrics.jsonl", out / "summary.json", out / "curves.png", out / TRAIN_LOG]):
        f.unlink(missing_ok=True)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)


def _remove_handler(handler: logging.Handler, level: int) -> None:
    for name in ("fastdecoder", "fastdecoder.runlog"):
        logging.getLogger(name).removeHandler(handler)
    logging.getLogger("fastdecoder").setLevel(level)
    handler.close()


def prepare_run_folder(out_dir: Path) -> None:
    """Create ``out_dir`` and check it is writable (UserError naming it otherwise)."""
    with writing(out_dir, "run folder"):
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test.tmp"
        probe.write_bytes(b"")
        probe.unlink()


class Interval:
    """Statistics of the steps since the last log line."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.steps = 0
        self.losses: list[float] = []
        self.gnorms: list[float] = []

    def add(self, out: dict) -> None:
        self.steps += 1
        if math.isfinite(out["loss"]):
            self.losses.append(out["loss"])
        if math.isfinite(out["grad_norm"]):
            self.gnorms.append(out["grad_norm"])

    def record(self, step: int, lr: float, elapsed: float) -> dict:
        """The metrics.jsonl record of this interval, ending at ``step`` (``elapsed``: training seconds so far)."""
        rate = self.steps / max(time.perf_counter() - self.t0, 1e-9)
        return {"step": step,
                "loss": (sum(self.losses) / len(self.losses)) if self.losses else None,
                "grad_norm": (sum(self.gnorms) / len(self.gnorms)) if self.gnorms else None,
                "grad_norm_max": max(self.gnorms) if self.gnorms else None,
                "lr": lr, "elapsed": round(elapsed, 3), "steps_per_second": round(rate, 3)}


class TrainClock:
    """A run's training time over its sessions: ``seconds`` of the sessions that ended (a resumed run's count from
    its checkpoint's), ``elapsed()`` with the running one."""

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds
        self.t0: float | None = None  # perf_counter at the running session's start

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        self.seconds, self.t0 = self.elapsed(), None

    def elapsed(self) -> float:
        """Training seconds over all sessions of the run, up to now."""
        return self.seconds if self.t0 is None else self.seconds + time.perf_counter() - self.t0


def train_record(iv: Interval, out: dict, step: int, elapsed: float, skipped: int, lr_scale: float) -> dict:
    """The metrics.jsonl record of the log step ``step`` (``out``: its result): the statistics of the interval
    ``iv`` ending there, the skipped updates so far, the LR scale where reductions lowered it, and with
    train.train_monitor the training batch's blank fraction and distinct phonemes."""
    rec = iv.record(step, out["lr"], elapsed) | {"skipped": skipped}
    if lr_scale != 1.0:
        rec["lr_scale"] = lr_scale
    if "blank_fraction" in out:
        rec["train_blank_fraction"] = out["blank_fraction"]
        rec["train_distinct_phonemes"] = out["distinct_phonemes"]
    return rec


def val_record(step: int, res, day_names) -> dict:
    """The metrics.jsonl record of the evaluation ``res`` at ``step``: PER, loss, output statistics, PER per day."""
    return {"step": step, "val_per": res.per, "val_loss": res.loss, "blank_fraction": res.blank_fraction,
            "distinct_phonemes": res.distinct_phonemes,
            "val_per_day": {day_names[d]: v["per"] for d, v in res.per_day.items()}}


def hms(seconds: float) -> str:
    """``M:SS`` or ``H:MM:SS`` ("?" for a non-finite duration)."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _fmt(v, f: str) -> str:
    return format(v, f) if v is not None else "nan"


class RunOutputs:
    """The run folder's metrics, TensorBoard, progress bar and summary; ``history`` keeps every record."""

    def __init__(self, out_dir: Path | None, is_main: bool, *, tensorboard: bool, plot: bool, progress: bool):
        self.out_dir = out_dir
        self.is_main = is_main
        self.tensorboard = tensorboard and is_main
        self.plot = plot
        # no bar where its \r frames would land in a file or pipe (the bar writes to stderr)
        self.progress = progress and is_main and _is_terminal(sys.stderr)
        self._log_handler: logging.Handler | None = None
        self._log_finalizer = None
        self.history: list[dict] = []
        self.bar = None
        self._tb = None
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                raise UserError("train.tensorboard is true but the tensorboard package is not installed "
                                "(pip install tensorboard), or set train.tensorboard: false") from None

    @property
    def writes(self) -> bool:
        return self.out_dir is not None and self.is_main

    def open_log(self, append: bool = False) -> None:
        """Start DIR/train.log: every ``fastdecoder`` log record from now on (``append``: after a resumed run's)."""
        if not self.writes or self._log_handler is not None:
            return
        path = self.out_dir / TRAIN_LOG
        with writing(path):
            handler = logging.FileHandler(path, mode="a" if append else "w", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler.setLevel(logging.INFO)
        for name in ("fastdecoder", "fastdecoder.runlog"):
            logging.getLogger(name).addHandler(handler)
        package = logging.getLogger("fastdecoder")
        level = package.level
        if package.getEffectiveLevel() > logging.INFO:  # the file gets INFO lines even where the console does not
            package.setLevel(logging.INFO)
        self._log_handler = handler
        self._log_finalizer = weakref.finalize(self, _remove_handler, handler, level)

    def close_log(self) -> None:
        if self._log_finalizer is not None:
            self._log_finalizer()
        self._log_handler = self._log_finalizer = None

    def open(self, cfg, resumed_from: int | None) -> None:
        """config.yaml; on resume drop the metrics records after the checkpoint; TensorBoard writer."""
        from fastdecoder.checkpoint import remove_stale_temp_files

        if not self.writes:
            return
        prepare_run_folder(self.out_dir)
        remove_stale_temp_files(self.out_dir)
        with writing(self.out_dir / "config.yaml"):
            save_config(cfg, self.out_dir / "config.yaml")
        if resumed_from is not None:
            self._truncate_metrics(resumed_from)
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=resumed_from)

    def _truncate_metrics(self, step: int) -> None:
        """Records from after the checkpoint (a crash between checkpoints) are redone by this run: drop them."""
        metrics = self.out_dir / "metrics.jsonl"
        keep = []
        if metrics.is_file():
            for line in metrics.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by the crash
                if isinstance(rec, dict) and int(rec.get("step", 0)) <= step:
                    keep.append(line)
        tmp = metrics.with_name(".metrics.jsonl.tmp")
        with writing(metrics):
            tmp.write_text("".join(k + "\n" for k in keep))
            os.replace(tmp, metrics)

    def log(self, rec: dict) -> None:
        """One record: history, DIR/metrics.jsonl, TensorBoard scalars."""
        if not self.is_main:
            return
        self.history.append(rec)
        if self.out_dir is not None:
            path = self.out_dir / "metrics.jsonl"
            with writing(path), open(path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            kind = "event" if "event" in rec else ("val" if "val_per" in rec else "train")
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}" if kind != "event" else f"event/{rec['event']}/{k}", v,
                                        rec["step"])

    # -- progress ------------------------------------------------------------------------------------------------
    def start_progress(self, total: int, initial: int) -> None:
        if self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def stop_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def say(self, msg: str) -> None:
        """A message above the bar (or a log line)."""
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(msg)
            _run_log.info(msg)
        else:
            log.info(msg)

    def show_train(self, rec: dict, skipped: int, *, steps: int, overall_rate: float) -> None:
        """The progress bar's postfix, or without a bar a log line with the ETA."""
        if not self.is_main:
            return
        if self.bar is not None:
            post = {"loss": _fmt(rec["loss"], ".3f"), "lr": f"{rec['lr']:.2e}", "gnorm": _fmt(rec["grad_norm"], ".2f")}
            if skipped:
                post["skipped"] = skipped
            self.bar.set_postfix(post, refresh=False)
        eta = (steps - rec["step"]) / max(overall_rate, 1e-9)
        (_run_log if self.bar is not None else log).info("step %d/%d  loss %s  lr %.3g  grad norm %s (max %s)  %.2f steps/s  ETA %s%s", rec["step"], steps,
                 _fmt(rec["loss"], ".4f"), rec["lr"], _fmt(rec["grad_norm"], ".3f"), _fmt(rec["grad_norm_max"], ".3f"),
                 rec["steps_per_second"], hms(eta), f"  skipped {skipped}" if skipped else "")

    # -- the end ------------------------------------------------------------------------------------------------
    def interrupted(self, step: int, steps: int, reason: str) -> None:
        """Training stopped early at ``step`` of ``steps`` (``reason``): the record, and where last.pt is and how
        to continue."""
        self.log({"step": step, "event": "interrupted", "reason": reason})
        where = f"saved {self.out_dir / 'last.pt'}" if self.out_dir is not None else "no out_dir: nothing saved"
        self.say(f"stopped at step {step} of {steps} ({reason}); {where}; "
                 "continue with: fastdecoder train --out DIR --resume")

    def write_summary(self, summary: dict) -> None:
        """DIR/summary.json, atomically."""
        if not self.writes:
            return
        path = self.out_dir / "summary.json"
        with writing(path):
            self.out_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.out_dir / ".summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
            os.replace(tmp, path)

    def close(self) -> None:
        """Close TensorBoard, draw DIR/curves.png (if train.plot and matplotlib) and close DIR/train.log."""
        self.stop_progress()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self.writes and self.plot:
            from fastdecoder.train.plot import PlotUnavailable, plot_run

            try:
                path = plot_run(self.out_dir)
                log.info("wrote %s", path)
            except PlotUnavailable:
                log.info("matplotlib is not installed: no curves.png (pip install 'fastdecoder[plot]')")
            except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
                log.warning("could not plot the curves: %s", e)
        self.close_log()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def final_eval_fields(res, best_per: float, best_step: int, step: int, beam_width: int) -> dict:
    """The summary's fields of a run's final validation ``res`` (an evaluation result at ``step``), with the best
    PER and its step over the run's evaluations and this one."""
    out = dict(val_per=res.per, val_loss=res.loss, val_blank_fraction=res.blank_fraction,
               val_distinct_phonemes=res.distinct_phonemes, val_trials=res.n_trials,
               best_val_per=min(best_per, res.per), best_step=best_step if best_per <= res.per else step)
    if beam_width > 0:
        out.update(val_per_beam=res.per_beam, beam_width=beam_width)
    return out


def base_summary(tr) -> dict:
    """The summary fields every run has, from a Trainer ``tr`` (the final evaluation's come on top)."""
    cfg = tr.cfg
    return {"name": cfg.name, "steps": tr.step, "train_seconds": round(tr.train_seconds, 3),
            "batches_per_second": (round(tr.step / tr.train_seconds, 3) if tr.train_seconds else None),
            "device": str(tr.device), "world_size": tr.dist.world_size, "n_features": cfg.model.n_features,
            "n_days": cfg.model.n_days, "parameters": sum(p.numel() for p in tr.model.parameters()),
            "skipped_updates": tr.guard.skipped, "high_grad_norm_steps": tr.guard.high_grad_norm_steps,
            "lr_reductions": tr.schedule.adaptive_reductions,
            "plateau_reductions": tr.schedule.plateau_reductions, "final_lr": tr.schedule.current_lr(),
            "infeasible_trials": tr.infeasible_trials, "monitor_warnings": tr.monitor.warnings,
            **({"overflow_skips": tr.guard.overflow_skips} if tr.scaler is not None else {}),
            **({"resumed_from": tr.resumed_from} if tr.resumed_from is not None else {}),
            **({"early_stopped_at": tr.stopped_early} if tr.stopped_early is not None else {}),
            **({"init_from": tr.init_report.as_dict()} if tr.init_report is not None else {}),
            **({"frozen": tr.frozen} if tr.frozen else {})}


def final_summary(tr, interrupted: str | None = None) -> dict:
    """The summary of a Trainer ``tr`` whose training ended: ``base_summary``, under torchrun every rank's weight
    digest, and the final evaluation (greedy and native beam search on the validation split). An interrupted run
    (``interrupted``: why) skips the final evaluation (it should exit promptly) and reports its last one."""
    summary = base_summary(tr)
    if tr.dist.enabled:
        summary.update(distributed.rank_digests(tr.model, tr.dist))
    if interrupted is not None:
        summary["interrupted"] = interrupted
        if tr.val_split is not None:
            summary.update(val_per=tr.last_val_per, best_val_per=(tr.best_per if tr.best_step >= 0 else None),
                           best_step=tr.best_step)
    elif tr.val_split is not None and tr.is_main:
        bw = tr.cfg.train.beam_width
        res = tr.evaluate(decoder="beam" if bw > 0 else "greedy", beam_width=bw)
        summary.update(final_eval_fields(res, tr.best_per, tr.best_step, tr.step, bw))
    return summary


def record_abort(tr, error: BaseException) -> None:
    """Training of the Trainer ``tr`` stopped on ``error``: the ``aborted`` record and DIR/summary.json with the
    reason, then the outputs closed (best effort: the error is what counts)."""
    reason = str(error) if isinstance(error, (NonFiniteError, UserError)) else f"{type(error).__name__}: {error}"
    try:
        tr.outputs.log({"step": tr.step, "event": "aborted", "reason": reason})
        tr.outputs.write_summary(base_summary(tr) | {"aborted": reason})
        tr.outputs.close()
    except Exception as e:  # noqa: BLE001 - e.g. the disk that is full
        log.warning("could not write the summary of the aborted run: %s", e)


def say_start(cfg, step: int, schedule, resumed: bool) -> None:
    """Log lines at the start of training: the LR schedule (and a warning where it looks wrong), and on resume where
    it continues."""
    from fastdecoder.train.optim import describe_schedule, lr_multiplier

    text, warn = describe_schedule(cfg.optim, cfg.train.steps)
    log.info("%s", text)
    if warn:
        log.warning("%s", warn)
    if resumed:
        log.info("resuming at step %d of %d (LR %.3g, reductions so far x%.3g)", step, cfg.train.steps,
                 schedule.peak_lr * lr_multiplier(step, cfg.optim), schedule.scale)
        if step >= cfg.train.steps:
            log.warning("the checkpoint is already at step %d >= train.steps (%d): nothing to train; raise it "
                        "with --set train.steps=N to continue", step, cfg.train.steps)
