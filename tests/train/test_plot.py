"""curves.png at the end of training and from ``fastdecoder plot DIR``; optional TensorBoard logging."""
import copy
import importlib.util
import json
import logging
import sys

import pytest

from fastdecoder.cli import main
from fastdecoder.config import config_from_dict
from fastdecoder.train.trainer import Trainer

from fastdecoder.testing.tiny import DEFAULT, tiny_config, tiny_data

RAW = tiny_config(
    "tiny-plot", data=tiny_data(11, trials_per_day=16, val_trials_per_day=4), model={"hidden_size": 16},
    augment=None, optim={"lr": 0.01, "schedule": "constant", "warmup_steps": DEFAULT, "decay_steps": DEFAULT,
                         "lr_min": DEFAULT},
    train={"steps": 8, "batch_size": 8, "eval_every": 4, "log_every": 2, "checkpoint_every": 4, "beam_width": 0},
)
PNG = b"\x89PNG\r\n\x1a\n"
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
HAS_TB = importlib.util.find_spec("tensorboard") is not None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("plotrun")
    t = Trainer(config_from_dict(RAW), out, progress=False)
    t.model.head.weight.register_hook(lambda g: g * float("nan") if t.step == 3 else g)  # a skip to mark
    t.fit()
    return out


@pytest.mark.skipif(not HAS_MPL, reason="matplotlib is not installed (pip install 'fastdecoder[plot]')")
def test_curves_written_at_end_and_on_demand(run_dir, capsys):
    png = run_dir / "curves.png"
    assert png.read_bytes()[:8] == PNG
    png.unlink()
    assert main(["plot", str(run_dir)]) == 0
    assert png.read_bytes()[:8] == PNG and "wrote" in capsys.readouterr().out
    other = run_dir / "other.png"
    assert main(["plot", str(run_dir), "--out", str(other)]) == 0 and other.read_bytes()[:8] == PNG
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "skipped_update" for r in recs)


def test_plot_errors(tmp_path, capsys, monkeypatch, run_dir):
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    assert main(["plot", str(run_dir)]) == 2
    assert "fastdecoder[plot]" in capsys.readouterr().err


def test_training_without_matplotlib_still_finishes(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    raw = copy.deepcopy(RAW)
    raw["train"]["steps"] = 2
    with caplog.at_level(logging.INFO, logger="fastdecoder.train"):
        Trainer(config_from_dict(raw), tmp_path, progress=False).fit()
    assert (tmp_path / "summary.json").is_file() and not (tmp_path / "curves.png").exists()
    assert "matplotlib is not installed" in caplog.text


@pytest.mark.skipif(HAS_TB, reason="tensorboard is installed; this checks the message given without it")
def test_tensorboard_missing_is_a_clear_error(tmp_path):
    raw = copy.deepcopy(RAW)
    raw["train"]["tensorboard"] = True
    with pytest.raises(ValueError, match="pip install tensorboard"):
        Trainer(config_from_dict(raw), tmp_path, progress=False)


@pytest.mark.skipif(not HAS_TB, reason="tensorboard is not installed (optional: pip install tensorboard)")
def test_tensorboard_logging(tmp_path):
    raw = copy.deepcopy(RAW)
    raw["train"].update(tensorboard=True, steps=4, plot=False)
    Trainer(config_from_dict(raw), tmp_path, progress=False).fit()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
