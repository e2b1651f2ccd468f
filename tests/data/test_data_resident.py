"""ResidentSplit builds the same batches as collate (the fast path's batching is tested against the reference)."""
import numpy as np
import pytest
import torch

from fastdecoder.data import SynthSpec, collate, generate_synthetic
from fastdecoder.data.resident import ResidentSplit


@pytest.fixture(scope="module")
def split():
    spec = SynthSpec(n_days=2, trials_per_day=20, val_trials_per_day=2, test_trials_per_day=0, n_features=12,
                     seed=int(np.random.default_rng().integers(1 << 30)))
    return generate_synthetic(spec, "b2t25").splits["train"]


@pytest.mark.parametrize("B", [1, 5, 17])
def test_resident_batches_equal_collate(split, B):
    res = ResidentSplit(split)
    rng = np.random.default_rng()
    for _ in range(5):
        idx = rng.integers(0, len(split), size=B)
        a, b = collate(split, idx), res.batch(idx)
        for f in ("x", "x_lens", "y", "y_lens", "day"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f
        assert np.array_equal(a.index, b.index)


def test_resident_bf16_storage_rounds_only(split):
    res = ResidentSplit(split, dtype=torch.bfloat16)
    idx = np.arange(6)
    a, b = collate(split, idx), res.batch(idx)
    assert b.x.dtype == torch.float32
    torch.testing.assert_close(b.x, a.x.to(torch.bfloat16).float(), rtol=0, atol=0)
    assert res.nbytes < ResidentSplit(split).nbytes


def test_resident_bad_input(split):
    res = ResidentSplit(split)
    with pytest.raises(IndexError, match="trial indices"):
        res.batch([len(split)])
    with pytest.raises(ValueError, match="at least one"):
        res.batch([])
    with pytest.raises(ValueError, match="dtype"):
        ResidentSplit(split, dtype=torch.float16)


@pytest.mark.gpu
def test_resident_on_cuda_equals_collate(split):
    res = ResidentSplit(split, device="cuda")
    idx = np.arange(0, len(split), 3)
    a, b = collate(split, idx), res.batch(idx)
    for f in ("x", "x_lens", "y", "y_lens", "day"):
        assert torch.equal(getattr(a, f), getattr(b, f).cpu()), f
