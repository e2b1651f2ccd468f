"""Format detection and the single entry point `load_dataset`."""
from __future__ import annotations

from pathlib import Path

from fastdecoder.data.b2t24 import load_b2t24
from fastdecoder.data.b2t25 import SPLIT_FILES, load_b2t25, no_sessions_message, session_folders
from fastdecoder.data.dataset import DataFormatError, Dataset

FORMATS = ("b2t24", "b2t25")
_EXPECTED = "a b2t24 pickle file or a b2t25 folder of session folders (t15.YYYY.MM.DD/data_*.hdf5)"


def detect_format(path: str | Path) -> str:
    """"b2t24" for a pickle file, "b2t25" for a folder of session folders; DataFormatError (a ValueError) naming
    what was expected otherwise."""
    p = Path(path)
    if not p.exists():
        raise DataFormatError(f"{p}: no such file or folder (expected {_EXPECTED})")
    if p.is_dir():
        if any((p / f).is_file() for f in SPLIT_FILES.values()):
            raise DataFormatError(f"{p} is a single b2t25 session folder; pass the folder that holds the session "
                                  "folders")
        if session_folders(p):
            return "b2t25"
        raise DataFormatError(f"{no_sessions_message(p)}; expected {_EXPECTED}")
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"\x89HDF"):
        raise DataFormatError(f"{p} is a single HDF5 file; b2t25 data is loaded from the folder that holds the "
                              "session folders")
    if head.startswith(b"PK"):
        raise DataFormatError(f"{p} is a zip archive (a torch checkpoint or the zipped download?); expected "
                              f"{_EXPECTED}")
    # pickle protocol >= 2 starts with PROTO (0x80); protocols 0/1 start with MARK '(' or an empty dict '}'
    if head[:1] in (b"\x80", b"(", b"}"):
        return "b2t24"
    raise DataFormatError(f"{p}: not a pickle file (first bytes {head!r}); expected {_EXPECTED}")


def load_dataset(path: str | Path, format: str = "auto") -> Dataset:
    """Load a b2t24 pickle or a b2t25 folder into memory; `format` "auto" detects it from the path."""
    if format == "auto":
        format = detect_format(path)
    if format == "b2t24":
        return load_b2t24(path)
    if format == "b2t25":
        return load_b2t25(path)
    raise ValueError(f"unknown data format {format!r}; expected 'auto' or one of {FORMATS}")
