"""The one rule for whether the Triton fast path can run, and the one error raised when it cannot.

Triton kernels run on CUDA tensors, and on CPU tensors through Triton's interpreter when ``TRITON_INTERPRET`` is
on. The variable is read at call time, the way triton reads it (``1``, ``true``, ``yes``, ``on``, ``y``, any case);
it must already have been on when the kernels were first imported (``@triton.jit`` decides at import whether a
kernel is interpreted), which ``tests/conftest.py`` ensures for the test suite.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

__all__ = ["FastPathUnavailable", "interpreter_enabled", "triton_usable", "why_triton_unusable", "require_triton"]

_TRUE = ("1", "true", "yes", "on", "y")


class FastPathUnavailable(RuntimeError):
    """A Triton fast path was asked for where it cannot run (no CUDA tensor and no interpreter, or no triton)."""


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` is on now (read as triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def why_triton_unusable(device) -> Optional[str]:
    """None when Triton kernels can run on tensors of ``device``, else the reason (a sentence)."""
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        return f"there is no Triton path for {device.type} tensors"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type == "cpu" and not interpreter_enabled():
        return ("CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before fastdecoder's kernels are "
                "imported (or use backend='reference')")
    return None


def triton_usable(device) -> bool:
    """Whether Triton kernels can run on tensors of ``device`` (CUDA, or the CPU under the interpreter)."""
    return why_triton_unusable(device) is None


def require_triton(device, what: str) -> None:
    """Raise :class:`FastPathUnavailable` naming ``what`` (e.g. "augment(backend='triton')") and the reason."""
    why = why_triton_unusable(device)
    if why is not None:
        raise FastPathUnavailable(f"{what}: {why}")
