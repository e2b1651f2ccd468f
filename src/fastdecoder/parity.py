"""``fastdecoder parity``: every fast path against its reference on the user's device, one table, exit code 1 on a fail.

Checks (fresh random inputs of a few shapes; the seed is printed):

* ``augment``: the fused Triton augmentation kernel vs the plain-PyTorch definition (noise, offset, smoothing, masks);
* ``ln_gru forward`` / ``ln_gru backward``: the Triton LayerNorm-GRU vs the PyTorch loop (outputs + h_n; gradients of
  the input, h0 and every parameter);
* ``train step (gru)`` / ``train step (ln_gru)``: the trainer's fast path vs its reference path over a few steps of a
  tiny synthetic run (losses);
* ``greedy`` / ``beam search``: the native decoders vs the Python references in ``fastdecoder.decode.reference``.

Error: ``max |fast - ref| / max |ref|`` (NaN/Inf or a shape mismatch: inf, never a pass). fp32 tolerances are
fp32 rounding (1e-5 to 1e-4); bf16 ones are bf16's resolution, or for the LN-GRU twice the error PyTorch's own
bf16 autocast makes against fp32. On a CPU the Triton kernels run through Triton's interpreter (``TRITON_INTERPRET=1``,
set here when triton is not imported yet); without it their rows are skipped.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from fastdecoder.errors import UserError
from fastdecoder.ops.checks import augment_error, exact_fp32, ln_gru_errors, max_error  # noqa: F401

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
OPS = ("augment", "ln_gru", "train_step", "decoders")


@dataclass
class Row:
    """One line of the parity table."""
    op: str
    device: str
    dtype: str
    max_error: float
    tolerance: float
    status: str  # "pass" | "FAIL" | "skip"
    detail: str = ""


def _row(op, device, dtype, err, tol, detail="") -> Row:
    return Row(op, str(device), dtype, err, tol, "pass" if err <= tol else "FAIL", detail)


def triton_usable(device: torch.device) -> tuple[bool, str]:
    """Whether the Triton kernels can run on ``device`` here, and if not why (the ops' one rule)."""
    from fastdecoder.ops.triton_support import why_triton_unusable

    why = why_triton_unusable(device)
    return why is None, why or ""


def tiny_train_config(device, dtype: torch.dtype, rnn: str, seed: int = 0):
    """A small synthetic b2t25-style run (the fast path's every op on), for the train-step parity and self-tests: the
    test suite's tiny run (``fastdecoder.testing.tiny``) at 2 x 32 units on 2 days of 16 features, the default
    optimizer and step counts (``bench_train`` sets the steps)."""
    from fastdecoder.config import config_from_dict
    from fastdecoder.testing.tiny import TRAIN_DEFAULTS, tiny_config, tiny_data

    triton_ok = triton_usable(torch.device(device))[0]
    return config_from_dict(tiny_config(
        f"parity-{rnn}", data=tiny_data(seed, trials_per_day=16, val_trials_per_day=2, test_trials_per_day=1),
        model={"hidden_size": 32, "num_layers": 2, "rnn": rnn},
        augment={"white_noise_std": 0.5, "constant_offset_std": 0.1, "time_mask_prob": 0.5, "time_mask_width": 4,
                 "time_mask_count": 1,
                 # both paths draw the oracle's counter-based noise, so their losses must agree
                 "noise": "philox", "backend": "triton" if triton_ok else "reference"},
        optim=None,
        train={**TRAIN_DEFAULTS, "batch_size": 8, "device": str(device),
               "amp": "bf16" if dtype == torch.bfloat16 else "none", "seed": seed, "fast_selfcheck": False},
    ))


def train_step_error(device, dtype: torch.dtype, rnn: str, steps: int, seed: int) -> float:
    """Fast path vs reference path of the trainer over ``steps`` steps: max relative difference of the losses."""
    from fastdecoder.bench.train_speed import bench_train

    cfg = tiny_train_config(device, dtype, rnn, seed)
    with tempfile.TemporaryDirectory() as tmp, _chdir(tmp), exact_fp32():  # synthetic data goes to ./runs
        r = bench_train(cfg, steps=steps, warmup=0, compare_steps=steps)
    return r["loss_max_rel_diff"] if np.isfinite(r["fast"]["losses"]).all() else float("inf")


@contextlib.contextmanager
def _chdir(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def greedy_error(seed: int, batch: int = 16, frames: int = 60, vocab: int = 41) -> float:
    """Fraction of sentences where the native greedy decoder differs from the Python reference."""
    from fastdecoder.decode import greedy_decode
    from fastdecoder.decode.reference import greedy_reference, peaky_log_probs

    lp = peaky_log_probs(np.random.default_rng(seed), batch, frames, vocab)
    lens = np.random.default_rng(seed + 1).integers(1, frames + 1, batch)
    got = greedy_decode(torch.from_numpy(lp), torch.from_numpy(lens))
    return sum(g != greedy_reference(lp[b, :lens[b]]) for b, g in enumerate(got)) / batch


def beam_error(seed: int, batch: int = 6, frames: int = 30, vocab: int = 12, beam_width: int = 8) -> float:
    """Native beam search vs the textbook prefix beam search: max |score difference|, inf where tokens differ."""
    from fastdecoder.decode import beam_search
    from fastdecoder.decode.reference import peaky_log_probs, prefix_beam_search

    lp = peaky_log_probs(np.random.default_rng(seed), batch, frames, vocab).astype(np.float64)
    got = beam_search(lp, beam_width=beam_width, nbest=3)
    err = 0.0
    for b in range(batch):
        want = prefix_beam_search(lp[b], beam_width, nbest=3)
        if [list(t) for t, _ in got[b]] != [t for t, _ in want]:
            return float("inf")
        err = max(err, max(abs(s - w) / max(abs(w), 1.0) for (_, s), (_, w) in zip(got[b], want)))
    return err


# ------------------------------------------------------------------------------------------------- the table
def _shapes(device: torch.device) -> tuple[list, list]:
    """(augment shapes (B, T, C), LN-GRU shapes (B, T, I, H, layers, bidirectional)) for the device."""
    if device.type == "cuda":
        return ([(4, 200, 64), (64, 500, 512)],
                [(16, 48, 96, 80, 2, True), (64, 40, 512, 256, 1, False)])
    return [(2, 37, 8), (3, 20, 5)], [(3, 6, 8, 8, 2, True), (2, 5, 6, 4, 1, False)]


def _guarded(op, device, dtype, fn) -> list[Row]:
    """Rows from ``fn``; an exception becomes one failed row naming the op and the error."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - any failure of a fast path is a failed check, reported
        return [Row(op, str(device), dtype, float("inf"), 0.0, "FAIL", f"{type(e).__name__}: {e}"[:300])]


def run_parity(device="auto", dtypes=("fp32",), ops=OPS, seed: int | None = None, quick: bool = False) -> list[Row]:
    """Every requested check on ``device`` in each of ``dtypes``; returns the table's rows. ``quick``: one shape per
    op and a two-step, GRU-only train-step check (for smoke tests)."""
    from fastdecoder.device import resolve_device

    dev = resolve_device(str(device), "--device")  # UserError for an unknown device or CUDA that is not there
    seed = int.from_bytes(os.urandom(3), "little") if seed is None else seed
    ok, why = triton_usable(dev)
    aug_shapes, gru_shapes = _shapes(dev)
    if quick:
        aug_shapes, gru_shapes = aug_shapes[-1:], gru_shapes[-1:]
    train_steps, rnns = (2, ("gru",)) if quick else (3, ("gru", "ln_gru"))
    rows: list[Row] = []
    for name in dtypes:
        dt = DTYPES[name]
        if "augment" in ops:
            if not ok:
                rows.append(Row("augment", str(dev), name, float("nan"), 0.0, "skip", why))
            else:
                tol = 2e-5 if dt == torch.float32 else 1e-2
                rows += _guarded("augment", dev, name, lambda: [_row(
                    "augment", dev, name, max(augment_error(dev, dt, s, seed + i) for i, s in enumerate(aug_shapes)),
                    tol)])
        if "ln_gru" in ops:
            if not ok:
                rows += [Row(f"ln_gru {w}", str(dev), name, float("nan"), 0.0, "skip", why)
                         for w in ("forward", "backward")]
            else:
                def gru_rows():
                    errs = [ln_gru_errors(dev, dt, s, seed + i) for i, s in enumerate(gru_shapes)]
                    f, b = max(e[0] for e in errs), max(e[1] for e in errs)
                    tf, tb = min(e[2] for e in errs), min(e[3] for e in errs)
                    return [_row("ln_gru forward", dev, name, f, tf), _row("ln_gru backward", dev, name, b, tb)]
                rows += _guarded("ln_gru", dev, name, gru_rows)
        if "train_step" in ops:
            from fastdecoder.device import cpu_bf16_gemms

            tol = 1e-4 if dt == torch.float32 else 2e-2
            cpu_bf16 = dev.type == "cpu" and dt == torch.bfloat16
            native_bf16, no_bf16_why = cpu_bf16_gemms() if cpu_bf16 else (True, "")
            if not native_bf16:
                rows.append(Row("train step", str(dev), name, float("nan"), 0.0, "skip",
                                f"the CPU fast path autocasts to bf16 only with native bf16 GEMMs: {no_bf16_why}"))
            else:
                for rnn in rnns:
                    op = f"train step ({rnn})"
                    if cpu_bf16 and rnn == "ln_gru":  # device.py: the CPU LN-GRU trains in fp32
                        rows.append(Row(op, str(dev), name, float("nan"), 0.0, "skip",
                                        "on the CPU the LN-GRU trains in fp32 (CPU autocast would run its layer "
                                        "norms in bf16)"))
                        continue
                    rows += _guarded(op, dev, name, lambda: [_row(
                        op, dev, name, train_step_error(dev, dt, rnn, train_steps, seed), tol,
                        f"{train_steps} steps, losses")])
    if "decoders" in ops:
        from fastdecoder.decode import num_cpu_threads

        where = f"cpu ({num_cpu_threads()} threads)"
        rows += _guarded("greedy", where, "fp32", lambda: [_row("greedy", where, "fp32", greedy_error(seed), 0.0,
                                                                "fraction of sentences that differ")])
        rows += _guarded("beam search", where, "fp64", lambda: [_row("beam search", where, "fp64", beam_error(seed),
                                                                     1e-9, "3-best tokens equal, score error")])
    for r in rows:
        if not r.detail:
            r.detail = f"seed {seed}"
        elif r.status == "FAIL":
            r.detail += f" (seed {seed})"
    return rows


def format_table(rows: list[Row]) -> str:
    lines = ["| op | device | dtype | max error | tolerance | pass | notes |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.op} | {r.device} | {r.dtype} | {r.max_error:.3g} | {r.tolerance:.3g} | {r.status} | "
                     f"{r.detail.replace('|', '/')} |")
    return "\n".join(lines)


def check(device: str, dtypes: tuple, ops: tuple, seed: int | None = None, quick: bool = False,
          json_path: str | None = None) -> int:
    """Run the checks of ``ops`` (`OPS`) in ``dtypes`` (`DTYPES`), print the table (and write its rows to
    ``json_path``); 0 when every row passed or was skipped, 1 otherwise."""
    bad = [o for o in ops if o not in OPS]
    if bad:
        raise UserError(f"--ops: unknown {', '.join(bad)} (known: {', '.join(OPS)})")
    if device in ("auto", "cpu") and not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernels on the CPU, through Triton's interpreter
    rows = run_parity(device, dtypes, ops, seed, quick)
    print(format_table(rows), flush=True)
    if json_path:
        import json
        from dataclasses import asdict

        with open(json_path, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
    failed = [r.op + f" ({r.dtype})" for r in rows if r.status == "FAIL"]
    if failed:
        print(f"parity FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"parity: all {sum(r.status == 'pass' for r in rows)} checks passed"
          f"{'' if all(r.status == 'pass' for r in rows) else ' (some skipped)'}")
    return 0
