"""A tune worker: joins (or creates) the study, asks trials, trains them, tells the outcomes, until the study holds
``trials`` finished trials. Any number of workers run the same command; the total is the study's, not a worker's.

The study's total counts every trial except surplus ones (asked by a worker that lost a race for the last slot:
told failed with that reason) and failed ones that were retried (``--retry``). Workers sharing the study folder
take a file lock while asking, PostgreSQL workers an advisory lock, so surplus trials are rare there.

``members`` K: each worker asks K trials at once (ask/tell) and trains them as the K members of one batched model
(fastdecoder.tune.members); trials that cannot be members of one run (they differ in a shared key such as the
model's size, or the config is one the batched trainer refuses) are trained one after another, with a line saying
why.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastdecoder.config import load_config
from fastdecoder.errors import UserError
from fastdecoder.tune.objective import run_trial
from fastdecoder.tune.space import SearchSpace
from fastdecoder.tune.storage import (LOST_REASON, Liveness, heartbeats, open_storage, open_study,
                                      require_optuna)

log = logging.getLogger("fastdecoder.tune")

PRUNERS = ("hyperband", "halving", "median", "none")


@dataclass
class TuneSettings:
    config: str                       # preset name or YAML file
    space: SearchSpace
    trials: int                       # the study's total
    out: Path                         # the study folder: journal, trial run folders, report
    study_name: str = "tune"
    storage: str | None = None        # None: DIR/journal.log
    overrides: list = field(default_factory=list)
    members: int = 1
    objective: str = "greedy"         # greedy | beam
    beam_width: int = 20
    diverge: float = 3.0              # prune when the validation loss exceeds this x the untrained model's (0: off)
    pruner: str = "hyperband"
    min_resource: int | None = None   # steps before a trial can be pruned (default: train.eval_every)
    reduction_factor: int = 3
    heartbeat_interval: int = 10      # seconds
    grace: int = 60                   # seconds without a heartbeat before a running trial is failed
    retry: int = 0                    # a trial failed as stale is retried up to this many times
    baseline: bool = True             # the config's own values of the space's keys are the first trial
    sampler_seed: int | None = None
    poll: float = 2.0                 # seconds between looks while the other workers run the last trials


def make_pruner(name: str, min_resource: int, max_resource: int, reduction_factor: int = 3):
    optuna = require_optuna()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max(max_resource,
                                                                                           min_resource + 1),
                                              reduction_factor=reduction_factor)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=reduction_factor)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=min_resource)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"--pruner must be one of {', '.join(PRUNERS)}, got {name!r}")


def counted_trials(trials) -> list:
    """The trials that make up the study's total: all but surplus ones and failed ones that were retried."""
    retried = {t.user_attrs.get("retry_of") for t in trials} - {None}
    return [t for t in trials if t.number not in retried and not t.user_attrs.get("surplus")]


@contextlib.contextmanager
def ask_lock(storage, out: Path, url: str | None):
    """Serialise 'count the trials, ask' between workers: a file lock in the study folder; on PostgreSQL an
    advisory lock as well (workers on other machines)."""
    with open(out / ".ask.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            if url and url.split(":", 1)[0].split("+")[0] in ("postgresql", "postgres"):
                from sqlalchemy import text

                with storage.engine.connect() as conn:
                    conn.execute(text("SELECT pg_advisory_lock(726354)"))
                    try:
                        yield
                    finally:
                        conn.execute(text("SELECT pg_advisory_unlock(726354)"))
                        conn.commit()
            else:
                yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def base_config(settings: TuneSettings) -> dict:
    """The config every trial starts from: --config with --set applied (validated), as a dict."""
    return load_config(settings.config, settings.overrides).to_dict()


def resolve_data(base: dict, out: Path) -> dict:
    """A synthetic set is written once into DIR/data (under a lock) and shared by the trials: same data, no
    regeneration per trial."""
    if base["data"].get("path") or not base["data"].get("synthetic"):
        return base
    from fastdecoder.config import config_from_dict
    from fastdecoder.train.run_data import prepare_dataset

    with open(out / ".data.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        _, path = prepare_dataset(config_from_dict(base), out)
    return {**base, "data": {**base["data"], "path": str(Path(path).resolve())}}


def baseline_params(space: SearchSpace, base: dict) -> dict:
    """The config's own values of the space's sampled keys, where they lie inside the space (the first trial)."""
    out = {}
    for p in space.params:
        if p.kind == "fixed":
            continue
        sec, name = p.key.split(".")
        v = base.get(sec, {}).get(name)
        if p.kind == "categorical":
            if v in p.choices:
                out[p.key] = v
        elif v is not None and p.low <= v <= p.high:
            out[p.key] = v
    return out


def run_dir_of(out: Path, number: int) -> Path:
    return out / "trials" / f"trial_{number:04d}"


def tune(settings: TuneSettings, *, progress: bool = False, say=print) -> dict:
    """Run one worker until the study holds ``settings.trials`` finished trials; returns counts by state."""
    optuna = require_optuna()
    from optuna.trial import TrialState

    s = settings
    if s.trials < 1:
        raise UserError(f"--trials must be >= 1, got {s.trials}")
    if s.members < 1:
        raise UserError(f"--members must be >= 1, got {s.members}")
    if s.objective not in ("greedy", "beam"):
        raise UserError(f"--objective must be greedy or beam, got {s.objective!r}")
    if s.heartbeat_interval < 1 or s.grace <= s.heartbeat_interval:
        raise UserError(f"--heartbeat-grace ({s.grace}) must exceed --heartbeat-interval ({s.heartbeat_interval}) "
                        "which must be >= 1")
    base = base_config(s)
    s.out.mkdir(parents=True, exist_ok=True)
    train_steps, eval_every = base["train"]["steps"], base["train"]["eval_every"]
    min_resource = s.min_resource if s.min_resource is not None else min(eval_every, train_steps)
    if min_resource < 1:
        raise UserError(f"--min-resource must be >= 1 step, got {min_resource}")
    pruner = make_pruner(s.pruner, min_resource, train_steps, s.reduction_factor)
    sampler = optuna.samplers.TPESampler(seed=s.sampler_seed)
    storage = open_storage(s.storage, s.out, heartbeat_interval=s.heartbeat_interval, grace=s.grace)
    study = open_study(storage, s.study_name, sampler=sampler, pruner=pruner,
                       attrs={"base_config": json.dumps(base), "space": json.dumps(s.space.keys),
                              "objective": s.objective, "trials": s.trials})
    with ask_lock(storage, s.out, s.storage):
        if s.baseline and not study.user_attrs.get("baseline_enqueued"):
            study.set_user_attr("baseline_enqueued", True)
            params = baseline_params(s.space, base)
            if params:
                study.enqueue_trial(params, user_attrs={"baseline": True})
    resolved = resolve_data(base, s.out)
    live = Liveness(study, s.storage, heartbeats(s.storage, s.out, s.study_name), interval=s.heartbeat_interval,
                    grace=s.grace, retry=s.retry)
    done_here: dict[str, int] = {}
    pending: list = []  # this worker's asked trials not yet told
    try:
        while True:
            live.fail_stale()
            with ask_lock(storage, s.out, s.storage):  # count and ask as one step
                trials = counted_trials(study.get_trials(deepcopy=False))
                if sum(t.state.is_finished() for t in trials) >= s.trials:
                    break
                waiting = sum(t.state == TrialState.WAITING for t in trials)
                k = min(s.members, s.trials - len(trials) + waiting)
                asked = _drop_surplus(study, [_ask(study) for _ in range(k)], s.trials) if k > 0 else []
            if not asked:  # every trial is asked; the other workers run the last ones (or go stale)
                time.sleep(s.poll)
                continue
            live.begin(asked)
            pending = list(asked)
            for t in asked:
                t.set_user_attr("reason", LOST_REASON.format(grace=s.grace))
                t.set_user_attr("run_dir", str(run_dir_of(s.out, t.number).resolve()))
            # the K members' parameters are sampled together, before any of them trains
            chosen = [s.space.sample(t, base) for t in asked]
            for t, params in zip(asked, chosen):  # fixed keys too (Optuna records sampled ones only): best.yaml
                t.set_user_attr("config_params", params)
            stop = False
            batched = _train_as_members(s, asked, chosen, resolved, progress, say) if len(asked) > 1 else {}
            for t, params in zip(asked, chosen):
                if t.number in batched:
                    outcome = batched[t.number]
                elif stop:  # a signal stopped the worker: the members not yet trained are failed too
                    _tell(study, t, TrialState.FAIL, None, "interrupted: the worker was stopped by a signal", 0)
                    live.end(t)
                    pending.remove(t)
                    continue
                else:
                    say(f"trial {t.number}: {json.dumps(params)}")
                    outcome = run_trial(t, resolved, params, run_dir_of(s.out, t.number), objective=s.objective,
                                        beam_width=s.beam_width, diverge=s.diverge, progress=progress)
                state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(outcome.state,
                                                                                           TrialState.FAIL)
                _tell(study, t, state, outcome.value, outcome.reason, outcome.steps)
                live.end(t)
                pending.remove(t)
                done_here[state.name] = done_here.get(state.name, 0) + 1
                value = f"{outcome.value:.4f}" if outcome.value is not None else "-"
                say(f"trial {t.number}: {state.name.lower()} value {value} after {outcome.steps} steps"
                    + (f" ({outcome.reason})" if outcome.reason else ""))
                stop = stop or outcome.interrupted
            pending = []
            if stop:
                break
    except BaseException as e:  # Ctrl-C or an error of the worker itself: its trials end failed, not stale
        for t in pending:
            _tell(study, t, TrialState.FAIL, None, f"interrupted: the worker stopped ({type(e).__name__})", 0)
        raise
    finally:
        live.close()
    return done_here


def _train_as_members(s: TuneSettings, asked: list, chosen: list, base: dict, progress: bool, say) -> dict:
    """Train the asked trials whose configs are valid as the members of one batched run (fastdecoder.tune.members);
    {trial number: outcome} of those trained so, {} where they cannot be batched (said why: trained in turn)."""
    from fastdecoder.config import ConfigError
    from fastdecoder.tune.members import member_config_params, members_config, run_members
    from fastdecoder.tune.space import config_with

    valid = []
    for t, params in zip(asked, chosen):
        try:
            config_with(base, params)
            valid.append((t, params))
        except ConfigError:
            pass  # trained alone, it fails with the reason
    numbers = ", ".join(str(t.number) for t, _ in valid)
    if len(valid) < 2:
        return {}
    cfg, why = members_config(base, [p for _, p in valid])
    if cfg is not None:
        batch_dir = s.out / "trials" / f"batch_{valid[0][0].number:04d}"
        for t, params in valid:
            say(f"trial {t.number}: {json.dumps(params)}")
        say(f"trials {numbers}: trained as the {len(valid)} members of one batched model in {batch_dir}")
        outcomes = run_members([t for t, _ in valid], cfg, batch_dir, [run_dir_of(s.out, t.number) for t, _ in valid],
                               objective=s.objective, beam_width=s.beam_width, diverge=s.diverge, progress=progress)
        if not isinstance(outcomes, str):
            for k, (t, params) in enumerate(valid):  # best.yaml: the member's own seeds too
                t.set_user_attr("config_params", member_config_params(cfg, k, params))
                t.set_user_attr("member", f"{batch_dir.name}/member-{k}")
            return {t.number: o for (t, _), o in zip(valid, outcomes)}
        why = outcomes
    say(f"trials {numbers}: trained one after another, not as members of one batched model: {why}")
    return {}


def _ask(study):
    """study.ask(), without Optuna's warning that RDB heartbeats are meant for Study.optimize: our Liveness beats."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        return study.ask()


def _drop_surplus(study, asked: list, total: int) -> list:
    """Asked trials beyond the study's total (a race with a worker that did not share our lock) are told failed
    as surplus and dropped."""
    from optuna.trial import TrialState

    numbers = sorted(t.number for t in counted_trials(study.get_trials(deepcopy=False)))
    keep = []
    for t in asked:
        if numbers.index(t.number) >= total:
            t.set_user_attr("surplus", True)
            _tell(study, t, TrialState.FAIL, None, f"surplus: the study already held {total} trials", 0)
        else:
            keep.append(t)
    return keep


def _tell(study, trial, state, value, reason: str, steps: int) -> None:
    optuna = require_optuna()
    from optuna.trial import TrialState

    try:
        trial.set_user_attr("reason", reason)
        trial.set_user_attr("steps", steps)
        if state == TrialState.COMPLETE:
            study.tell(trial, value)
        else:
            study.tell(trial, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        log.warning("trial %d was already marked finished by another worker (its heartbeat went stale); "
                    "its result is dropped", trial.number)
