"""Python-level device-to-host reads of tensors, counted or refused (the no-sync guard of the fast step).

On a GPU every ``item()``, ``tolist()``, ``bool(t)``, ``float(t)``, ``int(t)``, ``cpu()``, ``numpy()`` or
``to("cpu")`` of a device tensor waits for the device. On the CPU device and host are one, so the guard watches the
*call sites* instead: inside ``HostReads()`` each such call on any tensor is recorded with the innermost fastdecoder
function that made it, ``path.py:function`` (``raise_on_read=True``: raises HostReadError there, except at the
``allow``-ed sites). Not seen here: ``to(device)`` copies (on the CPU a ``to(x.device)`` and a ``to("cpu")`` look
alike) and reads made in C++ (F.ctc_loss copying device length tensors); the GPU check's
``set_sync_debug_mode("error")`` covers those.
"""
from __future__ import annotations

import sys
from collections import Counter

import torch

#: the tensor methods that read a value back to the host
READ_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")

#: reads that run only when the tensor is on the CPU (free there, skipped on a device): the augmentation's host
#: checks of its taps and lengths (ops/augment/dispatch.py)
CPU_ONLY_SITES = frozenset({"ops/augment/dispatch.py:_taps_finite", "ops/augment/dispatch.py:_host_range_check",
                            # the day layer groups trials by day from CPU day indices only (a device keeps the gather)
                            "ops/day_affine/grouped.py:_host_days",
                            # the masks' range check of CPU lengths (ops/augment/masks.py; skipped on a device)
                            "ops/augment/masks.py:sample_masks"})


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
    """Context manager: ``reads`` counts (method, call site) of every host read made inside it."""

    def __init__(self, raise_on_read: bool = False, allow=frozenset()):
        self.raise_on_read = raise_on_read
        self.allow = frozenset(allow)
        self.reads: Counter = Counter()
        self._saved: dict = {}

    @property
    def active(self) -> bool:
        """True between ``__enter__`` and ``__exit__`` (the tensor methods are watched)."""
        return bool(self._saved)

    @property
    def total(self) -> int:
        return sum(self.reads.values())

    def _wrap(self, name: str, method):
        guard = self

        def watched(t, *args, **kwargs):
            site = _call_site()
            guard.reads[(name, site)] += 1
            if guard.raise_on_read and site not in guard.allow:
                raise HostReadError(f"host read Tensor.{name}() at {site} inside a no-sync region")
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
