"""The one rule for whether Triton can run (``triton_usable``) and the one error where it cannot."""
from __future__ import annotations

import pytest
import torch

from fastdecoder.nn import LayerNormGRU
from fastdecoder.ops import FastPathUnavailable, augment, triton_usable
from fastdecoder.ops.triton_support import interpreter_enabled, require_triton, why_triton_unusable

pytest.importorskip("triton")


@pytest.mark.parametrize("value,on", [("1", True), ("true", True), ("YES", True), (" on ", True), ("y", True),
                                      ("0", False), ("", False), ("false", False), ("off", False), ("2", False)])
def test_interpreter_variable_is_read_at_call_time_as_triton_reads_it(monkeypatch, value, on):
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert interpreter_enabled() is on
    assert triton_usable("cpu") is on and triton_usable(torch.device("cpu")) is on
    assert (why_triton_unusable("cpu") is None) is on


def test_unusable_devices_and_the_one_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not triton_usable("meta") and "meta" in why_triton_unusable("meta")
    assert issubclass(FastPathUnavailable, RuntimeError)
    with pytest.raises(FastPathUnavailable, match=r"^thing: CPU tensors need Triton's interpreter"):
        require_triton("cpu", "thing")
    # both ops raise the same error, from the same rule
    with pytest.raises(FastPathUnavailable, match=r"augment\(backend='triton'\)"):
        augment(torch.randn(1, 8, 4), backend="triton")
    with pytest.raises(FastPathUnavailable, match=r"LayerNormGRU\(backend='triton'\)"):
        LayerNormGRU(4, 8, backend="triton")(torch.randn(2, 3, 4))
