"""Lab Streaming Layer transport for ``serve --lsl`` / ``replay --lsl`` (pylsl; its wheels bundle liblsl): the same
:class:`DecodeSession` as over Redis, with LSL streams instead of Redis streams.

- input: a float32 stream of ``n_features`` channels (one sample per 20 ms bin), and a string marker stream
  (``<input>_markers``) with ``start TRIAL_ID DAY`` and ``end`` samples; markers and bins are merged by LSL timestamp
  (a marker is applied before the first bin stamped after it; a marker stamped after every bin received so far waits
  up to 100 ms for earlier bins). Markers and bins on two streams are ordered only by their timestamps: a marker
  that arrives after bins stamped later than it is applied late (LSL gives no cross-stream order).
- output: ``<logits>`` (41 float32 channels, one sample per frame, stamped with the timestamp of the bin that
  completed it) and ``<output>`` (string: one JSON object per record, ``{"kind": "output" | "error" | "status",
  ...}``, the same fields as over Redis; ``input_id`` is the completing bin's timestamp).
LSL keeps nothing across restarts: there is no resume; an inlet reconnects to a restarted outlet by itself.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque

import numpy as np

from fastdecoder.errors import UserError

__all__ = ["require_pylsl", "LslSession", "replay_lsl"]

GRACE_S = 0.1


def require_pylsl():
    try:
        import pylsl
    except ImportError:
        raise UserError("LSL support needs pylsl: pip install 'fastdecoder[lsl]'") from None
    return pylsl


def _resolve(pylsl, name: str, stop: threading.Event | None, timeout: float | None):
    deadline = None if timeout is None else time.monotonic() + timeout
    while stop is None or not stop.is_set():
        found = pylsl.resolve_byprop("name", name, timeout=0.5)
        if found:
            return found[0]
        if deadline is not None and time.monotonic() > deadline:
            raise UserError(f"no LSL stream named {name!r} found within {timeout:.0f} s")
    return None


def _jsonable(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if not isinstance(v, (bytes, bytearray))}


class LslSession(threading.Thread):
    """One input stream decoded by ``session``; outlets named ``logits_name`` and ``output_name``."""

    def __init__(self, session, input_name: str, logits_name: str, output_name: str, stop: threading.Event,
                 status_interval: float = 1.0, default_day: int = 0):
        super().__init__(name=f"lsl:{input_name}", daemon=True)
        self.pylsl = require_pylsl()
        self.session, self.input_name, self.stop = session, input_name, stop
        self.default_day = default_day
        self.status_interval = status_interval
        pl = self.pylsl
        self.logits_out = pl.StreamOutlet(pl.StreamInfo(logits_name, "Logits", 41, pl.IRREGULAR_RATE, "float32",
                                                        f"fastdecoder-{logits_name}"))
        self.output_out = pl.StreamOutlet(pl.StreamInfo(output_name, "Markers", 1, pl.IRREGULAR_RATE, "string",
                                                        f"fastdecoder-{output_name}"))
        self.failure: BaseException | None = None
        self.processed, self.lag_s = 0, 0.0

    def _emit(self, records: list, ts: float) -> None:
        for kind, fields in records:
            if kind == "logits":
                self.logits_out.push_sample(np.frombuffer(fields["logits"], np.float32).tolist(), ts)
            else:
                self.output_out.push_sample([json.dumps({"kind": kind, **_jsonable(fields),
                                                         "ts": self.pylsl.local_clock()})], ts)

    def _status(self, state: str, **extra) -> None:
        self.output_out.push_sample([json.dumps({"kind": "status", "state": state, "input": self.input_name,
                                                 "processed": self.processed, "lag_ms": round(self.lag_s * 1e3, 2),
                                                 **self.session.counts, **extra, "ts": self.pylsl.local_clock()})])

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:
            self.failure = e
            self.stop.set()

    def _run(self) -> None:
        pl, s = self.pylsl, self.session
        info = _resolve(pl, self.input_name, self.stop, None)
        if info is None:
            return
        if info.channel_count() != s.n_features or info.channel_format() != pl.cf_float32:
            raise UserError(f"LSL stream {self.input_name!r} has {info.channel_count()} channels of format "
                            f"{info.channel_format()}; the model takes {s.n_features} float32 channels")
        bins_in = pl.StreamInlet(info, max_buflen=60, recover=True)
        bins_in.open_stream(timeout=10)
        minfo = _resolve(pl, f"{self.input_name}_markers", self.stop, None)
        if minfo is None:
            return
        markers_in = pl.StreamInlet(minfo, recover=True)
        markers_in.open_stream(timeout=10)
        self._status("ready")
        bins, markers = deque(), deque()
        newest_bin = -np.inf
        next_status = time.monotonic() + self.status_interval
        while not self.stop.is_set():
            chunk, stamps = bins_in.pull_chunk(timeout=0.02)
            for x, t in zip(chunk, stamps):
                bins.append((t, x))
                newest_bin = max(newest_bin, t)
            mchunk, mstamps = markers_in.pull_chunk(timeout=0.0)  # after the bins: earlier markers are in
            now = time.monotonic()
            markers.extend((t, m[0], now) for m, t in zip(mchunk, mstamps))
            while True:
                if markers and (not bins or markers[0][0] <= bins[0][0]):
                    t, text, got_at = markers[0]
                    if not bins and t > newest_bin and now - got_at < GRACE_S:
                        break  # bins stamped before this marker may still be on their way
                    markers.popleft()
                    self._emit(self._marker(t, text), t)
                elif bins:
                    t, x = bins.popleft()
                    recs = s.bins(f"{t:.6f}", np.asarray(x, np.float32).reshape(1, -1))
                    self.lag_s = max(0.0, pl.local_clock() - t)
                    self.processed += 1
                    self._emit(recs, t)
                else:
                    break
            if time.monotonic() >= next_status:
                next_status += self.status_interval
                self._status("running")
        if s.trial is not None:
            self._emit(s.abort("", "the decoder was stopped (SIGTERM)"), pl.local_clock())
        self._status("stopped")

    def _marker(self, t: float, text: str) -> list:
        parts = text.split()
        iid = f"{t:.6f}"
        if parts and parts[0] == "start":
            trial = parts[1] if len(parts) > 1 else iid
            day = parts[2] if len(parts) > 2 else None
            return self.session.start(iid, trial, self.default_day if day is None else day)
        if parts and parts[0] == "end":
            return self.session.end(iid)
        return [self.session.error(iid, f"unknown marker {text[:80]!r} (expected 'start TRIAL DAY' or 'end')",
                                    action="skipped")]


def replay_lsl(split, *, input_name: str, logits_name: str, output_name: str, fast: bool = False,
               max_trials: int | None = None, timeout: float = 60.0) -> dict:
    """Publish ``split`` over LSL to a running ``serve --lsl`` and score what comes back (as ``replay_redis``)."""
    from fastdecoder.decode import error_rate, greedy_decode

    pl = require_pylsl()
    n = len(split) if max_trials is None else min(len(split), max_trials)
    C = split.features[0].shape[1]
    bins_out = pl.StreamOutlet(pl.StreamInfo(input_name, "Binned", C, 50.0, "float32", f"replay-{input_name}"))
    marks_out = pl.StreamOutlet(pl.StreamInfo(f"{input_name}_markers", "Markers", 1, pl.IRREGULAR_RATE, "string",
                                              f"replay-{input_name}-markers"))
    lin = pl.StreamInlet(_resolve(pl, logits_name, None, timeout), max_buflen=60)
    oin = pl.StreamInlet(_resolve(pl, output_name, None, timeout), max_buflen=60)
    lin.open_stream(timeout=timeout)
    oin.open_stream(timeout=timeout)
    if not (bins_out.wait_for_consumers(timeout) and marks_out.wait_for_consumers(timeout)):
        raise UserError(f"no 'fastdecoder serve --lsl' connected to {input_name!r} within {timeout:.0f} s")
    time.sleep(0.2)
    trial_of: dict = {}    # bin / marker timestamp -> trial index
    sent_at: dict = {}     # bin timestamp -> local_clock() just before its push
    frames: dict = {i: [] for i in range(n)}
    finals, aborted, latency, stop = {}, {}, [], threading.Event()

    def collect():
        while not stop.is_set() and len(finals) + len(aborted) < n:
            chunk, stamps = lin.pull_chunk(timeout=0.05)
            now = pl.local_clock()
            for x, t in zip(chunk, stamps):
                t = round(t, 6)
                frames[trial_of[t]].append(np.asarray(x, np.float32))
                if t in sent_at:
                    latency.append(now - sent_at[t])
            ochunk, _ = oin.pull_chunk(timeout=0.0)
            for (text,) in ochunk:
                rec = json.loads(text)
                if rec.get("kind") == "output" and "final_decoded_sentence" in rec:
                    finals[int(rec["trial"])] = rec
                elif rec.get("kind") == "error" and rec.get("action") == "trial aborted" and rec.get("trial"):
                    aborted[int(rec["trial"])] = rec["reason"]
    th = threading.Thread(target=collect, daemon=True)
    th.start()
    t0 = round(pl.local_clock(), 3)
    k = 0
    for i in range(n):
        x = np.ascontiguousarray(split.features[i], np.float32)
        ts0 = round(t0 + k * 0.02, 6)
        trial_of[round(ts0 - 0.001, 6)] = i
        marks_out.push_sample([f"start {i} {int(split.day[i])}"], ts0 - 0.001)
        for t in range(x.shape[0]):
            ts = round(t0 + k * 0.02, 6)
            if not fast:
                time.sleep(max(0.0, ts - pl.local_clock()))
            trial_of[ts] = i
            sent_at[ts] = pl.local_clock()
            bins_out.push_sample(x[t].tolist(), ts)
            k += 1
        te = round(t0 + (k - 1) * 0.02 + 0.001, 6)
        trial_of[te] = i
        marks_out.push_sample(["end"], te)
    th.join(timeout)
    stop.set()
    done = [i for i in range(n) if i in finals]
    lat = np.asarray(latency) * 1e3
    out = {"trials": n, "completed": len(done), "aborted": [{"trial": split.trial_ids[i], "reason": aborted[i]}
                                                              for i in sorted(aborted)],
           "latency_ms": {"median": float(np.median(lat)), "p99": float(np.percentile(lat, 99)),
                          "max": float(lat.max())} if len(lat) else {}}
    if split.targets is not None and done:
        refs = [list(split.targets[i]) for i in done]
        out["per_beam"] = error_rate([json.loads(finals[i]["phoneme_ids"]) for i in done], refs)[0]
        out["per_greedy"] = error_rate([greedy_decode(np.stack(frames[i])[None])[0] if frames[i] else []
                                        for i in done], refs)[0]
    return out
