"""Checkpoints written atomically (temp file in the same folder, fsync, rename) and read without running code.

A crash at any instant leaves either the previous file or the new one, never a torn file. Reading uses
``torch.load(weights_only=True)``: plain containers and tensors only.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not one of ours; the message names the file."""


FORMAT_TAG = "fastdecoder-checkpoint-v1"


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temp file + fsync + os.replace + fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT_TAG, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a fastdecoder checkpoint; raises CheckpointError naming the file if it is missing, corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, disallowed global: all mean "corrupt"
        raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_TAG:
        raise CheckpointError(f"{path} is not a fastdecoder checkpoint (no '{FORMAT_TAG}' tag); "
                              "to load a reference repository's model use fastdecoder.model.load_reference_checkpoint")
    for key in ("model", "step", "config"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} lacks '{key}'")
    return state
