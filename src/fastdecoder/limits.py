"""Resource limits on inputs: no file or option may cost more memory or time than its size justifies.

Every loader checks what a file declares (shapes, lengths, decompressed size, the size a structure of shared
references expands to) against the bytes the file really holds, or against a stated limit below, before allocating.
A refusal is a `LimitError` (a ``UserError``, so a ``ValueError``) naming the file or key and the limit.
docs/training.md ("Limits") lists the same numbers.
"""
from __future__ import annotations

import reprlib
from typing import Any

import numpy as np

from fastdecoder.errors import UserError

#: gzip input (ARPA files, lexicons, corpora): at most this many bytes out per compressed byte ...
GZIP_MAX_RATIO = 100
#: ... and never more than this in all
GZIP_MAX_BYTES = 16 * 2**30
#: an HDF5 dataset may declare at most this many bytes per byte it stores (compression), plus `HDF5_SLACK_BYTES`
HDF5_MAX_RATIO = GZIP_MAX_RATIO
HDF5_SLACK_BYTES = 2**16
#: a pickle (b2t24) or checkpoint may expand (every shared reference counted) to its own size plus this
EXPANSION_SLACK_BYTES = 2**16
#: the highest n-gram order ``lm build`` estimates
MAX_LM_ORDER = 10
#: the most parameters a GRUDecoder may have (8 GiB of float32)
MAX_MODEL_PARAMETERS = 2**31
#: the most float32 values a synthetic dataset may generate (features of all trials + per-day mixing matrices)
MAX_SYNTH_VALUES = 2**30


class LimitError(UserError):
    """An input declares more data (or work) than its size justifies, or more than a stated limit."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 3, 4, 6, 6
_REPR.maxset, _REPR.maxfrozenset, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 6, 6, 60, 60, 40


def short_repr(value: Any) -> str:
    """``repr(value)`` cut short (a few elements per level, three levels, 60 characters per string): bounded time
    and length whatever ``value`` holds (a structure of shared references that would expand to gigabytes)."""
    try:
        return _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still quoted by its type
        return f"<{type(value).__name__}>"


def expanded_size(obj: Any, budget: int, what: str) -> int:
    """The size ``obj`` expands to when every reference is followed as often as it occurs: 1 per object (a dict's
    items are (key, value) tuples), plus the length of each string, plus each numeric array's elements at max(their
    size, 4) bytes (their float32 form), each tensor at the bytes of its values (``numel * element_size``, whatever
    storage it views).

    Raises LimitError naming ``what`` as soon as the count passes ``budget``; the walk stops there, so it costs at most
    ``budget`` steps whatever ``obj`` holds (shared references nested deep, cycles). Other objects count 1."""
    cost = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        cost += 1
        items = None
        if isinstance(o, (str, bytes, bytearray)):
            cost += len(o)
        elif isinstance(o, dict):
            items = o.items()
        elif isinstance(o, (list, tuple, set, frozenset)):
            items = o
        elif isinstance(o, np.ndarray):
            if o.dtype.hasobject:
                items = o.reshape(-1)
            else:
                cost += o.size * max(o.dtype.itemsize, 4)
        elif callable(getattr(o, "numel", None)) and callable(getattr(o, "element_size", None)):  # a torch.Tensor
            cost += o.numel() * o.element_size()  # its view's values: a stride-0 view of one value counts them all
        # each item costs at least 1: a container longer than what is left is refused before it is walked
        if cost + (len(items) if items is not None else 0) > budget:
            raise LimitError(f"{what} expands to more than {budget} bytes (its references, each counted where it "
                             "occurs, and its arrays at their float32 size): more data than the file holds; the file "
                             "is corrupt or crafted")
        if items is not None:
            stack.extend(items)
    return cost
