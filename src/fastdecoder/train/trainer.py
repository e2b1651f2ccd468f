"""The training loop: batches -> augmentation -> model -> CTC loss -> guarded, clipped update; eval on the real
validation PER; checkpoints that resume exactly.

One Trainer serves both presets; everything preset-specific comes from the Config. Per step: the LR from the
schedule (with its plateau/adaptive reductions), augmentation, forward, CTC loss, backward, the pre-clip grad norm;
a non-finite loss or gradient skips the update (stability.py), otherwise the gradient is clipped and applied. Every
``log_every`` steps a record goes to DIR/metrics.jsonl (and the progress bar / log line), every ``eval_every`` the
validation PER (best.pt on the real PER), every ``checkpoint_every`` DIR/last.pt. SIGTERM/SIGINT finish the step,
save last.pt and return normally; ``Trainer(cfg, DIR, resume=True)`` continues from it exactly.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fastdecoder.config import Config, config_diff, save_config
from fastdecoder.data.dataset import training_splits
from fastdecoder.data.resident import ResidentSplit
from fastdecoder.losses import ctc_loss, infeasible_targets, output_lengths
from fastdecoder.model import GRUDecoder
from fastdecoder.plain import to_plain
from fastdecoder.train import distributed
from fastdecoder.train.checkpoint import (check_resumable, load_checkpoint, remove_stale_temp_files,
                                          save_checkpoint)
from fastdecoder.train.evaluate import EvalResult, evaluate
from fastdecoder.train.monitors import CollapseMonitor, prediction_stats
from fastdecoder.train.optim import LRSchedule, build_optimizer, describe_schedule, lr_multiplier
from fastdecoder.train.stability import InstabilityGuard, NonFiniteError

log = logging.getLogger("fastdecoder.train")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {name!r} but CUDA is not available on this machine")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_dataset(cfg: Config, out_dir: Path | None):
    """Load ``cfg.data.path``, or write the configured synthetic set (through the real file formats) and load it.

    Returns (dataset, path it was loaded from).
    """
    from fastdecoder.data import SynthSpec, load_dataset, write_synthetic

    if cfg.data.path:
        return load_dataset(cfg.data.path, cfg.data.format), Path(cfg.data.path)
    if cfg.data.synthetic is None:
        raise ValueError("no data: pass --data PATH (a b2t24 pickle or a b2t25 folder) or set data.synthetic")
    spec_raw = dict(cfg.data.synthetic)
    fmt = spec_raw.pop("format", "b2t25")
    known = set(SynthSpec.__dataclass_fields__)
    for k in spec_raw:
        if k not in known:
            raise ValueError(f"unknown key 'data.synthetic.{k}' (known: format, {', '.join(sorted(known))})")
    spec = SynthSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec_raw.items()})
    root = (out_dir if out_dir is not None else Path("runs/synthetic")) / "data"
    path = root / ("synthetic_b2t24.pkl" if fmt == "b2t24" else "synthetic_b2t25")
    # the spec it was written from sits beside it: a changed data.synthetic regenerates the set instead of
    # silently training on the old one
    stamp = root / (path.name + ".spec.json")
    want = json.dumps({"format": fmt, **dataclasses.asdict(spec)}, sort_keys=True, default=list)
    if path.exists() and (not stamp.is_file() or stamp.read_text() != want):
        log.info("data.synthetic changed since %s was written: regenerating it", path)
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if not path.exists():
        write_synthetic(path, fmt, spec)
        stamp.write_text(want)
    return load_dataset(path, fmt), path


class ResumeError(ValueError):
    """``--resume`` cannot continue this run (config mismatch, checkpoint not resumable); says why."""


#: keys that may differ between a checkpoint's config and the config a run is resumed with: the step budget, and
#: what only changes logging/reporting (never the weights).
RESUME_MAY_DIFFER = ("name", "train.steps", "train.log_every", "train.plot", "train.tensorboard", "train.threads",
                     "train.beam_width", "train.train_monitor")


class _StopRequest:
    """SIGTERM / SIGINT: note it; the loop finishes the step, saves last.pt, writes the summary and returns.

    A second signal of the same kind acts as it did before (SIGINT: KeyboardInterrupt; SIGTERM: termination).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in self.SIGNALS:
            self._old[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        old = self._old.get(signum)
        signal.signal(signum, old if old is not None else signal.SIG_DFL)
        try:
            os.write(2, f"\n{signal.Signals(signum).name} received: finishing this step, then saving last.pt "
                        f"(send it again to stop at once)\n".encode())
        except OSError:
            pass

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old = {}

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None


class _Interval:
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


class Trainer:
    """Train a GRUDecoder as ``cfg`` says. ``out_dir`` receives config.yaml, checkpoints, metrics and summary.

    ``resume``: True continues the run in ``out_dir`` from ``out_dir/last.pt`` (or pass the loaded checkpoint
    dict); its config must equal ``cfg`` except the keys in RESUME_MAY_DIFFER. Under torchrun the Trainer joins
    the process group and trains with DistributedDataParallel (see fastdecoder.train.distributed).
    """

    def __init__(self, cfg: Config, out_dir: str | Path | None = None, *, progress: bool = True,
                 resume: bool | dict = False):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.dist, self.device = distributed.setup(cfg.train.device)
        self.is_main = self.dist.is_main
        self.progress = progress and self.is_main
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            if self.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.train.deterministic
            torch.backends.cudnn.deterministic = cfg.train.deterministic
        if cfg.train.tensorboard and self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                raise ValueError("train.tensorboard is true but the tensorboard package is not installed "
                                 "(pip install tensorboard), or set train.tensorboard: false") from None
        seed_everything(cfg.train.seed)

        # the main rank writes the synthetic data (if any) first; the others then read it
        if self.is_main:
            self.dataset, data_path = prepare_dataset(cfg, self.out_dir)
        distributed.barrier(self.dist)
        if not self.is_main:
            self.dataset, data_path = prepare_dataset(cfg, self.out_dir)
        cfg = replace(cfg, data=replace(cfg.data, path=str(data_path), format=self.dataset.format))
        cfg = replace(cfg, model=replace(cfg.model, n_features=self.dataset.n_features, n_days=self.dataset.n_days))
        state = None
        if resume:
            if isinstance(resume, dict):
                state, where = resume, (self.out_dir / "last.pt" if self.out_dir is not None else "checkpoint")
            else:
                if self.out_dir is None:
                    raise ResumeError("resume needs the run folder (out_dir) holding last.pt")
                where = self.out_dir / "last.pt"
                state = load_checkpoint(where)
            check_resumable(state, where)
            self._check_resume_config(cfg, state["config"], where)
        self.cfg = cfg
        self.train_split, self.val_split = training_splits(self.dataset, cfg.data.val_split, cfg.model.n_classes)
        self.reported_infeasible: set[str] = set()
        self.infeasible_trials = 0
        self._check_trial_lengths()

        on_cuda = self.device.type == "cuda"
        # The fast path and the reference path share everything but the op implementations and the batching.
        self.fast = on_cuda if cfg.train.fast is None else cfg.train.fast
        self.ops_backend = cfg.augment.backend if self.fast else "reference"
        self.model = GRUDecoder(cfg.model, smoothing_backend=self.ops_backend,
                                rnn_backend="auto" if self.fast else "reference",
                                output_lengths=cfg.ctc.output_lengths).to(self.device)
        self.optimizer = build_optimizer(self.model, replace(cfg.optim, fused=cfg.optim.fused and self.fast),
                                         self.device)
        self.schedule = LRSchedule(self.optimizer, cfg.optim)
        self.guard = InstabilityGuard(cfg.stability, self.schedule)
        self.monitor = CollapseMonitor(cfg.stability)
        self.amp_dtype = ({"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp) if on_cuda else None)
        # bf16 augmentation output where the next op is the day layer's bf16 matmul (the same rounding autocast does)
        self.augment_dtype = (torch.bfloat16 if self.amp_dtype == torch.bfloat16 and cfg.model.smoothing != "model"
                              else None)
        self.scaler = torch.amp.GradScaler("cuda") if (on_cuda and cfg.train.amp == "fp16") else None
        # per-rank streams: rank 0 uses the seed itself (a single process is unchanged by all this)
        self.rank_seed = cfg.train.seed + 10007 * self.dist.rank
        if self.dist.rank > 0:
            torch.manual_seed(self.rank_seed)  # dropout
        self.ddp = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if on_cuda else None)
        fwd = self.ddp if self.ddp is not None else self.model
        self.forward = torch.compile(fwd) if cfg.train.compile and on_cuda and self.fast else fwd
        self.smooth_input = (cfg.model.smoothing == "input")
        from fastdecoder.ops import gaussian_taps

        self.input_taps = gaussian_taps(cfg.model.smooth_taps).to(self.device) if self.smooth_input else None
        self.sampler = self._make_sampler()
        self.resident = self._make_resident() if self.fast else None
        self.rng = np.random.default_rng(self.rank_seed + 1)  # random cut
        self.mask_gen = torch.Generator().manual_seed(self.rank_seed + 2)  # time/channel masks
        self.step = 0
        self.best_per = math.inf
        self.best_step = -1
        self.last_val_per: float | None = None
        self.last_eval: EvalResult | None = None
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self.resumed_from: int | None = None
        self._saved: dict[str, int] = {}
        self._session: tuple[float, float] | None = None  # (perf_counter at fit start, train_seconds before)
        self._stop: _StopRequest | None = None
        self._tb = None
        if state is not None:
            self.load_state_dict(state)
        from fastdecoder.train.selfcheck import check_fast_path  # each fast op vs its reference; falls back on a fail

        self.selfcheck_events = check_fast_path(self)

    # -- data -------------------------------------------------------------------------------------------------
    def _make_sampler(self):
        from fastdecoder.data.batching import make_sampler

        c = self.cfg
        return make_sampler(c.data.batching, self.train_split, c.train.batch_size, c.data.days_per_batch,
                            seed=self.rank_seed)

    def _make_resident(self) -> ResidentSplit:
        """The training split packed on the device (batches built there); pinned host memory if it would take more
        than 40 % of the free GPU memory."""
        if self.device.type == "cuda":
            need = sum(f.nbytes for f in self.train_split.features)
            free, _ = torch.cuda.mem_get_info(self.device)
            if need > 0.4 * free:
                log.info("training split (%.1f GB) kept in pinned host memory", need / 1e9)
                return ResidentSplit(self.train_split, "cpu", pin=True)
        return ResidentSplit(self.train_split, self.device)

    def next_batch(self):
        """The next training batch on the device: gathered from the resident split (fast path) or padded on the host
        and copied (reference path); both give the same tensors."""
        from fastdecoder.data import collate

        idx = next(self.sampler)
        if self.resident is not None:
            return self.resident.batch(idx, device=self.device)
        return collate(self.train_split, idx).to(self.device, non_blocking=True)

    def _check_trial_lengths(self) -> None:
        """Warn about trials shorter than one patch and (naming them) targets longer than their output frames."""
        c = self.cfg
        K = c.model.patch_size
        short = [tid for f, tid in zip(self.train_split.features, self.train_split.trial_ids) if len(f) < K]
        if short and self.is_main:
            log.warning("%d training trials are shorter than one patch (%d bins), e.g. %s", len(short), K,
                        ", ".join(short[:3]))
        for name, split in (("training", self.train_split), ("validation", self.val_split)):
            if split is None or split.targets is None:
                continue
            frames = output_lengths(torch.from_numpy(split.lengths), K, c.model.patch_stride,
                                    c.ctc.output_lengths).numpy()
            bad = []
            for i, t in enumerate(split.targets):
                need = len(t) + (int(np.count_nonzero(t[1:] == t[:-1])) if len(t) > 1 else 0)
                if need > frames[i]:
                    bad.append((split.trial_ids[i], len(t), int(frames[i])))
            if not bad:
                continue
            if name == "training":
                self.infeasible_trials = len(bad)
                self.reported_infeasible.update(b[0] for b in bad)
            if self.is_main:
                consequence = ("their CTC loss is zeroed (ctc.zero_infinity)" if c.ctc.zero_infinity else
                               "their CTC loss is infinite and every batch holding one is skipped")
                log.warning("%d %s trials have targets longer than their output frames (CTC cannot align them; %s): "
                            "%s%s", len(bad), name, consequence,
                            ", ".join(f"{tid} ({n} phonemes, {f} frames)" for tid, n, f in bad[:10]),
                            " ..." if len(bad) > 10 else "")

    def eval_transform(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """Eval-time data transform: b2t25 smooths the input (no noise); b2t24 smooths inside the model."""
        return self.model.input_transform(x, lens)

    def train_transform(self, x: torch.Tensor, lens: torch.Tensor):
        """Training augmentation: random cut, then one fused pass of noise, offset, (input) smoothing and masks."""
        from fastdecoder.ops import augment, sample_masks

        a = self.cfg.augment
        if a.random_cut > 0:
            cut = int(self.rng.integers(0, a.random_cut))
            if cut:
                x = x[:, cut:]
                lens = (lens - cut).clamp(min=1)
        B, T, C = x.shape
        tm = fm = None
        if (a.time_mask_count and a.time_mask_prob) or (a.freq_mask_count and a.freq_mask_prob):
            tm, fm = sample_masks(B, T, C, lengths=lens, time_prob=a.time_mask_prob, time_max_width=a.time_mask_width,
                                  time_max_count=a.time_mask_count, freq_prob=a.freq_mask_prob,
                                  freq_max_width=a.freq_mask_width, freq_max_count=a.freq_mask_count,
                                  generator=self.mask_gen, device=x.device)
        seed = (self.rank_seed * 1_000_003 + self.step) % (2**31 - 1)
        span = self.model.padding_lengths(lens)  # None (as shipped): noise and smoothing over the padded batch
        x = augment(x, span, white_noise_std=a.white_noise_std, constant_offset_std=a.constant_offset_std,
                    smooth_taps=self.input_taps, time_masks=tm, freq_masks=fm, seed=seed, noise=a.noise,
                    out_dtype=self.augment_dtype, backend=self.ops_backend)
        return x, lens

    # -- one step -----------------------------------------------------------------------------------------------
    def train_step(self, batch, *, stats: bool = False) -> dict:
        """One update (or a skipped one). Returns floats: loss, grad_norm (pre-clip), lr; skipped, stop, events,
        and with ``stats`` the training batch's blank fraction and distinct phonemes.

        Host syncs: one per step (the loss / grad-norm / stop flags, reduced over ranks) plus the infeasible-target
        check; on a GPU that is a few microseconds of idle per step, the price of never applying a NaN update.
        """
        cfg = self.cfg
        (self.ddp if self.ddp is not None else self.model).train()
        step_no = self.step + 1
        lr = self.schedule.apply(self.step)
        x, lens = self.train_transform(batch.x, batch.x_lens)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.forward(x, batch.day, lens)
        n = output_lengths(lens, cfg.model.patch_size, cfg.model.patch_stride, cfg.ctc.output_lengths,
                           logits.shape[1])
        bad = infeasible_targets(n, batch.y, batch.y_lens)
        infeasible = bool(bad.any())
        if infeasible:
            self._report_infeasible(batch, bad, n)
        loss = ctc_loss(logits, n, batch.y, batch.y_lens, reduction=cfg.ctc.reduction,
                        zero_infinity=cfg.ctc.zero_infinity)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
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
        out = {"loss": loss_f, "grad_norm": gn, "lr": lr, "skipped": skipped, "stop": bool(stop), "events": events}
        if stats:
            out["blank_fraction"], out["distinct_phonemes"] = prediction_stats(logits, n)
        return out

    def _report_infeasible(self, batch, bad, n) -> None:
        for b in torch.nonzero(bad).flatten().tolist():
            tid = self.train_split.trial_ids[int(batch.index[b])]
            if tid not in self.reported_infeasible:
                self.reported_infeasible.add(tid)
                log.warning("trial %s: target of %d phonemes cannot fit its %d output frames (CTC loss %s)", tid,
                            int(batch.y_lens[b]), int(n[b]),
                            "zeroed by zero_infinity" if self.cfg.ctc.zero_infinity else "infinite")

    # -- evaluation and checkpoints --------------------------------------------------------------------------------
    def evaluate(self, split=None, *, keep_log_probs=False, max_trials=None) -> EvalResult:
        split = split if split is not None else self.val_split
        return evaluate(self.model, split, transform=self.eval_transform, device=self.device,
                        batch_size=self.cfg.train.eval_batch_size, ctc_cfg=self.cfg.ctc,
                        patch_size=self.cfg.model.patch_size, patch_stride=self.cfg.model.patch_stride,
                        max_trials=max_trials, keep_log_probs=keep_log_probs, amp_dtype=self.amp_dtype)

    def _rng_state(self) -> dict:
        d = {"torch": torch.get_rng_state(), "numpy_cut": to_plain(self.rng.bit_generator.state),
             "mask_gen": self.mask_gen.get_state(), "python": to_plain(random.getstate()),
             "numpy_global": to_plain(np.random.get_state())}
        if self.device.type == "cuda":
            d["cuda"] = torch.cuda.get_rng_state(self.device)
        return d

    def _set_rng_state(self, d: dict) -> None:
        torch.set_rng_state(d["torch"])
        if "cuda" in d and self.device.type == "cuda":
            torch.cuda.set_rng_state(d["cuda"], self.device)
        self.rng.bit_generator.state = d["numpy_cut"]
        self.mask_gen.set_state(d["mask_gen"])
        p = d["python"]
        random.setstate((p[0], tuple(p[1]), p[2]))
        g = d["numpy_global"]
        np.random.set_state((g[0], np.asarray(g[1], dtype=np.uint32), g[2], g[3], g[4]))

    def state_dict(self) -> dict:
        """Everything a resume needs (see fastdecoder.train.checkpoint). A collective under torchrun."""
        mine = {"rank": self.dist.rank, "sampler": self.sampler.state_dict(), "rng": self._rng_state()}
        ranks = distributed.gather_objects(mine, self.dist)
        d = {"model": self.model.state_dict(), "step": self.step, "config": self.cfg.to_dict(),
             "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
             "scaler": self.scaler.state_dict() if self.scaler is not None else None,
             "sampler": ranks[0]["sampler"], "rng": ranks[0]["rng"], "world_size": self.dist.world_size,
             "stability": self.guard.state_dict(), "monitor": self.monitor.state_dict(),
             "best_per": self.best_per, "best_step": self.best_step, "last_val_per": self.last_val_per,
             "train_seconds": self._elapsed(), "reported_infeasible": sorted(self.reported_infeasible)}
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
            self._set_rng_state(mine["rng"])
        self.guard.load_state_dict(state["stability"])
        self.monitor.load_state_dict(state["monitor"])
        self.step = int(state["step"])
        self.best_per = float(state.get("best_per", math.inf))
        self.best_step = int(state.get("best_step", -1))
        self.last_val_per = state.get("last_val_per")
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.reported_infeasible.update(state.get("reported_infeasible", []))
        self.resumed_from = self.step
        self._saved = {"last.pt": self.step}

    def _check_resume_config(self, cfg: Config, saved: dict, where) -> None:
        want = cfg.to_dict()
        saved = {k: (dict(v) if isinstance(v, dict) else v) for k, v in saved.items()}
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

    # -- logging ----------------------------------------------------------------------------------------------------
    def _log_metrics(self, rec: dict) -> None:
        if not self.is_main:
            return
        self.history.append(rec)
        if self.out_dir is not None:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            kind = "event" if "event" in rec else ("val" if "val_per" in rec else "train")
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}" if kind != "event" else f"event/{rec['event']}/{k}", v,
                                        rec["step"])

    def _open_outputs(self) -> None:
        if self.out_dir is None or not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.out_dir)
        save_config(self.cfg, self.out_dir / "config.yaml")
        metrics = self.out_dir / "metrics.jsonl"
        if self.resumed_from is not None:
            # records from after the checkpoint (a crash between checkpoints) are redone by this run: drop them
            keep = []
            if metrics.is_file():
                for line in metrics.read_text().splitlines():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line torn by the crash
                    if isinstance(rec, dict) and int(rec.get("step", 0)) <= self.resumed_from:
                        keep.append(line)
            tmp = metrics.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(k + "\n" for k in keep))
            os.replace(tmp, metrics)
            self._log_metrics({"step": self.step, "event": "resume", "lr": self.schedule.current_lr(),
                               "skipped": self.guard.skipped})
        if self.cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=self.resumed_from)

    def _close_outputs(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self.out_dir is not None and self.is_main and self.cfg.train.plot:
            from fastdecoder.train.plot import PlotUnavailable, plot_run

            try:
                path = plot_run(self.out_dir)
                log.info("wrote %s", path)
            except PlotUnavailable:
                log.info("matplotlib is not installed: no curves.png (pip install 'fastdecoder[plot]')")
            except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
                log.warning("could not plot the curves: %s", e)

    def _say(self, bar, msg: str) -> None:
        if not self.is_main:
            return
        if bar is not None:
            bar.write(msg)
        else:
            log.info(msg)

    def _log_train(self, iv: _Interval, out: dict, bar, session_step0: int) -> None:
        now = time.perf_counter()
        session_t0 = self._session[0]
        rate = iv.steps / max(now - iv.t0, 1e-9)
        rec = {"step": self.step,
               "loss": (sum(iv.losses) / len(iv.losses)) if iv.losses else None,
               "grad_norm": (sum(iv.gnorms) / len(iv.gnorms)) if iv.gnorms else None,
               "grad_norm_max": max(iv.gnorms) if iv.gnorms else None,
               "lr": out["lr"], "elapsed": round(self._elapsed(), 3),
               "steps_per_second": round(rate, 3), "skipped": self.guard.skipped}
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
        if not self.is_main:
            return
        fmt = (lambda v, f: format(v, f) if v is not None else "nan")
        if bar is not None:
            post = {"loss": fmt(rec["loss"], ".3f"), "lr": f"{rec['lr']:.2e}", "gnorm": fmt(rec["grad_norm"], ".2f")}
            if self.guard.skipped:
                post["skipped"] = self.guard.skipped
            bar.set_postfix(post, refresh=False)
        else:
            overall = (self.step - session_step0) / max(now - session_t0, 1e-9)
            eta = (self.cfg.train.steps - self.step) / max(overall, 1e-9)
            log.info("step %d/%d  loss %s  lr %.3g  grad norm %s (max %s)  %.2f steps/s  ETA %s%s", self.step,
                     self.cfg.train.steps, fmt(rec["loss"], ".4f"), rec["lr"], fmt(rec["grad_norm"], ".3f"),
                     fmt(rec["grad_norm_max"], ".3f"), rate, _hms(eta),
                     f"  skipped {self.guard.skipped}" if self.guard.skipped else "")

    def _eval_and_track(self, bar) -> None:
        res, per = None, float("nan")
        if self.is_main:
            res = self.evaluate(max_trials=self.cfg.data.max_val_trials)
            per = res.per
        per = distributed.broadcast_float(per, self.dist, self.device)
        self.last_val_per = per
        ev = self.schedule.on_eval(self.step, per)
        if self.is_main:
            self.last_eval = res
            self._log_metrics({"step": self.step, "val_per": res.per, "val_loss": res.loss,
                               "blank_fraction": res.blank_fraction, "distinct_phonemes": res.distinct_phonemes})
            if ev is not None:
                self._log_metrics(ev)
            for e in self.monitor.check(self.step, res.blank_fraction, res.distinct_phonemes, "validation"):
                self._log_metrics(e)
        if per < self.best_per:  # the real PER of this evaluation, not a moving average
            self.best_per, self.best_step = per, self.step
            self.save("best.pt", val_per=per)
        self._say(bar, f"step {self.step}: val PER {per:.4f} (best {self.best_per:.4f} @ {self.best_step})")

    # -- the loop -------------------------------------------------------------------------------------------------
    def fit(self, max_steps: int | None = None) -> dict:
        """Train to ``train.steps`` (or stop early at ``max_steps``, as an interruption would: last.pt is saved and
        the summary says so). SIGTERM/SIGINT stop after the current step the same way."""
        cfg = self.cfg
        self._open_outputs()
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
        self._stop = _StopRequest()
        self._stop.install()
        try:  # the handlers stay until the end, so a signal during the final save/summary cannot tear anything
            return self._fit_loop(max_steps)
        finally:
            self._stop.restore()

    def _fit_loop(self, max_steps: int | None) -> dict:
        cfg = self.cfg
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.train.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        self._session = (time.perf_counter(), self.train_seconds)
        step0 = self.step
        interrupted = None
        iv = _Interval()
        log_every = cfg.train.log_every
        try:
            while self.step < cfg.train.steps:
                batch = self.next_batch()
                will_log = (self.step + 1) % log_every == 0 or self.step + 1 == cfg.train.steps
                out = self.train_step(batch, stats=will_log and cfg.train.train_monitor)
                self.step += 1
                iv.add(out)
                for ev in out["events"]:
                    self._log_metrics(ev)
                if will_log:
                    self._log_train(iv, out, bar, step0)
                    iv = _Interval()
                if self.val_split is not None and (self.step % cfg.train.eval_every == 0
                                                   or self.step == cfg.train.steps):
                    self._eval_and_track(bar)
                if self.step % cfg.train.checkpoint_every == 0:
                    self.save("last.pt")
                if bar is not None:
                    bar.update(1)
                if self.step >= cfg.train.steps:
                    break  # finished: a signal that came with the last step changes nothing
                if out["stop"]:
                    interrupted = self._stop.name or "a signal received by another rank"
                    break
                if max_steps is not None and self.step >= max_steps:
                    interrupted = "max_steps"
                    break
        except NonFiniteError as e:
            self.train_seconds, self._session = self._elapsed(), None
            if bar is not None:
                bar.close()
                bar = None
            self._log_metrics({"step": self.step, "event": "aborted", "reason": str(e)})
            self._write_summary(self._base_summary() | {"aborted": str(e)})
            self._close_outputs()
            raise
        finally:
            if bar is not None:
                bar.close()
        self.train_seconds, self._session = self._elapsed(), None
        if self._saved.get("last.pt") != self.step:
            self.save("last.pt")
        if interrupted is not None:
            self._log_metrics({"step": self.step, "event": "interrupted", "reason": interrupted})
            where = f"saved {self.out_dir / 'last.pt'}" if self.out_dir is not None else "no out_dir: nothing saved"
            self._say(None, f"stopped at step {self.step} of {cfg.train.steps} ({interrupted}); {where}; "
                            "continue with: fastdecoder train --out DIR --resume")
        summary = self.summarize(self.last_eval, interrupted=interrupted)
        self._close_outputs()
        return summary

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
                **({"resumed_from": self.resumed_from} if self.resumed_from is not None else {})}

    def _write_summary(self, summary: dict) -> None:
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.out_dir / ".summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
            os.replace(tmp, self.out_dir / "summary.json")

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
            res = self.evaluate(keep_log_probs=cfg.train.beam_width > 0)
            summary.update(val_per=res.per, val_loss=res.loss, val_blank_fraction=res.blank_fraction,
                           val_distinct_phonemes=res.distinct_phonemes, val_trials=res.n_trials,
                           best_val_per=min(self.best_per, res.per),
                           best_step=self.best_step if self.best_per <= res.per else self.step)
            if cfg.train.beam_width > 0:
                summary["val_per_beam"], summary["beam_width"] = beam_per(res, self.val_split, cfg.train.beam_width)
        self._write_summary(summary)
        return summary


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def beam_per(res: EvalResult, split, beam_width: int) -> tuple[float, int]:
    """PER of the native CTC prefix beam search over the log-probs kept in ``res``."""
    from fastdecoder.decode import beam_search, error_rate

    if not res.log_probs:
        return float("nan"), beam_width
    T = max(lp.shape[0] for lp in res.log_probs)
    V = res.log_probs[0].shape[1]
    arr = np.zeros((len(res.log_probs), T, V), dtype=np.float32)
    lens = np.zeros(len(res.log_probs), dtype=np.int64)
    for i, lp in enumerate(res.log_probs):
        arr[i, : lp.shape[0]] = lp
        lens[i] = lp.shape[0]
    hyps = [h[0][0] for h in beam_search(arr, lens, beam_width=beam_width)]
    refs = [split.targets[i].tolist() for i in res.indices]
    return error_rate(hyps, refs)[0], beam_width


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu"):
    """(config, model) from a run folder's config.yaml and ``best.pt`` / ``last.pt``."""
    from fastdecoder.config import config_from_dict

    run_dir = Path(run_dir)
    name = checkpoint if checkpoint.endswith(".pt") else f"{checkpoint}.pt"
    state = load_checkpoint(run_dir / name, map_location=device)
    cfg = config_from_dict(state["config"])
    model = GRUDecoder(cfg.model, smoothing_backend=cfg.augment.backend, output_lengths=cfg.ctc.output_lengths)
    model.load_state_dict(state["model"])
    return cfg, model.to(device).eval(), state
