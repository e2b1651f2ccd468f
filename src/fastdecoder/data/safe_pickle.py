"""A restricted pickle reader for b2t24 data files.

`pickle.load` runs whatever callable a file names, so a downloaded pickle can execute code. A b2t24 file only ever
holds plain containers and numpy arrays/dtypes/scalars; `safe_load` admits exactly those and refuses everything
else before it is called (nothing is imported or executed on the refused path).

Admitting numpy's constructors is not enough on its own: they take a shape from the file, so a 127-byte pickle could
ask for gigabytes (and numpy 2.x crashes on an object array whose pickled element list is shorter than its shape).
A pickle cannot hold more data than its bytes, so every allocation the file asks for is checked before it is made:
the arrays, scalars and byte strings of one file together may not hold more bytes (for object arrays: more elements)
than the file has, an array's stored data must match its shape exactly, and no length field may point past the end
of the file. References count too: an array, list or dict the pickle stores once and references many times (its
memo) is counted at every reference, after loading, as the loader would copy it (`limits.expanded_size`: arrays at
their float32 size), and the whole may not exceed the file's size (plus 64 KiB). The reader is the pure-Python
`pickle._Unpickler` (its memo is a dict: a huge memo index costs nothing), with the opcodes that build objects
overridden.
"""
from __future__ import annotations

import importlib
import math
import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from fastdecoder.data.dataset import DataFormatError
from fastdecoder.limits import EXPANSION_SLACK_BYTES, LimitError, expanded_size


class UnsafePickleError(DataFormatError):
    """The pickle references a callable a b2t24 data file never contains, or asks for more memory than it holds."""


class PickleLimitError(UnsafePickleError, LimitError):
    """The pickle expands (every shared reference counted) to more data than the file holds."""


def _numpy_core(submodule: str):
    """numpy._core.<submodule> (numpy >= 2) or numpy.core.<submodule> (numpy 1.x), without deprecation warnings."""
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy 1.x
        return importlib.import_module(f"numpy.core.{submodule}")


def _elements(shape: Any, where: str) -> int:
    """Number of elements of an array `shape` read from the file (a tuple of ints >= 0)."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape):
        raise UnsafePickleError(f"{where}: array shape {shape!r} is not a tuple of non-negative integers")
    return math.prod(shape)


class RestrictedUnpickler(pickle._Unpickler):
    """A pickle reader whose find_class resolves only a fixed allow-list, and whose constructors allocate no more
    than the file (of `size` bytes) can hold."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, source: str = "<pickle>", size: int | None = None) -> None:
        super().__init__(file, encoding="latin1")  # latin1: numpy arrays pickled under Python 2 stay readable
        self._source = source
        self._file = file
        self._size = os.fstat(file.fileno()).st_size if size is None else size
        self._budget = self._size  # bytes (object arrays: elements) the file may still ask for
        self._file_read = self._bounded_read
        self._table = self._allowed()

    # ------------------------------------------------------------------ resource checks

    def _refuse(self, what: str) -> UnsafePickleError:
        return UnsafePickleError(f"refusing to load {self._source}: {what}")

    def _spend(self, amount: int, what: str) -> None:
        """Account for `amount` bytes of data the file asks to allocate; refuse past the file's size."""
        if amount > self._budget:
            raise self._refuse(f"the pickle asks for {what} ({amount} bytes) but the {self._size}-byte file cannot "
                               f"hold that much data ({self._budget} bytes left); the file is corrupt or crafted")
        self._budget -= amount

    def _bounded_read(self, n: int) -> bytes:
        left = self._size - self._file.tell()
        if n > left:  # checked before reading: the stock reader would allocate n bytes first
            raise DataFormatError(f"{self._source}: not a readable b2t24 pickle (truncated or crafted: a length "
                                  f"field asks for {n} bytes but only {left} remain in the file)")
        return self._file.read(n)

    def _array_bytes(self, shape: Any, dtype: Any) -> int:
        """What an array of `shape` and `dtype` costs in the file: its data bytes (object arrays: one per element,
        each element being at least one opcode)."""
        n = _elements(shape, f"refusing to load {self._source}")
        dtype = np.dtype(dtype)
        return n if dtype.hasobject else n * dtype.itemsize

    # ------------------------------------------------------------------ guarded constructors

    def _allowed(self) -> dict[tuple[str, str], Any]:
        multiarray = _numpy_core("multiarray")
        numeric = _numpy_core("numeric")

        def ndarray(shape, dtype=float, *args, **kwargs):
            self._spend(self._array_bytes(shape, dtype), f"a {shape} {np.dtype(dtype)} array")
            return np.ndarray(shape, dtype, *args, **kwargs)

        def reconstruct(subtype, shape, dtype):
            if subtype is not ndarray and subtype is not np.ndarray:
                raise self._refuse(f"_reconstruct of {subtype!r} (only numpy.ndarray is allowed)")
            self._spend(self._array_bytes(shape, dtype), f"a {shape} {np.dtype(dtype)} array")
            return multiarray._reconstruct(np.ndarray, shape, dtype)

        def dtype(spec, align=False, copy=False):
            if not isinstance(spec, str):  # numpy pickles a dtype as its type code; structured/subarray: never
                raise self._refuse(f"numpy.dtype({spec!r}) (only plain type codes such as 'f8' are allowed)")
            return np.dtype(spec, align, copy)

        def scalar(dt, obj=None):
            self._spend(np.dtype(dt).itemsize, f"a {np.dtype(dt)} scalar")
            return multiarray.scalar(dt, obj) if obj is not None else multiarray.scalar(dt)

        def frombuffer(buf, dt, shape, order):  # a view of a buffer already read from the file: no allocation
            return numeric._frombuffer(buf, dt, shape, order)

        def new_bytearray(*args):
            if args and not isinstance(args[0], (bytes, bytearray, str)):
                raise self._refuse(f"bytearray({args[0]!r}) (only bytearray(data) is allowed)")
            out = bytearray(*args)
            self._spend(len(out), "a bytearray")
            return out

        def encode(text, encoding="utf-8", errors="strict"):
            # protocol <= 2 stores bytes as _codecs.encode(str, "latin1"): the output is never longer than the text
            if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
                raise self._refuse(f"_codecs.encode with {type(text).__name__}, {encoding!r} (only str, 'latin1')")
            return text.encode(encoding, errors)

        table: dict[tuple[str, str], Callable] = {
            ("numpy", "ndarray"): ndarray,
            ("numpy", "dtype"): dtype,
            ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset,
            ("builtins", "bytearray"): new_bytearray,
            ("builtins", "complex"): complex,
            ("_codecs", "encode"): encode,
        }
        for pkg in ("numpy.core", "numpy._core"):  # files written by numpy 1.x name numpy.core, numpy 2.x numpy._core
            table[(f"{pkg}.multiarray", "_reconstruct")] = reconstruct
            table[(f"{pkg}.multiarray", "scalar")] = scalar
            table[(f"{pkg}.numeric", "_frombuffer")] = frombuffer  # protocol 5 arrays
        return table

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

    # ------------------------------------------------------------------ overridden opcodes

    def _check_array_state(self, state: Any) -> None:
        """ndarray.__setstate__((version, shape, dtype, is_fortran, data)): data must match shape and dtype exactly
        (numpy itself crashes on a short object list) and fit in the file."""
        if not (isinstance(state, tuple) and len(state) in (4, 5) and isinstance(state[-2], int)):
            raise self._refuse(f"malformed numpy array state {type(state).__name__}")
        shape, dt, data = state[-4], state[-3], state[-1]
        if not isinstance(dt, np.dtype):
            raise self._refuse(f"numpy array state with dtype {dt!r}")
        n = _elements(shape, f"refusing to load {self._source}")
        if dt.hasobject:
            if dt != np.dtype(object) or not isinstance(data, list) or len(data) != n:
                got = f"{len(data)} elements" if isinstance(data, list) else type(data).__name__
                raise self._refuse(f"an object array of shape {shape} stores {got}")
            self._spend(n, f"a {shape} object array")
            return
        # data: bytes; a Python 2 str read with encoding latin1 arrives as str, one character per byte
        if not isinstance(data, (bytes, bytearray, str)) or len(data) != n * dt.itemsize:
            got = f"{len(data)} bytes" if isinstance(data, (bytes, bytearray, str)) else type(data).__name__
            raise self._refuse(f"a {shape} {dt} array needs {n * dt.itemsize} bytes of data but stores {got}")
        self._spend(len(data), f"a {shape} {dt} array")

    def _check_dtype_state(self, state: Any) -> None:
        """np.dtype.__setstate__: plain dtypes only (no subarray, field names or fields)."""
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[2:5] == (None, None, None)):
            raise self._refuse(f"numpy dtype state {state!r} (only plain dtypes are allowed)")

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.ndarray):
            self._check_array_state(state)
        elif isinstance(inst, np.dtype):
            self._check_dtype_state(state)
        else:
            raise self._refuse(f"the pickle sets the state of a {type(inst).__name__}, which a b2t24 data file "
                               "never does")
        pickle._Unpickler.load_build(self)

    def load_bytearray8(self) -> None:
        n = int.from_bytes(self.read(8), "little")
        data = self.read(n)  # read before allocating (the stock reader allocates n bytes first)
        if len(data) != n:
            raise pickle.UnpicklingError(f"BYTEARRAY8 declares {n} bytes but the pickle ends after {len(data)}")
        self.stack.append(bytearray(data))

    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def safe_load(path: str | Path) -> Any:
    """Read a pickle file with `RestrictedUnpickler`; corrupt files raise DataFormatError naming the file, files
    that ask for (or expand to, every reference counted) more data than their size UnsafePickleError."""
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            unpickler = RestrictedUnpickler(fh, source=str(path))
            data = unpickler.load()
            try:
                expanded_size(data, unpickler._size + EXPANSION_SLACK_BYTES, "the pickle")
            except LimitError as e:
                raise PickleLimitError(f"refusing to load {path}: {e}") from None
            return data
        except DataFormatError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                KeyError, MemoryError, OverflowError, UnicodeDecodeError, RecursionError) as exc:
            raise DataFormatError(f"{path}: not a readable b2t24 pickle ({type(exc).__name__}: {exc})") from exc
