"""``fastdecoder serve``: decode binned features read from Redis streams, one session (thread, connection, decoder)
per input stream, writing log-probabilities, partial and final results back to Redis.

Exactly once: each input entry's records are written in one MULTI/EXEC transaction together with the session's
progress (``<progress>`` hash: last processed entry id, open trial). After a lost connection the session reconnects
with backoff, checks whether its last transaction went through (progress id), writes it again if not, and reads on
after the last processed id: no entry is answered twice and none is skipped. When the serve process itself restarts
with a trial open, that trial is reported aborted on the error stream (its id and the reason) and its remaining bins
are ignored until the next trial start.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from fastdecoder.errors import UserError
from fastdecoder.serve.redis_io import Backoff, connect, id_ms, last_id, require_redis, retryable
from fastdecoder.serve.session import DecodeSession

__all__ = ["StreamNames", "ServeOptions", "Server", "TRIAL_SOURCES", "TASK_STATES"]

log = logging.getLogger("fastdecoder.serve")

TRIAL_SOURCES = ("inband", "task_state", "legacy")
# The NEJM node's task states: task_state stream 'state' values, and the legacy integer key.
TASK_STATES = {b"": -1, b"start_trial": 0, b"go": 1, b"freeze": 3, b"end_trial": 3}
GO, ENDED, PAUSED = 1, 3, 4


@dataclass
class StreamNames:
    """Redis stream and key names of one session (defaults: the NEJM node's)."""
    input: str = "binned_input_stream"
    logits: str = "brainToText_closedLoop"     # per frame: logits (41 float32), sync, ts, input_id, trial, frame
    output: str = "brainToText_output"         # start / partial_decoded_sentence / end / final_decoded_sentence
    errors: str = "brainToText_errors"
    status: str = "brainToText_status"
    progress: str = "brainToText_progress"     # hash: last processed input id, open trial
    task_state: str = "task_state"             # --trials task_state: the NEJM task-state stream (field 'state')
    task_state_key: str = "task_state_current"  # --trials legacy: the NEJM integer key

    def for_input(self, name: str, several: bool) -> "StreamNames":
        """This session's names: '{input}' in a name is replaced by the input stream's name; with several inputs,
        a per-session name without it gets ':<input>' appended (status and errors are shared, entries name their
        input)."""
        def fmt(s, per_session=True):
            if "{input}" in s:
                return s.replace("{input}", name)
            return f"{s}:{name}" if several and per_session else s
        return StreamNames(input=name, logits=fmt(self.logits), output=fmt(self.output),
                           errors=fmt(self.errors, False), status=fmt(self.status, False),
                           progress=fmt(self.progress), task_state=self.task_state, task_state_key=self.task_state_key)


@dataclass
class ServeOptions:
    """Transport options (the decoding policies live in each DecodeSession)."""
    trials: str = "inband"            # inband | task_state | legacy (see --trials)
    default_day: int = 0              # day of a trial whose start names none (always, with task_state / legacy)
    maxlen: int = 0                   # approximate cap on each output stream's length (0: no trimming)
    status_interval: float = 1.0      # seconds between status entries
    lag_warn_ms: float = 200.0        # a session whose newest entry is older than this is reported 'behind'
    start_at: str = "new"             # new | first: where a session without saved progress starts reading
    fresh: bool = False               # ignore saved progress
    sync_field: str = "sync"
    batch: int = 64                   # entries per XREAD


class SessionThread(threading.Thread):
    """One input stream: read, decode, commit; reconnecting as needed."""

    def __init__(self, url: str, names: StreamNames, session: DecodeSession, opts: ServeOptions,
                 stop: threading.Event):
        super().__init__(name=f"serve:{names.input}", daemon=True)
        self.url, self.names, self.session, self.opts, self.stop = url, names, session, opts, stop
        self.ready = threading.Event()
        self.last_id: str | None = None
        self.pending: tuple | None = None        # (entry id, records) not yet known to be committed
        self.resume_trial: str | None = None      # a trial open in saved progress (serve restarted mid-trial)
        self.lag_ms = 0.0
        self.max_lag_ms = 0.0
        self.processed = 0
        self.reconnects = 0
        self.clock_offset_ms = 0.0                # Redis TIME - local time.time()
        self.failure: BaseException | None = None
        self.task_state = -1
        self._r = None
        # per entry that produced frames: (wall ms, this thread's CPU ms) from read to committed; the last 2000
        self.hop_times: deque = deque(maxlen=2000)

    # -- connection ---------------------------------------------------------------------------------------------
    def _connect(self) -> bool:
        backoff = Backoff(self.stop)
        self._warned = 0
        while not self.stop.is_set():
            try:
                r = connect(self.url)
                r.ping()
                sec, usec = r.time()
                self.clock_offset_ms = sec * 1e3 + usec / 1e3 - time.time() * 1e3
                self._r = r
                self._after_connect()
                down = backoff.reset()
                if self.ready.is_set():
                    self.reconnects += 1
                    self._commit_status({"state": "reconnected", "down_s": round(down, 3)})
                self.ready.set()
                return True
            except retryable() as e:
                if backoff.down_since is None or time.monotonic() - backoff.down_since > 30 * (1 + self._warned):
                    self._warned += backoff.down_since is not None
                    log.warning("%s: Redis unreachable (%s); retrying", self.names.input, e)
                self._r = None
                if not backoff.wait():
                    return False
        return False

    def _after_connect(self) -> None:
        r, n = self._r, self.names
        if self.pending is not None:  # did the last transaction go through before the connection dropped?
            done = r.hget(n.progress, "last_id")
            if done is not None and done.decode() == self.pending[0]:
                self.last_id, self.pending = self.pending[0], None
            else:
                self._commit(*self.pending)
        if self.last_id is not None:
            return
        saved = None if self.opts.fresh else r.hgetall(n.progress)
        if saved and b"last_id" in saved:
            self.last_id = saved[b"last_id"].decode()
            open_trial = saved.get(b"trial", b"").decode()
            if open_trial:
                self.resume_trial = open_trial
                err = ("error", {"input": n.input, "input_id": self.last_id, "trial": open_trial,
                                 "reason": f"trial {open_trial} aborted: the decoder restarted while it was open "
                                           "(its state is lost); its remaining bins are ignored",
                                 "action": "trial aborted", "ts": np.uint64(time.monotonic_ns()).tobytes()})
                self._commit(self.last_id, [err], trial="")
        else:
            self.last_id = last_id(r, n.input) if self.opts.start_at == "new" else "0-0"

    # -- main loop ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            try:
                self._run()
            except require_redis().exceptions.ResponseError as e:  # e.g. WRONGTYPE: the input is not a stream
                raise UserError(f"Redis refused a command on input {self.names.input!r} (progress "
                                f"{self.names.progress!r}): {e}") from None
        except BaseException as e:  # reported by the server; never a silent dead thread
            self.failure = e
            self.ready.set()
            self.stop.set()

    def _run(self) -> None:
        if not self._connect():
            return
        while not self.stop.is_set():
            try:
                got = self._r.xread({self.names.input: self.last_id}, count=self.opts.batch, block=200)
                for entry_id, fields in (got[0][1] if got else []):
                    t0, c0 = time.perf_counter(), time.thread_time()
                    eid = entry_id.decode()
                    self._lag(eid)
                    records = self._handle(eid, fields)
                    self._commit(eid, records, trial=self.session.trial or "")
                    self.processed += 1
                    if any(kind == "logits" for kind, _ in records):
                        self.hop_times.append(((time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3))
                    if self.stop.is_set():
                        break
            except retryable():
                self._r = None
                if not self._connect():
                    break
        self._shutdown()

    def _shutdown(self) -> None:
        """SIGTERM: close an open trial with a record (aborted: no more bins will come to this process)."""
        if self.session.trial is None or self.last_id is None:
            return
        records = self.session.abort(self.last_id, "the decoder was stopped (SIGTERM)")
        for _ in range(3):
            try:
                if self._r is None:
                    self._r = connect(self.url)
                if self.pending is not None:
                    self._after_connect()
                self._commit(self.last_id, records, trial="")
                return
            except retryable():
                self._r = None
                time.sleep(0.2)
        log.error("%s: could not record the aborted trial (Redis unreachable at shutdown)", self.names.input)

    def _lag(self, eid: str) -> None:
        self.lag_ms = max(0.0, time.time() * 1e3 + self.clock_offset_ms - id_ms(eid))
        self.max_lag_ms = max(self.max_lag_ms, self.lag_ms)

    # -- one entry ----------------------------------------------------------------------------------------------
    def _handle(self, eid: str, fields: dict) -> list:
        s, out = self.session, []
        if self.opts.trials == "inband":
            # a trial interrupted by a restart of this process: its bins find no open trial and are ignored
            if b"start" in fields:
                trial = fields[b"start"].decode(errors="replace") or eid
                day = fields.get(b"day", str(self.opts.default_day).encode()).decode(errors="replace")
                out += s.start(eid, trial, day)
            if b"samples" in fields:
                out += s.bins(eid, fields[b"samples"], dtype=_text(fields.get(b"dtype")),
                              sync=fields.get(self.opts.sync_field.encode()))
            if b"end" in fields:
                out += s.end(eid)
            return out
        state = self._read_task_state()
        if b"samples" not in fields:
            return out
        if state == GO:
            if s.trial is None:
                if self.resume_trial is not None:
                    s.counts["ignored_bins"] += 1
                    self.task_state = state
                    return out  # the rest of a trial this process did not see start (reported at start-up)
                out += s.start(eid, eid, self.opts.default_day)
            out += s.bins(eid, fields[b"samples"], dtype=_text(fields.get(b"dtype")),
                          sync=fields.get(self.opts.sync_field.encode()))
        elif state in (ENDED, PAUSED) and s.trial is not None:
            out += s.bins(eid, fields[b"samples"], dtype=_text(fields.get(b"dtype")),
                          sync=fields.get(self.opts.sync_field.encode()))
            out += s.end(eid)
        else:
            s.counts["ignored_bins"] += 1
        if state != GO:
            self.resume_trial = None
        self.task_state = state
        return out

    def _read_task_state(self) -> int:
        if self.opts.trials == "legacy":
            v = self._r.get(self.names.task_state_key)
            try:
                return int(v) if v is not None else -1
            except ValueError:
                return -1
        got = self._r.xrevrange(self.names.task_state, "+", "-", count=1)
        return TASK_STATES.get(got[0][1].get(b"state", b""), -1) if got else -1

    # -- writing ------------------------------------------------------------------------------------------------
    def _stream(self, kind: str) -> str:
        return {"logits": self.names.logits, "output": self.names.output, "error": self.names.errors,
                "status": self.names.status}[kind]

    def _commit(self, eid: str, records: list, trial: str = "") -> None:
        self.pending = (eid, records, trial)
        p = self._r.pipeline(transaction=True)
        maxlen = self.opts.maxlen or None
        for kind, fields in records:
            p.xadd(self._stream(kind), fields, maxlen=maxlen, approximate=True)
        p.hset(self.names.progress, mapping={"last_id": eid, "trial": trial})
        p.execute()
        self.pending, self.last_id = None, eid

    def _commit_status(self, fields: dict) -> None:
        try:
            self._r.xadd(self.names.status, {"input": self.names.input, **fields, "ts": time.time()})
        except retryable():
            pass

    def status(self) -> dict:
        c = self.session.counts
        out = {"input": self.names.input, "connected": int(self._r is not None), "processed": self.processed,
               "lag_ms": round(self.max_lag_ms, 2), "behind": int(self.max_lag_ms > self.opts.lag_warn_ms),
               "reconnects": self.reconnects, "open_trial": self.session.trial or "", **c}
        times = np.asarray(list(self.hop_times))
        if len(times):  # service time of the entries that produced frames (decode + commit), recent ones
            out.update(hop_ms_median=round(float(np.median(times[:, 0])), 3),
                       hop_ms_p99=round(float(np.percentile(times[:, 0], 99)), 3),
                       hop_cpu_ms_median=round(float(np.median(times[:, 1])), 3),
                       hop_cpu_ms_p99=round(float(np.percentile(times[:, 1], 99)), 3))
        return out


def _text(v) -> str | None:
    return None if v is None else v.decode(errors="replace")


class Server:
    """Several sessions over one Redis server; ``run()`` blocks until SIGTERM/SIGINT (or ``stop``)."""

    def __init__(self, url: str, sessions: list[tuple[StreamNames, DecodeSession]], opts: ServeOptions):
        if opts.trials not in TRIAL_SOURCES:
            raise UserError(f"--trials must be one of {', '.join(TRIAL_SOURCES)}, got {opts.trials!r}")
        if opts.start_at not in ("new", "first"):
            raise UserError(f"--start-at must be new or first, got {opts.start_at!r}")
        names = [n.input for n, _ in sessions]
        if len(set(names)) != len(names):
            raise UserError(f"an input stream is named twice: {names}")
        outs = [s for n, _ in sessions for s in (n.logits, n.output, n.progress)]
        if len(set(outs)) != len(outs) or set(outs) & set(names):
            raise UserError("two sessions would write the same stream (use '{input}' in the output names)")
        self.url, self.opts = url, opts
        self.stop = threading.Event()
        self.threads = [SessionThread(url, n, s, opts, self.stop) for n, s in sessions]
        self.status_stream = sessions[0][0].status

    def _status(self, r, fields: dict) -> object:
        try:
            if r is None:
                r = connect(self.url)
            r.xadd(self.status_stream, {**fields, "pid": os.getpid(), "ts": time.time()},
                   maxlen=self.opts.maxlen or None, approximate=True)
            return r
        except retryable():
            return None

    def run(self, install_signals: bool = True) -> int:
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop.set())
        for t in self.threads:
            t.start()
        for t in self.threads:
            while not t.ready.wait(0.2):
                if self.stop.is_set():
                    break
        failed = [t for t in self.threads if t.failure is not None]
        r = None
        if not failed and not self.stop.is_set():
            r = self._status(r, {"state": "ready", "inputs": json.dumps([t.names.input for t in self.threads])})
            log.info("serve: ready on %s (%s)", self.url, ", ".join(t.names.input for t in self.threads))
        next_status = time.monotonic() + self.opts.status_interval
        while not self.stop.is_set():
            self.stop.wait(max(0.0, next_status - time.monotonic()))
            next_status += self.opts.status_interval
            for t in self.threads:
                st = t.status()
                t.max_lag_ms = 0.0  # the next status reports the lag of the entries processed until then
                r = self._status(r, {"state": "running", **st})
        for t in self.threads:
            t.join(10)
        failed = [t for t in self.threads if t.failure is not None]
        final = {"state": "stopped" if not failed else "failed",
                 "sessions": json.dumps([t.status() for t in self.threads])}
        if failed:
            final["reason"] = f"{failed[0].names.input}: {type(failed[0].failure).__name__}: {failed[0].failure}"
        for _ in range(10):
            r = self._status(r, final)
            if r is not None:
                break
            time.sleep(0.2)
        if failed:
            raise failed[0].failure
        return 0
