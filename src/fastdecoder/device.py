"""Where a run computes and how: the device, the torch runtime settings, the op backend and the autocast dtype.

Training, ``fastdecoder eval`` and ``bench`` take all of these from here, so an evaluation runs with the transform
backend and the autocast of the training run that chose its checkpoint.
"""
from __future__ import annotations

import functools
import logging
import os
import platform

import torch

from fastdecoder.errors import UserError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
log = logging.getLogger("fastdecoder.train")
_said: set[str | None] = set()  # CPU bf16 decisions already logged: None (on) or the reason for fp32


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


@functools.lru_cache(maxsize=1)
def cpu_bf16_gemms() -> tuple[bool, str]:
    """(True, "") where this CPU runs bf16 GEMMs natively through oneDNN (x86: AVX512-BF16 or AMX; Arm: the BF16
    extension, as oneDNN's own check says); else (False, why not). Torch's own probes; emulated bf16 is slower than
    fp32, so it does not count."""
    if not torch.backends.mkldnn.is_available():
        return False, "this torch has no oneDNN (mkldnn) for bf16 GEMMs"
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
        native = (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()) if x86 else onednn
    except (AttributeError, RuntimeError) as e:  # private probes of torch: gone or failing in another version
        return False, f"torch's bf16 probe failed ({type(e).__name__}: {e})"
    if not (onednn and native):
        return False, "this CPU has no native bf16 matrix instructions (AVX512-BF16, AMX or Arm BF16)"
    return True, ""


def _cpu_bf16_off(cfg) -> str | None:
    """Why ``train.amp: bf16`` does not autocast a CPU fast-path run (None: it does)."""
    if cfg.model.rnn == "ln_gru":
        return ("model.rnn is ln_gru: CPU autocast would run its LayerNorms in bf16 (CUDA autocast keeps them in "
                "fp32) and the CPU has no LN-GRU kernel that keeps them in fp32")
    ok, why = cpu_bf16_gemms()
    return None if ok else why


def autocast_dtype(cfg, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device``; None = fp32. Trainer, ``eval`` and ``bench`` use this one
    rule (evaluation.EvalSettings.from_config calls it).

    CUDA: as configured. CPU: bf16 only on the fast path, for an ``nn.GRU`` model, where the CPU has native bf16
    GEMMs (:func:`cpu_bf16_gemms`; else fp32 and one log line saying why). The reference path stays fp32 on a CPU:
    the reference trainers autocast with ``device_type="cuda"``, inert there, so fp32 is what they run on a CPU.
    fp16 autocasts on CUDA only.
    """
    dtype = AUTOCAST_DTYPES.get(cfg.train.amp)
    if device.type == "cuda":
        return dtype
    if device.type != "cpu" or dtype != torch.bfloat16 or not use_fast_path(cfg, device):
        return None
    why = _cpu_bf16_off(cfg)
    if why not in _said:  # one line per process (trainer and evaluation both ask)
        _said.add(why)
        if why is None:
            log.info("train.amp is bf16: this CPU fast-path run autocasts to bf16 (the GRU recurrence and the loss "
                     "stay fp32)")
        else:
            log.warning("train.amp is bf16 but this CPU run computes in fp32: %s", why)
    return dtype if why is None else None


def build_model(cfg, device: torch.device, backends=None):
    """The GRUDecoder of ``cfg`` on ``device`` with the op backends of ``backends`` (a selfcheck.Backends; None: those
    of the path, fast or reference, that ``cfg`` runs there)."""
    from fastdecoder.model import GRUDecoder

    if backends is None:
        fast = use_fast_path(cfg, device)
        smoothing, rnn = ops_backend(cfg, device), ("auto" if fast else "reference")
    else:
        smoothing, rnn = backends.ops, backends.rnn
    try:
        model = GRUDecoder(cfg.model, smoothing_backend=smoothing, rnn_backend=rnn,
                           output_lengths=cfg.ctc.output_lengths)
        return model.to(device)
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError and the CPU allocator's error are RuntimeErrors
        text = str(e).strip()
        if not isinstance(e, MemoryError) and "alloc" not in text and "out of memory" not in text.lower():
            raise
        from fastdecoder.model import parameter_count

        n = parameter_count(cfg.model)
        reason = text.splitlines()[0][:200] if text else type(e).__name__
        raise UserError(f"cannot allocate the model of this config on {device}: {n:,} parameters "
                        f"({n * 4 / 2**30:.2f} GiB of float32; model.hidden_size={cfg.model.hidden_size}, "
                        f"num_layers={cfg.model.num_layers}) ({reason})") from None
