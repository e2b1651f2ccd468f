"""Where a run computes and how: the device, the torch runtime settings, the op backend and the autocast dtype.

Training, ``fastdecoder eval`` and ``bench`` take all of these from here, so an evaluation runs with the transform
backend and the autocast of the training run that chose its checkpoint.
"""
from __future__ import annotations

import os

import torch

from fastdecoder.errors import UserError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, what: str = "train.device") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a usable torch.device; UserError naming ``what`` otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"{what} is {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"{what} is {name!r}: expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{what} is {name!r} but CUDA is not available on this machine (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"{what} is {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def configure_runtime(train_cfg, device: torch.device) -> None:
    """CPU threads, deterministic algorithms and cuDNN autotuning as ``train.*`` says."""
    if train_cfg.threads > 0:
        torch.set_num_threads(train_cfg.threads)
    if train_cfg.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        # autotuning pays only when shapes repeat: with length buckets (on either path, so ratios stay honest)
        torch.backends.cudnn.benchmark = not train_cfg.deterministic and train_cfg.length_bucket > 0
        torch.backends.cudnn.deterministic = train_cfg.deterministic


def use_fast_path(cfg, device: torch.device) -> bool:
    """``train.fast``, where None means: on CUDA."""
    return device.type == "cuda" if cfg.train.fast is None else bool(cfg.train.fast)


def ops_backend(cfg, device: torch.device) -> str:
    """Backend of the augmentation/smoothing ops: the configured one on the fast path, else the reference."""
    return cfg.augment.backend if use_fast_path(cfg, device) else "reference"


def autocast_dtype(cfg, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` (CUDA only; None = fp32)."""
    return AUTOCAST_DTYPES.get(cfg.train.amp) if device.type == "cuda" else None


def build_model(cfg, device: torch.device):
    """The GRUDecoder of ``cfg`` on ``device`` with the op backends of the path (fast or reference) it runs there."""
    from fastdecoder.model import GRUDecoder

    fast = use_fast_path(cfg, device)
    model = GRUDecoder(cfg.model, smoothing_backend=ops_backend(cfg, device),
                       rnn_backend="auto" if fast else "reference", output_lengths=cfg.ctc.output_lengths)
    return model.to(device)
