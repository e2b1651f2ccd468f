"""ops.day_affine (trials grouped by day, one GEMM per distinct day) against the published gather + bmm.

Fresh random inputs of several shapes and day groupings (one day, all different, equal groups, ragged, unsorted);
outputs and the gradients of x, W and b agree to fp32 round-off (1e-5 relative to the largest magnitude).
"""
import numpy as np
import pytest
import torch

from fastdecoder.ops.day_affine import day_affine, day_affine_gather

GROUPINGS = {
    "one day": lambda B, D, g: torch.full((B,), int(torch.randint(D, (1,), generator=g))),
    "all different": lambda B, D, g: torch.randperm(D, generator=g)[:B],
    "equal groups sorted": lambda B, D, g: torch.arange(B) // (B // 2) * 2 % D,
    "contiguous runs unsorted": lambda B, D, g: (D - 1 - torch.arange(B) // 2 % D).sort(descending=True).values,
    "ragged unsorted": lambda B, D, g: torch.randint(D, (B,), generator=g),
}


def _close(a, b, what):
    assert torch.isfinite(a).all() and torch.isfinite(b).all(), what
    err = (a - b).abs().max() / b.abs().max().clamp(min=1e-12)
    assert err <= 1e-5, f"{what}: max relative error {err:.2e}"


@pytest.mark.parametrize("grouping", list(GROUPINGS))
@pytest.mark.parametrize("B,T,C,D", [(6, 9, 16, 7), (8, 31, 40, 9), (4, 1, 5, 5)])
def test_grouped_equals_gather_with_gradients(grouping, B, T, C, D, test_seed):
    g = torch.Generator().manual_seed(test_seed)
    day = GROUPINGS[grouping](B, D, g).long()
    assert day.shape == (B,)
    x0 = torch.randn(B, T, C, generator=g)
    W0 = torch.eye(C) + 0.3 * torch.randn(D, C, C, generator=g)
    b0 = torch.randn(D, 1, C, generator=g)
    dy = torch.randn(B, T, C, generator=g)
    results = []
    for fn in (day_affine, day_affine_gather):
        x, W, b = (t.clone().requires_grad_() for t in (x0, W0, b0))
        y = fn(x, day, W, b)
        y.backward(dy)
        results.append((y.detach(), x.grad, W.grad, b.grad))
    for name, got, want in zip(("y", "dx", "dW", "db"), *results):
        assert got.shape == want.shape, name
        _close(got, want, f"{name} ({grouping}, B={B} T={T} C={C} D={D})")
    unused = torch.ones(D, dtype=torch.bool)
    unused[day] = False
    assert not results[0][2][unused].any()  # days absent from the batch get zero gradient, as with the gather


def test_device_day_index_keeps_the_gather_and_bad_days_are_named():
    x, W, b = torch.randn(3, 4, 5), torch.randn(2, 5, 5), torch.randn(2, 1, 5)
    with pytest.raises(ValueError, match=r"day_idx must lie in \[0, 2\).*\[0, 2\]"):
        day_affine(x, torch.tensor([0, 2, 0]), W, b)
    with pytest.raises(ValueError, match="day_idx"):
        day_affine(x, torch.tensor([-1, 0, 0]), W, b)
    assert day_affine(x[:0], torch.zeros(0, dtype=torch.long), W, b).shape == (0, 4, 5)


def test_model_day_layer_uses_the_grouped_form(test_seed):
    from dataclasses import replace

    from fastdecoder.config import load_config
    from fastdecoder.model import GRUDecoder

    torch.manual_seed(test_seed)
    cfg = replace(load_config("b2t25").model, n_features=12, n_days=5, hidden_size=8, num_layers=1)
    model = GRUDecoder(cfg)
    with torch.no_grad():
        model.day_weights.add_(0.2 * torch.randn_like(model.day_weights))
        model.day_biases.add_(torch.randn_like(model.day_biases))
    x, day = torch.randn(6, 20, 12), torch.tensor([4, 1, 1, 4, 0, 1])
    want = torch.nn.functional.softsign(day_affine_gather(x, day, model.day_weights, model.day_biases))
    _close(model.day_layer(x, day), want, "model.day_layer")


def test_groups_keep_contiguous_day_runs_in_place():
    from fastdecoder.ops.day_affine import _groups

    distinct, counts, order = _groups(np.array([5, 5, 2, 2, 2, 7]))
    assert distinct.tolist() == [5, 2, 7] and counts.tolist() == [2, 3, 1] and order.tolist() == list(range(6))
    distinct, counts, order = _groups(np.array([3, 1, 3, 1]))
    assert distinct.tolist() == [3, 1] and counts.tolist() == [2, 2] and order.tolist() == [0, 2, 1, 3]


def test_strided_input_as_after_the_random_cut(test_seed):
    g = torch.Generator().manual_seed(test_seed)
    x = torch.randn(6, 13, 8, generator=g)[:, 3:]  # a view, as TrainAugmentation's cut gives
    W, b = torch.randn(4, 8, 8, generator=g), torch.randn(4, 1, 8, generator=g)
    for day in (torch.tensor([2, 2, 0, 0, 3, 3]), torch.tensor([1, 3, 1, 0, 3, 1])):
        _close(day_affine(x, day, W, b), day_affine_gather(x, day, W, b), f"strided x, days {day.tolist()}")
