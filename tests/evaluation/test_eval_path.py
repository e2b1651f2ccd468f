"""The one evaluation path: `fastdecoder eval` reproduces the trainer's own PER of a checkpoint exactly, and the
CLI / trainer turn hostile input into one clear line while real bugs keep their traceback."""
import copy
import errno
import json
import math

import pytest
import torch
import yaml

from fastdecoder.cli import main
from fastdecoder.config import config_from_dict
from fastdecoder.errors import UserError
from fastdecoder.checkpoint import load_checkpoint, save_checkpoint
from fastdecoder.train.stability import NonFiniteError
from fastdecoder.train.trainer import Trainer

from fastdecoder.testing.tiny import tiny_config, tiny_data

STEPS = 30
RUN = tiny_config(
    "evalpath", data=tiny_data(5, trials_per_day=24, val_trials_per_day=10, n_features=16),
    model={"hidden_size": 32}, optim={"warmup_steps": 3, "decay_steps": STEPS},
    train={"steps": STEPS, "batch_size": 8, "eval_every": STEPS, "log_every": 10, "checkpoint_every": STEPS,
           "eval_batch_size": 7, "plot": False},
)


def _cfg(**train):
    raw = copy.deepcopy(RUN)
    raw["train"].update(train)
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalpath")
    summary = Trainer(_cfg(), out, progress=False).fit()
    return out, summary


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_eval_reproduces_the_trainers_best_per_exactly(run, capsys):
    out, summary = run
    best = load_checkpoint(out / "best.pt")
    assert best["step"] == summary["best_step"] == STEPS  # one evaluation, at the end: best.pt is the final model
    assert main(["eval", "--run", str(out), "--checkpoint", "best", "--decoder", "beam", "--beam-width", "4"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["trials"] == summary["val_trials"] == 20
    assert res["per_greedy"] == best["val_per"] == summary["val_per"]      # exactly, not approximately
    assert res["per_beam"] == summary["val_per_beam"]
    assert 0 < res["per_greedy"] < 1  # learnt something, so the equality is not between two constants


def test_split_log_probs_are_the_ones_evaluate_decodes(run):
    import numpy as np

    from fastdecoder.evaluation import EvalSettings, evaluate, split_log_probs
    from fastdecoder.checkpoint import load_run

    out, _ = run
    cfg, model, _ = load_run(out, "best")
    from fastdecoder.data import load_dataset

    split = load_dataset(cfg.data.path).splits["val"]
    s = EvalSettings.from_config(cfg, torch.device("cpu"))
    lp = split_log_probs(model, split, s, max_trials=13)
    res = evaluate(model, split, s, keep_log_probs=True, max_trials=13)
    assert lp.indices.tolist() == res.indices.tolist() == list(range(13))
    assert lp.lengths.tolist() == [a.shape[0] for a in res.log_probs]
    assert all(np.array_equal(a, b) for a, b in zip(lp.log_probs, res.log_probs))
    assert all(np.isfinite(a).all() and np.allclose(np.exp(a).sum(1), 1, atol=1e-5) for a in lp.log_probs)


def test_eval_settings_follow_the_training_run():
    from fastdecoder.evaluation import EvalSettings
    from fastdecoder.device import autocast_dtype

    cfg = _cfg(amp="bf16")
    assert autocast_dtype(cfg, torch.device("cuda")) is torch.bfloat16  # what eval scores a CUDA run's best.pt in
    assert autocast_dtype(cfg, torch.device("cpu")) is None
    s = EvalSettings.from_config(cfg, torch.device("cpu"))
    assert s.batch_size == 7 and s.autocast_dtype is None


def test_pad_log_probs_is_the_one_padding():
    import numpy as np

    from fastdecoder.decode.padding import pad_log_probs

    a, b = np.full((3, 5), -1.0, np.float32), np.full((1, 5), -2.0, np.float32)
    arr, lens = pad_log_probs([a, b])
    assert arr.shape == (2, 3, 5) and arr.dtype == np.float32 and lens.tolist() == [3, 1]
    assert (arr[1, 1:] == 0).all() and (arr[1, 0] == -2).all()
    with pytest.raises(ValueError, match=r"log_probs\[1\] has 4 classes"):
        pad_log_probs([a, np.zeros((2, 4))])


# -- hostile input: one line, no traceback ----------------------------------------------------------------------

def test_eval_on_data_with_more_sessions_than_the_model(run, tmp_path, capsys):
    from fastdecoder.data import SynthSpec, write_synthetic

    out, _ = run
    more = write_synthetic(tmp_path / "more", "b2t25", SynthSpec(n_days=3, trials_per_day=4, val_trials_per_day=2,
                                                                 n_features=16, seed=1))
    assert main(["eval", "--run", str(out), "--data", str(more)]) == 2
    line = _error_line(capsys)
    assert "day" in line and "2 days" in line


def test_eval_device_errors_are_not_reported_as_a_corrupt_checkpoint(run, capsys):
    out, _ = run
    assert main(["eval", "--run", str(out), "--device", "foo"]) == 2
    line = _error_line(capsys)
    assert "--device" in line and "'foo'" in line and "corrupt" not in line
    if not torch.cuda.is_available():
        assert main(["eval", "--run", str(out), "--device", "cuda"]) == 2
        line = _error_line(capsys)
        assert "CUDA is not available" in line and "corrupt" not in line


def test_train_device_foo(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(RUN))
    assert main(["train", "--config", str(cfg_file), "--set", "train.device=foo", "--out", str(tmp_path / "r")]) == 2
    assert "train.device" in _error_line(capsys)


def test_out_under_a_file(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(RUN))
    (tmp_path / "afile").write_text("x")
    assert main(["train", "--config", str(cfg_file), "--out", str(tmp_path / "afile" / "run")]) == 2
    line = _error_line(capsys)
    assert "afile" in line and "cannot write" in line


def test_out_on_a_read_only_path(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("runs as root, for whom a read-only folder is writable; the conversion is covered by the "
                    "disk-full test")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(RUN))
    try:
        assert main(["train", "--config", str(cfg_file), "--out", str(ro / "run")]) == 2
    finally:
        ro.chmod(0o755)
    assert "cannot write" in _error_line(capsys)


def test_disk_full_while_writing_a_checkpoint(tmp_path, monkeypatch, capsys):
    import fastdecoder.checkpoint as ck

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full)
    cfg_file = tmp_path / "c.yaml"
    raw = copy.deepcopy(RUN)
    raw["train"].update(steps=2, eval_every=2, checkpoint_every=1)
    cfg_file.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(cfg_file), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    line = _error_line(capsys)
    assert "No space left on device" in line and "last.pt" in line
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert "No space left" in summary["aborted"] and summary["steps"] == 1


def test_resume_from_last_pt_with_an_empty_rng_state(run, tmp_path, capsys):
    import shutil

    out, _ = run
    copy_dir = tmp_path / "run"
    shutil.copytree(out, copy_dir)
    state = load_checkpoint(copy_dir / "last.pt")
    state["rng"]["torch"] = torch.empty(0, dtype=torch.uint8)
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, copy_dir / "last.pt")
    assert main(["train", "--out", str(copy_dir), "--resume", "--set", f"train.steps={STEPS + 2}"]) == 2
    line = _error_line(capsys)
    assert "last.pt" in line and "RNG state" in line


def test_non_finite_weights_never_become_best_pt_and_the_summary_says_why(tmp_path):
    trainer = Trainer(_cfg(steps=4, eval_every=2, checkpoint_every=100), tmp_path, progress=False)
    with torch.no_grad():
        trainer.model.head.bias.fill_(math.nan)
    with pytest.raises(NonFiniteError, match="weights became non-finite"):
        trainer.fit()
    assert not (tmp_path / "best.pt").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "non-finite" in summary["aborted"] and summary["steps"] == 2


def test_summary_is_written_when_training_stops_on_any_error(tmp_path, monkeypatch):
    trainer = Trainer(_cfg(steps=5, eval_every=100, checkpoint_every=100), tmp_path, progress=False)
    real = trainer.train_step

    def flaky(batch, **kw):
        if trainer.step == 3:
            raise RuntimeError("boom")
        return real(batch, **kw)

    monkeypatch.setattr(trainer, "train_step", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["aborted"] == "RuntimeError: boom" and summary["steps"] == 3


def test_bugs_keep_their_traceback(monkeypatch):
    import fastdecoder.cli as cli

    def buggy(args):
        raise ValueError("a bug, not the user's fault")

    monkeypatch.setattr(cli, "cmd_data", buggy)
    with pytest.raises(ValueError, match="a bug"):
        main(["data", "info", "x"])
    assert issubclass(UserError, ValueError)
