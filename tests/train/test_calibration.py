"""Calibration to a new session: freezing leaves the frozen weights bitwise unchanged, a run initialised from a base
run beats training from scratch on a new session in the same steps, early stopping stops at the documented step,
day layers are matched by session name."""
import copy
import json

import pytest
import torch

from fastdecoder.cli import main
from fastdecoder.config import config_from_dict
from fastdecoder.errors import UserError
from fastdecoder.testing.tiny import tiny_config, tiny_data
from fastdecoder.train.calibration import EarlyStopping, init_from_checkpoint, nearest_earlier
from fastdecoder.checkpoint import load_checkpoint
from fastdecoder.train.trainer import Trainer

SESSIONS = ["t15.2023.08.11", "t15.2023.08.18", "t15.2023.08.25", "t15.2023.09.01"]  # the synthetic b2t25 names

BASE = tiny_config(
    data=tiny_data(5, trials_per_day=24, val_trials_per_day=8, test_trials_per_day=1, n_features=16,
                   words_per_sentence=(1, 2), n_days=4),
    model={"hidden_size": 40}, optim={"lr": 0.025, "decay_steps": 80},
    train={"steps": 80, "batch_size": 12, "beam_width": 0, "plot": False},
)


def cfg_with(**sections):
    raw = copy.deepcopy(BASE)
    for sec, keys in sections.items():
        raw.setdefault(sec, {}).update(keys)
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A base run trained on the first three sessions."""
    out = tmp_path_factory.mktemp("base")
    trainer = Trainer(cfg_with(data={"sessions": SESSIONS[:3]}), out, progress=False)
    summary = trainer.fit()
    return out, summary


def _calibration(init_from, steps, out, new_days="identity"):
    cfg = cfg_with(data={"sessions": SESSIONS[3:], "days_per_batch": 1},
                   optim={"warmup_steps": 0, "decay_steps": steps},
                   train={"steps": steps, "eval_every": steps, "checkpoint_every": steps, "log_every": 10,
                          "init_from": init_from, "init_new_days": new_days})
    trainer = Trainer(cfg, out, progress=False)
    return trainer, trainer.fit()


def test_calibrated_run_beats_scratch_on_a_new_session(base_run, tmp_path):
    """The acceptance figure: same new session, same steps, same seed; only the initialisation differs."""
    base, base_summary = base_run
    steps = 16
    _, scratch = _calibration(None, steps, tmp_path / "scratch")
    calibrated_trainer, calibrated = _calibration(str(base), steps, tmp_path / "calibrated")
    _, nearest = _calibration(str(base), steps, tmp_path / "nearest", new_days="nearest")
    print(f"\nbase (3 sessions, 80 steps) val PER {base_summary['val_per']:.4f}; new session after {steps} steps: "
          f"scratch {scratch['val_per']:.4f}, init_from (identity day layer) {calibrated['val_per']:.4f}, "
          f"init_from (nearest day layer) {nearest['val_per']:.4f}")
    assert calibrated["init_from"]["new_sessions"] == {SESSIONS[3]: "identity"}
    assert nearest["init_from"]["new_sessions"] == {SESSIONS[3]: SESSIONS[2]}
    assert calibrated["val_per"] < scratch["val_per"] - 0.03, (calibrated["val_per"], scratch["val_per"])
    assert nearest["val_per"] < scratch["val_per"] - 0.03, (nearest["val_per"], scratch["val_per"])
    # the calibration run's checkpoint records its sessions for the next calibration
    assert load_checkpoint(tmp_path / "calibrated" / "last.pt")["day_names"] == SESSIONS[3:]


def test_days_matched_by_session_name(base_run):
    """A run over sessions in another order (one of them new) takes each day layer from its own session."""
    base, _ = base_run
    state = load_checkpoint(base / "best.pt")
    assert state["day_names"] == SESSIONS[:3]
    cfg = cfg_with(data={"sessions": [SESSIONS[2], SESSIONS[3], SESSIONS[0]]},
                   train={"init_from": str(base / "best.pt")})
    trainer = Trainer(cfg, None, progress=False)
    w, b = trainer.model.day_weights.detach(), trainer.model.day_biases.detach()
    sw, sb = state["model"]["day_weights"], state["model"]["day_biases"]
    assert torch.equal(w[0], sw[2]) and torch.equal(b[0], sb[2])
    assert torch.equal(w[2], sw[0]) and torch.equal(b[2], sb[0])
    assert torch.equal(w[1], torch.eye(w.shape[-1])) and not b[1].any()  # new: the reference's identity / zeros
    for name in ("head.weight", "rnn.weight_hh_l0"):
        assert torch.equal(trainer.model.state_dict()[name], state["model"][name])
    # nearest: the new session copies the latest earlier session of the checkpoint
    cfg = cfg_with(data={"sessions": [SESSIONS[3]], "days_per_batch": 1},
                   train={"init_from": str(base), "init_new_days": "nearest"})
    near = Trainer(cfg, None, progress=False).model
    assert torch.equal(near.day_weights.detach()[0], sw[2]) and torch.equal(near.day_biases.detach()[0], sb[2])
    assert not torch.equal(sw[2], torch.eye(sw.shape[-1]))  # the base run moved it: the copy is not the identity
    assert nearest_earlier(SESSIONS[3], SESSIONS[:3]) == SESSIONS[2]
    assert nearest_earlier("t15.2023.01.01", SESSIONS[1:3]) == SESSIONS[1]  # none earlier: the earliest


def test_init_from_refuses_another_architecture(base_run):
    base, _ = base_run
    cfg = cfg_with(model={"hidden_size": 24}, train={"init_from": str(base)})
    with pytest.raises(UserError, match="model.hidden_size: checkpoint 40, this run 24"):
        Trainer(cfg, None, progress=False)
    with pytest.raises(UserError, match="neither a run folder nor a checkpoint"):
        init_from_checkpoint(torch.nn.Linear(1, 1), base / "nothing.pt", [], cfg.model)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("frozen", ["rnn", "input"])
def test_frozen_parameters_bitwise_unchanged(frozen, fast):
    """N steps (weight decay on) leave the frozen tensors bitwise equal and move every other parameter."""
    key = {"rnn": {"rnn_trainable": False}, "input": {"input_trainable": False}}[frozen]
    cfg = cfg_with(model=key, optim={"weight_decay": 0.01, "day_weight_decay": 0.01},
                   train={"steps": 6, "eval_every": 100, "log_every": 3, "fast": fast})
    cfg = config_from_dict({**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "sessions": SESSIONS[:2]}})
    trainer = Trainer(cfg, None, progress=False)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.run()
    after = dict(trainer.model.named_parameters())
    is_frozen = (lambda n: n.startswith("rnn.")) if frozen == "rnn" else (lambda n: n.startswith("day_"))
    names = sorted(before)
    assert any(is_frozen(n) for n in names) and any(not is_frozen(n) for n in names)
    for n in names:
        if is_frozen(n):
            assert torch.equal(before[n], after[n].detach()), f"{n} moved although frozen"
            assert not after[n].requires_grad
        else:
            assert not torch.equal(before[n], after[n].detach()), f"{n} did not move"
    assert sorted(trainer.frozen) == [n for n in names if is_frozen(n)]


def test_early_stopping_rule():
    """NEJM's rule: a lower PER, or an equal PER with a lower loss, improves; `patience` misses in a row stop."""
    es = EarlyStopping(patience=2)
    assert not es.observe(0.5, 3.0)      # first evaluation: best
    assert not es.observe(0.6, 2.0)      # miss 1
    assert not es.observe(0.5, 2.5)      # equal PER, lower loss: an improvement, misses reset
    assert not es.observe(0.5, 2.5)      # equal PER, equal loss: miss 1
    assert es.observe(0.55, 1.0)         # miss 2: stop
    assert es.misses == 2 and es.best_per == 0.5 and es.best_loss == 2.5


def test_early_stopping_stops_at_the_documented_step(monkeypatch, tmp_path):
    """Scripted validation results: the last improvement at step 2 * E, patience 3 -> stops at step 5 * E, writes
    last.pt, the summary and an event there."""
    pers = iter([0.9, 0.8, 0.85, 0.8, 0.95, 0.7, 0.6])  # evaluations at E, 2E, ...; after 2E no improvement
    E, patience = 3, 3
    cfg = cfg_with(data={"sessions": SESSIONS[:2]},
                   train={"steps": 60, "eval_every": E, "log_every": E, "checkpoint_every": 100,
                          "early_stopping": True, "early_stopping_val_steps": patience})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    real = trainer.evaluate

    def scripted(split=None, **kw):
        res = real(split, **kw)
        if split is None and trainer.stopped_early is None:  # the evaluations during training; then the real one
            res.per, res.loss = next(pers), 1.0
        return res

    monkeypatch.setattr(trainer, "evaluate", scripted)
    summary = trainer.fit()
    documented = 2 * E + patience * E  # best at step b = 2E; stop at b + patience * E
    assert summary["early_stopped_at"] == documented == trainer.step
    assert summary["steps"] == documented
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == documented
    events = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "early_stopping"] == [documented]
    assert summary["val_per"] == pytest.approx(real().per)  # the final (real) evaluation ran, as at a normal end


def test_early_stopping_needs_validation():
    with pytest.raises(UserError, match="train.early_stopping needs a validation split"):
        cfg_with(data={"val_split": None}, train={"early_stopping": True})


def test_cli_calibration_recipe(base_run, tmp_path, capsys):
    """fastdecoder train --config FILE --init-from RUN --set data.sessions=[...] (the recipe in docs/training.md)."""
    base, _ = base_run
    cfg_file = tmp_path / "tiny.yaml"
    raw = copy.deepcopy(BASE)
    raw["train"].update(steps=4, eval_every=4, checkpoint_every=4, log_every=2)
    import yaml

    cfg_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "cal"
    assert main(["train", "--config", str(cfg_file), "--init-from", str(base), "--out", str(out), "--no-progress",
                 "--set", f"data.sessions=[{SESSIONS[3]}]", "--set", "data.days_per_batch=1",
                 "--set", "model.rnn_trainable=false"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["init_from"]["checkpoint"] == str((base / "best.pt").resolve())
    assert summary["init_from"]["new_sessions"] == {SESSIONS[3]: "identity"}
    assert summary["frozen"] and all(n.startswith("rnn.") for n in summary["frozen"])
    assert main(["train", "--config", str(cfg_file), "--init-from", str(base), "--out", str(out), "--resume"]) == 2
    assert "--init-from" in capsys.readouterr().err
