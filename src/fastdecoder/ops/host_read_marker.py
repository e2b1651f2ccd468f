"""The marker of host reads that run only on CPU tensors: ``with cpu_host_read(): bool(t.any())``.

Such a read is free on the CPU (host and device are one) and the code skips it for a device tensor. The no-sync
guard (``fastdecoder.bench.host_reads.HostReads``) counts a read made inside the marker apart, as allowed, only when
the tensor read is on the CPU: a read of any other device's tensor inside it is reported like any other read. The
marker is a per-thread depth counter (nested markers work; an exception leaves it as it was); with no guard active
it costs one attribute increment and decrement.
"""
from __future__ import annotations

import threading

__all__ = ["cpu_host_read", "inside_cpu_host_read"]


class _Depth(threading.local):
    depth = 0  # markers entered and not left, in this thread


_STATE = _Depth()


class _CpuHostRead:
    """Context manager (one shared instance, re-entrant: the depth is per thread)."""

    __slots__ = ()

    def __enter__(self) -> None:
        _STATE.depth += 1

    def __exit__(self, *exc) -> None:
        _STATE.depth -= 1


_MARKER = _CpuHostRead()


def cpu_host_read() -> _CpuHostRead:
    """The marker: wrap exactly the reads of CPU tensors that a device tensor skips (``with cpu_host_read(): ...``)."""
    return _MARKER


def inside_cpu_host_read() -> bool:
    """True inside a :func:`cpu_host_read` block of this thread."""
    return _STATE.depth > 0
