"""The fast training step: no host read inside a step, the NaN guard decided on the device and accounted
at the log read, length buckets that leave the losses unchanged and bound the compiles."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from fastdecoder.config import config_from_dict
from fastdecoder.losses import output_lengths
from fastdecoder.bench.host_reads import HostReadError, HostReads
from fastdecoder.train.stability import NonFiniteError
from fastdecoder.testing.compiles import CompilesPerFrame
from fastdecoder.train.step import compile_step, pad_to_bucket
from fastdecoder.train.trainer import Trainer

from fastdecoder.testing.tiny import tiny_config

#: the host reads of one log interval on the deferred path with train.train_monitor off and no eval / checkpoint
#: in it: the one tolist() of the waiting losses and grad norms
READS_PER_LOG_INTERVAL = {("tolist", "train/stability.py:read"): 1}


def make(monkeypatch, tmp_path, fast=True, **train):
    monkeypatch.chdir(tmp_path)
    # the same noise on both paths, independent of the padded length
    cfg = config_from_dict(tiny_config(augment={"noise": "philox"}))
    t = dict(fast=fast, steps=50, log_every=5, eval_every=10**6, checkpoint_every=10**6, train_monitor=False,
             fast_selfcheck=False)
    t.update(train)
    tr = Trainer(replace(cfg, train=replace(cfg.train, **t)), None, progress=False)
    tr.val_split = None
    return tr


def losses_of(tr, steps):
    out = []
    tr.run(max_steps=steps, on_read=lambda outs: out.extend(o["loss"] for o in outs))
    return np.array(out)


def test_fast_step_makes_no_host_read(monkeypatch, tmp_path):
    tr = make(monkeypatch, tmp_path)
    assert tr.deferred
    with HostReads(raise_on_read=True) as guard:
        for _ in range(3):
            out = tr.train_step(tr.next_batch())
    assert out["deferred"] and out["loss"] is None
    assert not guard.disallowed, guard.reads
    assert tr.step == 3 and len(tr.step_fn.pending) == 3
    assert [o["step"] for o in tr.read_steps()] == [1, 2, 3]


def test_pending_losses_are_bounded_and_read_when_full(monkeypatch, tmp_path):
    from fastdecoder.train.stability import PendingSteps

    tr = make(monkeypatch, tmp_path, log_every=10**9)  # 'log never' must not allocate 10**9 slots
    assert tr.step_fn.pending.values.shape[0] == PendingSteps.MAX_PENDING
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    want = losses_of(make(monkeypatch, tmp_path / "a", log_every=4), 9)
    monkeypatch.setattr(PendingSteps, "MAX_PENDING", 3)  # a log interval longer than the buffer
    tr = make(monkeypatch, tmp_path / "b", log_every=4)
    assert tr.step_fn.pending.values.shape[0] == 3
    got = losses_of(tr, 9)
    assert len(got) == 9 and np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)  # same steps, same values: only when they are read differs


def test_a_failed_fused_optimizer_check_falls_back_to_the_synced_step(monkeypatch, tmp_path):
    from fastdecoder.train import selfcheck

    monkeypatch.setitem(selfcheck.FAST_OPS, "fused_optimizer",
                        (*selfcheck.FAST_OPS["fused_optimizer"][:1], lambda *a: [("", float("nan"), 0.0)],
                         selfcheck.FAST_OPS["fused_optimizer"][2]))
    with pytest.warns(selfcheck.FastPathWarning, match="fused_optimizer"):
        tr = make(monkeypatch, tmp_path, fast_selfcheck=True)
    assert tr.backends.fast and not tr.deferred and not tr.optimizer.defaults["fused"]
    out = tr.train_step(tr.next_batch())
    assert math.isfinite(out["loss"]) and out["skipped"] is False


def test_the_guard_catches_the_reference_steps_read(monkeypatch, tmp_path):
    tr = make(monkeypatch, tmp_path, fast=False)
    assert not tr.deferred
    with pytest.raises(HostReadError, match="tolist.*train/step.py:_synced_update"):
        with HostReads(raise_on_read=True):
            tr.train_step(tr.next_batch())


def test_reads_per_log_interval_are_the_listed_ones(monkeypatch, tmp_path):
    tr = make(monkeypatch, tmp_path, steps=15, log_every=5)
    with HostReads() as guard:
        tr.run()
    reads = dict(guard.disallowed)
    assert reads == {k: 3 * v for k, v in READS_PER_LOG_INTERVAL.items()}, guard.reads
    assert [r["step"] for r in tr.history if "loss" in r] == [5, 10, 15]


def planted_nan(tr, at_step):
    """Make the forward of step ``at_step`` return NaN logits."""
    fwd = tr.step_fn.forward

    def forward(*a):
        y = fwd(*a)
        return y * float("nan") if tr.step + 1 == at_step else y
    tr.step_fn.forward = forward


def test_planted_nan_skips_its_update_and_is_counted_at_the_read(monkeypatch, tmp_path):
    tr = make(monkeypatch, tmp_path)
    planted_nan(tr, 2)
    tr.train_step(tr.next_batch())
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    adam_steps = [float(s["step"]) for s in tr.optimizer.state.values()]
    tr.train_step(tr.next_batch())
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())  # no update applied
    assert [float(s["step"]) for s in tr.optimizer.state.values()] == adam_steps  # Adam's step not advanced
    assert tr.guard.skipped == 0  # not read yet
    outs = tr.read_steps()
    assert [o["skipped"] for o in outs] == [False, True] and math.isnan(outs[1]["loss"])
    assert tr.guard.skipped == 1
    assert outs[1]["events"][0]["event"] == "skipped_update"
    tr.train_step(tr.next_batch())
    assert not all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())  # training goes on


def test_consecutive_skips_stop_the_run_at_the_read(monkeypatch, tmp_path):
    tr = make(monkeypatch, tmp_path, steps=20, log_every=5)
    tr.cfg = replace(tr.cfg, stability=replace(tr.cfg.stability, max_consecutive_skips=3))
    tr.guard.cfg = tr.cfg.stability
    fwd = tr.step_fn.forward
    tr.step_fn.forward = lambda *a: fwd(*a) * float("nan")
    with pytest.raises(NonFiniteError, match="3 updates in a row"):
        tr.run()
    assert tr.step == 5  # the abort comes with the read of the first log interval


def test_output_lengths_of_host_and_device_lengths_equal_the_formulas():
    """One formula for torch tensors and the step's numpy host copies, equal to the integer definitions (and, for
    'shipped', to the b2t24 code's float32 expression), including trials shorter than one patch."""
    rng = np.random.default_rng(0)
    lens = rng.integers(1, 300, size=64)
    for mode in ("exact", "shipped"):
        for k, s in ((14, 4), (32, 4), (1, 1), (7, 3)):
            if mode == "exact":
                want = np.array([min(max((t - k) // s + 1, 1), 60) for t in lens.tolist()])
            else:
                want = np.array([min(max(int((t - k) / s), 0), 60) for t in lens.tolist()])  # int(): toward zero
                shipped = ((torch.from_numpy(lens) - k) / s).to(torch.int32).clamp(min=0, max=60).numpy()
                np.testing.assert_array_equal(want, shipped)
            host = output_lengths(lens, k, s, mode, 60)
            assert isinstance(host, np.ndarray) and host.dtype == np.int64
            np.testing.assert_array_equal(host, want, err_msg=f"host {mode} {k} {s}")
            dev = output_lengths(torch.from_numpy(lens), k, s, mode, 60)
            assert dev.dtype == torch.int64
            np.testing.assert_array_equal(dev.numpy(), want, err_msg=f"torch {mode} {k} {s}")


def test_pad_to_bucket():
    x = torch.randn(2, 37, 3)
    y = pad_to_bucket(x, 16)
    assert y.shape == (2, 48, 3) and torch.equal(y[:, :37], x) and not y[:, 37:].any()
    assert pad_to_bucket(x, 0) is x and pad_to_bucket(torch.randn(1, 32, 3), 16).shape[1] == 32


def test_buckets_leave_the_losses_unchanged_on_both_paths(monkeypatch, tmp_path):
    plain = losses_of(make(monkeypatch, tmp_path, length_bucket=0), 6)
    fast = losses_of(make(monkeypatch, tmp_path, length_bucket=32), 6)
    ref = losses_of(make(monkeypatch, tmp_path, fast=False, length_bucket=32), 6)
    assert len(plain) == 6 and np.isfinite(plain).all()
    # fp32: padding past every length changes only the round-off of the wider matmuls
    np.testing.assert_allclose(fast, plain, rtol=1e-5)
    # fused (fast) vs foreach (reference) Adam round-off
    np.testing.assert_allclose(fast, ref, rtol=1e-5)


def test_compiles_stay_within_the_buckets(monkeypatch, tmp_path):
    def compiles(bucket, dynamic=None, steps=50):
        torch._dynamo.reset()
        tr = make(monkeypatch, tmp_path, length_bucket=bucket, steps=steps, log_every=steps)
        counter = CompilesPerFrame()
        compiled = (compile_step(tr.step_fn._forward_loss, bucket, backend=counter, max_len=int(tr.train_split.lengths.max()))
                    if dynamic is None else torch.compile(tr.step_fn._forward_loss, backend=counter, dynamic=dynamic))
        shapes = set()
        tr.step_fn.forward_loss = lambda x, *a: (shapes.add(x.shape[1]), compiled(x, *a))[1]
        tr.run()
        torch._dynamo.reset()
        return counter.compiles, shapes, tr

    per_frame, shapes, tr = compiles(16)
    buckets = -(-int(tr.train_split.lengths.max()) // 16)
    print(f"bucket 16 over 50 steps: {len(shapes)} shapes of {buckets} buckets; compiles per frame {dict(per_frame)}")
    assert all(t % 16 == 0 for t in shapes) and len(shapes) <= buckets
    # the regions around the graph breaks (GRU, F.ctc_loss) each compile once per bucket at most
    assert len(per_frame) >= 2 and max(per_frame.values()) <= len(shapes) <= buckets, per_frame
    # without buckets and without dynamic shapes the same count exceeds it: the lengths do vary
    per_frame_off, shapes_off, _ = compiles(0, dynamic=False, steps=12)
    assert len(shapes_off) > len(shapes) and max(per_frame_off.values()) > len(shapes), per_frame_off


def test_the_fast_step_groups_by_the_batch_host_days(monkeypatch, tmp_path):
    """The resident batch carries its days' host copy; the fast step plans the groups from it (no read of the
    day tensor, so on a GPU too) and never runs the (B, C, C) gather."""
    from fastdecoder.ops import day_affine as op
    from fastdecoder.bench.host_reads import HostReads

    tr = make(monkeypatch, tmp_path)
    batch = tr.next_batch()
    assert batch.host_day is not None and (torch.from_numpy(batch.host_day) == batch.day).all()

    def no_gather(*a):
        raise AssertionError("the fast step ran the (B, C, C) gather")
    monkeypatch.setattr(op, "day_affine_gather", no_gather)
    with HostReads() as reads:
        tr.train_step(batch)
        tr.train_step(tr.next_batch())
    assert not [s for _, s in reads.reads if "day_affine" in s], reads.reads
