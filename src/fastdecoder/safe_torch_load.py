"""Reading PyTorch files without running code: ``torch.load(weights_only=True)`` plus numpy's float scalars.

The NEJM trainer stores ``val_loss = np.mean(...)`` (a numpy float64) beside the weights, so a plain weights-only
load refuses its checkpoints. ``load_weights_only`` admits, for the duration of the call only, exactly what such a
scalar pickles to: numpy's ``scalar`` reconstructor under its numpy 1.x path (``numpy.core.multiarray.scalar``) and
its numpy 2.x path (``numpy._core.multiarray.scalar``), ``numpy.dtype``, and the float64 / float32 dtype classes
(``numpy.dtypes.Float64DType``, ``Float32DType``), which the unpickler must be allowed to build. Nothing else: any
other global (a class, a function such as ``os.system``) is still refused by torch's weights-only unpickler, and the
error names the file and the global.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class UnsafeFileError(ValueError):
    """A file holds Python objects other than tensors, plain containers and numpy float scalars."""


def _numpy_scalar_globals() -> list:
    try:
        from numpy._core.multiarray import scalar  # numpy 2.x (and 1.26's forward-compatible alias)
    except ImportError:
        from numpy.core.multiarray import scalar  # numpy 1.x
    dtype_classes = [type(np.dtype(np.float64)), type(np.dtype(np.float32))]  # numpy.dtypes.Float64DType, ...
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype,
            *dtype_classes]


#: the globals ``load_weights_only`` admits beyond torch's own weights-only set
NUMPY_SCALAR_GLOBALS = _numpy_scalar_globals()


def load_weights_only(path: str | Path, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with numpy's float scalars admitted (see the module docstring).

    Raises UnsafeFileError naming the file and the refused global when the pickle holds anything else; other read
    errors (missing, truncated, not a PyTorch file) propagate as torch raises them.
    """
    try:
        with torch.serialization.safe_globals(NUMPY_SCALAR_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - only the refusal of a global is rewritten
        text = str(e)
        if "Weights only load failed" in text and ("GLOBAL" in text or "Unsupported global" in text
                                                   or "Can only build" in text):
            detail = next((ln for ln in text.splitlines() if "GLOBAL" in ln or "Can only build" in ln), "")
            detail = detail.split("WeightsUnpickler error:", 1)[-1].split("Please use")[0].strip().rstrip(".")
            raise UnsafeFileError(
                f"{path} is refused: it holds Python objects other than tensors, plain containers and numpy float "
                f"scalars ({detail or 'a disallowed global'}); loading them could run code") from None
        raise
