"""collate / eval_batches / DayBatchSampler / RandomBatchSampler / EpochBatchSampler."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from fastdecoder.data import (Batch, DayBatchSampler, EpochBatchSampler, RandomBatchSampler, Split, collate,
                              eval_batches, make_sampler)


def make_split(days, labeled=True, c=3, seed=0) -> Split:
    rng = np.random.default_rng(seed)
    n = len(days)
    lens = rng.integers(2, 9, size=n)
    feats = [rng.standard_normal((t, c)).astype(np.float32) + 1.0 for t in lens]
    targets = [rng.integers(1, 41, size=rng.integers(1, 6)) for _ in range(n)] if labeled else None
    return Split(features=feats, targets=targets, day=np.asarray(days), trial_ids=[f"t{i}" for i in range(n)])


# ---------------------------------------------------------------- collate


def test_collate_pads_and_reports_lengths():
    split = make_split([0, 1, 1, 2, 2])
    idx = [3, 0, 4]
    b = collate(split, idx)
    assert isinstance(b, Batch) and len(b) == 3
    t_max = max(split.features[i].shape[0] for i in idx)
    l_max = max(split.targets[i].size for i in idx)
    assert b.x.shape == (3, t_max, 3) and b.x.dtype == torch.float32
    assert b.y.shape == (3, l_max) and b.y.dtype == torch.int64
    assert b.x_lens.dtype == b.y_lens.dtype == b.day.dtype == torch.int64
    assert b.day.tolist() == [2, 0, 2]
    assert b.index.tolist() == idx
    for row, i in enumerate(idx):
        t, L = split.features[i].shape[0], split.targets[i].size
        assert b.x_lens[row] == t and b.y_lens[row] == L
        np.testing.assert_array_equal(b.x[row, :t].numpy(), split.features[i])
        assert not b.x[row, t:].any()  # zero padding
        assert b.y[row, :L].tolist() == split.targets[i].tolist()
        assert not b.y[row, L:].any()


def test_collate_unlabeled():
    split = make_split([0, 0, 1], labeled=False)
    b = collate(split, [2, 1])
    assert b.y.shape == (2, 1) and not b.y.any() and b.y_lens.tolist() == [0, 0]


def test_collate_rejects_bad_indices():
    split = make_split([0, 0])
    with pytest.raises(IndexError):
        collate(split, [0, 2])
    with pytest.raises(ValueError):
        collate(split, [])


def test_batch_to_and_pin_memory():
    b = collate(make_split([0, 1]), [0, 1])
    moved = b.to("cpu")
    assert moved is not b and torch.equal(moved.x, b.x) and moved.index is b.index
    pinned = b.pin_memory()  # no-op without CUDA
    assert torch.equal(pinned.x, b.x)


def test_eval_batches_cover_every_trial_once():
    split = make_split([0] * 7 + [1] * 4)
    batches = list(eval_batches(split, 4))
    assert [len(b) for b in batches] == [4, 4, 3]
    assert np.concatenate([b.index for b in batches]).tolist() == list(range(11))
    sorted_batches = list(eval_batches(split, 4, sort_by_length=True))
    order = np.concatenate([b.index for b in sorted_batches])
    assert sorted(order.tolist()) == list(range(11))
    assert np.all(np.diff(split.lengths[order]) <= 0)


# ---------------------------------------------------------------- DayBatchSampler


def test_day_sampler_composition():
    days = [0] * 5 + [1] * 3 + [3] * 8 + [4] * 2 + [5] * 6 + [6] * 4  # day 2 has no trials
    split = make_split(days)
    s = DayBatchSampler(split, batch_size=16, days_per_batch=4, seed=1)
    seen = set()
    for _ in range(50):
        idx = next(s)
        assert idx.shape == (16,) and idx.dtype == np.int64
        d = split.day[idx]
        u, c = np.unique(d, return_counts=True)
        assert len(u) == 4 and c.tolist() == [4, 4, 4, 4]  # 4 distinct days x ceil(16/4) trials
        seen |= set(u.tolist())
    assert 2 not in seen and seen == {0, 1, 3, 4, 5, 6}


def _day_runs(split, idx):
    """(day, run length) of the consecutive same-day runs of a batch."""
    d = split.day[idx]
    cuts = np.flatnonzero(np.diff(d)) + 1
    return [(int(r[0]), r.size) for r in np.split(d, cuts)]


def test_day_sampler_trims_the_surplus_from_random_days():
    """NEJM's rule: 3 days x ceil(10/3) = 4 trials, then the surplus of 2 removed one trial at a time from a day
    drawn uniformly each time: the same day twice (counts 2, 4, 4) with probability 1/3, two different days
    (3, 3, 4) with 2/3; never from the last day only."""
    split = make_split([0] * 3 + [1] * 3 + [2] * 3)
    s = DayBatchSampler(split, batch_size=10, days_per_batch=4, seed=0)
    patterns, last_day_short = {}, 0
    n = 3000
    for _ in range(n):
        idx = next(s)
        assert idx.size == 10
        runs = _day_runs(split, idx)
        assert len(runs) == 3 and len({d for d, _ in runs}) == 3  # day by day, each chosen day once
        key = tuple(sorted(c for _, c in runs))
        patterns[key] = patterns.get(key, 0) + 1
        last_day_short += runs[-1][1] < 4
    assert set(patterns) == {(2, 4, 4), (3, 3, 4)}
    assert abs(patterns[(2, 4, 4)] / n - 1 / 3) < 0.04, patterns
    # a removal hits the last drawn day with probability 1 - (2/3)^2 = 5/9 (not 1, as truncation would)
    assert abs(last_day_short / n - 5 / 9) < 0.04, last_day_short / n


def test_day_sampler_surplus_larger_than_a_day_reproduces_nejm():
    """batch 5 over 4 days: 2 trials each, surplus 3. A day already emptied loses nothing more (NEJM slices an
    empty array), so with probability 4 / 4^3 = 1/16 (the same day drawn all three times) the batch holds 6."""
    split = make_split([0] * 4 + [1] * 4 + [2] * 4 + [3] * 4)
    s = DayBatchSampler(split, batch_size=5, days_per_batch=4, seed=3)
    sizes = np.array([next(s).size for _ in range(4000)])
    assert set(sizes.tolist()) == {5, 6}
    assert abs(np.mean(sizes == 6) - 1 / 16) < 0.015


def test_day_sampler_draws_with_replacement():
    split = make_split([0, 1, 2, 3])  # one trial per day
    s = DayBatchSampler(split, batch_size=8, days_per_batch=2, seed=0)
    idx = next(s)
    assert idx.size == 8 and len(np.unique(idx)) == 2  # each of 2 days' single trial 4 times


def test_day_sampler_is_seeded():
    split = make_split([0] * 4 + [1] * 4 + [2] * 4)

    def draw(seed):
        s = DayBatchSampler(split, 6, 2, seed=seed)
        return [next(s).tolist() for _ in range(5)]

    assert draw(5) == draw(5)
    assert draw(5) != draw(6)


# ---------------------------------------------------------------- RandomBatchSampler (cffan)


def test_random_sampler_draws_a_fresh_full_batch_every_step():
    """next(iter(shuffled DataLoader)) each step: always batch_size distinct trials, drawn uniformly, the next batch
    independent of the last (no epoch walk: batches overlap, and no short batch ever)."""
    split = make_split([0] * 6 + [1] * 4)
    s = RandomBatchSampler(split, batch_size=4, seed=0)
    n = 3000
    batches = [next(s) for _ in range(n)]
    assert all(b.shape == (4,) and b.dtype == np.int64 and len(np.unique(b)) == 4 for b in batches)
    overlaps = np.mean([len(np.intersect1d(a, b)) > 0 for a, b in zip(batches[:-1], batches[1:])])
    assert overlaps > 0.5  # an epoch walk would never repeat a trial in the next batch of the same epoch
    freq = np.bincount(np.concatenate(batches), minlength=10) / n
    np.testing.assert_allclose(freq, 0.4, atol=0.04)  # each trial in a batch with probability 4 / 10
    first = np.bincount([b[0] for b in batches], minlength=10) / n
    np.testing.assert_allclose(first, 0.1, atol=0.03)  # shuffled within the batch too


def test_random_sampler_batch_larger_than_split_gives_all_trials():
    split = make_split([0, 0, 1])
    s = RandomBatchSampler(split, batch_size=8)
    assert all(sorted(next(s).tolist()) == [0, 1, 2] for _ in range(5))


def test_make_sampler_names_the_batching_key():
    split = make_split([0, 1])
    assert type(make_sampler("days", split, 2)) is DayBatchSampler
    assert type(make_sampler("random", split, 2)) is RandomBatchSampler
    assert type(make_sampler("epochs", split, 2)) is EpochBatchSampler
    with pytest.raises(ValueError, match="data.batching"):
        make_sampler("shuffle", split, 2)


# ---------------------------------------------------------------- EpochBatchSampler (data.batching: epochs)


def test_epoch_sampler_covers_each_epoch():
    split = make_split([0] * 6 + [1] * 4)
    s = EpochBatchSampler(split, batch_size=4, seed=0)
    assert s.batches_per_epoch == 3
    epochs = []
    for _ in range(3):
        parts = [next(s) for _ in range(3)]
        assert [p.size for p in parts] == [4, 4, 2]  # drop_last=False
        order = np.concatenate(parts)
        assert sorted(order.tolist()) == list(range(10))  # without replacement within an epoch
        epochs.append(order.tolist())
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]  # reshuffled per epoch
    assert s.epoch == 2


def test_epoch_sampler_batch_larger_than_split():
    split = make_split([0, 0, 1])
    s = EpochBatchSampler(split, batch_size=8)
    assert sorted(next(s).tolist()) == [0, 1, 2]


# ---------------------------------------------------------------- resume


def _through_checkpoint(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save({"sampler": state}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)["sampler"]


@pytest.mark.parametrize("make", [
    lambda sp: DayBatchSampler(sp, batch_size=6, days_per_batch=2, seed=7),
    lambda sp: RandomBatchSampler(sp, batch_size=4, seed=7),
    lambda sp: EpochBatchSampler(sp, batch_size=4, seed=7),
], ids=["day", "random", "epochs"])
@pytest.mark.parametrize("skip", [0, 1, 3, 5, 6])  # 3 batches per epoch for the epoch sampler
def test_resume_gives_identical_batches(make, skip):
    split = make_split([0] * 4 + [1] * 3 + [2] * 3)
    ref = make(split)
    for _ in range(skip):
        next(ref)
    state = ref.state_dict()
    expected = [next(ref).tolist() for _ in range(8)]
    restored = _through_checkpoint(state)

    def plain(o):
        if isinstance(o, dict):
            return all(isinstance(k, str) and plain(v) for k, v in o.items())
        if isinstance(o, list):
            return all(plain(v) for v in o)
        return o is None or isinstance(o, (bool, int, float, str))

    assert plain(restored)
    resumed = make(split)
    next(resumed)  # whatever it did before is overwritten by the state
    resumed.load_state_dict(restored)
    assert [next(resumed).tolist() for _ in range(8)] == expected
    assert resumed.batches == skip + 8


def test_resume_refuses_a_different_configuration():
    split = make_split([0] * 4 + [1] * 4)
    state = DayBatchSampler(split, 6, 2).state_dict()
    with pytest.raises(ValueError, match="would not reproduce"):
        DayBatchSampler(split, 8, 2).load_state_dict(state)
    with pytest.raises(ValueError, match="would not reproduce"):
        RandomBatchSampler(split, 6).load_state_dict(state)
    with pytest.raises(ValueError, match="would not reproduce"):  # an epoch walk's state does not load per-step
        RandomBatchSampler(split, 6).load_state_dict(EpochBatchSampler(split, 6).state_dict())


def test_samplers_reject_empty_split():
    empty = Split(features=[], targets=[], day=np.zeros(0, np.int64), trial_ids=[])
    with pytest.raises(ValueError, match="no trials"):
        DayBatchSampler(empty, 4)
    with pytest.raises(ValueError, match="no trials"):
        RandomBatchSampler(empty, 4)
