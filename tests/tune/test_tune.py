"""fastdecoder tune / tune report / lr-find on tiny synthetic data: the search space, pruning of collapsed and
diverging trials, a 16-trial study with two worker processes on the journal file, a worker killed mid-trial, two
workers on a real PostgreSQL server and on a real Redis server, trials trained as the members of one batched model
(--members), and the LR range test."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import fastdecoder
from fastdecoder.cli import main
from fastdecoder.config import ConfigError, config_from_dict, load_config
from fastdecoder.testing.tiny import tiny_config, tiny_data
from fastdecoder.train.trainer import Trainer
from fastdecoder.tune.report import collect, write_report
from fastdecoder.tune.space import apply_params, load_space, parse_space
from fastdecoder.tune.storage import open_storage, open_study
from fastdecoder.tune.study import TuneSettings, tune

try:
    import optuna
except ImportError:
    optuna = None
#: every test but the trainer hook's and the missing-Optuna message needs Optuna
needs_optuna = pytest.mark.skipif(optuna is None, reason="the [tune] extra (optuna) is not installed")

SRC = str(Path(fastdecoder.__file__).resolve().parents[1])

#: the trainer tests' tiny run shortened: 40 steps, CPU, one thread
SHORT = {"optim": {"decay_steps": 40}, "stability": {"monitor_after_steps": 20},
         "train": {"steps": 40, "eval_every": 10, "log_every": 10, "checkpoint_every": 40, "beam_width": 0,
                   "plot": False, "train_monitor": False, "device": "cpu", "threads": 1}}

#: learns within tens of steps on 2 CPU cores
TINY = tiny_config(**SHORT)


#: smaller still, for the studies with worker processes (each trial a few seconds on a busy machine)
SMALL = tiny_config(data=tiny_data(3, trials_per_day=24, val_trials_per_day=6, test_trials_per_day=2, n_features=16,
                                   words_per_sentence=(1, 2)),
                    model={"hidden_size": 32}, **SHORT)


def _write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _worker(args: list, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fastdecoder.cli", "tune", *args], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _wait(procs, logs, timeout=300):
    for p, log in zip(procs, logs):
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            raise AssertionError(f"worker timed out:\n{log.read_text()[-3000:]}")
        assert rc == 0, log.read_text()[-3000:]


# -- the search space ----------------------------------------------------------------------------------------------
@needs_optuna
def test_space_kinds_conditions_and_fixed_values():
    space = parse_space({
        "optim.lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        "optim.warmup_steps": {"type": "int", "low": 0, "high": 20, "step": 5},
        "optim.schedule": {"type": "categorical", "choices": ["warmup_cosine", "constant"]},
        "optim.decay_steps": {"type": "int", "low": 30, "high": 60, "when": {"optim.schedule": "warmup_cosine"}},
        "train.steps": 40,
    })
    seen_schedules = set()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        t = study.ask()
        p = space.sample(t, config_from_dict(TINY).to_dict())
        seen_schedules.add(p["optim.schedule"])
        assert 1e-4 <= p["optim.lr"] <= 1.0 and p["optim.warmup_steps"] % 5 == 0 and p["train.steps"] == 40
        assert ("optim.decay_steps" in p) == (p["optim.schedule"] == "warmup_cosine"), p
        cfg = config_from_dict(apply_params(TINY, p))
        assert cfg.optim.lr == p["optim.lr"] and cfg.train.steps == 40
        study.tell(t, 0.0)
    assert seen_schedules == {"warmup_cosine", "constant"}
    assert load_space("demo").keys[:2] == ["optim.lr", "optim.eps"]  # the shipped example spaces load
    assert {"optim.eps", "optim.schedule", "optim.warmup_steps"} <= set(load_space("b2t25").keys)


@pytest.mark.parametrize("raw, words", [
    ({"optim.lrr": {"type": "float", "low": 0.1, "high": 1}}, "has no key 'lrr'"),
    ({"optim.lr": {"type": "float", "low": -1, "high": 1}}, "outside the key's range"),
    ({"optim.lr": {"type": "float", "low": 1, "high": 0.1}}, "must be below high"),
    ({"train.steps": {"type": "float", "low": 1, "high": 10}}, "does not fit the key"),
    ({"optim.lr": {"type": "normal", "low": 1, "high": 2}}, "type must be float, int or categorical"),
    ({"optim.lr": {"type": "float", "low": 0.1, "high": 1, "when": {"optim.schedule": "constant"}}},
     "not an entry above it"),
    ({"model.rnn_dropout": 1.0}, "outside the key's range"),
    ({"optim.lr": {"type": "float", "low": 0.0001, "high": 1, "logg": True}}, "unknown field"),
    ([1, 2], "non-empty mapping"),
])
def test_space_errors_name_the_key(raw, words):
    with pytest.raises(ConfigError, match=words):
        parse_space(raw)


@needs_optuna
def test_tune_cli_errors(tmp_path, capsys):
    assert main(["tune", "--config", "demo", "--space", "nosuch", "--trials", "2", "--out", str(tmp_path)]) == 2
    assert "neither a file nor an example space" in capsys.readouterr().err
    assert main(["tune", "--config", "demo", "--space", "demo", "--trials", "0", "--out", str(tmp_path)]) == 2
    assert "--trials must be >= 1" in capsys.readouterr().err
    assert main(["tune", "report", str(tmp_path / "none")]) == 2
    assert "holds no study" in capsys.readouterr().err


def test_clear_error_without_optuna(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    cfg = _write(tmp_path / "tiny.yaml", TINY)
    assert main(["tune", "--config", str(cfg), "--space", "demo", "--trials", "1", "--out", str(tmp_path / "s")]) == 2
    assert "pip install 'fastdecoder[tune]'" in capsys.readouterr().err


# -- the trainer's evaluation hook -------------------------------------------------------------------------------
def test_eval_hook_sees_every_evaluation_and_can_stop_training(tmp_path):
    cfg = config_from_dict(apply_params(TINY, {"train.steps": 6, "train.eval_every": 2, "train.checkpoint_every": 6}))
    seen = []
    trainer = Trainer(cfg, tmp_path / "a", progress=False, eval_hook=lambda tr, res: seen.append((tr.step, res.per)))
    trainer.fit()
    assert [s for s, _ in seen] == [2, 4, 6] and all(math.isfinite(p) for _, p in seen)

    class Stop(Exception):
        pass

    def stop_at_4(tr, res):
        if tr.step == 4:
            raise Stop

    trainer = Trainer(cfg, tmp_path / "b", progress=False, eval_hook=stop_at_4)
    with pytest.raises(Stop):
        trainer.fit()
    assert trainer.step == 4
    assert "aborted" in json.loads((tmp_path / "b" / "summary.json").read_text())


# -- collapsed and diverging trials -------------------------------------------------------------------------------
@needs_optuna
def test_wild_space_prunes_collapsed_and_diverged_trials(tmp_path):
    """lr up to 1.0 and eps down to 1e-8: the diverging trial (lr 1, eps 1e-8) and the collapsed one (a 32-unit
    model at lr 0.01, eps 0.1: all-blank after 30 steps) are pruned with their reasons; the study ends normally."""
    base = apply_params(TINY, {"model.hidden_size": 32, "model.patch_size": 4, "model.patch_stride": 2,
                               "data.synthetic": {**TINY["data"]["synthetic"], "n_features": 16},
                               "train.steps": 40, "optim.lr": 0.01, "optim.eps": 0.1, "train.eval_every": 10})
    cfg = _write(tmp_path / "wild.yaml", base)
    space = parse_space({"optim.lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
                         "optim.eps": {"type": "float", "low": 1e-8, "high": 0.1, "log": True}})
    out = tmp_path / "study"
    study = open_study(open_storage(None, out, heartbeat_interval=5, grace=30), "tune")
    study.enqueue_trial({"optim.lr": 1.0, "optim.eps": 1e-8})
    s = TuneSettings(config=str(cfg), space=space, trials=3, out=out, pruner="none", baseline=True, sampler_seed=0)
    done = tune(s, say=lambda m: None)
    rep = write_report(out, None, "tune", plots=False)
    by_number = {r["number"]: r for r in rep["trials"]}
    assert len(rep["trials"]) == 3 and all(r["state"] in ("COMPLETE", "PRUNED", "FAIL") for r in rep["trials"])
    assert by_number[0]["state"] == "PRUNED" and by_number[0]["params"] == {"optim.lr": 1.0, "optim.eps": 1e-8}
    assert by_number[0]["reason"].startswith(("diverged", "non-finite")), by_number[0]
    assert by_number[1]["params"] == {"optim.lr": 0.01, "optim.eps": 0.1}  # the config's own values (baseline)
    assert by_number[1]["state"] == "PRUNED" and by_number[1]["reason"].startswith("blank collapse"), by_number[1]
    # the report counts every pruned trial under its reason (trial 2, sampled, may fall in either class too)
    kinds = [r["outcome"] for r in rep["trials"]]
    assert rep["counts"] == {k: kinds.count(k) for k in set(kinds)}
    assert rep["counts"]["collapsed"] >= 1
    assert rep["counts"].get("diverged", 0) + rep["counts"].get("non_finite", 0) >= 1
    assert sum(done.values()) == 3
    # each trial is a normal run folder: eval --run takes the collapsed one too (its best.pt)
    assert main(["eval", "--run", by_number[1]["run_dir"]]) == 0


def _assert_eval_gives_the_trial_value(trial: dict, capsys) -> None:
    """`fastdecoder eval` of a 10-step trial's run folder gives the beam PER the study recorded for it."""
    capsys.readouterr()
    assert main(["eval", "--run", trial["run_dir"], "--decoder", "beam", "--beam-width", "4"]) == 0
    printed = capsys.readouterr().out
    evaluated = json.loads(printed[printed.index("{"): printed.rindex("}") + 1])
    assert evaluated["step"] == 10 and evaluated["per_beam"] == pytest.approx(trial["value"], abs=1e-12)


@needs_optuna
def test_beam_objective_is_the_beam_search_per_that_eval_reports(tmp_path, capsys):
    base = apply_params(SMALL, {"train.steps": 10, "optim.decay_steps": 10, "train.eval_every": 10})
    cfg = _write(tmp_path / "tiny.yaml", base)
    space = parse_space({"optim.lr": {"type": "float", "low": 1e-2, "high": 3e-2}})
    out = tmp_path / "study"
    tune(TuneSettings(config=str(cfg), space=space, trials=1, out=out, pruner="none", objective="beam",
                      beam_width=4), say=lambda m: None)
    (trial,) = collect(open_study(open_storage(None, out, heartbeat_interval=5, grace=30), "tune",
                                  create=False))["trials"]
    assert trial["state"] == "COMPLETE"
    _assert_eval_gives_the_trial_value(trial, capsys)


# -- a study with two worker processes on the journal file -------------------------------------------------------
@needs_optuna
def test_two_workers_journal_study_and_report(tmp_path, capsys):
    short = apply_params(SMALL, {"train.steps": 20, "optim.decay_steps": 20, "train.eval_every": 5,
                                 "train.checkpoint_every": 20})
    cfg = _write(tmp_path / "tiny.yaml", short)
    space = _write(tmp_path / "space.yaml", {
        "optim.lr": {"type": "float", "low": 3e-3, "high": 0.1, "log": True},
        "optim.eps": {"type": "float", "low": 1e-8, "high": 0.1, "log": True},
        "optim.grad_clip": {"type": "categorical", "choices": [1.0, 10.0]},
        "stability.min_distinct_phonemes": 5,  # a fixed key: in every trial's config and in best.yaml
    })
    out = tmp_path / "study"
    args = ["--config", str(cfg), "--space", str(space), "--trials", "16", "--out", str(out)]
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    procs = [_worker(args, logs[0]), _worker(args, logs[1])]
    _wait(procs, logs)
    assert all("trial " in log.read_text() for log in logs), "both workers ran trials"
    assert main(["tune", "report", str(out)]) == 0
    text = capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert len(rep["trials"]) == 16 and sorted(r["number"] for r in rep["trials"]) == list(range(16))
    assert all(r["state"] in ("COMPLETE", "PRUNED", "FAIL") for r in rep["trials"]), rep["counts"]
    assert rep["best"] is not None and "best: trial" in text
    for name in ("history", "importances", "parallel_coordinates"):
        assert Path(rep["plots"][name]).stat().st_size > 1000, rep["plots"]
    # the preset (the config as given) at the same steps, trained on its own
    preset = Trainer(config_from_dict(short), tmp_path / "preset", progress=False)
    preset.fit()
    assert rep["best"]["value"] <= preset.best_per + 1e-12, (rep["best"], preset.best_per)
    # best.yaml is a config train --config takes; the best trial's folder is a run eval --run takes
    best_cfg = yaml.safe_load((out / "best.yaml").read_text())
    for key, value in rep["best"]["params"].items():
        sec, name = key.split(".")
        assert best_cfg[sec][name] == value
    assert best_cfg["stability"]["min_distinct_phonemes"] == 5
    trial_cfg = yaml.safe_load((Path(rep["best"]["run_dir"]) / "config.yaml").read_text())
    assert trial_cfg["stability"]["min_distinct_phonemes"] == 5
    assert main(["train", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "again"),
                 "--set", "train.steps=2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", rep["best"]["run_dir"]]) == 0
    capsys.readouterr()
    best_pt = torch.load(Path(rep["best"]["run_dir"]) / "best.pt", map_location="cpu", weights_only=False)
    assert best_pt["val_per"] == pytest.approx(rep["best"]["value"], abs=1e-12)


# -- liveness of the journal storage -----------------------------------------------------------------------------
@needs_optuna
def test_stale_heartbeat_fails_the_trial_with_its_reason_and_retries_it(tmp_path):
    from fastdecoder.tune.storage import fail_stale

    study = open_study(open_storage(None, tmp_path, heartbeat_interval=1, grace=5), "s")
    dead, alive = study.ask(), study.ask()
    dead.suggest_float("optim.lr", 1e-3, 1e-1)
    dead.set_user_attr("reason", "lost: preset")
    hb = tmp_path / "heartbeats"
    hb.mkdir()
    for t, age in ((dead, 30), (alive, 1)):
        f = hb / f"trial_{t.number}"
        f.touch()
        os.utime(f, (time.time() - age, time.time() - age))
    assert fail_stale(study, hb, grace=5, retry=1) == [dead.number]
    trials = study.get_trials()
    assert trials[0].state == optuna.trial.TrialState.FAIL and trials[1].state == optuna.trial.TrialState.RUNNING
    assert trials[0].user_attrs["reason"].startswith("lost: no heartbeat from its worker for 30 s")
    retry = trials[2]  # enqueued with the same parameters
    assert retry.state == optuna.trial.TrialState.WAITING and retry.system_attrs["fixed_params"] == trials[0].params
    assert retry.user_attrs == {"retry": 1, "retry_of": 0}
    assert fail_stale(study, hb, grace=5, retry=1) == []  # nothing more is stale; the live one is untouched


@needs_optuna
def test_a_trial_asked_past_the_total_is_told_surplus_and_not_counted(tmp_path):
    from fastdecoder.tune.study import _drop_surplus, counted_trials

    study = open_study(open_storage(None, tmp_path, heartbeat_interval=1, grace=5), "s")
    first, second, third = study.ask(), study.ask(), study.ask()  # a race without the lock: three asked, total two
    assert _drop_surplus(study, [second], 2) == [second]
    assert _drop_surplus(study, [third], 2) == []
    trials = study.get_trials()
    assert trials[2].state == optuna.trial.TrialState.FAIL and trials[2].user_attrs["reason"].startswith("surplus")
    assert [t.number for t in counted_trials(trials)] == [0, 1]


# -- a worker killed mid-trial ----------------------------------------------------------------------------------
@needs_optuna
def test_sigkill_of_a_worker_fails_its_trial_and_the_other_finishes(tmp_path):
    slow = apply_params(SMALL, {"train.steps": 2000, "optim.decay_steps": 2000, "train.eval_every": 1000})
    cfg = _write(tmp_path / "slow.yaml", slow)
    space = _write(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 1e-2, "high": 3e-2}})
    out = tmp_path / "study"
    quick = ["--set", "train.steps=10", "--set", "optim.decay_steps=10", "--set", "train.eval_every=10"]
    common = ["--config", str(cfg), "--space", str(space), "--trials", "3", "--out", str(out),
              "--heartbeat-interval", "1", "--heartbeat-grace", "4", "--no-baseline", "--pruner", "none"]
    victim_log, other_log = tmp_path / "victim.log", tmp_path / "other.log"
    victim = _worker(common, victim_log)  # 2000-step trials: still training when it is killed
    other = _worker([*common, *quick], other_log)  # the same study, 10-step trials
    deadline = time.time() + 180
    while "trial " not in victim_log.read_text():
        assert time.time() < deadline and victim.poll() is None, victim_log.read_text()
        time.sleep(0.2)
    time.sleep(1.0)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_number = int(victim_log.read_text().split("trial ", 1)[1].split(":", 1)[0])
    _wait([other], [other_log], timeout=240)
    storage = open_storage(None, out, heartbeat_interval=1, grace=4)  # opens cleanly after the kill
    trials = open_study(storage, "tune", create=False).get_trials()
    assert len(trials) == 3 and all(t.state.is_finished() for t in trials), [t.state for t in trials]
    killed = trials[killed_number]
    assert killed.state == optuna.trial.TrialState.FAIL
    assert killed.user_attrs["reason"].startswith("lost: no heartbeat"), killed.user_attrs
    assert [t.state for t in trials if t.number != killed_number] == [optuna.trial.TrialState.COMPLETE] * 2
    rep = collect(open_study(storage, "tune", create=False))
    assert rep["counts"] == {"lost": 1, "complete": 2}


# -- two workers against a real PostgreSQL server ----------------------------------------------------------------
def _postgres_bin():
    """The server binaries the pgserver wheel bundles (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    b = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    return b if (b / "postgres").exists() else None


@pytest.fixture
def postgres():
    """A PostgreSQL server (the pgserver wheel's binaries) run by an unprivileged user in a fresh folder."""
    pytest.importorskip("psycopg", reason="psycopg 3 (the [tune] extra) is not installed")
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binary: the pgserver package (the [dev] extra) is not installed")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="fastdecoder-pg-"))  # not under pytest's 0700 folders: the server's user
    #                                                            must reach it
    user = None
    if os.geteuid() == 0:  # the server refuses to run as root
        import pwd

        user = "nobody"
        uid = pwd.getpwnam(user).pw_uid
        os.chmod(root, 0o777)
        os.chown(root, uid, -1)
    run = dict(user=user, check=True, capture_output=True, text=True)
    data = root / "data"
    subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   **run)
    port = 20000 + os.getpid() % 20000
    subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-o",
                    f"-k {root} -p {port} -c listen_addresses=''", "start"], **run)
    try:
        yield f"postgresql://postgres@/postgres?host={root}&port={port}"
    finally:
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], user=user,
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@needs_optuna
def test_workers_creating_a_study_at_once_on_a_fresh_postgresql_database(postgres):
    """Four threads open the storage (creating the tables) and the study of a fresh database at the same moment:
    one creates, the others load it; none fails."""
    import threading

    import psycopg

    from fastdecoder.tune.storage import open_storage, open_study

    params = dict(p.split("=") for p in postgres.split("?", 1)[1].split("&"))
    with psycopg.connect(host=params["host"], port=int(params["port"]), user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        conn.execute("CREATE DATABASE race")
    url = postgres.replace("@/postgres?", "@/race?")
    barrier, ids, errors = threading.Barrier(4), [], []

    def join():
        try:
            barrier.wait()
            study = open_study(open_storage(url, None, heartbeat_interval=5, grace=30), "fresh")
            ids.append(study._study_id)
        except Exception as e:  # noqa: BLE001 - collected and reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=join) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(ids) == 4 and len(set(ids)) == 1, (errors, ids)
    assert [s.study_name for s in optuna.get_all_study_summaries(url.replace("postgresql://",
                                                                             "postgresql+psycopg://"))] == ["fresh"]


@needs_optuna
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_postgresql_heartbeat_fails_a_silent_trial_with_the_lost_reason(postgres):
    """RDB storages use Optuna's heartbeat: a running trial without one for the grace period is failed, and keeps
    the reason set when it started."""
    from fastdecoder.tune.storage import LOST_REASON, Liveness, fail_stale

    study = open_study(open_storage(postgres, None, heartbeat_interval=1, grace=2), "hb")
    live = Liveness(study, postgres, None, interval=1, grace=2)
    try:
        silent, beating = study.ask(), study.ask()
        silent.set_user_attr("reason", LOST_REASON.format(grace=2))
        study._storage.record_heartbeat(silent._trial_id)  # its worker beat once, then died
        live.begin([beating])  # this worker keeps beating for the other one
        time.sleep(4)
        fail_stale(study, None, 2)
        trials = study.get_trials()
        assert trials[0].state == optuna.trial.TrialState.FAIL and trials[0].user_attrs["reason"].startswith("lost")
        assert trials[1].state == optuna.trial.TrialState.RUNNING
    finally:
        live.close()


@needs_optuna
def test_two_workers_started_together_on_postgresql(tmp_path, postgres):
    cfg = _write(tmp_path / "tiny.yaml", apply_params(SMALL, {"train.steps": 10, "optim.decay_steps": 10}))
    space = _write(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 1e-2, "high": 3e-2}})
    n = 6
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    args = ["--config", str(cfg), "--space", str(space), "--trials", str(n), "--storage", postgres, "--study",
            "pg", "--pruner", "none"]
    # a fresh database; the second worker asks two trials at a time (--members 2: sampled together, trained in turn)
    procs = [_worker([*args, "--out", str(tmp_path / f"w{i}"), *(["--members", "2"] if i else [])], logs[i])
             for i in range(2)]
    _wait(procs, logs)
    study = optuna.load_study(study_name="pg", storage=postgres.replace("postgresql://",
                                                                        "postgresql+psycopg://"))
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(n)), numbers
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [t.state for t in trials]
    ran = [int(line.split()[1].rstrip(":")) for log in logs for line in log.read_text().splitlines()
           if line.startswith("trial ") and "complete" in line]
    assert sorted(ran) == list(range(n))  # each trial trained by exactly one worker; none lost
    rep = write_report(None, postgres, "pg")
    assert rep["counts"] == {"complete": n} and rep["best"] is not None


# -- lr-find -----------------------------------------------------------------------------------------------------
def test_lr_find_suggests_a_learning_rate_and_restores_the_model(tmp_path, capsys):
    from fastdecoder.tune.lr_find import lr_find

    cfg = config_from_dict(apply_params(TINY, {"optim.schedule": "constant", "optim.eps": 1e-8}))
    trainer = Trainer(cfg, None, progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    opt_before = json.dumps(trainer.optimizer.state_dict()["param_groups"], default=str)
    res = lr_find(trainer, start=1e-5, end=10.0, steps=50)
    assert res.suggestion is not None and 1e-5 < res.suggestion < 10.0, res.describe()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bitwise
    assert json.dumps(trainer.optimizer.state_dict()["param_groups"], default=str) == opt_before
    assert trainer.step == 0 and not trainer.optimizer.state
    # a short run at the suggested LR (with the eps the ramp used) learns: PER well below the untrained ~1.0
    short = config_from_dict(apply_params(cfg.to_dict(), {"optim.lr": res.suggestion, "train.steps": 60,
                                                          "train.eval_every": 60}))
    run = Trainer(short, tmp_path / "short", progress=False)
    untrained = run.evaluate().per
    run.fit()
    assert run.best_per < 0.8 and run.best_per < untrained - 0.15, (res.suggestion, untrained, run.best_per)
    # the command: plot and json
    tiny = _write(tmp_path / "tiny.yaml", TINY)
    assert main(["lr-find", "--config", str(tiny), "--steps", "8", "--start", "1e-4", "--end", "1",
                 "--out", str(tmp_path / "lrf")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("lr-find: ") and "plot: " in printed, printed
    assert (tmp_path / "lrf" / "lr_find.png").stat().st_size > 1000
    assert len(json.loads((tmp_path / "lrf" / "lr_find.json").read_text())["lrs"]) >= 5
    # tune --lr-range: the LR range around an lr-find suggestion, capped where its ramp diverged
    from fastdecoder.tune.space import with_lr_range

    found = tmp_path / "found.json"
    found.write_text(json.dumps({"suggestion": 0.02, "lrs": [1e-5, 0.1]}))
    lr = with_lr_range(load_space("demo"), found).params[0]
    assert (lr.key, lr.low, lr.high, lr.log) == ("optim.lr", pytest.approx(0.002), 0.1, True)
    assert load_space("demo").keys == with_lr_range(load_space("demo"), found).keys
    found.write_text(json.dumps({"suggestion": None, "lrs": [1e-5]}))
    with pytest.raises(ConfigError, match="not an lr_find.json with a suggestion"):
        with_lr_range(load_space("demo"), found)


# -- --members K: the asked trials trained as the members of one batched model --------------------------------------
def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@needs_optuna
def test_members_study_prunes_one_member_and_equals_the_solo_runs(tmp_path, capsys):
    """--members 2: the diverging trial (lr 3, eps 1e-8) is pruned with its reason while the other member finishes;
    each trial reports its own evaluations, its folder links its member's run (eval --run takes it), and the
    finished member's losses are those of `train --config best.yaml` (its seeds recorded in the trial)."""
    base = apply_params(SMALL, {"train.steps": 20, "optim.decay_steps": 20, "train.eval_every": 5,
                                "train.checkpoint_every": 20, "train.log_every": 5})
    cfg = _write(tmp_path / "tiny.yaml", base)
    space = parse_space({"optim.lr": {"type": "float", "low": 1e-3, "high": 3.0, "log": True},
                         "optim.eps": {"type": "float", "low": 1e-8, "high": 0.1, "log": True}})
    out = tmp_path / "study"
    study = open_study(open_storage(None, out, heartbeat_interval=5, grace=30), "tune")
    study.enqueue_trial({"optim.lr": 3.0, "optim.eps": 1e-8})  # diverges within 5 steps
    study.enqueue_trial({"optim.lr": 0.02, "optim.eps": 1e-3})
    said = []
    done = tune(TuneSettings(config=str(cfg), space=space, trials=2, out=out, members=2, pruner="none",
                             baseline=False), say=said.append)
    assert done == {"PRUNED": 1, "COMPLETE": 1}, said
    assert any(line.startswith("trials 0, 1: trained as the 2 members of one batched model") for line in said), said
    t0, t1 = open_study(open_storage(None, out, heartbeat_interval=5, grace=30), "tune", create=False).get_trials()
    assert t0.state == optuna.trial.TrialState.PRUNED and t1.state == optuna.trial.TrialState.COMPLETE
    assert t0.user_attrs["reason"].startswith(("diverged", "non-finite")), t0.user_attrs
    assert t1.user_attrs["reason"] == "" and t1.user_attrs["steps"] == 20
    assert sorted(t1.intermediate_values) == [5, 10, 15, 20]  # every evaluation reported to its own trial
    assert t1.value == min(t1.intermediate_values.values())
    assert t0.user_attrs["steps"] < 20 and max(t0.intermediate_values, default=0) <= t0.user_attrs["steps"]
    runs = [Path(t.user_attrs["run_dir"]) for t in (t0, t1)]
    batch = out / "trials" / "batch_0000"
    assert [r.resolve() for r in runs] == [(batch / f"member-{k}").resolve() for k in (0, 1)]
    stopped = [r for r in _metrics(runs[0]) if r.get("event") == "member_stopped"]
    assert len(stopped) == 1 and stopped[0]["reason"] == t0.user_attrs["reason"]
    assert max(r["step"] for r in _metrics(runs[0])) == t0.user_attrs["steps"]  # it stopped training there
    capsys.readouterr()
    assert main(["eval", "--run", str(runs[1])]) == 0
    printed = capsys.readouterr().out
    evaluated = json.loads(printed[printed.index("{"): printed.rindex("}") + 1])
    assert evaluated["per_greedy"] == pytest.approx(t1.value, abs=1e-12)
    # the finished member equals the solo run of its trial's recorded config (best.yaml is that config)
    rep = write_report(out, None, "tune", plots=False)
    assert rep["best"]["number"] == 1
    assert rep["best"]["config_params"] == {"optim.lr": 0.02, "optim.eps": 1e-3, "train.seed": 1,
                                            "train.data_seed": 0}
    solo = Trainer(load_config(out / "best.yaml"), tmp_path / "solo", progress=False)
    solo.fit()
    mine, theirs = _metrics(runs[1]), _metrics(tmp_path / "solo")
    for field in ("loss", "val_loss", "val_per"):
        a = [r[field] for r in mine if field in r and "event" not in r]
        b = [r[field] for r in theirs if field in r and "event" not in r]
        assert len(a) == len(b) == 4, (field, a, b)
        np.testing.assert_allclose(a, b, rtol=2e-5, err_msg=field)


@needs_optuna
def test_a_member_the_pruner_stops_ends_pruned_while_the_other_trains_on(tmp_path):
    from fastdecoder.train.members import member_dir
    from fastdecoder.tune.members import members_config, run_members

    class PruneTrialZero(optuna.pruners.BasePruner):  # a pruner whose verdict the test knows
        def prune(self, study, trial):
            return trial.number == 0

    base = config_from_dict(apply_params(SMALL, {"train.steps": 15, "optim.decay_steps": 15, "train.eval_every": 5,
                                                 "train.checkpoint_every": 15})).to_dict()
    study = optuna.create_study(pruner=PruneTrialZero())
    trials = [study.ask(), study.ask()]
    cfg, why = members_config(base, [{"optim.lr": 0.02}, {"optim.lr": 0.01}])
    assert why == "" and cfg.train.members == 2
    links = [tmp_path / "trials" / f"trial_{k}" for k in (0, 1)]
    o0, o1 = run_members(trials, cfg, tmp_path / "batch", links, diverge=0)
    assert (o0.state, o0.steps) == ("pruned", 5) and o0.reason.startswith("pruned at step 5: validation PER"), o0
    assert (o1.state, o1.steps) == ("complete", 15) and o1.value == min(trials[1].storage.get_trial(
        trials[1]._trial_id).intermediate_values.values())
    assert sorted(study.trials[0].intermediate_values) == [5] and sorted(study.trials[1].intermediate_values) == [
        5, 10, 15]
    summary = json.loads((member_dir(tmp_path / "batch", 0) / "summary.json").read_text())
    assert summary["aborted"] == o0.reason and summary["steps"] == 15  # stopped at 5; the batch ran to 15
    assert all(link.resolve() == member_dir(tmp_path / "batch", k).resolve() for k, link in enumerate(links))


@needs_optuna
def test_members_beam_objective_is_what_eval_reports_for_each_trial(tmp_path, capsys):
    base = apply_params(SMALL, {"train.steps": 10, "optim.decay_steps": 10, "train.eval_every": 10})
    cfg = _write(tmp_path / "tiny.yaml", base)
    space = parse_space({"optim.lr": {"type": "float", "low": 1e-2, "high": 3e-2}})
    out = tmp_path / "study"
    tune(TuneSettings(config=str(cfg), space=space, trials=2, out=out, members=2, pruner="none", objective="beam",
                      beam_width=4), say=lambda m: None)
    trials = collect(open_study(open_storage(None, out, heartbeat_interval=5, grace=30), "tune",
                                create=False))["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * 2
    assert (out / "trials" / "batch_0000" / "member-1").is_dir()  # trained as members
    for trial in trials:
        _assert_eval_gives_the_trial_value(trial, capsys)


@needs_optuna
def test_trials_that_differ_in_a_shared_key_are_trained_one_after_another(tmp_path):
    from fastdecoder.tune.members import members_config

    base = config_from_dict(SMALL).to_dict()
    cfg, why = members_config(base, [{"model.hidden_size": 16, "optim.lr": 0.01},
                                     {"model.hidden_size": 16, "optim.lr": 0.02}])
    assert cfg.model.hidden_size == 16 and [o["optim.lr"] for o in cfg.train.member_overrides] == [0.01, 0.02]
    cfg, why = members_config(base, [{"model.hidden_size": 16}, {"model.hidden_size": 32}])
    assert cfg is None and "'model.hidden_size' differs between the trials (16, 32)" in why
    bidirectional = {**base, "model": {**base["model"], "bidirectional": True}}  # refused by the batched model
    cfg, why = members_config(bidirectional, [{"optim.lr": 0.01}, {"optim.lr": 0.02}])
    assert cfg is None and "model.bidirectional: false" in why
    # the study: the ask is trained in turn, each trial its own run folder
    tiny = _write(tmp_path / "tiny.yaml", apply_params(SMALL, {"train.steps": 4, "optim.decay_steps": 4,
                                                               "optim.warmup_steps": 1, "train.eval_every": 4}))
    out = tmp_path / "study"
    study = open_study(open_storage(None, out, heartbeat_interval=5, grace=30), "tune")
    for h in (16, 24):
        study.enqueue_trial({"model.hidden_size": h})
    said = []
    tune(TuneSettings(config=str(tiny), space=parse_space({"model.hidden_size": {"type": "categorical",
                                                                                 "choices": [16, 24]}}),
                      trials=2, out=out, members=2, pruner="none", baseline=False), say=said.append)
    assert any("trained one after another" in line and "'model.hidden_size'" in line for line in said), said
    trials = open_study(open_storage(None, out, heartbeat_interval=5, grace=30), "tune", create=False).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:
        run = Path(t.user_attrs["run_dir"])
        assert run.is_dir() and not run.is_symlink() and (run / "best.pt").is_file()


# -- Redis: Optuna's journal over a real redis-server, our heartbeats in the same server ----------------------------
@pytest.fixture
def redis_url():
    import tempfile

    from fastdecoder.testing.redis_server import RedisServer, redis_server_binary

    binary, why = redis_server_binary()
    if binary is None:
        pytest.skip(f"no redis-server: {why}")
    folder = tempfile.mkdtemp(prefix="fastdecoder_tune_redis_")
    srv = RedisServer(folder).start()
    yield srv.url
    srv.stop()
    shutil.rmtree(folder, ignore_errors=True)


@needs_optuna
def test_redis_heartbeats_are_shared_and_fail_a_silent_trial(redis_url):
    from fastdecoder.tune.storage import LOST_REASON, RedisHeartbeats, fail_stale, heartbeats

    assert isinstance(heartbeats(redis_url, None, "hb"), RedisHeartbeats)  # no --out folder needed
    study = open_study(open_storage(redis_url, None, heartbeat_interval=1, grace=2), "hb")
    alive, silent = study.ask(), study.ask()
    silent.set_user_attr("reason", LOST_REASON.format(grace=2))
    mine = RedisHeartbeats(redis_url, "hb")  # the worker running 'alive'
    other = RedisHeartbeats(redis_url, "hb")  # another machine's view of the same beats
    for _ in range(3):
        mine.beat(alive.number)
        assert other.age(alive.number, 0.0) < 1.0
        time.sleep(1.2)
    assert fail_stale(study, other, grace=2) == [silent.number]  # 3.6 s without a beat; 'alive' beat 1.2 s ago
    mine.drop(alive.number)
    assert other.age(alive.number, time.time() - 7) > 6.5  # dropped: counted from the given start
    trials = study.get_trials()
    assert trials[alive.number].state == optuna.trial.TrialState.RUNNING
    assert trials[silent.number].state == optuna.trial.TrialState.FAIL
    assert trials[silent.number].user_attrs["reason"].startswith("lost: no heartbeat from its worker")


@needs_optuna
def test_two_workers_on_redis_complete_the_study(tmp_path, redis_url):
    """Two workers with their own --out folders (as on two machines) share one study through Redis: every trial
    number once, each trained by one worker, none failed as lost (their heartbeats are shared too)."""
    cfg = _write(tmp_path / "tiny.yaml", apply_params(SMALL, {"train.steps": 30, "optim.decay_steps": 30,
                                                              "train.eval_every": 10,
                                                              "stability.monitor_after_steps": 100}))
    space = _write(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 1e-2, "high": 3e-2}})
    n = 6
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    args = ["--config", str(cfg), "--space", str(space), "--trials", str(n), "--storage", redis_url, "--study",
            "rd", "--pruner", "none", "--heartbeat-interval", "1", "--heartbeat-grace", "3"]
    procs = [_worker([*args, "--out", str(tmp_path / f"w{i}")], logs[i]) for i in range(2)]
    _wait(procs, logs)
    rep = write_report(None, redis_url, "rd")
    numbers = [r["number"] for r in rep["trials"]]
    assert sorted(numbers) == list(range(n)), numbers
    assert rep["counts"] == {"complete": n}, [(r["number"], r["state"], r["reason"]) for r in rep["trials"]]
    ran = [int(line.split()[1].rstrip(":")) for log in logs for line in log.read_text().splitlines()
           if line.startswith("trial ") and "complete" in line]
    assert sorted(ran) == list(range(n))  # each trial trained by exactly one worker; none lost


def test_mysql_without_its_driver_is_one_clear_error(tmp_path, capsys):
    pytest.importorskip("optuna")
    import importlib.util

    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("mysqlclient is installed: the missing-driver message cannot be shown")
    assert main(["tune", "--config", "demo", "--space", "demo", "--trials", "1", "--out", str(tmp_path),
                 "--storage", "mysql://user:pw@127.0.0.1:1/db"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --storage mysql://: the database driver is missing") and "mysqlclient" in err
