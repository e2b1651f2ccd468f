"""The training loop: batches -> augmentation -> model -> CTC loss -> clipped update; eval on the real validation PER.

One Trainer serves both presets; everything preset-specific comes from the Config.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fastdecoder.config import Config, save_config
from fastdecoder.losses import ctc_loss, infeasible_targets, output_lengths
from fastdecoder.model import GRUDecoder
from fastdecoder.train.checkpoint import load_checkpoint, save_checkpoint
from fastdecoder.train.evaluate import EvalResult, evaluate
from fastdecoder.train.optim import build_optimizer, set_lr

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
    if not path.exists():
        write_synthetic(path, fmt, spec)
    return load_dataset(path, fmt), path


class Trainer:
    """Train a GRUDecoder as ``cfg`` says. ``out_dir`` receives config.yaml, checkpoints, metrics and summary."""

    def __init__(self, cfg: Config, out_dir: str | Path | None = None, *, progress: bool = True):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.device = resolve_device(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.train.deterministic
        seed_everything(cfg.train.seed)

        self.dataset, data_path = prepare_dataset(cfg, self.out_dir)
        cfg = replace(cfg, data=replace(cfg.data, path=str(data_path), format=self.dataset.format))
        cfg = replace(cfg, model=replace(cfg.model, n_features=self.dataset.n_features, n_days=self.dataset.n_days))
        self.cfg = cfg
        if "train" not in self.dataset.splits:
            raise ValueError(f"{data_path} has no training split")
        self.train_split = self.dataset.splits["train"]
        self.val_split = self.dataset.splits.get(cfg.data.val_split)
        if self.val_split is not None and self.val_split.targets is None:
            raise ValueError(f"validation split '{cfg.data.val_split}' of {data_path} has no labels")
        self._check_trial_lengths()

        backend = cfg.augment.backend
        self.model = GRUDecoder(cfg.model, smoothing_backend=backend).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.device)
        self.amp_dtype = torch.bfloat16 if (cfg.train.amp == "bf16" and self.device.type == "cuda") else None
        self.forward = torch.compile(self.model) if cfg.train.compile and self.device.type == "cuda" else self.model
        self.smooth_input = (cfg.model.smoothing == "input")
        from fastdecoder.ops import gaussian_taps

        self.input_taps = gaussian_taps(cfg.model.smooth_taps).to(self.device) if self.smooth_input else None
        self.sampler = self._make_sampler()
        self.rng = np.random.default_rng(cfg.train.seed + 1)  # random cut
        self.mask_gen = torch.Generator().manual_seed(cfg.train.seed + 2)  # time/channel masks
        self.step = 0
        self.best_per = math.inf
        self.best_step = -1
        self.reported_infeasible: set[str] = set()
        self.history: list[dict] = []
        self.train_seconds = 0.0

    # -- data -------------------------------------------------------------------------------------------------
    def _make_sampler(self):
        from fastdecoder.data import DayBatchSampler, RandomBatchSampler

        c = self.cfg
        if c.data.batching == "days":
            return DayBatchSampler(self.train_split, c.train.batch_size, c.data.days_per_batch, seed=c.train.seed)
        return RandomBatchSampler(self.train_split, c.train.batch_size, seed=c.train.seed)

    def _check_trial_lengths(self) -> None:
        K = self.cfg.model.patch_size
        short = [tid for f, tid in zip(self.train_split.features, self.train_split.trial_ids) if len(f) < K]
        if short:
            log.warning("%d training trials are shorter than one patch (%d bins), e.g. %s", len(short), K,
                        ", ".join(short[:3]))

    def eval_transform(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """Eval-time data transform: b2t25 smooths the input (no noise); b2t24 smooths inside the model."""
        if not self.smooth_input:
            return x
        from fastdecoder.ops import augment

        return augment(x, lens, smooth_taps=self.input_taps, backend=self.cfg.augment.backend)

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
        seed = (self.cfg.train.seed * 1_000_003 + self.step) % (2**31 - 1)
        x = augment(x, lens, white_noise_std=a.white_noise_std, constant_offset_std=a.constant_offset_std,
                    smooth_taps=self.input_taps, time_masks=tm, freq_masks=fm, seed=seed, backend=a.backend)
        return x, lens

    # -- one step -----------------------------------------------------------------------------------------------
    def train_step(self, batch) -> dict:
        cfg = self.cfg
        self.model.train()
        lr = set_lr(self.optimizer, self.step, cfg.optim)
        x, lens = self.train_transform(batch.x, batch.x_lens)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.forward(x, batch.day, lens)
        n = output_lengths(lens, cfg.model.patch_size, cfg.model.patch_stride, cfg.ctc.output_lengths,
                           logits.shape[1])
        bad = infeasible_targets(n, batch.y, batch.y_lens)
        if bool(bad.any()):
            self._report_infeasible(batch, bad, n)
        loss = ctc_loss(logits, n, batch.y, batch.y_lens, reduction=cfg.ctc.reduction,
                        zero_infinity=cfg.ctc.zero_infinity)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        else:
            gnorm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        self.optimizer.step()
        return {"loss": loss.detach(), "grad_norm": gnorm.detach(), "lr": lr}

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

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "step": self.step, "config": self.cfg.to_dict(),
                "optimizer": self.optimizer.state_dict(), "sampler": self.sampler.state_dict(),
                "best_per": self.best_per, "best_step": self.best_step}

    def save(self, name: str, **extra) -> None:
        if self.out_dir is not None:
            save_checkpoint({**self.state_dict(), **extra}, self.out_dir / name)

    def _log_metrics(self, rec: dict) -> None:
        self.history.append(rec)
        if self.out_dir is not None:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    # -- the loop -------------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        from fastdecoder.data import collate

        cfg = self.cfg
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.train.steps, initial=self.step, desc="train", dynamic_ncols=True)
        t0 = time.perf_counter()
        last_eval = None
        while self.step < cfg.train.steps:
            idx = next(self.sampler)
            batch = collate(self.train_split, idx).to(self.device, non_blocking=True)
            out = self.train_step(batch)
            self.step += 1
            if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
                rec = {"step": self.step, "loss": float(out["loss"]), "grad_norm": float(out["grad_norm"]),
                       "lr": out["lr"], "elapsed": time.perf_counter() - t0}
                self._log_metrics(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.2e}", gnorm=f"{rec['grad_norm']:.2f}")
            if self.val_split is not None and (self.step % cfg.train.eval_every == 0 or self.step == cfg.train.steps):
                res = self.evaluate(max_trials=cfg.data.max_val_trials)
                last_eval = res
                rec = {"step": self.step, "val_per": res.per, "val_loss": res.loss,
                       "blank_fraction": res.blank_fraction}
                self._log_metrics(rec)
                if res.per < self.best_per:  # the real PER of this evaluation, not a moving average
                    self.best_per, self.best_step = res.per, self.step
                    self.save("best.pt", val_per=res.per)
                msg = f"step {self.step}: val PER {res.per:.4f} (best {self.best_per:.4f} @ {self.best_step})"
                (bar.write(msg) if bar is not None else log.info(msg))
            if self.step % cfg.train.checkpoint_every == 0:
                self.save("last.pt")
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        self.train_seconds = time.perf_counter() - t0
        self.save("last.pt")
        return self.summarize(last_eval)

    def summarize(self, last_eval: EvalResult | None) -> dict:
        """Final evaluation (greedy and native beam search on the validation split) and DIR/summary.json."""
        cfg = self.cfg
        summary = {"name": cfg.name, "steps": self.step, "train_seconds": round(self.train_seconds, 3),
                   "batches_per_second": round(self.step / self.train_seconds, 3) if self.train_seconds else None,
                   "device": str(self.device), "n_features": cfg.model.n_features, "n_days": cfg.model.n_days,
                   "parameters": sum(p.numel() for p in self.model.parameters())}
        if self.val_split is not None:
            res = self.evaluate(keep_log_probs=cfg.train.beam_width > 0)
            summary.update(val_per=res.per, val_loss=res.loss, val_blank_fraction=res.blank_fraction,
                           val_trials=res.n_trials, best_val_per=min(self.best_per, res.per),
                           best_step=self.best_step if self.best_per <= res.per else self.step)
            if cfg.train.beam_width > 0:
                summary["val_per_beam"], summary["beam_width"] = beam_per(res, self.val_split, cfg.train.beam_width)
        if self.out_dir is not None:
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


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
    model = GRUDecoder(cfg.model, smoothing_backend=cfg.augment.backend)
    model.load_state_dict(state["model"])
    return cfg, model.to(device).eval(), state
