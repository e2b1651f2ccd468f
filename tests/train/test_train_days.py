"""The 'days' batching and the number of days in the data: ``data.days_per_batch`` above the training days is refused
before training (NEJM's trainer refuses it too), and batches whose day groups are uneven train (the grouped day layer
returns one row per trial whatever the order of the groups)."""
import yaml

import numpy as np
import pytest

from fastdecoder.cli import main
from fastdecoder.config import config_from_dict
from fastdecoder.errors import UserError
from fastdecoder.testing.tiny import DEFAULT, tiny_config, tiny_data
from fastdecoder.train.trainer import Trainer


def days_config(n_days: int, days_per_batch: int, batch_size: int, steps: int = 3) -> dict:
    """An 8-unit run of ``steps`` steps on ``n_days`` days of 8 features, ``days_per_batch`` days per batch."""
    return tiny_config(
        "tiny-days", data=tiny_data(5, trials_per_day=8, val_trials_per_day=2, test_trials_per_day=1, n_features=8,
                                    n_days=n_days, days_per_batch=days_per_batch),
        model={"hidden_size": 8}, augment=None,
        optim={"lr": DEFAULT, "warmup_steps": 1, "decay_steps": steps + 1, "lr_min": DEFAULT},
        train={"steps": steps, "batch_size": batch_size, "eval_every": steps, "log_every": 1, "checkpoint_every": steps,
               "beam_width": 2})


def test_more_days_per_batch_than_days_is_refused_before_training(tmp_path):
    with pytest.raises(UserError, match=r"data\.days_per_batch is 4 but the training data has trials on only 2 days.*"
                                        r"set data\.days_per_batch to at most 2"):
        Trainer(config_from_dict(days_config(2, 4, 8)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_cli_names_days_per_batch_and_the_days(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(days_config(2, 4, 8)))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: data.days_per_batch is 4") and "only 2 days" in err[0], err


def test_other_batchings_ignore_days_per_batch(tmp_path):
    cfg = days_config(2, 4, 8, steps=1)
    cfg["data"]["batching"] = "random"
    trainer = Trainer(config_from_dict(cfg), tmp_path / "run", progress=False)
    assert trainer.fit()["steps"] == 1


@pytest.mark.parametrize("n_days,days_per_batch,batch_size", [(3, 3, 32), (2, 2, 7)])
def test_uneven_day_groups_train(n_days, days_per_batch, batch_size, tmp_path):
    """ceil(batch / days) trials per day, the surplus trimmed from random days: at some step only the last day is
    short (32 = 11 + 11 + 10; 7 = 4 + 3), where the grouped day layer once returned a row per padded slot."""
    trainer = Trainer(config_from_dict(days_config(n_days, days_per_batch, batch_size, steps=6)), tmp_path / "run",
                      progress=False)
    summary = trainer.fit()
    assert summary["steps"] == 6
    losses = [r["loss"] for r in trainer.history if "loss" in r]
    assert len(losses) == 6 and np.isfinite(losses).all(), losses
