"""Competition submission files, written as the competitions' reference code writes them.

- ``b2t25`` (Brain-to-Text '25, Kaggle; ``evaluate_model.py --eval_type test`` of the NEJM code): a CSV with the
  header ``id,text`` and one row per test trial, ``id`` = 0..N-1 over the sessions in the dataset's (chronological)
  order and, within a session, the trials in file order (``trial_0000``, ``trial_0001``, ...); ``text`` the decoded
  sentence. The reference writes it with pandas (``index=False``: minimal quoting, ``\\n`` line ends).
- ``b2t24`` (Brain-to-Text '24, EvalAI; cffan's ``eval_competition.py`` and the speechBCI notebook): a text file
  with one sentence per line, each followed by ``\\n``, in the order of the 'competition' partition (its days in
  order, the trials of each day in file order); no header, no ids.

Both references write the language model's words: lower case, separated by single spaces, without punctuation.
:func:`submission_text` brings any sentence to that form (:func:`fastdecoder.decode.normalize_text`).

The trial order is the order in which fastdecoder's loaders hold a split (sessions sorted by folder name, which
for ``t15.YYYY.MM.DD`` is chronological; trials by number; b2t24 days in list order), so a split's sentences in
split order are the submission's rows.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from fastdecoder.decode.lm import normalize_text
from fastdecoder.errors import UserError, writing

__all__ = ["FORMATS", "submission_text", "format_submission", "write_submission"]

#: submission formats: the competition whose published file layout is written
FORMATS = ("b2t25", "b2t24")


def submission_text(sentence: str) -> str:
    """A decoded sentence as the references write it: lower-case words separated by one space ("" if none)."""
    return normalize_text(sentence or "")


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"submission format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def format_submission(sentences: Sequence[str], fmt: str) -> str:
    """The file's text for ``sentences`` (one per test trial, in split order) in format ``fmt``."""
    _check_format(fmt)
    rows = [submission_text(s) for s in sentences]
    if fmt == "b2t24":
        return "".join(r + "\n" for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")       # pandas' to_csv(index=False) defaults: minimal quoting
    w.writerow(["id", "text"])
    w.writerows([i, r] for i, r in enumerate(rows))
    return buf.getvalue()


def write_submission(path, sentences: Sequence[str], fmt: str) -> Path:
    """Write ``sentences`` (one per test trial, in split order) as a ``fmt`` submission file at ``path``."""
    path = Path(path)
    text = format_submission(sentences, fmt)
    with writing(path, "submission file"):
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="")
    return path
