"""Python-level device-to-host reads of tensors, counted or refused (the no-sync guard of the fast step).

On a GPU every ``item()``, ``tolist()``, ``bool(t)``, ``float(t)``, ``int(t)``, ``cpu()``, ``numpy()`` or
``to("cpu")`` of a device tensor waits for the device. On the CPU device and host are one, so the guard watches the
*calls* instead: inside ``HostReads()`` each such call on any tensor is recorded with the innermost fastdecoder
function that made it, ``path.py:function``. Reads of CPU tensors made inside the marker
``fastdecoder.ops.host_read_marker.cpu_host_read()`` (the host checks that run only when the tensor is on the CPU and
are skipped on a device) are counted apart as allowed; a read of a non-CPU tensor inside the marker is not.
``raise_on_read=True`` raises HostReadError at every read that is not allowed. Not seen here: ``to(device)`` copies
(on the CPU a ``to(x.device)`` and a ``to("cpu")`` look alike) and reads made in C++ (F.ctc_loss copying device
length tensors); the GPU check's ``set_sync_debug_mode("error")`` covers those.
"""
from __future__ import annotations

import sys
from collections import Counter

import torch

from fastdecoder.ops.host_read_marker import inside_cpu_host_read

#: the tensor methods that read a value back to the host
READ_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


class HostReadError(RuntimeError):
    """A tensor was read back to the host inside a region that must not sync."""


def _call_site() -> str:
    """``path.py:function`` of the innermost fastdecoder frame above the guard (else of the innermost frame)."""
    f = sys._getframe(2)
    first = f
    while f is not None:
        name = f.f_code.co_filename
        if "fastdecoder" in name and not name.endswith("host_reads.py"):
            return f"{name.rsplit('fastdecoder/', 1)[-1]}:{f.f_code.co_name}"
        f = f.f_back
    return f"{first.f_code.co_filename}:{first.f_code.co_name}"


class HostReads:
    """Context manager: ``reads`` counts (method, call site) of every host read made inside it; ``allowed`` those of
    CPU tensors inside ``cpu_host_read()``; ``disallowed`` the rest (the reads that would sync on a device)."""

    def __init__(self, raise_on_read: bool = False):
        self.raise_on_read = raise_on_read
        self.reads: Counter = Counter()
        self.allowed: Counter = Counter()
        self._saved: dict = {}

    @property
    def active(self) -> bool:
        """True between ``__enter__`` and ``__exit__`` (the tensor methods are watched)."""
        return bool(self._saved)

    @property
    def total(self) -> int:
        return sum(self.reads.values())

    @property
    def disallowed(self) -> Counter:
        """(method, call site) -> count of the reads not allowed by the marker."""
        return self.reads - self.allowed

    def _wrap(self, name: str, method):
        guard = self

        def watched(t, *args, **kwargs):
            site = _call_site()
            guard.reads[(name, site)] += 1
            if inside_cpu_host_read() and t.device.type == "cpu":
                guard.allowed[(name, site)] += 1
            elif guard.raise_on_read:
                marked = " (cpu_host_read() allows CPU tensors only)" if inside_cpu_host_read() else ""
                raise HostReadError(f"host read Tensor.{name}() of a {t.device.type} tensor at {site} inside a "
                                    f"no-sync region{marked}")
            return method(t, *args, **kwargs)

        return watched

    def __enter__(self) -> "HostReads":
        for name in READ_METHODS:
            self._saved[name] = torch.Tensor.__dict__.get(name)  # None: inherited from TensorBase
            setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))
        return self

    def __exit__(self, *exc) -> None:
        for name, method in self._saved.items():
            if method is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, method)
        self._saved = {}
