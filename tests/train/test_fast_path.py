"""The fast path (``train.fast``) against the reference path, and ``fastdecoder bench train`` end to end.

On the CPU both paths run the reference ops (Triton runs only for CUDA tensors) and differ in batching: device-
resident gathers vs host padding + copy. They share every other line, so their losses must be equal; the stated
tolerance is 1e-6 relative.
"""
import json

import pytest
import torch

from fastdecoder.cli import main
from fastdecoder.config import config_from_dict
from fastdecoder.bench.train_speed import bench_train, format_report
from fastdecoder.train.trainer import Trainer

from fastdecoder.testing.tiny import tiny_config


@pytest.fixture()
def tiny_cfg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # synthetic data of out_dir-less trainers goes to ./runs/synthetic
    return config_from_dict(tiny_config(augment={"time_mask_prob": 0.5, "time_mask_width": 5, "time_mask_count": 1}))


def test_fast_and_reference_paths_give_the_same_losses(tiny_cfg):
    r = bench_train(tiny_cfg, steps=4, warmup=2, compare_steps=6)
    assert r["compared_steps"] == 6
    assert r["loss_max_rel_diff"] <= 1e-6, (r["reference"]["losses"], r["fast"]["losses"])
    assert all(torch.isfinite(torch.tensor(r["fast"]["losses"])))
    assert r["reference"]["ops_backend"] == "reference"
    for path in ("reference", "fast"):  # the rate is the timed steps over the timed seconds
        p = r[path]
        assert len(p["losses"]) == 6 and 0 < p["seconds"] < 600
        assert p["batches_per_second"] == pytest.approx(4 / p["seconds"], rel=1e-12)
    text = format_report(r)
    assert "speed-up fast / reference" in text and "max relative difference" in text
    # every column measured: each phase took time; the synced reference step reads its loss back every step, the
    # deferred fast step not once in the timed steps; nothing compiled or captured, no CUDA counts on a CPU
    for path in ("reference", "fast"):
        p = r[path]
        assert all(p["ms_per_step"][k] > 0 for k in ("data", "forward", "backward", "optimizer")), p["ms_per_step"]
        assert p["compiles"] == 0 and p["graph_captures"] == 0
        assert p["device_syncs_per_step"] is None and p["peak_memory_gb"] is None
    assert r["reference"]["host_reads_per_step"] >= 1, r["reference"]["host_read_sites"]
    assert r["fast"]["deferred"] and r["fast"]["host_reads_per_step"] == 0, r["fast"]["host_read_sites"]
    header = text.splitlines()[1]
    for column in ("batches/s", "data / forward / backward / optimizer", "host reads/step", "device syncs/step",
                   "compiles", "graph captures", "peak GPU memory"):
        assert column in header
    assert all(len(line.split("|")) == len(header.split("|")) for line in text.splitlines()[1:5])


def test_fast_path_uses_resident_batches(tiny_cfg):
    from dataclasses import replace

    fast = Trainer(replace(tiny_cfg, train=replace(tiny_cfg.train, fast=True)), None, progress=False)
    ref = Trainer(replace(tiny_cfg, train=replace(tiny_cfg.train, fast=False)), None, progress=False)
    assert fast.resident is not None and ref.resident is None
    for _ in range(3):
        a, b = fast.next_batch(), ref.next_batch()
        for f in ("x", "x_lens", "y", "y_lens", "day"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f


def test_bench_train_cli_with_synthetic_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.json"
    rc = main(["bench", "train", "--config", "b2t25", "--synthetic", "--steps", "2", "--warmup", "1",
               "--set", "model.hidden_size=16", "--set", "model.num_layers=1", "--set", "train.batch_size=4",
               "--set", "data.days_per_batch=2",
               "--set", "train.amp=none",  # fp32 on both paths (b2t25's bf16 autocasts a bf16 CPU's fast path)
               "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "bench train: b2t25 on cpu" in text and "| fast |" in text
    r = json.loads(out.read_text())
    assert r["steps"] == 2 and len(r["fast"]["losses"]) == 3
    assert r["loss_max_rel_diff"] <= 1e-6


def test_bench_train_cli_bad_args(capsys):
    assert main(["bench", "train", "--config", "demo", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_device_syncs_count_the_sync_warnings_only():
    """bench train's sync counter (CUDA's sync debug mode warnings; its CUDA side runs in the GPU check)."""
    from fastdecoder.bench.train_speed import DeviceSyncs

    with DeviceSyncs(torch.device("cpu")) as off:  # nothing to count off CUDA
        pass
    assert off.total is None
    syncs = DeviceSyncs(torch.device("cuda"))  # not entered: only the recording is exercised here
    syncs._record("called a synchronizing CUDA operation", UserWarning, __file__, 1)
    syncs._record("some other warning", UserWarning, __file__, 1)
    assert syncs.total == 1 and dict(syncs.where) == {"outside fastdecoder": 1}
    # a sync raised from package code is attributed to its innermost package frame, not to the counter's own
    import fastdecoder
    from pathlib import Path

    fake = str(Path(fastdecoder.__file__).parent / "fake_op.py")
    exec(compile("record('synchronizing', UserWarning, '', 0)", fake, "exec"), {"record": syncs._record})
    assert syncs.where["fake_op.py:1 ``"] == 1 and syncs.total == 2, dict(syncs.where)
