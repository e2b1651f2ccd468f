"""Checkpoints: exact (bitwise) resume on the CPU, crash safety under SIGKILL, SIGTERM/SIGINT stop cleanly, corrupt,
foreign and code-carrying files give clear errors and touch nothing."""
import copy
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from fastdecoder.cli import main
from fastdecoder.config import config_from_dict
from fastdecoder.checkpoint import (CheckpointError, load_checkpoint, remove_stale_temp_files,
                                          save_checkpoint)
from fastdecoder.checkpoint import ResumeError
from fastdecoder.train.run_data import prepare_dataset
from fastdecoder.train.trainer import Trainer

from fastdecoder.testing.tiny import tiny_config, tiny_data

BASE = tiny_config(
    "tiny-ckpt", data=tiny_data(7),
    model={"hidden_size": 24, "num_layers": 2, "rnn_dropout": 0.2, "input_dropout": 0.1},
    augment={"white_noise_std": 0.3, "constant_offset_std": 0.1, "time_mask_prob": 0.5, "time_mask_width": 4,
             "time_mask_count": 2, "freq_mask_prob": 0.5, "freq_mask_width": 3, "freq_mask_count": 1},
    optim={"lr": 0.01, "decay_steps": 40},
    train={"steps": 30, "batch_size": 8, "eval_every": 10, "log_every": 5, "checkpoint_every": 10, "beam_width": 0,
           "deterministic": True, "plot": False},
)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    _, path = prepare_dataset(config_from_dict(BASE), tmp_path_factory.mktemp("ckpt_data"))
    return str(path)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_raw(data_path, **sections):
    raw = copy.deepcopy(BASE)
    raw["data"].pop("synthetic")
    raw["data"]["path"] = data_path
    for sec, kv in sections.items():
        raw.setdefault(sec, {}).update(kv)
    return raw


def make_cfg(data_path, **sections):
    return config_from_dict(make_raw(data_path, **sections))


def assert_same_state(a: Trainer, b: Trainer):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs"
    oa, ob = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for i in oa:
        for k in oa[i]:
            assert torch.equal(torch.as_tensor(oa[i][k]), torch.as_tensor(ob[i][k])), f"optimizer state {i}.{k}"
    assert [g["lr"] for g in a.optimizer.param_groups] == [g["lr"] for g in b.optimizer.param_groups]


# -- exact resume -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant,stop_at", [("days_cosine", 10), ("random_plateau_adaptive", 13),
                                             ("fast_deferred_buckets", 10), ("fast_deferred_adaptive", 13)])
def test_interrupted_and_resumed_run_is_bitwise_equal(data_path, tmp_path, one_thread, variant, stop_at):
    extra = {}
    if variant.endswith("adaptive"):  # also exercises the epoch sampler, plateau and adaptive-LR state
        extra = {"data": {"batching": "random"}, "optim": {"schedule": "plateau", "plateau_patience": 0},
                 "stability": {"adaptive_lr": True, "grad_norm_threshold": 2.0, "instability_events": 3,
                               "instability_window": 6, "max_lr_reductions": 8},
                 "train": {"eval_every": 4}}
    if variant.startswith("fast"):  # the deferred step: the guard accounts the steps at reads, not per step
        extra.setdefault("train", {}).update(fast=True, length_bucket=16)
    cfg = make_cfg(data_path, **extra)
    full = Trainer(cfg, tmp_path / "full", progress=False)
    s_full = full.fit()

    part = Trainer(cfg, tmp_path / "part", progress=False)
    s_part = part.fit(max_steps=stop_at)
    assert s_part["interrupted"] == "max_steps" and s_part["steps"] == stop_at
    ck = torch.load(tmp_path / "part" / "last.pt", weights_only=True)  # plain containers and tensors only
    assert ck["step"] == stop_at and {"optimizer", "schedule", "rng", "sampler", "stability", "monitor"} <= set(ck)
    del part

    resumed = Trainer(cfg, tmp_path / "part", progress=False, resume=True)
    assert resumed.step == stop_at
    s_res = resumed.fit()
    assert_same_state(full, resumed)
    assert s_res["steps"] == s_full["steps"] == 30 and s_res["resumed_from"] == stop_at
    assert s_res["val_per"] == s_full["val_per"] and s_res["best_val_per"] == s_full["best_val_per"]
    for key in ("skipped_updates", "lr_reductions", "plateau_reductions", "final_lr"):
        assert s_res[key] == s_full[key], key
    if variant == "random_plateau_adaptive":
        assert s_full["lr_reductions"] + s_full["plateau_reductions"] > 0  # the reductions were resumed, too
    # metrics.jsonl is appended: the records up to the checkpoint, a resume marker, then the rest
    recs = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in recs if r.get("event") == "resume"]
    assert len(ev) == 1 and ev[0]["step"] == stop_at
    full_train = [r["loss"] for r in json.loads("[" + ",".join(
        (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()) + "]") if "loss" in r and "event" not in r]
    part_train = [r["loss"] for r in recs if "loss" in r and "event" not in r]
    assert len(part_train) == len(full_train)
    assert part_train[: stop_at // 5] == full_train[: stop_at // 5]


def test_metrics_after_the_checkpoint_are_redone_not_duplicated(data_path, tmp_path, one_thread):
    cfg = make_cfg(data_path, train={"steps": 20})
    t = Trainer(cfg, tmp_path, progress=False)
    t.fit(max_steps=10)
    # a crash after step 10's checkpoint but after logging step 15 (and a torn last line)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 15, "loss": 1.0}) + "\n" + '{"step": 16, "lo')
    Trainer(cfg, tmp_path, progress=False, resume=True).fit()
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if "loss" in r and "event" not in r]
    assert steps == [5, 10, 15, 20]  # the stale 15 and the torn 16 were dropped, 15 and 20 redone
    i = [k for k, r in enumerate(recs) if r.get("event") == "resume"][0]
    assert all(r["step"] <= 10 for r in recs[:i]) and recs[i]["step"] == 10


def test_resume_config_must_match(data_path, tmp_path):
    cfg = make_cfg(data_path, train={"steps": 6, "checkpoint_every": 3})
    Trainer(cfg, tmp_path, progress=False).fit(max_steps=3)
    with pytest.raises(ResumeError, match=r"optim\.lr: checkpoint 0\.01, requested 0\.02"):
        Trainer(make_cfg(data_path, optim={"lr": 0.02}, train={"steps": 6, "checkpoint_every": 3}), tmp_path,
                resume=True)
    t = Trainer(make_cfg(data_path, train={"steps": 9, "checkpoint_every": 3}), tmp_path, resume=True,
                progress=False)  # a longer budget is fine
    assert t.fit()["steps"] == 9


# -- SIGINT in process, SIGTERM through the command line ------------------------------------------------------------

def test_sigint_saves_and_returns(data_path, tmp_path):
    cfg = make_cfg(data_path, train={"steps": 1000, "deterministic": False})
    t = Trainer(cfg, tmp_path, progress=False)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN where the suite runs as a background job
    t.model.head.weight.register_hook(lambda g: (os.kill(os.getpid(), signal.SIGINT), g)[1] if t.step == 6 else g)
    summary = t.fit()
    assert summary["interrupted"] == "SIGINT" and summary["steps"] == 7
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 7
    assert json.loads((tmp_path / "summary.json").read_text())["interrupted"] == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def _write_cfg(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(*args):
    return [sys.executable, "-m", "fastdecoder.cli", *args]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_sigterm_saves_exits_zero_and_resume_finishes(data_path, tmp_path):
    cfg = _write_cfg(tmp_path / "tiny.yaml", make_raw(data_path, train={
        "steps": 100000, "log_every": 3, "checkpoint_every": 100000, "eval_every": 100000, "deterministic": False,
        "threads": 1}))
    out = tmp_path / "run"
    p = subprocess.Popen(_cli("train", "--config", str(cfg), "--out", str(out), "--no-progress"), cwd=REPO,
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.time() + 120
    for line in p.stderr:
        seen.append(line)
        if line.startswith("INFO step ") and "/100000" in line:
            p.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline, "".join(seen)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, "".join(seen) + stderr
    assert "interrupted at step" in stdout and "--resume" in stdout
    state = load_checkpoint(out / "last.pt")
    assert 0 < state["step"] < 100000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] == "SIGTERM" and summary["steps"] == state["step"]

    target = state["step"] + 4
    r = subprocess.run(_cli("train", "--out", str(out), "--resume", "--no-progress", "--set",
                            f"train.steps={target}"), cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(out / "last.pt")["step"] == target
    summary = json.loads((out / "summary.json").read_text())
    assert "interrupted" not in summary and summary["steps"] == target and summary["resumed_from"] == state["step"]


# -- crash safety ----------------------------------------------------------------------------------------------------

WRITER = """
import sys, torch
from fastdecoder.checkpoint import save_checkpoint
path, start = sys.argv[1], int(sys.argv[2])
big = torch.empty(6_000_000)
i = start
while True:
    i += 1
    big.fill_(float(i))
    print(i, flush=True)
    save_checkpoint({"model": {"w": big}, "step": i, "config": {}}, path)
"""


def test_sigkill_while_writing_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rnd = random.Random(0)
    step, temps_seen = 0, 0
    for attempt in range(5):
        p = subprocess.Popen([sys.executable, str(script), str(path), str(step)], stdout=subprocess.PIPE, text=True,
                             env=_env(), cwd=REPO)
        n = 0
        for _ in p.stdout:
            n += 1
            if n == 3 + attempt:  # at least one complete save happened; now kill at a random moment
                break
        time.sleep(rnd.uniform(0.0, 0.08))
        p.kill()
        p.wait()
        p.stdout.close()
        temps = list(tmp_path.glob(".last.pt.*.tmp"))
        temps_seen += bool(temps)
        state = load_checkpoint(path)  # never torn
        w = state["model"]["w"]
        assert w.numel() == 6_000_000 and bool((w == float(state["step"])).all())
        assert state["step"] >= step + 2
        step = state["step"]
        assert remove_stale_temp_files(tmp_path) == temps
    assert temps_seen >= 1, "no kill landed inside a write; the test did not test anything"


def test_atomic_save_failure_keeps_previous(tmp_path):
    path = tmp_path / "x.pt"
    save_checkpoint({"model": {}, "step": 1, "config": {}}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({"model": {}, "step": 2, "config": {}, "bad": Boom()}, path)
    assert load_checkpoint(path)["step"] == 1 and list(tmp_path.iterdir()) == [path]


# -- corrupt, foreign, code-carrying -------------------------------------------------------------------------------

class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_corrupt_foreign_and_malicious_files_give_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint({"model": {"w": torch.ones(1000)}, "step": 3, "config": {}}, good)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.pt is corrupt"):
        load_checkpoint(trunc)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(CheckpointError, match=r"junk\.pt is corrupt"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pt is not a fastdecoder checkpoint"):
        load_checkpoint(foreign)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "fastdecoder-checkpoint-v1", "model": {}, "step": 0, "config": {}, "x": _Evil(marker)},
               evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt is not a fastdecoder checkpoint: .*could run code"):
        load_checkpoint(evil)
    assert not marker.exists()
    weights_only = tmp_path / "weights.pt"
    save_checkpoint({"model": {}, "step": 1, "config": {}}, weights_only)
    from fastdecoder.checkpoint import check_resumable

    with pytest.raises(CheckpointError, match=r"cannot resume a run: it lacks optimizer"):
        check_resumable(load_checkpoint(weights_only), weights_only)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_resume_errors_touch_nothing(data_path, tmp_path, capsys):
    cfg = _write_cfg(tmp_path / "tiny.yaml", make_raw(data_path, train={"steps": 4, "checkpoint_every": 2,
                                                                         "deterministic": False}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    # a fresh run into it is refused without --overwrite
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    # --resume and --overwrite conflict
    assert main(["train", "--out", str(run), "--resume", "--overwrite"]) == 2
    assert "conflict" in capsys.readouterr().err
    # a different config is refused, naming the keys
    before = _snapshot(run)
    assert main(["train", "--config", str(cfg), "--out", str(run), "--resume", "--set", "optim.lr=0.5",
                 "--set", "train.steps=8"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr: checkpoint 0.01, requested 0.5" in err and "train.steps" not in err.split("Only")[0]
    assert _snapshot(run) == before
    # a corrupt last.pt: the error names the file and says so; nothing in the folder changes
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:5000])
    before = _snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--set", "train.steps=8"]) == 2
    err = capsys.readouterr().err
    assert str(run / "last.pt") in err and "corrupt" in err
    assert _snapshot(run) == before
    # a missing one
    (run / "last.pt").unlink()
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert "last.pt does not exist" in capsys.readouterr().err
