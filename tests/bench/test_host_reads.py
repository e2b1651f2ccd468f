"""The no-sync guard and the CPU-read marker: reads of CPU tensors inside ``cpu_host_read()`` are counted apart as
allowed, wherever they are made; every other read (a read outside the marker, or of a non-CPU tensor inside it) is
refused under ``raise_on_read=True``."""
import threading

import pytest
import torch

from fastdecoder.bench.host_reads import HostReadError, HostReads
from fastdecoder.ops.augment import dispatch
from fastdecoder.ops.host_read_marker import cpu_host_read


def marked_any(t: torch.Tensor) -> bool:
    with cpu_host_read():
        return bool(t.any())


def test_a_marked_read_of_a_cpu_tensor_is_allowed_and_counted_apart():
    t = torch.tensor([0, 1])
    with HostReads(raise_on_read=True) as guard:
        assert marked_any(t) is True
        with cpu_host_read():
            assert t.tolist() == [0, 1] and t[1].item() == 1 and float(t[0]) == 0.0 and t.numpy().shape == (2,)
    assert guard.total == 5 and sum(guard.allowed.values()) == 5 and not guard.disallowed, guard.reads
    assert {m for m, _ in guard.allowed} == {"__bool__", "tolist", "item", "__float__", "numpy"}


def test_the_same_read_outside_the_marker_raises():
    t = torch.tensor([0, 1])
    with pytest.raises(HostReadError, match=r"__bool__\(\) of a cpu tensor"):
        with HostReads(raise_on_read=True):
            bool(t.any())
    with HostReads() as guard:  # counted, not refused, without raise_on_read
        bool(t.any())
        marked_any(t)
    assert sum(guard.disallowed.values()) == 1 and sum(guard.allowed.values()) == 1 and guard.total == 2


def test_a_marked_read_at_a_renamed_function_still_passes(monkeypatch):
    """The allowance follows the marker, not the function's name: the package's range check under a new name
    (its call site becomes ``ops/augment/dispatch.py:_renamed_range_check``) is still allowed."""
    old = dispatch._host_range_check
    renamed = type(old)(old.__code__.replace(co_name="_renamed_range_check"), old.__globals__, "_renamed_range_check")
    monkeypatch.setattr(dispatch, "_host_range_check", renamed)
    x, lengths = torch.zeros(2, 5, 3), torch.tensor([5, 4])
    with HostReads(raise_on_read=True) as guard:
        dispatch.augment(x, lengths, white_noise_std=0.1, seed=1, backend="reference")
    assert ("__bool__", "ops/augment/dispatch.py:_renamed_range_check") in guard.allowed, guard.reads
    assert not guard.disallowed, guard.reads
    with pytest.raises(ValueError, match="every length"):  # the renamed check still checks
        dispatch.augment(x, torch.tensor([6, 4]), white_noise_std=0.1, seed=1, backend="reference")


def test_nested_markers_allow_reads_until_the_outermost_one_ends():
    t = torch.tensor([1])
    with HostReads(raise_on_read=True) as guard:
        with cpu_host_read():
            with cpu_host_read():
                t.item()
            t.item()  # still inside the outer marker
        with pytest.raises(HostReadError):
            t.item()
    assert sum(guard.allowed.values()) == 2 and sum(guard.disallowed.values()) == 1


def test_the_marker_is_left_after_an_exception_inside_it():
    t = torch.tensor([1])
    with HostReads(raise_on_read=True):
        with pytest.raises(KeyError):
            with cpu_host_read():
                t.item()
                raise KeyError("inside")
        with pytest.raises(HostReadError):
            t.item()


def test_the_marker_does_not_hide_a_read_of_a_non_cpu_tensor():
    """A meta tensor stands for a device tensor (no values on the host): reading it inside the marker is refused,
    and counted as not allowed."""
    m = torch.zeros(2, device="meta")
    with pytest.raises(HostReadError, match=r"of a meta tensor .*cpu_host_read\(\) allows CPU tensors only"):
        with HostReads(raise_on_read=True):
            marked_any(m)
    with HostReads() as guard:
        with pytest.raises(RuntimeError):  # counted; then torch refuses to read a meta tensor's value
            marked_any(m)
    assert not guard.allowed and sum(guard.disallowed.values()) == 1, guard.reads


def test_a_marker_in_another_thread_allows_nothing_here():
    t = torch.tensor([1])
    entered, done = threading.Event(), threading.Event()

    def hold_marker():
        with cpu_host_read():
            entered.set()
            done.wait(10)

    th = threading.Thread(target=hold_marker)
    th.start()
    try:
        assert entered.wait(10)
        with pytest.raises(HostReadError):
            with HostReads(raise_on_read=True):
                t.item()
    finally:
        done.set()
        th.join()


def test_the_package_marks_its_cpu_only_checks():
    """The augmentation's checks of CPU taps, lengths and masks, the masks' check of CPU lengths and the day layer's
    read of CPU day indices run under raise_on_read=True, each counted as allowed."""
    from fastdecoder.ops import sample_masks
    from fastdecoder.ops.day_affine import day_affine

    B, T, C = 3, 12, 4
    x, lengths = torch.randn(B, T, C), torch.tensor([12, 9, 5])
    with HostReads(raise_on_read=True) as guard:
        tm, fm = sample_masks(B, T, C, lengths=lengths, time_prob=1.0, time_max_width=3, time_max_count=2,
                              freq_prob=1.0, freq_max_width=2, freq_max_count=1)
        dispatch.augment(x, lengths, white_noise_std=0.1, smooth_taps=torch.tensor([0.25, 0.5, 0.25]),
                         time_masks=tm, freq_masks=fm, seed=2, backend="reference")
        day_affine(x, torch.tensor([0, 1, 1]), torch.randn(2, C, C), torch.randn(2, 1, C))
    assert not guard.disallowed, guard.reads
    sites = {"ops/augment/masks.py:sample_masks", "ops/augment/dispatch.py:_taps_finite",
             "ops/augment/dispatch.py:_host_range_check", "ops/day_affine/grouped.py:_host_days"}
    assert {s for _, s in guard.allowed} == sites, guard.allowed
