"""Two processes under torchrun with gloo on the CPU: DDP keeps both ranks' weights bitwise identical, rank 0 writes
the run folder, and an interrupted two-process run resumes to the same weights."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

from fastdecoder.config import config_from_dict
from fastdecoder.model import GRUDecoder
from fastdecoder.checkpoint import load_checkpoint
from fastdecoder.train.distributed import weights_digest

from fastdecoder.testing.tiny import tiny_config, tiny_data

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available in this torch build")

REPO = Path(__file__).resolve().parents[2]
RAW = tiny_config(
    "tiny-ddp", data=tiny_data(9),
    model={"hidden_size": 24, "num_layers": 2, "rnn_dropout": 0.2, "input_dropout": 0.1},
    augment={"white_noise_std": 0.3, "constant_offset_std": 0.1},
    optim={"lr": 0.01, "warmup_steps": 2, "decay_steps": 20},
    train={"steps": 8, "batch_size": 8, "eval_every": 4, "log_every": 2, "checkpoint_every": 4, "beam_width": 0,
           "deterministic": True, "threads": 1, "plot": False, "device": "cpu"},
)


def torchrun(*args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fastdecoder.cli", "train", "--no-progress", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


def model_digest(ckpt_path: Path) -> str:
    state = load_checkpoint(ckpt_path)
    cfg = config_from_dict(state["config"])
    m = GRUDecoder(cfg.model)
    m.load_state_dict(state["model"])
    return weights_digest(m)


def test_two_process_gloo_run_keeps_ranks_identical_and_resumes(tmp_path):
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(RAW))
    full = tmp_path / "full"
    r = torchrun("--config", str(cfg), "--out", str(full))
    assert "x 2 processes" in r.stdout
    summary = json.loads((full / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 8
    d0, d1 = summary["rank_weight_sha256"]
    assert d0 == d1 and summary["ranks_identical"]  # sha256 of the exact bytes: bitwise equal weights
    last = load_checkpoint(full / "last.pt")
    assert model_digest(full / "last.pt") == d0  # rank 0's checkpoint holds those weights
    ranks = last["rank_states"]
    assert len(ranks) == 2 and ranks[0]["sampler"]["rng"] != ranks[1]["sampler"]["rng"]  # each rank its own data
    lines = (full / "metrics.jsonl").read_text().splitlines()
    assert len([json.loads(x) for x in lines if '"val_per"' in x]) == 2  # rank 0 alone logs
    assert all(torch.isfinite(t).all() for t in last["model"].values())

    # interrupted after 4 steps (a finished 4-step run), resumed to 8 with 2 processes: same weights
    part = tmp_path / "part"
    torchrun("--config", str(cfg), "--out", str(part), "--set", "train.steps=4")
    r = torchrun("--out", str(part), "--resume", "--set", "train.steps=8")
    assert "resuming 'tiny-ddp' at step 4" in r.stdout
    resumed = json.loads((part / "summary.json").read_text())
    assert resumed["rank_weight_sha256"] == [d0, d0] and resumed["resumed_from"] == 4
    assert resumed["val_per"] == summary["val_per"]


def test_single_process_is_unchanged_by_the_distributed_code(tmp_path, monkeypatch):
    # without torchrun's variables the trainer neither joins a process group nor wraps the model
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    from fastdecoder.train.trainer import Trainer

    raw = copy.deepcopy(RAW)
    raw["train"]["steps"] = 2
    t = Trainer(config_from_dict(raw), tmp_path, progress=False)
    assert not t.dist.enabled and t.step_fn.forward is t.model
    assert t.fit()["world_size"] == 1 and not dist.is_initialized()
