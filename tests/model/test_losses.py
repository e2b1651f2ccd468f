"""Output-length math, target feasibility and the two CTC reductions."""
import torch
import torch.nn.functional as F

from fastdecoder.losses import ctc_loss, infeasible_targets, min_frames_for_target, output_lengths


def test_exact_lengths_match_unfold():
    for T in range(14, 80):
        n_unfold = torch.zeros(1, T, 3).unfold(1, 14, 4).shape[1]
        assert int(output_lengths(torch.tensor([T]), 14, 4)[0]) == n_unfold == (T - 14) // 4 + 1


def test_shipped_b2t24_formula_drops_last_frame():
    T = torch.tensor([32, 35, 36, 100, 150])
    exact = output_lengths(T, 32, 4, "exact")
    shipped = output_lengths(T, 32, 4, "shipped")
    assert exact.tolist() == [1, 1, 2, 18, 30]
    assert shipped.tolist() == [0, 0, 1, 17, 29]
    assert (exact - shipped).tolist() == [1] * 5


def test_lengths_are_integer_and_clamped():
    n = output_lengths(torch.tensor([5, 14, 17, 18]), 14, 4, max_frames=1)
    assert n.dtype == torch.int64 and n.tolist() == [1, 1, 1, 1]


def test_min_frames_counts_repeats():
    y = torch.tensor([[1, 1, 2, 2, 2, 0], [3, 4, 0, 0, 0, 0]])
    assert min_frames_for_target(y, torch.tensor([5, 2])).tolist() == [5 + 3, 2]
    # the padding zeros after the length do not count as repeats
    assert min_frames_for_target(torch.tensor([[5, 0, 0]]), torch.tensor([1])).tolist() == [1]
    bad = infeasible_targets(torch.tensor([7, 2]), y, torch.tensor([5, 2]))
    assert bad.tolist() == [True, False]


def test_ctc_reductions():
    torch.manual_seed(0)
    logits = torch.randn(3, 12, 41)
    y = torch.randint(1, 41, (3, 4))
    yl = torch.tensor([4, 2, 3])
    n = torch.tensor([12, 10, 9])
    per = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), y, n, yl, reduction="none")
    torch.testing.assert_close(ctc_loss(logits, n, y, yl, reduction="mean_batch"), per.mean())
    ref_mean = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), y, n, yl, reduction="mean")
    torch.testing.assert_close(ctc_loss(logits, n, y, yl, reduction="mean_target"), ref_mean)
