"""``fastdecoder replay``: publish a split's trials to a running ``fastdecoder serve`` over Redis (one 20 ms bin per
entry, paced in real time unless ``fast``), collect what it writes back and score it as ``eval`` does.

Latency of a frame: from just before the XADD of the input entry that completed it to the moment this process reads
its ``logits`` entry (both on this process's clock). Redis restarts are survived on both sides: the publisher
reconnects with backoff and, before writing an entry again, checks (by its ``seq`` field) whether the lost write went
through; the reader resumes after the last entry it read.
"""
from __future__ import annotations

import json
import threading
import time
from collections import defaultdict

import numpy as np

from fastdecoder.errors import UserError
from fastdecoder.serve.redis_io import Backoff, connect, id_ms, last_id, retryable
from fastdecoder.serve.server import StreamNames

__all__ = ["replay_redis", "wait_ready"]

BIN_SECONDS = 0.020


def wait_ready(url: str, names: StreamNames, timeout: float = 60.0) -> None:
    """Block until a server reads ``names.input``: the status stream's newest lifecycle entry is its ``ready``, or
    a ``running`` entry of that input is under 10 s old (a server started long ago)."""
    deadline = time.monotonic() + timeout
    backoff = Backoff()
    while time.monotonic() < deadline:
        try:
            r = connect(url)
            sec, usec = r.time()
            now_ms = sec * 1e3 + usec / 1e3
            for eid, f in r.xrevrange(names.status, "+", "-", count=500):
                state = f.get(b"state", b"")
                if state == b"running" and f.get(b"input") == names.input.encode():
                    if now_ms - id_ms(eid) < 10_000:
                        return
                elif state in (b"ready", b"stopped", b"failed"):
                    if state == b"ready" and names.input in json.loads(f.get(b"inputs", b"[]")):
                        return
                    break
        except retryable():
            pass
        backoff.wait()
    raise UserError(f"no 'fastdecoder serve' reading {names.input} became ready on {url} within {timeout:.0f} s "
                    f"(status stream {names.status})")


class _Publisher:
    def __init__(self, url: str, stream: str, stop: threading.Event):
        self.url, self.stream, self.stop = url, stream, stop
        self.r = connect(url)
        self.seq = int(time.time() * 1e6)  # unique across replays: dedup after a lost reply compares it
        self.reconnects = 0

    def add(self, fields: dict) -> str:
        self.seq += 1
        fields = {**fields, "seq": self.seq}
        backoff = Backoff(self.stop)
        while True:
            try:
                if backoff.down_since is not None:  # reconnected: did the lost write go through?
                    got = self.r.xrevrange(self.stream, "+", "-", count=1)
                    if got and got[0][1].get(b"seq") == str(self.seq).encode():
                        backoff.reset()
                        return got[0][0].decode()
                eid = self.r.xadd(self.stream, fields).decode()
                if backoff.down_since is not None:
                    backoff.reset()
                return eid
            except retryable():
                self.reconnects += backoff.down_since is None
                if not backoff.wait():
                    raise UserError("replay stopped while Redis was unreachable") from None
                self.r = connect(self.url)


class _Collector(threading.Thread):
    """Reads the server's logits, output and error streams until every published trial is final or aborted."""

    def __init__(self, url: str, names: StreamNames, trials: set, stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.names, self.trials, self.stop = url, names, trials, stop
        self.r = connect(url)
        self.pos = {s: last_id(self.r, s) for s in (names.logits, names.output, names.errors)}
        self.frames: dict = defaultdict(dict)      # trial -> frame -> log-probs
        self.finals: dict = {}
        self.aborted: dict = {}
        self.errors: list = []
        self.read_at: list = []                    # (input id, time read) per logits entry
        self.duplicates = 0
        self.answered: dict = defaultdict(int)     # input id -> final records answering it
        self.done = threading.Event()
        self.reconnects = 0

    def run(self) -> None:
        backoff = Backoff(self.stop)
        while not self.stop.is_set() and not self.done.is_set():
            try:
                got = self.r.xread(self.pos, count=1000, block=200)
                now = time.perf_counter()
                if backoff.down_since is not None:
                    backoff.reset()
                for stream, entries in got or []:
                    stream = stream.decode()
                    for eid, f in entries:
                        self.pos[stream] = eid.decode()
                        self._take(stream, f, now)
                if self.trials and self.trials <= set(self.finals) | set(self.aborted):
                    self.done.set()
            except retryable():
                self.reconnects += backoff.down_since is None
                if not backoff.wait():
                    return
                self.r = connect(self.url)

    def _take(self, stream: str, f: dict, now: float) -> None:
        trial = f.get(b"trial", b"").decode()
        iid = f.get(b"input_id", b"").decode()
        if stream == self.names.logits:
            frame = int(f[b"frame"])
            if frame in self.frames[trial]:
                self.duplicates += 1
            self.frames[trial][frame] = np.frombuffer(f[b"logits"], np.float32)
            self.read_at.append((iid, now))
        elif stream == self.names.output:
            if b"final_decoded_sentence" in f:
                self.answered[iid] += 1
                self.finals[trial] = {k.decode(): v.decode() for k, v in f.items() if k != b"ts"}
        elif stream == self.names.errors:
            if f.get(b"input", b"").decode() != self.names.input:
                return
            rec = {k.decode(): v.decode(errors="replace") for k, v in f.items() if k != b"ts"}
            if rec.get("action") == "trial aborted" and trial:
                self.aborted[trial] = rec["reason"]
            else:
                self.errors.append(rec)


def replay_redis(url: str, split, *, names: StreamNames | None = None, fast: bool = False,
                 max_trials: int | None = None, timeout: float = 60.0, ready_timeout: float = 60.0,
                 on_bin=None) -> dict:
    """Publish ``split``'s trials to ``names.input``; returns the summary (see the module docstring).

    on_bin(i, t): called before bin t of trial i is published (tests use it to disturb a session mid-trial).
    """
    from fastdecoder.decode import error_rate, greedy_decode, normalize_text, word_error_rate

    names = names or StreamNames()
    n = len(split) if max_trials is None else min(len(split), max_trials)
    if n < 1:
        raise UserError("the split has no trials to replay")
    wait_ready(url, names, ready_timeout)
    stop = threading.Event()
    ids = [f"{split.trial_ids[i]}@{time.time_ns()}" for i in range(n)]  # unique per replay
    sent_at: dict = {}
    collector = _Collector(url, names, set(ids), stop)
    collector.start()
    pub = _Publisher(url, names.input, stop)
    t0 = time.perf_counter()
    k = 0
    try:
        for i in range(n):
            x = np.ascontiguousarray(split.features[i], dtype=np.float32)
            pub.add({"start": ids[i], "day": int(split.day[i])})
            for t in range(x.shape[0]):
                if not fast:
                    time.sleep(max(0.0, t0 + k * BIN_SECONDS - time.perf_counter()))
                k += 1
                if on_bin is not None:
                    on_bin(i, t)
                sent = time.perf_counter()
                eid = pub.add({"samples": x[t].tobytes()})
                sent_at[eid] = sent
            sent_at[pub.add({"end": ""})] = time.perf_counter()
        collector.done.wait(timeout)
    finally:
        stop.set()
        collector.join(5)
    missing = [t for t in ids if t not in collector.finals and t not in collector.aborted]
    done = [i for i in range(n) if ids[i] in collector.finals]
    lat = np.asarray([t - sent_at[iid] for iid, t in collector.read_at if iid in sent_at]) * 1e3
    out = {"trials": n, "completed": len(done), "bins_per_entry": 1,
           "aborted": [{"trial": split.trial_ids[i], "reason": collector.aborted[ids[i]]}
                       for i in range(n) if ids[i] in collector.aborted],
           "missing": [split.trial_ids[ids.index(t)] for t in missing],
           "duplicate_frames": collector.duplicates,
           "inputs_answered_twice": sum(1 for v in collector.answered.values() if v > 1),
           "malformed": collector.errors,
           "latency_ms": {"median": float(np.median(lat)), "p99": float(np.percentile(lat, 99)),
                          "max": float(lat.max())} if len(lat) else {},
           "reconnects": pub.reconnects + collector.reconnects}
    if split.targets is not None and done:
        refs = [list(split.targets[i]) for i in done]
        beams = [json.loads(collector.finals[ids[i]]["phoneme_ids"]) for i in done]
        out["per_beam"] = error_rate(beams, refs)[0]
        greedy = []
        for i in done:
            fr = collector.frames[ids[i]]
            if sorted(fr) != list(range(len(fr))):
                raise RuntimeError(f"trial {split.trial_ids[i]}: frames {sorted(fr)[:5]}... are not 0..n-1")
            lp = np.stack([fr[j] for j in range(len(fr))]) if fr else np.zeros((0, 41), np.float32)
            greedy.append(greedy_decode(lp[None])[0] if len(lp) else [])
        out["per_greedy"] = error_rate(greedy, refs)[0]
    if split.transcriptions is not None and done and "words" in collector.finals[ids[done[0]]]:
        hyps = [normalize_text(collector.finals[ids[i]]["words"]) for i in done]
        out["wer"] = word_error_rate(hyps, [normalize_text(split.transcriptions[i]) for i in done])[0]
    return out
