"""The synthetic generator: determinism, realistic structure, CTC feasibility, speed."""
from __future__ import annotations

import time

import numpy as np
import pytest

from fastdecoder.data import SynthSpec, generate_synthetic, load_dataset, write_synthetic
from fastdecoder.phonemes import SIL

SPEC = SynthSpec(n_days=3, trials_per_day=24, val_trials_per_day=6, test_trials_per_day=4, n_features=32,
                 vocab_size=40, seed=11)


@pytest.fixture(scope="module")
def ds():
    return generate_synthetic(SPEC, "b2t25")


def test_deterministic_per_seed():
    a, b = generate_synthetic(SPEC), generate_synthetic(SPEC)
    c = generate_synthetic(SynthSpec(**{**SPEC.__dict__, "seed": 12}))
    for fa, fb in zip(a.splits["train"].features, b.splits["train"].features):
        np.testing.assert_array_equal(fa, fb)
    assert [t.tolist() for t in a.splits["val"].targets] == [t.tolist() for t in b.splits["val"].targets]
    assert [t.tolist() for t in a.splits["val"].targets] != [t.tolist() for t in c.splits["val"].targets]


def test_splits_counts_and_days(ds):
    assert ds.n_days == 3 and ds.n_features == 32 and ds.format == "b2t25"
    assert ds.day_names == sorted(ds.day_names) and all(n.startswith("t15.") for n in ds.day_names)
    for name, per_day in (("train", 24), ("val", 6), ("test", 4)):
        split = ds.splits[name]
        assert np.bincount(split.day).tolist() == [per_day] * 3
        assert np.all(np.diff(split.day) >= 0)  # day-major, like the loaders
    assert ds.splits["test"].targets is None
    assert "test" not in generate_synthetic(SynthSpec(**{**SPEC.__dict__, "test_trials_per_day": 0})).splits


def test_sentences_look_like_the_real_labels(ds):
    split = ds.splits["train"]
    for y, text in zip(split.targets, split.transcriptions):
        assert y.dtype == np.int64 and y.min() >= 1 and y.max() <= 40
        assert y[-1] == SIL  # sentence ends with SIL
        n_words = len(text.split())
        assert SPEC.words_per_sentence[0] <= n_words <= SPEC.words_per_sentence[1]
        assert int((y == SIL).sum()) == n_words  # one SIL after each word
        words = np.split(y, np.flatnonzero(y == SIL) + 1)[:-1]
        assert all(SPEC.phones_per_word[0] <= w.size - 1 <= SPEC.phones_per_word[1] for w in words)
        assert text.isascii() and text == text.lower()


def test_ctc_feasible_for_b2t24_front_end(ds):
    kernel, stride = SPEC.ctc_window
    for split in (ds.splits["train"], ds.splits["val"]):
        for x, y in zip(split.features, split.targets):
            repeats = int(np.count_nonzero(y[1:] == y[:-1]))
            assert (x.shape[0] - kernel) // stride >= y.size + repeats


def test_features_zscored_per_block_and_finite(ds):
    feats, day, block = [], [], []
    for split in ds.splits.values():
        feats += split.features
        day += split.day.tolist()
        block += split.block.tolist()
    day, block = np.asarray(day), np.asarray(block)
    assert set(block.tolist()) == set(range(SPEC.blocks_per_day))
    for d in range(SPEC.n_days):
        for b in range(SPEC.blocks_per_day):
            cat = np.concatenate([feats[i] for i in np.flatnonzero((day == d) & (block == b))])
            assert cat.dtype == np.float32 and np.isfinite(cat).all()
            np.testing.assert_allclose(cat.mean(0), 0, atol=1e-4)
            np.testing.assert_allclose(cat.std(0), 1, atol=1e-3)


def test_durations_are_realistic(ds):
    split = ds.splits["train"]
    bins_per_label = split.lengths.sum() / split.target_lengths.sum()
    assert SPEC.min_phone_bins <= bins_per_label <= SPEC.max_phone_bins + 6
    assert split.lengths.min() >= SPEC.ctc_window[0]


def test_signal_is_phoneme_tuned_and_days_differ():
    """Speech bins differ from rest bins (tuned response), and the same class looks different on different days
    (day drift survives the z-scoring)."""
    spec = SynthSpec(n_days=2, trials_per_day=40, val_trials_per_day=0, test_trials_per_day=0, n_features=24,
                     noise_std=0.5, day_mixing=0.5, day_drift=0.5, seed=2)
    ds = generate_synthetic(spec)
    split = ds.splits["train"]
    # rest at the edges vs the middle of each trial
    edge = np.concatenate([x[:2] for x in split.features])
    mid = np.concatenate([x[x.shape[0] // 2 - 2: x.shape[0] // 2 + 2] for x in split.features])
    assert np.abs(edge.mean(0) - mid.mean(0)).max() > 0.5
    # the cross-channel correlations differ more between days than between blocks of one day
    def corr(d, b):
        sel = (split.day == d) & (split.block == b)
        return np.corrcoef(np.concatenate([x for x, s in zip(split.features, sel) if s]).T)
    within = np.abs(corr(0, 0) - corr(0, 1)).mean()
    across = np.abs(corr(0, 0) - corr(1, 0)).mean()
    assert across > 2 * within


def test_write_and_load_b2t24_has_256_channels_by_default(tmp_path):
    spec = SynthSpec(n_days=2, trials_per_day=3, val_trials_per_day=1, test_trials_per_day=0, seed=0)
    ds = load_dataset(write_synthetic(tmp_path / "s.pkl", "b2t24", spec))
    assert ds.n_features == 256 and set(ds.splits) == {"train", "val"}


def test_generation_speed():
    spec = SynthSpec(n_days=4, trials_per_day=70, val_trials_per_day=20, test_trials_per_day=10, n_features=256)
    t = time.process_time()  # CPU time: robust to other processes sharing the machine
    ds = generate_synthetic(spec)
    elapsed = time.process_time() - t
    assert sum(len(s) for s in ds.splits.values()) == 400
    assert elapsed < 4.0, f"generating 4 days x 100 trials x 256 channels took {elapsed:.2f} s"


def test_spec_validation():
    with pytest.raises(ValueError, match="min_phone_bins"):
        SynthSpec(min_phone_bins=5, max_phone_bins=3)
    with pytest.raises(ValueError, match="words_per_sentence"):
        SynthSpec(words_per_sentence=(4, 2))
    with pytest.raises(ValueError, match="unknown format"):
        generate_synthetic(SPEC, "b2t26")


@pytest.mark.parametrize("field,value,says", [
    ("n_days", "abc", "finite non-negative integer, got 'abc'"), ("noise_std", -1.0, "non-negative number"),
    ("noise_std", float("nan"), "finite"), ("seed", -1, "non-negative integer"), ("n_features", 2.5, "integer"),
    ("zscore", "yes", "true or false"), ("words_per_sentence", [1], r"pair \[low, high\]")])
def test_spec_fields_checked_with_the_config_key(field, value, says):
    with pytest.raises(ValueError, match=rf"SynthSpec\.{field} \(config key data\.synthetic\.{field}\) .*{says}"):
        SynthSpec(**{field: value})
    assert SynthSpec(n_days=3.0, words_per_sentence=[1, 2]).n_days == 3  # integral numbers and lists are fine
