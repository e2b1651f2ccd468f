"""A restricted pickle reader for b2t24 data files.

`pickle.load` runs whatever callable a file names, so a downloaded pickle can execute code. A b2t24 file only ever
holds plain containers and numpy arrays/dtypes/scalars; `safe_load` admits exactly those and refuses everything
else before it is called (nothing is imported or executed on the refused path).
"""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fastdecoder.data.dataset import DataFormatError


class UnsafePickleError(DataFormatError):
    """The pickle references a callable a b2t24 data file never contains."""


def _numpy_core(submodule: str):
    """numpy._core.<submodule> (numpy >= 2) or numpy.core.<submodule> (numpy 1.x), without deprecation warnings."""
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy 1.x
        return importlib.import_module(f"numpy.core.{submodule}")


def _allowed() -> dict[tuple[str, str], Any]:
    multiarray = _numpy_core("multiarray")
    numeric = _numpy_core("numeric")
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
    }
    for pkg in ("numpy.core", "numpy._core"):  # files written by numpy 1.x name numpy.core, numpy 2.x numpy._core
        table[(f"{pkg}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{pkg}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5 arrays
    import _codecs  # protocol <= 2 stores bytes as _codecs.encode(str, "latin1")

    table[("_codecs", "encode")] = _codecs.encode
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class resolves only the names in a fixed allow-list."""

    def __init__(self, file: BinaryIO, source: str = "<pickle>") -> None:
        super().__init__(file, encoding="latin1")  # latin1: numpy arrays pickled under Python 2 stay readable
        self._source = source
        self._table = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        key = ("builtins" if module == "__builtin__" else module, name)
        try:
            return self._table[key]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {self._source}: the pickle references {module}.{name}, which a b2t24 data file "
                "never contains (allowed: plain containers and numpy arrays, dtypes and scalars)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing to load {self._source}: the pickle uses persistent ids (pid {pid!r}), "
                                "which a b2t24 data file never contains")


def safe_load(path: str | Path) -> Any:
    """Read a pickle file with `RestrictedUnpickler`; corrupt files raise DataFormatError naming the file."""
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            return RestrictedUnpickler(fh, source=str(path)).load()
        except DataFormatError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                KeyError, MemoryError, OverflowError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"{path}: not a readable b2t24 pickle ({type(exc).__name__}: {exc})") from exc
