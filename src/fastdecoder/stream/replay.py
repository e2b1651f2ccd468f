"""Replay a split's trials through a StreamingDecoder as a closed-loop session would see them: pushes of ``hop``
bins (20 ms each), optionally paced in real time; per-hop latency, real-time factor, PER / WER.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["ReplayReport", "replay"]

BIN_SECONDS = 0.020


@dataclass
class ReplayReport:
    trials: int
    hops: int
    hop_bins: int
    latency_ms: dict                   # per push: median, p99, max (milliseconds of compute)
    real_time_factor: float            # compute time / audio-equivalent time of the bins pushed
    per_beam: float | None = None      # PER of the streamed beam hypotheses (equals eval --decoder beam)
    per_greedy: float | None = None    # PER of greedy decoding of the streamed log-probs (equals eval's default)
    wer: float | None = None           # with a word decoder (equals eval --lm with the same decoder settings)
    hypotheses: list = field(default_factory=list, repr=False)  # per trial: Final

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "hypotheses"}
        return {k: v for k, v in out.items() if v is not None}


def replay(decoder, split, *, hop: int = 4, realtime: bool = False, max_trials: int | None = None,
           on_words: Callable[[int, list[str]], None] | None = None) -> ReplayReport:
    """Stream every trial of ``split`` (a :class:`fastdecoder.data.Split`) through ``decoder``.

    on_words(trial_index, new_words) is called whenever words become final (and with the rest at the trial's end).
    """
    from fastdecoder.decode import error_rate, greedy_decode, normalize_text, word_error_rate
    from fastdecoder.decode.beam import _int_arg

    hop = _int_arg("hop", hop, 1)
    max_trials = None if max_trials is None else _int_arg("max_trials", max_trials, 1)
    n = len(split) if max_trials is None else min(len(split), max_trials)
    latencies: list[float] = []
    finals, bins_total = [], 0
    start = time.perf_counter()
    for i in range(n):
        x = np.asarray(split.features[i], dtype=np.float32)
        decoder.reset(int(split.day[i]))
        shown = 0
        for j in range(0, x.shape[0], hop):
            if realtime:  # wait until the bins of this push would have been recorded
                due = start + (bins_total + j + hop) * BIN_SECONDS
                time.sleep(max(0.0, due - time.perf_counter()))
            t0 = time.perf_counter()
            part = decoder.push(x[j:j + hop])
            latencies.append(time.perf_counter() - t0)
            if on_words is not None and part.words_stable > shown:
                on_words(i, part.final_words[shown:])
                shown = part.words_stable
        t0 = time.perf_counter()
        final = decoder.finish()
        latencies.append(time.perf_counter() - t0)
        if on_words is not None and final.words:
            on_words(i, final.words[0].words[shown:])
        finals.append(final)
        bins_total += x.shape[0]
        if realtime:
            start = time.perf_counter() - bins_total * BIN_SECONDS  # the next trial starts now
    busy = float(np.sum(latencies))
    lat = np.asarray(latencies) * 1e3
    report = ReplayReport(
        trials=n, hops=len(latencies), hop_bins=hop,
        latency_ms={"median": float(np.median(lat)), "p99": float(np.percentile(lat, 99)), "max": float(lat.max())}
        if len(lat) else {}, real_time_factor=busy / max(bins_total * BIN_SECONDS, 1e-12), hypotheses=finals)
    if split.targets is not None and n:
        refs = [list(split.targets[i]) for i in range(n)]
        report.per_beam = _rate(error_rate([f.phonemes for f in finals], refs))
        report.per_greedy = _rate(error_rate([greedy_decode(f.log_probs[None])[0] for f in finals], refs))
    if decoder.words is not None and split.transcriptions is not None and n:
        hyps = [normalize_text(f.text) for f in finals]
        report.wer = _rate(word_error_rate(hyps, [normalize_text(split.transcriptions[i]) for i in range(n)]))
    return report


def _rate(result: tuple[float, int, int]) -> float | None:
    """An error rate, or None when the references hold nothing to score (the rate is undefined, not NaN)."""
    rate, _, n_ref = result
    return rate if n_ref else None
