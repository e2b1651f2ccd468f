"""Value types for command-line options: each checks its value when the command line is parsed, before any file is
read, and a bad value becomes argparse's one-line error naming the option (``error: argument --beam-width: must be
an integer >= 1, got 0``).

Use them as ``type=`` of ``add_argument``: ``int_at_least(1)``, ``int_in(1, 65536)``, ``finite_float``,
``float_at_least(0.0)``.
"""
from __future__ import annotations

import argparse
import math


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def int_in(minimum: int | None = None, maximum: int | None = None):
    """An integer in [minimum, maximum] (either bound may be None: unbounded on that side)."""

    def parse(text: str) -> int:
        value = _int(text)
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be an integer <= {maximum}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def int_at_least(minimum: int):
    """An integer >= minimum."""
    return int_in(minimum, None)


def finite_float(text: str) -> float:
    """A finite number (no nan, inf)."""
    try:
        value = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def float_at_least(minimum: float):
    """A finite number >= minimum."""

    def parse(text: str) -> float:
        value = finite_float(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "float"
    return parse
