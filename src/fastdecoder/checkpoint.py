"""Checkpoints written atomically (temp file in the same folder, fsync, rename) and read without running code.

A crash at any instant leaves either the previous file or the new one, never a torn file (at worst a stale
``.NAME.*.tmp`` file, which ``remove_stale_temp_files`` clears and nothing ever reads). Reading uses
``torch.load(weights_only=True)``: plain containers and tensors only, so opening a checkpoint cannot run code.

A training checkpoint (``Trainer.state_dict``) holds: ``format`` (the tag below), ``model``, ``step``, ``config``,
``optimizer``, ``schedule`` (LR reductions, plateau state), ``scaler`` (fp16 GradScaler or None), ``sampler``,
``rng`` (torch, CUDA, numpy and python states, the random-cut and mask generators), ``rank_states`` (sampler + RNG
of every rank in a multi-process run), ``stability`` and ``monitor`` state, ``best_per``/``best_step`` and
bookkeeping (``train_seconds``, ``world_size``, ...).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from fastdecoder.config import resume_may_differ
from fastdecoder.errors import UserError, writing
from fastdecoder.limits import EXPANSION_SLACK_BYTES, LimitError, expanded_size, short_repr
from fastdecoder.safe_torch_load import UnsafeFileError, load_weights_only


class CheckpointError(UserError):
    """A checkpoint file is missing, corrupt, or not one of ours; the message names the file."""


FORMAT_TAG = "fastdecoder-checkpoint-v1"
#: what a checkpoint needs to resume a run exactly (``check_resumable``)
RESUME_KEYS = ("model", "step", "config", "optimizer", "schedule", "sampler", "rng", "stability", "monitor")


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temp file + fsync + os.replace + fsync of the folder)."""
    path = Path(path)
    with writing(path, "checkpoint"):
        _save_atomically({"format": FORMAT_TAG, **state}, path)


def _save_atomically(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint gets the usual file mode
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a fastdecoder checkpoint; raises CheckpointError naming the file if it is missing, corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = load_weights_only(path, map_location=map_location)  # + numpy float scalars, nothing else
    except UnsafeFileError as e:
        raise CheckpointError(f"checkpoint {path} is not a fastdecoder checkpoint: {e}") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, disallowed global: all mean "unusable"
        text = str(e)
        if "Weights only load failed" in text and ("GLOBAL" in text or "Unsupported global" in text):
            raise CheckpointError(f"checkpoint {path} is not a fastdecoder checkpoint: it holds Python objects other "
                                  "than tensors and plain containers, which are refused (loading them could run "
                                  "code)") from None
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch checkpoint (truncated or damaged "
                              f"file?) ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_TAG:
        raise CheckpointError(f"{path} is not a fastdecoder checkpoint (no '{FORMAT_TAG}' tag); "
                              "to load a reference repository's model use fastdecoder.model.load_reference_checkpoint")
    for key in ("model", "step", "config"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} lacks '{key}'")
    try:  # shared references (the pickle's memo) and tensor views (stride 0) may not make a small file a huge state
        expanded_size(state, path.stat().st_size + EXPANSION_SLACK_BYTES, "its contents")
    except LimitError as e:
        raise CheckpointError(f"checkpoint {path} is refused: {e}") from None
    return state


def check_state_shapes(cfg, model_state: dict, path: str | Path) -> None:
    """Compare the tensor shapes the config implies (``model.state_shapes``, nothing allocated) with the checkpoint's
    state dict, and refuse a model larger than `limits.MAX_MODEL_PARAMETERS`, before any model is built:
    CheckpointError naming the file and the first disagreement."""
    from fastdecoder.model import check_model_size, state_shapes

    if not isinstance(model_state, dict):
        raise CheckpointError(f"checkpoint {path}: 'model' must be a state dict, got {type(model_state).__name__}")
    expected = state_shapes(cfg.model)
    for name, shape in expected.items():
        tensor = model_state.get(name)
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"checkpoint {path} does not match its own config: the model needs '{name}' "
                                  f"{shape}, the state dict has {'none' if tensor is None else type(tensor).__name__}")
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"checkpoint {path} does not match its own config: its config implies '{name}' of "
                                  f"shape {shape} (model.n_days={cfg.model.n_days}, n_features={cfg.model.n_features}, "
                                  f"hidden_size={cfg.model.hidden_size}, num_layers={cfg.model.num_layers}) but the "
                                  f"state dict holds {tuple(tensor.shape)}")
    extra = [k for k in model_state if k not in expected]
    if extra:
        raise CheckpointError(f"checkpoint {path} does not match its own config: unexpected state dict entries "
                              f"{short_repr(extra)}")
    try:
        check_model_size(cfg.model)
    except LimitError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None


def check_resumable(state: dict, path: str | Path) -> None:
    """Raise CheckpointError naming ``path`` if ``state`` lacks what resuming a run needs."""
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} cannot resume a run: it lacks {', '.join(missing)} (it was not "
                              "written by this version's trainer, or holds weights only)")


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete temp files left by a writer killed mid-save (``.NAME.pt.*.tmp``); returns what was removed."""
    removed = []
    for f in Path(folder).glob(".*.pt.*.tmp"):
        try:
            f.unlink()
            removed.append(f)
        except OSError:
            pass
    return removed


def run_checkpoint_path(run_dir: str | Path, checkpoint: str = "best") -> Path:
    """The file that ``checkpoint`` names in a run folder: ``best`` / ``last`` / a file name there (``.pt`` added
    when missing). A path (a separator, ``..``) is refused with CheckpointError: a run folder's outputs belong to
    its own checkpoints."""
    name = str(checkpoint)
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if name in ("", ".", "..") or any(c in name for c in seps) or "\0" in name:
        raise CheckpointError(f"checkpoint {name!r}: give best, last or the name of a file in the run folder "
                              f"{run_dir} (a path to another folder is refused)")
    return Path(run_dir) / (name if name.endswith(".pt") else f"{name}.pt")


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu"):
    """(config, model in eval mode on ``device``, checkpoint dict) from a run folder's ``best.pt`` / ``last.pt``.

    The model is built as the training run built it on that device (same op backends, see fastdecoder.device), so the
    evaluation path reproduces the run's own validation PER.
    """
    from fastdecoder.config import config_from_dict
    from fastdecoder.device import build_model, resolve_device

    device = device if isinstance(device, torch.device) else resolve_device(device, "--device")
    run_dir = Path(run_dir)
    path = run_checkpoint_path(run_dir, checkpoint)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist (or is not a folder)")
    name = path.name
    state = load_checkpoint(path)
    try:
        cfg = config_from_dict(state["config"])
    except UserError as e:
        raise CheckpointError(f"checkpoint {path} holds an invalid config: {e}") from None
    check_state_shapes(cfg, state["model"], path)  # before building: its sizes come from the file
    model = build_model(cfg, device)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"checkpoint {run_dir / name} does not match its own config: "
                              f"{str(e).splitlines()[0]}") from None
    return cfg, model.eval(), state


def run_data_path(cfg, run_dir: str | Path, data: str | Path | None = None) -> Path:
    """The data a run is evaluated on: ``data`` if given, else the path its config.yaml stores (absolute since
    training stores it so; a relative one from an older run is tried against the current folder, then the run
    folder). UserError with a hint to pass ``--data`` when it is gone."""
    if data is not None:
        return Path(data)
    stored = cfg.data.path
    if not stored:
        raise UserError(f"run {run_dir} records no data path: pass --data PATH")
    p = Path(stored)
    candidates = [p] if p.is_absolute() else [p, Path(run_dir) / p]
    for c in candidates:
        if c.exists():
            return c
    raise UserError(f"the data run {run_dir} was trained on, {stored}, is not there any more: pass --data PATH "
                    "(a b2t24 pickle file or a b2t25 folder of session folders)")


# -- resuming a run ---------------------------------------------------------------------------------------------------
class ResumeError(UserError):
    """``--resume`` cannot continue this run (config mismatch, checkpoint not resumable); says why."""


#: keys that may differ between a checkpoint's config and the config a run is resumed with: the step budget, and
#: what only changes logging/reporting (never the weights); declared beside each field (``key(resume=MAY_DIFFER)``)
RESUME_MAY_DIFFER = resume_may_differ()


def check_resume_config(cfg, saved: dict, where) -> None:
    """ResumeError unless ``cfg`` equals the checkpoint's config ``saved`` (a dict) but for RESUME_MAY_DIFFER. A key
    added after the checkpoint was written compares as its default (the behaviour that came before it)."""
    from fastdecoder.config import Config, config_diff

    want = cfg.to_dict()
    saved = {k: (dict(v) if isinstance(v, dict) else v) for k, v in saved.items()}
    for sec, defaults in Config().to_dict().items():
        if isinstance(defaults, dict) and isinstance(saved.get(sec), dict):
            saved[sec] = {**defaults, **saved[sec]}
    for d in (want, saved):
        p = (d.get("data") or {}).get("path")
        if p:
            d["data"]["path"] = str(Path(p).resolve())
    diffs = config_diff(saved, want, ignore=RESUME_MAY_DIFFER)
    if diffs:
        lines = "; ".join(f"{k}: checkpoint {a!r}, requested {b!r}" for k, a, b in diffs)
        may = ", ".join(k for k in RESUME_MAY_DIFFER if k != "name")
        raise ResumeError(f"cannot resume from {where}: the requested config differs from the checkpoint's in "
                          f"{lines}. Only {may} may change on resume (drop --config to resume with the checkpoint's "
                          "own config, or start a new run in another --out).")


def resume_state(resume, cfg, out_dir: Path | None):
    """(checkpoint dict, where it came from) that ``resume`` names (True: ``out_dir/last.pt``; or a loaded dict),
    checked against ``cfg`` before anything is built; (None, None) for a new run."""
    if not resume:
        return None, None
    if isinstance(resume, dict):
        state, where = resume, (out_dir / "last.pt" if out_dir is not None else "checkpoint")
    else:
        if out_dir is None:
            raise ResumeError("resume needs the run folder (out_dir) holding last.pt")
        where = out_dir / "last.pt"
        state = load_checkpoint(where)
    check_resumable(state, where)
    check_resume_config(cfg, state["config"], where)
    check_state_shapes(cfg, state["model"], where)  # before the model is built
    return state, where



@contextmanager
def restoring(where):
    """Around loading a checkpoint's states into a built run: a missing key or a state that does not fit becomes one
    CheckpointError naming the checkpoint ``where`` and the first line of the cause."""
    try:
        yield
    except KeyError as e:
        raise CheckpointError(f"checkpoint {where} cannot resume this run: it lacks {e}") from None
    except (TypeError, ValueError, IndexError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {where} cannot resume this run: {first}") from None
