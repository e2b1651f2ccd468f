"""ops.day_affine (trials grouped by day, one GEMM per distinct day) against the published gather + bmm.

Fresh random inputs of several shapes and day groupings (one day, all different, equal groups, ragged, unsorted);
outputs and the gradients of x, W and b agree to fp32 round-off (1e-5 relative to the largest magnitude).
"""
import numpy as np
import pytest
import torch

from fastdecoder.ops.day_affine import DayGroups, day_affine, day_affine_gather, plan_day_groups

GROUPINGS = {
    "one day": lambda B, D, g: torch.full((B,), int(torch.randint(D, (1,), generator=g))),
    "all different": lambda B, D, g: torch.randperm(D, generator=g)[:B],
    "equal groups sorted": lambda B, D, g: torch.arange(B) // (B // 2) * 2 % D,
    "contiguous runs unsorted": lambda B, D, g: (D - 1 - torch.arange(B) // 2 % D).sort(descending=True).values,
    "ragged unsorted": lambda B, D, g: torch.randint(D, (B,), generator=g),
    # the 'days' batching with a surplus trimmed: contiguous runs of m and m - 1 (padded to m slots)
    "trimmed runs": lambda B, D, g: torch.repeat_interleave(torch.randperm(D, generator=g)[:2],
                                                            torch.tensor([B - B // 2, B // 2])),
    # only the last run short (B = 8: 5 + 3 padded to 2 x 5 rows, the trials already in slot order)
    "last run shorter": lambda B, D, g: torch.repeat_interleave(torch.randperm(D, generator=g)[:2],
                                                                torch.tensor([B // 2 + 1, B - B // 2 - 1])),
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
    host_days = day.numpy().copy()
    fns = {"grouped from a CPU day_idx": day_affine,
           # the fast step's form: planned from the host days, the op given a day_idx it must not read
           "planned from host days": lambda x, d, W, b: day_affine(x, d, W, b, plan_day_groups(host_days, D)),
           "planned, one GEMM per day": lambda x, d, W, b: day_affine(x, d, W, b,
                                                                     plan_day_groups(host_days, D, max_padding=0)),
           "gather": day_affine_gather}
    results = {}
    for how, fn in fns.items():
        x, W, b = (t.clone().requires_grad_() for t in (x0, W0, b0))
        y = fn(x, day, W, b)
        y.backward(dy)
        results[how] = (y.detach(), x.grad, W.grad, b.grad)
    want = results.pop("gather")
    for how, got in results.items():
        for name, a, w in zip(("y", "dx", "dW", "db"), got, want):
            assert a.shape == w.shape, name
            _close(a, w, f"{name} {how} ({grouping}, B={B} T={T} C={C} D={D}, seed {test_seed})")
        unused = torch.ones(D, dtype=torch.bool)
        unused[day] = False
        assert not got[2][unused].any()  # days absent from the batch get zero gradient, as with the gather


@pytest.mark.parametrize("days,width,counts,identity", [
    ([3, 3, 0, 0, 5, 5], 2, (2, 2, 2), True),        # the 'days' batching: equal runs, nothing reordered
    ([3, 3, 3, 0, 0, 5, 5, 5], 3, (3, 2, 3), False),  # a trimmed run: padded to 3 slots (1 extra row of 8)
    ([3, 3, 3, 0, 0, 0, 5, 5], 3, (3, 3, 2), False),  # only the last run trimmed: ``put`` reads 0..7 of 9 rows
    ([1, 2, 1, 2], 2, (2, 2), False),                  # equal but interleaved: a permutation
    ([0, 0, 0, 0, 0, 1, 2, 3], 0, (5, 1, 1, 1), True),  # padding would add 12 rows to 8: one GEMM per day
])
def test_plans_have_static_shapes(days, width, counts, identity):
    g = plan_day_groups(np.array(days), 6)
    assert isinstance(g, DayGroups) and g.width == width and g.counts == counts and g.batch == len(days)
    assert (g.take is None and g.put is None) == identity
    if width and not identity:
        assert g.take.shape == (len(counts) * width,) and g.put.shape == (len(days),)
        # every trial is taken into exactly the slot ``put`` names
        assert (g.take[g.put] == torch.arange(len(days))).all()


def test_plans_refuse_bad_days_and_wrong_batches():
    with pytest.raises(ValueError, match=r"day_idx must lie in \[0, 4\).*\[1, 4\]"):
        plan_day_groups(np.array([1, 4]), 4)
    with pytest.raises(ValueError, match="at least one trial"):
        plan_day_groups(np.zeros(0, dtype=np.int64), 4)
    x, W, b = torch.randn(3, 4, 5), torch.randn(2, 5, 5), torch.randn(2, 1, 5)
    with pytest.raises(ValueError, match="planned for 2 trials, x holds 3"):
        day_affine(x, torch.zeros(3, dtype=torch.long), W, b, plan_day_groups([0, 1], 2))


def test_planned_groups_compile_once_for_every_batch_of_the_same_structure(test_seed):
    """Under dynamo the plan's tensors are graph inputs and its ints guards: new days, same structure, no
    recompile (the 'days' batching's batches differ only in which days they hold)."""
    from fastdecoder.testing.compiles import CompilesPerFrame

    g = torch.Generator().manual_seed(test_seed)
    W, b = torch.randn(6, 8, 8, generator=g), torch.randn(6, 1, 8, generator=g)
    counter = CompilesPerFrame()
    torch._dynamo.reset()
    fn = torch.compile(lambda x, d, groups: day_affine(x, d, W, b, groups), backend=counter, dynamic=False)
    try:
        for trimmed in (False, True):
            for _ in range(3):
                days = torch.randperm(6, generator=g)[:2].repeat_interleave(4).numpy()
                if trimmed:
                    days = np.delete(days, 0)  # 3 + 4 trials: padded to 2 x 4 slots
                x = torch.randn(len(days), 5, 8, generator=g)
                got = fn(x, torch.from_numpy(days), plan_day_groups(days, 6))
                _close(got, day_affine_gather(x, torch.from_numpy(days), W, b), f"compiled, days {days}")
    finally:
        torch._dynamo.reset()
    assert sum(counter.compiles.values()) <= 2, counter.compiles  # one graph per structure (and batch size)


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
    from fastdecoder.ops.day_affine.grouped import _group_order

    distinct, counts, order = _group_order(np.array([5, 5, 2, 2, 2, 7]))
    assert distinct.tolist() == [5, 2, 7] and counts.tolist() == [2, 3, 1] and order.tolist() == list(range(6))
    distinct, counts, order = _group_order(np.array([3, 1, 3, 1]))
    assert distinct.tolist() == [3, 1] and counts.tolist() == [2, 2] and order.tolist() == [0, 2, 1, 3]


def test_strided_input_as_after_the_random_cut(test_seed):
    g = torch.Generator().manual_seed(test_seed)
    x = torch.randn(6, 13, 8, generator=g)[:, 3:]  # a view, as TrainAugmentation's cut gives
    W, b = torch.randn(4, 8, 8, generator=g), torch.randn(4, 1, 8, generator=g)
    for day in (torch.tensor([2, 2, 0, 0, 3, 3]), torch.tensor([1, 3, 1, 0, 3, 1])):
        _close(day_affine(x, day, W, b), day_affine_gather(x, day, W, b), f"strided x, days {day.tolist()}")


@pytest.mark.parametrize("grouping", ["equal groups sorted", "trimmed runs", "ragged unsorted"])
def test_planned_groups_under_bf16_autocast(grouping, test_seed):
    """Under bf16 autocast both forms run bf16 products and add the bias in fp32 (the same output dtype): they agree
    to bf16 round-off (1e-2 relative)."""
    g = torch.Generator().manual_seed(test_seed)
    B, T, C, D = 8, 12, 32, 6
    day = GROUPINGS[grouping](B, D, g).long()
    x, W, b = torch.randn(B, T, C, generator=g), torch.randn(D, C, C, generator=g), torch.randn(D, 1, C, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = day_affine(x, day, W, b, plan_day_groups(day.numpy(), D))
        want = day_affine_gather(x, day, W, b)
    assert got.dtype == want.dtype == torch.float32
    err = (got.float() - want.float()).abs().max() / want.float().abs().max()
    assert torch.isfinite(got).all() and err <= 1e-2, f"{grouping}: bf16 relative error {err:.2e} (seed {test_seed})"


@pytest.mark.gpu
def test_planned_groups_on_cuda_equal_the_gather_without_a_sync(test_seed):
    g = torch.Generator().manual_seed(test_seed)
    B, T, C, D = 8, 20, 64, 6
    W0, b0 = torch.randn(D, C, C, generator=g), torch.randn(D, 1, C, generator=g)
    for grouping in ("equal groups sorted", "trimmed runs", "ragged unsorted"):
        day = GROUPINGS[grouping](B, D, g).long()
        x0, dy = torch.randn(B, T, C, generator=g).cuda(), torch.randn(B, T, C, generator=g).cuda()
        results = []
        for planned in (True, False):
            x, W, b = (t.cuda().clone().requires_grad_() for t in (x0, W0, b0))
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                if planned:  # the plan, its copies and the op: no host sync
                    y = day_affine(x, day.cuda(non_blocking=True), W, b, plan_day_groups(day.numpy(), D, "cuda"))
                else:
                    y = day_affine_gather(x, day.cuda(), W, b)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            y.backward(dy)
            results.append((y.detach(), x.grad, W.grad, b.grad))
        for name, a, w in zip(("y", "dx", "dW", "db"), *results):
            _close(a.cpu(), w.cpu(), f"cuda {name} ({grouping}, seed {test_seed})")
