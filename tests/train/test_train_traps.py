"""Train-side traps: the family/format warning, the data path stored absolute (and a --data hint when it is gone),
a named default run folder, nothing created before the data loads, no progress-bar frames off a terminal, and
DIR/train.log."""
import json
import logging
import os
import shutil
import sys

import pytest
import yaml

from fastdecoder.cli import main
from fastdecoder.config import config_from_dict
from fastdecoder.testing.tiny import tiny_config, tiny_data
from fastdecoder.train.outputs import RunOutputs
from fastdecoder.train.trainer import Trainer

TINY = tiny_config(data={"days_per_batch": 2}, model={"hidden_size": 16}, augment=None, optim=None,
                   train={"steps": 2, "eval_every": 2, "log_every": 1, "checkpoint_every": 2, "batch_size": 4,
                          "beam_width": 0, "plot": False})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small b2t25 folder (written by ``data synth``) and the tiny config, in one folder."""
    root = tmp_path_factory.mktemp("traps")
    assert main(["data", "synth", "--format", "b2t25", "--out", str(root / "data"), "--days", "2",
                 "--trials-per-day", "6", "--features", "8"]) == 0
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return root


def test_family_warning_when_preset_and_data_differ(caplog):
    raw = {**TINY, "data": tiny_data(0, trials_per_day=4, val_trials_per_day=1)}
    with caplog.at_level(logging.WARNING, logger="fastdecoder"):
        Trainer(config_from_dict({**raw, "name": "b2t24"}), None, progress=False)
    hits = [r.getMessage() for r in caplog.records if "recipe but" in r.getMessage()]
    assert len(hits) == 1 and "config 'b2t24' is the b2t24 recipe" in hits[0] and "holds b2t25 data" in hits[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastdecoder"):
        Trainer(config_from_dict({**raw, "name": "b2t25"}), None, progress=False)
        Trainer(config_from_dict({**raw, "name": "mine"}), None, progress=False)
    assert not [r for r in caplog.records if "recipe but" in r.getMessage()]


def test_relative_data_path_stored_absolute_and_hint_when_gone(files, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    shutil.copytree(files / "data", work / "data")
    monkeypatch.chdir(work)
    assert main(["train", "--config", str(files / "tiny.yaml"), "--data", "data", "--out", "run",
                 "--no-progress"]) == 0
    stored = yaml.safe_load((work / "run" / "config.yaml").read_text())["data"]["path"]
    assert os.path.isabs(stored) and stored == str((work / "data").resolve())
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)  # another folder: eval finds the data by the stored path
    assert main(["eval", "--run", str(work / "run"), "--checkpoint", "last"]) == 0
    assert json.loads(capsys.readouterr().out)["trials"] > 0
    shutil.move(work / "data", tmp_path / "moved")
    for cmd in (["eval", "--run", str(work / "run"), "--checkpoint", "last"],
                ["stream", "--run", str(work / "run"), "--checkpoint", "last", "--quiet"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is not there any more: pass --data PATH" in err and stored in err
    assert main(["eval", "--run", str(work / "run"), "--checkpoint", "last", "--data", str(tmp_path / "moved")]) == 0


def test_train_without_out_writes_a_named_printed_folder(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(files / "tiny.yaml"), "--data", str(files / "data"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("tiny-")
    assert f"no --out given: writing the run to {os.path.join('runs', runs[0].name)}" in out
    assert {"config.yaml", "last.pt", "summary.json", "metrics.jsonl", "train.log"} <= {p.name for p in
                                                                                         runs[0].iterdir()}


def test_nothing_created_or_cleared_before_the_data_loads(files, tmp_path, capsys):
    new = tmp_path / "new" / "run"
    assert main(["train", "--config", str(files / "tiny.yaml"), "--data", str(tmp_path / "missing"),
                 "--out", str(new)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old"
    assert main(["train", "--config", str(files / "tiny.yaml"), "--data", str(files / "data"), "--out", str(old),
                 "--no-progress"]) == 0
    before = sorted(p.name for p in old.iterdir())
    assert main(["train", "--config", str(files / "tiny.yaml"), "--data", str(tmp_path / "missing"),
                 "--out", str(old), "--overwrite"]) == 2
    assert sorted(p.name for p in old.iterdir()) == before  # --overwrite clears only once the new data loaded


def test_no_progress_frames_off_a_terminal_and_a_train_log(files, tmp_path, capfd):
    out = tmp_path / "run"
    assert main(["train", "--config", str(files / "tiny.yaml"), "--data", str(files / "data"),
                 "--out", str(out)]) == 0  # progress bar requested (the default), but stderr is not a terminal
    captured = capfd.readouterr()
    assert "\r" not in captured.out and "\r" not in captured.err
    log = (out / "train.log").read_text()
    assert "\r" not in log
    assert "step 1/2" in log and "step 2/2" in log and "step 2: val PER" in log


def test_progress_bar_only_on_a_terminal(monkeypatch):
    class Tty:
        def isatty(self):
            return True

        def write(self, s):
            return len(s)

        def flush(self):
            pass

    assert RunOutputs(None, True, tensorboard=False, plot=False, progress=True).progress is False  # pytest's pipe
    monkeypatch.setattr(sys, "stderr", Tty())
    assert RunOutputs(None, True, tensorboard=False, plot=False, progress=True).progress is True
    assert RunOutputs(None, True, tensorboard=False, plot=False, progress=False).progress is False
