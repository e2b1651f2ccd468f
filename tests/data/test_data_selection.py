"""Data selection with NEJM's dataset keys: data.sessions, data.feature_subset, data.bad_trials_dict,
data.must_include_days; applied the same way in training and evaluation."""
import numpy as np
import pytest

from fastdecoder.config import ConfigError, config_from_dict
from fastdecoder.data import SynthSpec, generate_synthetic
from fastdecoder.data.batching import DayBatchSampler
from fastdecoder.data.dataset import DataFormatError
from fastdecoder.data.selection import drop_bad_trials, select_data, select_features, select_sessions
from fastdecoder.errors import UserError
from fastdecoder.testing.tiny import DEFAULT, tiny_config, tiny_data


@pytest.fixture(scope="module")
def ds():
    return generate_synthetic(SynthSpec(n_days=4, trials_per_day=6, val_trials_per_day=3, test_trials_per_day=2,
                                        n_features=8, vocab_size=20, seed=1), "b2t25")


def _cfg(**data):
    return config_from_dict({"data": {**tiny_data(0), **data}}).data


def test_sessions_subset_in_listed_order(ds):
    names = ds.day_names
    out = select_sessions(ds, [names[3], names[1]])
    assert out.day_names == [names[3], names[1]] and out.n_days == 2
    for split_name, split in out.splits.items():
        src = ds.splits[split_name]
        for new_day, old_day in enumerate([3, 1]):
            ids = [t for t, d in zip(split.trial_ids, split.day) if d == new_day]
            assert ids == [t for t, d in zip(src.trial_ids, src.day) if d == old_day]
            assert all(t.startswith(names[old_day]) for t in ids)
        assert set(split.day.tolist()) == {0, 1}


def test_unknown_session_names_it_and_suggests(ds):
    typo = ds.day_names[0].replace("08.11", "0811")
    with pytest.raises(DataFormatError, match=rf"no session '{typo}'; did you mean '{ds.day_names[0]}'"):
        select_sessions(ds, [typo])
    with pytest.raises(ConfigError, match="lists .* more than once"):
        _cfg(sessions=[ds.day_names[0], ds.day_names[0]])


def test_feature_subset(ds):
    out = select_features(ds, [5, 0, 7])
    assert out.n_features == 3
    for name, split in out.splits.items():
        for f, g in zip(split.features, ds.splits[name].features):
            assert np.array_equal(f, g[:, [5, 0, 7]]) and f.flags.c_contiguous
    with pytest.raises(DataFormatError, match="channel 8 is outside 0..7"):
        select_features(ds, [8])
    assert select_data(ds, _cfg(feature_subset=[])) is ds  # NEJM: an empty subset keeps every feature
    with pytest.raises(ConfigError, match=r"data.feature_subset\[1\] must be >= 0"):
        _cfg(feature_subset=[1, -1])


def test_bad_trials_leave_train_and_val_not_test(ds):
    sess = ds.day_names[1]
    tr = ds.splits["train"]
    on_day = np.flatnonzero(tr.day == 1)
    b, t = int(tr.block[on_day[0]]), int(tr.trial_num[on_day[0]])
    va = ds.splits["val"]
    v = np.flatnonzero(va.day == 1)[0]
    bad = {sess: {str(b): [t]}, ds.day_names[2]: {int(va.block[np.flatnonzero(va.day == 2)[0]]):
                                                   [int(va.trial_num[np.flatnonzero(va.day == 2)[0]])]}}
    out, removed = drop_bad_trials(ds, bad)
    gone = {tr.trial_ids[on_day[0]], va.trial_ids[np.flatnonzero(va.day == 2)[0]]}
    assert removed == 2
    for name in ("train", "val"):
        kept = set(out.splits[name].trial_ids)
        assert kept == set(ds.splits[name].trial_ids) - gone
    assert out.splits["test"] is ds.splits["test"]  # a submission needs every test trial
    assert va.trial_ids[v] in set(out.splits["val"].trial_ids)
    b24 = generate_synthetic(SynthSpec(n_days=2, trials_per_day=3, val_trials_per_day=1, test_trials_per_day=0,
                                       n_features=4, vocab_size=5), "b2t24")
    with pytest.raises(DataFormatError, match="block and trial number"):
        drop_bad_trials(b24, {"day00": {"0": [0]}})
    with pytest.raises(ConfigError, match="must be a list of trial numbers"):
        _cfg(bad_trials_dict={sess: {"1": 3}})


def test_must_include_days_in_every_batch(ds):
    tr = ds.splits["train"]
    s = DayBatchSampler(tr, batch_size=8, days_per_batch=2, seed=3, must_include_days=[-1], n_days=4)
    seen_others = set()
    for _ in range(50):
        days = tr.day[next(s)]
        assert 3 in days and len(set(days.tolist())) == 2
        seen_others |= set(days.tolist()) - {3}
    assert seen_others == {0, 1, 2}
    with pytest.raises(ValueError, match="day 9 has no training trials"):
        DayBatchSampler(tr, 8, 2, must_include_days=[9], n_days=4)
    with pytest.raises(ConfigError, match="needs data.batching: days"):
        _cfg(must_include_days=[0], batching="random")
    with pytest.raises(ConfigError, match="lists 3 days but data.days_per_batch is 2"):
        _cfg(must_include_days=[0, 1, 2])
    plain = DayBatchSampler(tr, 8, 2, seed=3)
    again = DayBatchSampler(tr, 8, 2, seed=3, must_include_days=[])
    assert all(np.array_equal(next(plain), next(again)) for _ in range(5))  # off: the sequence is unchanged


def test_training_and_eval_apply_the_same_selection(tmp_path, capsys):
    """A run over two sessions with a feature subset: eval reproduces its validation PER on the selected data."""
    import json

    from fastdecoder.cli import main
    from fastdecoder.train.trainer import Trainer

    names = ["t15.2023.08.11", "t15.2023.08.18", "t15.2023.08.25"]
    raw = tiny_config(data={**tiny_data(2, trials_per_day=8, val_trials_per_day=3, n_days=3),
                            "sessions": [names[2], names[0]], "feature_subset": [0, 2, 4, 6, 8, 10]},
                      model={"hidden_size": 16, "rnn_dropout": DEFAULT, "input_dropout": DEFAULT}, augment=None,
                      optim=None, train={"steps": 4, "eval_every": 4, "log_every": 2, "checkpoint_every": DEFAULT,
                                         "batch_size": 4, "beam_width": 0, "plot": False})
    trainer = Trainer(config_from_dict(raw), tmp_path / "run", progress=False)
    assert trainer.cfg.model.n_features == 6 and trainer.cfg.model.n_days == 2
    assert trainer.dataset.day_names == [names[2], names[0]]
    summary = trainer.fit()
    assert main(["eval", "--run", str(tmp_path / "run"), "--checkpoint", "last"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["trials"] == summary["val_trials"] == 6
    assert res["per_greedy"] == pytest.approx(summary["val_per"], abs=1e-12)
    with pytest.raises(UserError, match="has no session 't15.2099.01.01'"):
        Trainer(config_from_dict({**raw, "data": {**raw["data"], "sessions": ["t15.2099.01.01"]}}), None,
                progress=False)
