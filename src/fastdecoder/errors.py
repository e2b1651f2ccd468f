"""The error type for problems with what a user gave (a file, a value, an option, the machine's resources).

``fastdecoder`` commands print a ``UserError`` as one line (``error: ...``, exit status 2) without a traceback; any
other exception is a bug and shows its traceback. Its message names the file, key or option and what was expected.
The library raises it for bad arguments and bad files (the decoders, the LM and lexicon readers, the data loaders,
configs, checkpoints); as a ``ValueError`` it is caught like one. A plain ``ValueError`` reaching the command line
is a bug.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


class UserError(ValueError):
    """Bad input from the user (file, value, option) or an unusable environment (disk full, no GPU): says which."""


@contextmanager
def writing(path: str | Path, what: str = "file"):
    """Turn an OSError raised while writing ``path`` (disk full, read-only, a file where a folder should be, no
    permission) into a UserError naming the path and the reason."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e)
        raise UserError(f"cannot write the {what} {path}: {reason}"
                        + (f" ({e.filename})" if e.filename and str(e.filename) != str(path) else "")) from e
