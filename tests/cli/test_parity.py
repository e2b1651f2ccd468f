"""``fastdecoder parity``: passes on the CPU; a deliberately broken fast path fails it, named, with exit code 1."""
import math

import pytest
import torch

import fastdecoder.decode
import fastdecoder.ops
from fastdecoder.cli import main
from fastdecoder.nn import LayerNormGRU
from fastdecoder.parity import format_table, max_error, run_parity

real_augment = fastdecoder.ops.augment
real_beam_search = fastdecoder.decode.beam_search


def test_parity_passes_on_cpu(capsys):
    assert main(["parity", "--device", "cpu", "--quick", "--ops", "augment,ln_gru,decoders", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    for op in ("augment", "ln_gru forward", "ln_gru backward", "greedy", "beam search"):
        assert f"| {op} | cpu" in out and "| FAIL |" not in out, out
    assert "parity: all 5 checks passed" in out


def test_broken_augment_kernel_fails_and_is_named(monkeypatch, capsys):
    def off_by_a_bit(x, *args, backend="auto", **kw):
        out = real_augment(x, *args, backend=backend, **kw)
        return out * 1.001 if backend == "triton" else out

    monkeypatch.setattr(fastdecoder.ops, "augment", off_by_a_bit)
    assert main(["parity", "--device", "cpu", "--quick", "--ops", "augment,decoders"]) == 1
    cap = capsys.readouterr()
    assert "| augment | cpu | fp32 |" in cap.out and "| FAIL |" in cap.out
    assert "parity FAILED: augment (fp32)" in cap.err
    assert "greedy" not in cap.err  # only the broken op is named


def test_broken_native_beam_search_fails(monkeypatch, capsys):
    def drops_mass(lp, *args, **kw):
        return [[(t, s - 1e-3) for t, s in hyps] for hyps in real_beam_search(lp, *args, **kw)]

    monkeypatch.setattr(fastdecoder.decode, "beam_search", drops_mass)
    assert main(["parity", "--ops", "decoders"]) == 1
    assert "parity FAILED: beam search" in capsys.readouterr().err


def test_raising_ln_gru_kernel_is_a_failed_row_with_the_error(monkeypatch):
    forward = LayerNormGRU.forward

    def crashes(self, x, h0=None):
        if self.resolved_backend(x.device) == "triton":
            raise RuntimeError("simulated: no kernel image for this device")
        return forward(self, x, h0)

    monkeypatch.setattr(LayerNormGRU, "forward", crashes)
    rows = run_parity("cpu", ("fp32",), ("ln_gru",), seed=3, quick=True)
    assert [(r.op, r.status) for r in rows] == [("ln_gru", "FAIL")]
    assert "simulated: no kernel image" in rows[0].detail and "seed 3" in rows[0].detail
    assert "| ln_gru | cpu | fp32 | inf |" in format_table(rows)


def test_max_error_never_passes_nan_or_a_wrong_shape():
    a = torch.ones(3)
    assert max_error(a, a) == 0.0
    assert math.isinf(max_error(torch.tensor([1.0, float("nan"), 1.0]), a))
    assert math.isinf(max_error(torch.ones(4), a))
    assert max_error(torch.tensor([1.0, 1.0, 1.5]), torch.tensor([1.0, 1.0, 2.0])) == pytest.approx(0.25)


def test_bad_arguments(capsys):
    assert main(["parity", "--ops", "augment,warp_drive"]) == 2
    assert "warp_drive" in capsys.readouterr().err
