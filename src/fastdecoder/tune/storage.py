"""Where a study lives, and how a worker that died is noticed.

* Default: Optuna's journal file ``DIR/journal.log`` (no server; any number of processes on one machine or on a
  shared filesystem).
* ``--storage postgresql://... | mysql://... | sqlite:///...``: Optuna's RDB storage with its own heartbeat
  (``heartbeat_interval`` seconds; a trial without a heartbeat for ``grace`` seconds is failed by the next worker
  that checks). ``redis://...``: Optuna's journal over Redis (JournalRedisBackend), with our heartbeats in the
  same Redis server (RedisHeartbeats), so workers on many machines need no shared folder.
* Journal storages have no heartbeat in Optuna: each running trial's worker touches
  ``DIR/heartbeats/trial_N`` (Redis: sets its entry of the study's heartbeat hash, on the server's clock) every
  ``heartbeat_interval`` seconds, and every worker, from a background thread, fails any RUNNING trial whose last
  beat is older than ``grace`` seconds. A killed worker's trial is thus marked failed within
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


#: how to install the driver of each RDB scheme
_DRIVER_HINT = {
    "postgresql": "pip install 'fastdecoder[tune]' (psycopg 3)",
    "mysql": "mysql:// needs mysqlclient (pip install mysqlclient), mysql+pymysql:// needs PyMySQL "
             "(pip install pymysql); neither is in fastdecoder's extras",
    "sqlite": "Python's sqlite3 module is missing from this interpreter",
}


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

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.JournalStorage(JournalRedisBackend(url))
        except ImportError:
            raise UserError(f"--storage {scheme}://: the redis package is missing: pip install 'fastdecoder[tune]'") \
                from None
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
            raise UserError(f"--storage {url.split('://')[0]}://: the database driver is missing ({e}); "
                            f"{_DRIVER_HINT.get(url.split(':', 1)[0].split('+')[0], '')}") from None
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


class FileHeartbeats:
    """Heartbeats as files ``folder/trial_N`` whose modification time is the last beat (the journal file; a
    Redis study whose workers share ``--out`` may use them too)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def beat(self, number: int) -> None:
        f = self.folder / f"trial_{number}"
        f.touch()
        os.utime(f)

    def age(self, number: int, started: float) -> float:
        """Seconds since trial ``number``'s last beat (since ``started``, a POSIX time, if it never beat)."""
        now = time.time()
        try:
            return now - (self.folder / f"trial_{number}").stat().st_mtime
        except FileNotFoundError:
            return now - started

    def drop(self, number: int) -> None:
        (self.folder / f"trial_{number}").unlink(missing_ok=True)


class RedisHeartbeats:
    """Heartbeats of a Redis study in the Redis server itself: hash ``fastdecoder:tune:STUDY:heartbeats``, trial
    number -> the server's clock at the last beat (one clock for every machine)."""

    def __init__(self, url: str, study_name: str):
        try:
            import redis
        except ImportError:
            raise UserError("--storage redis://: the redis package is missing: pip install 'fastdecoder[tune]'") \
                from None
        self.client = redis.Redis.from_url(url)
        self.key = f"fastdecoder:tune:{study_name}:heartbeats"

    def _now(self) -> float:
        sec, usec = self.client.time()
        return sec + usec / 1e6

    def beat(self, number: int) -> None:
        self.client.hset(self.key, str(number), repr(self._now()))

    def age(self, number: int, started: float) -> float:
        last = self.client.hget(self.key, str(number))
        return self._now() - (float(last) if last is not None else started)

    def drop(self, number: int) -> None:
        self.client.hdel(self.key, str(number))


def heartbeats(url: str | None, out: Path | None, study_name: str):
    """Where the study's workers beat: None for an RDB (Optuna's own heartbeat), Redis for a Redis journal, else
    files in ``out/heartbeats``."""
    if is_rdb(url):
        return None
    if url is not None and url.split(":", 1)[0].startswith("redis"):
        return RedisHeartbeats(url, study_name)
    if out is None:
        raise UserError("a journal storage needs --out DIR for its heartbeat files")
    return FileHeartbeats(out / HEARTBEAT_DIR)


class Liveness:
    """Heartbeats of this worker's running trial and the failing of other workers' stale ones.

    Journal storages: ``beats`` (FileHeartbeats, RedisHeartbeats, or a folder for FileHeartbeats) written every
    ``interval`` seconds; RDB storages (``beats`` None): Optuna's ``record_heartbeat`` and ``fail_stale_trials``. A
    background thread does both every ``interval`` seconds. ``retry``: a trial failed as stale is enqueued again
    with the same parameters (at most ``retry`` times).
    """

    def __init__(self, study, storage_url: str | None, beats, *, interval: int, grace: int, retry: int = 0):
        self.study, self.interval, self.grace, self.retry = study, interval, grace, retry
        self.rdb = is_rdb(storage_url)
        if not self.rdb and beats is None:
            raise UserError("a journal storage needs --out DIR for its heartbeat files")
        self.beats = None if self.rdb else (FileHeartbeats(beats) if isinstance(beats, (str, Path)) else beats)
        self._running: dict[int, int] = {}  # number -> trial_id of this worker's asked, unfinished trials
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tune-liveness", daemon=True)
        self._thread.start()

    def begin(self, trials) -> None:
        """This worker holds ``trials`` (asked together) until ``end`` of each: beat for them."""
        with self._lock:
            self._running.update({t.number: t._trial_id for t in trials})
        self._beat()

    def end(self, trial) -> None:
        with self._lock:
            self._running.pop(trial.number, None)
        if self.beats is not None:
            self.beats.drop(trial.number)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            left, self._running = dict(self._running), {}
        if self.beats is not None:
            for n in left:
                self.beats.drop(n)

    def _beat(self) -> None:
        with self._lock:
            running = dict(self._running)
        for number, trial_id in running.items():
            if self.beats is None:
                self.study._storage.record_heartbeat(trial_id)
            else:
                self.beats.beat(number)

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
        return fail_stale(self.study, self.beats, self.grace, self.retry, own=own)


def fail_stale(study, beats, grace: float, retry: int = 0, own: set | None = None) -> list[int]:
    """See Liveness. ``beats`` None: the RDB's own heartbeats (Optuna's fail_stale_trials); a folder: its
    FileHeartbeats."""
    optuna = require_optuna()
    from optuna.trial import TrialState

    failed = []
    if isinstance(beats, (str, Path)):
        beats = FileHeartbeats(beats)
    if beats is None:
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
            age = beats.age(t.number, t.datetime_start.timestamp() if t.datetime_start else now)
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
            beats.drop(t.number)
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
