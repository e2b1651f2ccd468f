"""Where a study lives, and how a worker that died is noticed.

* Default: Optuna's journal file ``DIR/journal.log`` (no server; any number of processes on one machine or on a
  shared filesystem).
* ``--storage postgresql://... | mysql://... | sqlite:///...``: Optuna's RDB storage with its own heartbeat
  (``heartbeat_interval`` seconds; a trial without a heartbeat for ``grace`` seconds is failed by the next worker
  that checks). ``redis://...``: Optuna's journal over Redis, with our heartbeat files as for the journal file
  (they must then live on a filesystem all workers share: ``--out``).
* Journal storages have no heartbeat in Optuna: each running trial's worker touches
  ``DIR/heartbeats/trial_N`` every ``heartbeat_interval`` seconds, and every worker, from a background thread, fails
  any RUNNING trial whose file is older than ``grace`` seconds. A killed worker's trial is thus marked failed within
  ``grace + heartbeat_interval`` seconds while any worker of the study runs (else when the next worker or
  ``tune report`` opens the study), with the reason in its user attribute ``reason``.

Workers that start together on a fresh database race on creating the tables and the study; ``open_study`` retries
with a jittered back-off until one has created it and the others load it.
"""
from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import warnings
from pathlib import Path

from fastdecoder.errors import UserError

log = logging.getLogger("fastdecoder.tune")

JOURNAL_FILE = "journal.log"
HEARTBEAT_DIR = "heartbeats"
LOST_REASON = ("lost: the worker stopped without finishing the trial (killed, crashed or hung; no heartbeat for "
               "{grace:.0f} s)")


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("fastdecoder tune needs Optuna: pip install 'fastdecoder[tune]'") from None
    return optuna


def is_rdb(url: str | None) -> bool:
    return bool(url) and url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres", "mysql", "sqlite")


def open_storage(url: str | None, out: Path | None, *, heartbeat_interval: int, grace: int):
    """An Optuna storage: the journal file in ``out`` (url None), an RDB or a Redis journal."""
    optuna = require_optuna()
    if url is None:
        if out is None:
            raise UserError("give --out DIR (the study folder) or --storage URL")
        out.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = str(out / JOURNAL_FILE)
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    scheme = url.split(":", 1)[0]
    if scheme.startswith("redis"):
        from optuna.storages.journal import JournalRedisBackend

        return optuna.storages.JournalStorage(JournalRedisBackend(url))
    if not is_rdb(url):
        raise UserError(f"--storage {url!r}: expected a postgresql://, mysql://, sqlite:/// or redis:// URL")
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]  # psycopg 3 (the [tune] extra), not psycopg2
    last = None
    for attempt in range(12):  # workers creating the tables of a fresh database at the same moment
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
                return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace)
        except ImportError as e:
            raise UserError(f"--storage {url.split('://')[0]}: a database driver is missing ({e}); "
                            "pip install 'fastdecoder[tune]' brings psycopg 3 for PostgreSQL") from None
        except Exception as e:  # noqa: BLE001 - sqlalchemy's errors of a concurrent table creation
            last = e
            time.sleep(0.2 * (attempt + 1) * random.random())
    raise UserError(f"--storage: cannot open {url.split('@')[-1]}: {type(last).__name__}: {last}")


def open_study(storage, name: str, *, sampler=None, pruner=None, create: bool = True,
               attrs: dict | None = None):
    """Create the study (minimize) or load it if another worker did; race-free: retried with back-off. ``attrs``
    are set as study user attributes where the study lacks them (workers of one study pass the same)."""
    optuna = require_optuna()
    last = None
    for attempt in range(12):
        try:
            if not create:
                return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
            try:
                study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                            direction="minimize")
            except optuna.exceptions.DuplicatedStudyError:
                study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
            have = study.user_attrs  # a study made before its first worker (to enqueue trials) gets them too
            for k, v in (attrs or {}).items():
                if k not in have:
                    study.set_user_attr(k, v)
            return study
        except KeyError:
            if not create:
                raise UserError(f"no study '{name}' in this storage") from None
            last = KeyError(name)
        except Exception as e:  # noqa: BLE001 - a concurrent creation on a fresh database
            last = e
        time.sleep(0.2 * (attempt + 1) * random.random())
    raise UserError(f"cannot open study '{name}': {type(last).__name__}: {last}")


class Liveness:
    """Heartbeats of this worker's running trial and the failing of other workers' stale ones.

    Journal storages: files ``hb_dir/trial_N`` touched every ``interval`` seconds; RDB storages: Optuna's
    ``record_heartbeat`` and ``fail_stale_trials``. A background thread does both every ``interval`` seconds.
    ``retry``: a trial failed as stale is enqueued again with the same parameters (at most ``retry`` times).
    """

    def __init__(self, study, storage_url: str | None, hb_dir: Path | None, *, interval: int, grace: int,
                 retry: int = 0):
        self.study, self.interval, self.grace, self.retry = study, interval, grace, retry
        self.rdb = is_rdb(storage_url)
        self.hb_dir = hb_dir
        if not self.rdb:
            if hb_dir is None:
                raise UserError("a journal storage needs --out DIR for its heartbeat files")
            hb_dir.mkdir(parents=True, exist_ok=True)
        self._running: dict[int, int] = {}  # number -> trial_id of this worker's asked, unfinished trials
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tune-liveness", daemon=True)
        self._thread.start()

    def hb_file(self, number: int) -> Path:
        return self.hb_dir / f"trial_{number}"

    def begin(self, trials) -> None:
        """This worker holds ``trials`` (asked together) until ``end`` of each: beat for them."""
        with self._lock:
            self._running.update({t.number: t._trial_id for t in trials})
        self._beat()

    def end(self, trial) -> None:
        with self._lock:
            self._running.pop(trial.number, None)
        if not self.rdb:
            self.hb_file(trial.number).unlink(missing_ok=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            left, self._running = dict(self._running), {}
        if not self.rdb:
            for n in left:
                self.hb_file(n).unlink(missing_ok=True)

    def _beat(self) -> None:
        with self._lock:
            running = dict(self._running)
        for number, trial_id in running.items():
            if self.rdb:
                self.study._storage.record_heartbeat(trial_id)
            else:
                f = self.hb_file(number)
                f.touch()
                os.utime(f)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
                self.fail_stale()
            except Exception as e:  # noqa: BLE001 - a transient storage error must not kill the worker
                log.warning("liveness check failed (will retry): %s", e)

    def fail_stale(self) -> list[int]:
        """Fail the RUNNING trials whose heartbeat is older than ``grace`` seconds; their numbers."""
        with self._lock:
            own = set(self._running)
        return fail_stale(self.study, None if self.rdb else self.hb_dir, self.grace, self.retry, own=own)


def fail_stale(study, hb_dir: Path | None, grace: float, retry: int = 0, own: set | None = None) -> list[int]:
    """See Liveness. ``hb_dir`` None: the RDB's own heartbeats (Optuna's fail_stale_trials)."""
    optuna = require_optuna()
    from optuna.trial import TrialState

    failed = []
    if hb_dir is None:
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        after = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        failed = sorted(before & set(after))
    else:
        now = time.time()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if own and t.number in own:
                continue
            f = hb_dir / f"trial_{t.number}"
            try:
                age = now - f.stat().st_mtime
            except FileNotFoundError:  # never written: count from the trial's start
                start = t.datetime_start.timestamp() if t.datetime_start else now
                age = now - start
            if age <= grace:
                continue
            reason = (f"lost: no heartbeat from its worker for {age:.0f} s (> {grace:.0f} s): the worker was killed, "
                      "crashed or hung; marked failed by another worker")
            try:
                study._storage.set_trial_user_attr(t._trial_id, "reason", reason)
                if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    failed.append(t.number)
                    log.warning("trial %d: %s", t.number, reason)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker failed it first
            f.unlink(missing_ok=True)
    if retry:
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        for n in failed:
            t = by_number[n]
            chain = int(t.user_attrs.get("retry", 0))
            if chain < retry and str(t.user_attrs.get("reason", "")).startswith("lost"):
                study.enqueue_trial(t.params, user_attrs={"retry": chain + 1, "retry_of": n}, skip_if_exists=False)
                log.warning("trial %d: retried (attempt %d of %d)", n, chain + 1, retry)
    return failed


def study_attr_json(study, key: str):
    v = study.user_attrs.get(key)
    return json.loads(v) if isinstance(v, str) else v
