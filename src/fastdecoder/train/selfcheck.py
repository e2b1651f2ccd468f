"""Start-up self-check of the training fast path: an untested GPU, driver or Triton version costs speed, never
correctness.

When a Trainer starts on the fast path (``train.fast``), each fast op it will use is run once on a small random input
against its reference (the checks of ``fastdecoder.parity``):

* ``augment``: the Triton augmentation/smoothing kernel (training transform, eval smoothing, in-model smoothing);
* ``ln_gru``: the Triton LayerNorm-GRU, forward and backward (in the trainer's autocast dtype);
* ``fused_optimizer``: the fused Adam/AdamW step vs the unfused one (CUDA);
* ``resident_batches``: a batch gathered on the device vs one padded on the host.

A mismatch or an exception warns (``FastPathWarning``, naming the op and the error), is returned as a
``fast_op_fallback`` event (the trainer writes it to metrics.jsonl), and that op falls back to its reference for the
run. ``train.fast_selfcheck: false`` skips the check; ``train.fast_selfcheck_fatal: true`` makes a failure an error
(``FastPathError``). The check draws from its own RNG state, so the run's random streams are untouched.
"""
from __future__ import annotations

import importlib.util
import logging
import warnings

import numpy as np
import torch

from fastdecoder.ops.checks import augment_error, ln_gru_errors, max_error

log = logging.getLogger("fastdecoder.train")


class FastPathWarning(UserWarning):
    """A fast op failed its start-up check and falls back to its reference implementation."""


class FastPathError(RuntimeError):
    """A fast op failed its start-up check and ``train.fast_selfcheck_fatal`` is set."""


# -- which fast ops the trainer will use -------------------------------------------------------------------------
def _uses_triton_augment(tr) -> bool:
    return tr.ops_backend == "triton" or (tr.ops_backend == "auto" and tr.device.type == "cuda"
                                          and importlib.util.find_spec("triton") is not None)


def _uses_triton_ln_gru(tr) -> bool:
    from fastdecoder.nn import LayerNormGRU

    rnn = tr.model.rnn
    if not isinstance(rnn, LayerNormGRU):
        return False
    try:
        return rnn.resolved_backend(tr.device) == "triton"
    except RuntimeError:  # backend='triton' where Triton cannot run: the check reports it
        return True


def _uses_fused_optimizer(tr) -> bool:
    return any(g.get("fused") for g in tr.optimizer.param_groups)


# -- the checks: each returns [(what, error, tolerance)] ----------------------------------------------------------
def _check_augment(tr):
    return [("", augment_error(tr.device, torch.float32, (2, 40, 8), seed=1), 2e-5)]


def _check_ln_gru(tr):
    dtype = tr.amp_dtype if tr.amp_dtype == torch.bfloat16 else torch.float32
    fwd, bwd, tol_f, tol_b = ln_gru_errors(tr.device, dtype, (2, 6, 8, 8, 1, tr.model.rnn.bidirectional), seed=1,
                                           bf16_factor=4)  # a tiny problem: its bf16 errors are noisy
    return [("forward", fwd, tol_f), ("backward", bwd, tol_b)]


def _check_fused_optimizer(tr):
    g = tr.optimizer.param_groups[0]
    kw = {k: g[k] for k in ("lr", "betas", "eps", "weight_decay")}
    gen = torch.Generator().manual_seed(1)
    init = torch.randn(256, generator=gen).to(tr.device)
    grads = [torch.randn(256, generator=gen).to(tr.device) for _ in range(3)]
    results = []
    for fused in (True, False):
        p = torch.nn.Parameter(init.clone())
        opt = type(tr.optimizer)([p], fused=fused, **kw)
        for gr in grads:
            p.grad = gr.clone()
            opt.step()
        results.append(p.detach())
    return [("", max_error(results[0] - init, results[1] - init), 1e-4)]  # the update, not the parameter


def _check_resident_batches(tr):
    from fastdecoder.data import collate

    idx = np.arange(min(4, tr.resident.n))
    a = tr.resident.batch(idx, device=tr.device)
    b = collate(tr.train_split, idx).to(tr.device)
    same = all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("x", "x_lens", "y", "y_lens", "day"))
    return [("", 0.0 if same else float("inf"), 0.0)]


# -- the fallbacks ------------------------------------------------------------------------------------------------
def _reference_augment(tr) -> None:
    tr.ops_backend = "reference"
    tr.model.smoothing_backend = "reference"
    tr.eval_transform.backend = "reference"  # shared by the training augmentation and evaluation


def _reference_ln_gru(tr) -> None:
    tr.model.rnn.backend = "reference"


def _unfused_optimizer(tr) -> None:
    tr.optimizer.defaults["fused"] = False
    for g in tr.optimizer.param_groups:
        g["fused"] = False


def _host_batches(tr) -> None:
    tr.resident = None


#: op name -> (in use?, check, fall back to the reference)
FAST_OPS = {
    "augment": (_uses_triton_augment, _check_augment, _reference_augment),
    "ln_gru": (_uses_triton_ln_gru, _check_ln_gru, _reference_ln_gru),
    "fused_optimizer": (_uses_fused_optimizer, _check_fused_optimizer, _unfused_optimizer),
    "resident_batches": (lambda tr: tr.resident is not None, _check_resident_batches, _host_batches),
}


def _failure(check, tr) -> str | None:
    """None when every comparison of ``check`` is within tolerance; else why not."""
    try:
        results = check(tr)
    except Exception as e:  # noqa: BLE001 - a crashing kernel is a failed check
        return f"raised {type(e).__name__}: {e}"[:500]
    bad = [f"{(what + ' ') if what else ''}max error {err:.3g} > tolerance {tol:.3g}"
           for what, err, tol in results if not err <= tol]  # NaN fails
    return "; ".join(bad) or None


def check_fast_path(tr) -> list[dict]:
    """Check every fast op ``tr`` (a Trainer) uses; fall back where one fails. Returns events for metrics.jsonl."""
    cfg = tr.cfg.train
    if not tr.fast or not cfg.fast_selfcheck:
        return []
    in_use = [name for name, (uses, _, _) in FAST_OPS.items() if uses(tr)]
    if not in_use:
        return []
    devices = [tr.device] if tr.device.type == "cuda" else []
    failed: dict[str, str] = {}
    with torch.random.fork_rng(devices=devices):
        for name in in_use:
            why = _failure(FAST_OPS[name][1], tr)
            if why is None:
                continue
            msg = f"fast path self-check on {tr.device}: {name} {why}"
            if cfg.fast_selfcheck_fatal:
                raise FastPathError(msg + " (train.fast_selfcheck_fatal is set)")
            warnings.warn(msg + f"; {name} falls back to its reference implementation for this run",
                          FastPathWarning, stacklevel=3)
            FAST_OPS[name][2](tr)
            failed[name] = why
    if not failed:
        log.info("fast path self-check on %s: %s match their references", tr.device, ", ".join(in_use))
    events = [{"step": tr.step, "event": "fast_selfcheck", "device": str(tr.device), "checked": in_use,
               "failed": sorted(failed)}]
    events += [{"step": tr.step, "event": "fast_op_fallback", "op": name, "reason": why, "device": str(tr.device)}
               for name, why in failed.items()]
    return events
