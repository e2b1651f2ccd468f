"""Start-up self-check of the training fast path: an untested GPU, driver or Triton version costs speed, never
correctness.

Before a run is built, :func:`decide_backends` picks the implementation of every op from the config and the device,
and on the fast path (``train.fast``) runs each fast op it picked once on a small standalone random input against its
reference (the checks of ``fastdecoder.parity``):

* ``augment``: the Triton augmentation/smoothing kernel (training transform, eval smoothing, in-model smoothing);
* ``ln_gru``: the Triton LayerNorm-GRU, forward and backward (in the trainer's autocast dtype);
* ``fused_optimizer``: the fused Adam/AdamW step vs the unfused one (CUDA);
* ``resident_batches``: a batch gathered on the device vs one padded on the host.

A mismatch or an exception warns (``FastPathWarning``, naming the op and the error), is returned as a
``fast_op_fallback`` event (the trainer writes it to metrics.jsonl), and the decision names that op's reference
instead. The run is then built from the decision (:class:`Backends`) and nothing is changed afterwards. ``train.fast_selfcheck: false`` skips the check; ``train.fast_selfcheck_fatal: true`` makes a failure an error
(``FastPathError``). The check draws from its own RNG state, so the run's random streams are untouched.
"""
from __future__ import annotations

import importlib.util
import logging
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from fastdecoder.ops.checks import augment_error, ln_gru_errors, max_error

log = logging.getLogger("fastdecoder.train")


class FastPathWarning(UserWarning):
    """A fast op failed its start-up check and falls back to its reference implementation."""


class FastPathError(RuntimeError):
    """A fast op failed its start-up check and ``train.fast_selfcheck_fatal`` is set."""


@dataclass(frozen=True)
class Backends:
    """The op implementations of a run, decided before it is built (:func:`decide_backends`).

    fast: the fast path (``train.fast``; None in the config: on CUDA); ops: backend of the augmentation and
    smoothing ops (the configured ``augment.backend`` on the fast path, else "reference"); rnn: the LayerNormGRU
    backend ("auto" on the fast path, else "reference"); fused_optimizer: fused Adam(W); resident: batches gathered
    from the training split kept on the device; events: the self-check's records for metrics.jsonl.
    """
    fast: bool
    ops: str
    rnn: str
    fused_optimizer: bool
    resident: bool
    events: tuple = ()


def planned_backends(cfg, device: torch.device) -> Backends:
    """What ``cfg`` asks for on ``device``, before any check."""
    from fastdecoder.device import ops_backend, use_fast_path

    fast = use_fast_path(cfg, device)
    return Backends(fast=fast, ops=ops_backend(cfg, device), rnn="auto" if fast else "reference",
                    fused_optimizer=bool(cfg.optim.fused and fast and device.type in ("cuda", "cpu")), resident=fast)


# -- which fast ops a run will use --------------------------------------------------------------------------------
def _uses_triton_augment(b: Backends, cfg, device) -> bool:
    return b.ops == "triton" or (b.ops == "auto" and device.type == "cuda"
                                 and importlib.util.find_spec("triton") is not None)


def _uses_triton_ln_gru(b: Backends, cfg, device) -> bool:
    from fastdecoder.nn import LayerNormGRU

    if cfg.model.rnn != "ln_gru":
        return False
    try:
        return LayerNormGRU.backend_for(b.rnn, device) == "triton"
    except RuntimeError:  # backend='triton' where Triton cannot run: the check reports it
        return True


# -- the checks on standalone inputs: each returns [(what, error, tolerance)] -------------------------------------
def _check_augment(cfg, device, amp_dtype, b):
    return [("", augment_error(device, torch.float32, (2, 40, 8), seed=1), 2e-5)]


def _check_ln_gru(cfg, device, amp_dtype, b):
    dtype = amp_dtype if amp_dtype == torch.bfloat16 else torch.float32
    fwd, bwd, tol_f, tol_b = ln_gru_errors(device, dtype, (2, 6, 8, 8, 1, cfg.model.bidirectional), seed=1,
                                           bf16_factor=4)  # a tiny problem: its bf16 errors are noisy
    return [("forward", fwd, tol_f), ("backward", bwd, tol_b)]


def _check_fused_optimizer(cfg, device, amp_dtype, b):
    o = cfg.optim
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    kw = dict(lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    gen = torch.Generator().manual_seed(1)
    init = torch.randn(256, generator=gen).to(device)
    grads = [torch.randn(256, generator=gen).to(device) for _ in range(3)]
    results = []
    for fused in (True, False):
        p = torch.nn.Parameter(init.clone())
        opt = cls([p], fused=fused, **kw)
        for gr in grads:
            p.grad = gr.clone()
            opt.step()
        results.append(p.detach())
    return [("", max_error(results[0] - init, results[1] - init), 1e-4)]  # the update, not the parameter


def _check_resident_batches(cfg, device, amp_dtype, b):
    from fastdecoder.data import Split, collate
    from fastdecoder.train.run_data import make_resident

    gen = np.random.default_rng(1)
    lens, y_lens = (7, 3, 12, 5), (2, 1, 4, 3)
    split = Split(features=[gen.standard_normal((t, 6)).astype(np.float32) for t in lens],
                  targets=[gen.integers(1, 41, n).astype(np.int64) for n in y_lens],
                  day=np.array([1, 0, 1, 0]), trial_ids=[f"t{i}" for i in range(len(lens))])
    idx = np.array([2, 0, 3, 1])
    a = make_resident(split, device).batch(idx, device=device)
    r = collate(split, idx).to(device)
    same = all(torch.equal(getattr(a, f), getattr(r, f)) for f in ("x", "x_lens", "y", "y_lens", "day"))
    return [("", 0.0 if same else float("inf"), 0.0)]


#: op name -> (in use?, check, the decision with that op's reference instead)
FAST_OPS = {
    "augment": (_uses_triton_augment, _check_augment, lambda b: replace(b, ops="reference")),
    "ln_gru": (_uses_triton_ln_gru, _check_ln_gru, lambda b: replace(b, rnn="reference")),
    "fused_optimizer": (lambda b, cfg, device: b.fused_optimizer, _check_fused_optimizer,
                        lambda b: replace(b, fused_optimizer=False)),
    "resident_batches": (lambda b, cfg, device: b.resident, _check_resident_batches,
                         lambda b: replace(b, resident=False)),
}


def _failure(check, *args) -> str | None:
    """None when every comparison of ``check`` is within tolerance; else why not."""
    try:
        results = check(*args)
    except Exception as e:  # noqa: BLE001 - a crashing kernel is a failed check
        return f"raised {type(e).__name__}: {e}"[:500]
    bad = [f"{(what + ' ') if what else ''}max error {err:.3g} > tolerance {tol:.3g}"
           for what, err, tol in results if not err <= tol]  # NaN fails
    return "; ".join(bad) or None


def decide_backends(cfg, device: torch.device, amp_dtype: torch.dtype | None = None,
                    planned: Backends | None = None) -> Backends:
    """The backends a run of ``cfg`` on ``device`` uses: ``planned`` (default :func:`planned_backends`), with every
    fast op in use checked against its reference on a tiny standalone input (``train.fast_selfcheck``) and replaced
    by its reference where the check fails. The checks draw from their own RNG state: the run's streams are
    untouched."""
    b = planned if planned is not None else planned_backends(cfg, device)
    if not b.fast or not cfg.train.fast_selfcheck:
        return b
    in_use = [name for name, (uses, _, _) in FAST_OPS.items() if uses(b, cfg, device)]
    if not in_use:
        return b
    devices = [device] if device.type == "cuda" else []
    failed: dict[str, str] = {}
    with torch.random.fork_rng(devices=devices):
        for name in in_use:
            why = _failure(FAST_OPS[name][1], cfg, device, amp_dtype, b)
            if why is None:
                continue
            msg = f"fast path self-check on {device}: {name} {why}"
            if cfg.train.fast_selfcheck_fatal:
                raise FastPathError(msg + " (train.fast_selfcheck_fatal is set)")
            warnings.warn(msg + f"; {name} falls back to its reference implementation for this run",
                          FastPathWarning, stacklevel=3)
            failed[name] = why
    if not failed:
        log.info("fast path self-check on %s: %s match their references", device, ", ".join(in_use))
    for name in failed:
        b = FAST_OPS[name][2](b)
    events = [{"event": "fast_selfcheck", "device": str(device), "checked": in_use, "failed": sorted(failed)}]
    events += [{"event": "fast_op_fallback", "op": name, "reason": why, "device": str(device)}
               for name, why in failed.items()]
    return replace(b, events=tuple(events))
