"""Streaming decoding: pushes of any size end where offline decoding of the whole trial ends; finals never change.

Offline = the eval transform (b2t25: Gaussian smoothing of the input, 'same' padding) + GRUDecoder.forward +
``beam_search`` / ``WordDecoder.decode`` on the whole trial. Models are tiny b2t25-family GRUDecoders with random
weights and a sharpened head (peaky posteriors, so that beams agree on a prefix and finals appear).
"""
from __future__ import annotations

import json
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from fastdecoder.config import load_config
from fastdecoder.decode import Lexicon, WordDecoder, beam_search, build_lm
from fastdecoder.model import GRUDecoder
from fastdecoder.ops import augment, gaussian_taps
from fastdecoder.stream import BeamStream, StreamingDecoder, WordStream
from fastdecoder.stream.frontend import NATIVE_MAX_FRAMES

C, DAYS, BEAM = 8, 3, 8
CHUNKS = [1, 3, 4, 7, 50, None]  # None: the whole trial in one push
MIXED = [4, 30, 1, 17, 8]  # push sizes cycled by chunk="mixed": the GRU state passes between native and nn.GRU


def tiny_model(rnn: str, seed: int, **model_keys) -> GRUDecoder:
    torch.manual_seed(seed)
    cfg = replace(load_config("b2t25").model, **{"n_features": C, "n_days": DAYS, "hidden_size": 16, "num_layers": 2,
                                                 "rnn": rnn, **model_keys})
    model = GRUDecoder(cfg, rnn_backend="reference").eval()
    with torch.no_grad():
        model.head.weight.mul_(6.0)  # peaky posteriors
        model.day_weights.add_(0.3 * torch.randn_like(model.day_weights))
    return model


def offline(model, x: torch.Tensor, day: int, word_decoder=None):
    """(log_probs (N, 41), beam hypotheses, word hypotheses) of the whole trial, the offline way."""
    with torch.no_grad():
        xs = augment(x[None], torch.tensor([x.shape[0]]), smooth_taps=gaussian_taps(model.cfg.smooth_taps))
        lp = model(xs, torch.tensor([day])).float().log_softmax(-1)[0]
    hyps = beam_search(lp[None], beam_width=BEAM, nbest=3)[0]
    words = word_decoder.decode(lp[None])[0] if word_decoder is not None else None
    return lp.numpy(), hyps, words


@pytest.fixture(scope="module")
def word_decoder():
    rng = np.random.default_rng(7)
    prons = {f"w{i}": [int(p) for p in rng.integers(1, 40, size=rng.integers(1, 4))] for i in range(40)}
    lex = Lexicon.from_pronunciations(prons)
    sentences = [" ".join(f"w{i}" for i in rng.integers(0, 40, size=rng.integers(2, 6))) for _ in range(300)]
    lm = build_lm(sentences, 3)
    return WordDecoder(lex, lm, beam_width=16, nbest=2, lm_weight=0.5, num_threads=1)


def chunked(x: torch.Tensor, chunk, rng=None):
    if chunk == "random":
        cuts = np.cumsum(rng.integers(0, 9, size=x.shape[0]))
        cuts = cuts[cuts < x.shape[0]]
        return np.split(x.numpy(), cuts)  # includes empty pushes
    if chunk == "mixed":
        cuts = np.cumsum(MIXED * x.shape[0])
        return np.split(x.numpy(), cuts[cuts < x.shape[0]])
    step = x.shape[0] if chunk is None else chunk
    return [x[i:i + step].numpy() for i in range(0, x.shape[0], step)]


def stream(dec: StreamingDecoder, x, day, chunk, rng=None, nbest=3):
    """Run one trial through ``dec``; returns (final, partials)."""
    dec.reset(day)
    partials = [dec.push(c) for c in chunked(x, chunk, rng)]
    return dec.finish(nbest), partials


def assert_finals_never_revised(partials, final, with_words: bool) -> int:
    """Each partial's final prefix is a prefix of every later one and of the final best; returns the longest."""
    best = final.hypotheses[0][0]
    prev = []
    for p in partials:
        fin = p.final_phonemes
        assert fin[: len(prev)] == prev, f"final prefix revised: {prev} -> {fin}"
        assert best[: len(fin)] == fin, f"final prefix {fin} is not a prefix of the final hypothesis {best}"
        prev = fin
    if with_words:
        prev_w = []
        for p in partials:
            fw = p.final_words
            assert fw[: len(prev_w)] == prev_w, f"final words revised: {prev_w} -> {fw}"
            for h in final.words:  # every sentence-end hypothesis starts with it
                assert h.words[: len(fw)] == fw, f"final words {fw} vs final hypothesis {h.words}"
            prev_w = fw
    return len(prev)


@pytest.mark.parametrize("rnn", ["gru", "ln_gru"])
@pytest.mark.parametrize("words", [False, True], ids=["phonemes", "words"])
def test_streaming_equals_offline(rnn, words, word_decoder):
    seed = 100 + 10 * (rnn == "ln_gru") + words
    model = tiny_model(rnn, seed)
    g = torch.Generator().manual_seed(seed)
    T, day = 131, 2
    x = torch.randn(T, C, generator=g)
    wd = word_decoder if words else None
    lp_ref, hyps_ref, words_ref = offline(model, x, day, wd)
    dec = StreamingDecoder(model, beam_width=BEAM, nbest=3, word_decoder=wd)
    rng = np.random.default_rng(seed)
    longest = 0
    for chunk in CHUNKS + ["random", "mixed"]:
        before = dict(dec.frontend.gru_frames)
        final, partials = stream(dec, x, day, chunk, rng)
        msg = f"seed {seed}, chunk {chunk}"
        # which GRU path ran: the native step on pushes of <= NATIVE_MAX_FRAMES frames (nn.GRU model), else nn.GRU
        per_push = np.diff([0] + [p.frames for p in partials] + [final.frames])
        native = int(sum(n for n in per_push if n <= NATIVE_MAX_FRAMES)) if rnn == "gru" else 0
        ran = {k: dec.frontend.gru_frames[k] - before[k] for k in before}
        assert ran == {"native": native, "torch": final.frames - native}, msg
        if rnn == "gru" and chunk in (1, 4, "mixed"):
            assert ran["native"] > 0 and (ran["torch"] > 0) == (chunk == "mixed"), msg
        assert final.bins == T and final.frames == lp_ref.shape[0], msg
        np.testing.assert_allclose(final.log_probs, lp_ref, rtol=1e-5, atol=2e-5, err_msg=msg)
        assert [h[0] for h in final.hypotheses] == [h[0] for h in hyps_ref], msg
        np.testing.assert_allclose([h[1] for h in final.hypotheses], [h[1] for h in hyps_ref], rtol=1e-5, err_msg=msg)
        if words:
            assert [h.words for h in final.words] == [h.words for h in words_ref], msg
            np.testing.assert_allclose([h.score for h in final.words], [h.score for h in words_ref], rtol=1e-5)
        longest = max(longest, assert_finals_never_revised(partials, final, words))
        assert partials[-1].bins == T and all(a.bins <= b.bins for a, b in zip(partials, partials[1:])), msg
        # frame j needs bins up to 4 j + 13 and 4 bins of smoothing lookahead: decoded as soon as they exist
        assert [p.frames for p in partials] == [max(0, (p.bins - 4 - 14) // 4 + 1) for p in partials], msg
    assert longest > 0, "no partial ever had a final prefix: the test would not check revisions"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_native_streams_are_the_offline_searches(seed, word_decoder):
    """The native stream objects fed any split of the frames give bit-identical results to the offline calls."""
    rng = np.random.default_rng(seed)
    T = int(rng.integers(0, 60))
    lp = torch.randn(T, 41, dtype=torch.float64).mul(3).log_softmax(-1).numpy()
    if seed == 3:
        lp = lp.astype(np.float32)
    ref = beam_search(lp[None], beam_width=5, nbest=5)[0]
    ref_w = word_decoder.decode(lp[None])[0]
    bs, ws = BeamStream(41, beam_width=5), WordStream(word_decoder)
    for _ in range(2):  # the second round checks reset()
        bs.reset()
        ws.reset()
        for part in np.split(lp, np.sort(rng.integers(0, T + 1, size=4))):
            bs.advance(part)
            ws.advance(part)
        assert bs.frames == ws.frames == T
        assert bs.hypotheses(5) == [tuple(h) for h in ref], f"seed {seed}"
        got = ws.finish()
        assert [(h.words, h.score) for h in got] == [(h.words, h.score) for h in ref_w], f"seed {seed}"


@pytest.mark.parametrize("beam,cut", [(1, None), (4, None), (16, None), (8, -3.0)])
def test_stable_prefix_is_shared_by_the_whole_beam_and_only_grows(beam, cut, word_decoder):
    """At every frame: every beam hypothesis starts with the reported stable prefix, which extends the previous one
    (phoneme search, with and without the lossy cut; the word decoder's word histories likewise)."""
    seed = 40 + beam
    rng = np.random.default_rng(seed)
    T = 80
    peaks = rng.integers(0, 41, size=T)
    lp = rng.normal(size=(T, 41)) + 5.0 * (np.arange(41)[None, :] == peaks[:, None])
    lp = torch.from_numpy(lp).log_softmax(-1).numpy()
    bs = BeamStream(41, beam_width=beam, token_min_logprob=cut)
    ws = WordStream(word_decoder)
    prev, prev_w, grew = [], [], 0
    for t in range(T):
        bs.advance(lp[t:t + 1])
        ws.advance(lp[t:t + 1])
        tokens, stable, _ = bs.partial()
        fin = tokens[:stable]
        assert fin[: len(prev)] == prev, f"seed {seed}, frame {t}: {prev} -> {fin}"
        assert all(h[: stable] == fin for h, _ in bs.hypotheses(beam)), f"seed {seed}, frame {t}"
        words, wstable, _ = ws.partial()
        assert words[:wstable][: len(prev_w)] == prev_w, f"seed {seed}, frame {t}"
        grew += len(fin) > len(prev)
        prev, prev_w = fin, words[:wstable]
    assert grew > 0, "the stable prefix never grew: nothing was checked"
    assert all(h.words[: len(prev_w)] == prev_w for h in ws.finish(2))
    assert [h for h, _ in bs.hypotheses(beam)] == [h for h, _ in beam_search(
        lp[None], beam_width=beam, nbest=beam, token_min_logprob=cut)[0]]


def test_per_bin_pushes_compute_most_of_each_step_ahead():
    """Pushes of one bin (a closed-loop rig): the GRU step's products that do not need a frame's last bin are
    computed at the pushes before it (native_gru.StepAhead), once each, and the frames still equal offline."""
    seed = 61
    model = tiny_model("gru", seed)
    x = torch.randn(131, C, generator=torch.Generator().manual_seed(seed))
    lp_ref = offline(model, x, 0)[0]
    dec = StreamingDecoder(model, beam_width=BEAM)
    final, _ = stream(dec, x, 0, 1)
    np.testing.assert_allclose(final.log_probs, lp_ref, rtol=1e-5, atol=2e-5)
    c, n, K = dec.frontend.ahead.counts, final.frames, model.cfg.patch_size
    assert dec.frontend.gru_frames == {"native": n, "torch": 0}
    # every frame's input product is K bin blocks, each computed once (the bins after the last frame are computed
    # for frames the trial never completes); at a step only the blocks of the bins that completed it: one per
    # frame, plus the lookahead's bins that finish() flushes at once
    assert n * K <= c["input_blocks_ahead"] + c["input_blocks_at_step"] < (n + dec.frontend.ahead.in_flight) * K
    assert c["input_blocks_at_step"] <= n + dec.lookahead_bins
    assert c["hidden_ahead"] + c["hidden_at_step"] == n and c["hidden_at_step"] <= 1
    assert c["plain_steps"] == 0
    final4, _ = stream(dec, x, 0, 4)  # a frame's worth of bins per push: nothing to do ahead, the plain step
    np.testing.assert_allclose(final4.log_probs, lp_ref, rtol=1e-5, atol=2e-5)
    assert dec.frontend.ahead.counts["plain_steps"] >= n - dec.frontend.ahead.in_flight  # all but the first few


def test_native_gru_path_with_zero_initial_state():
    """learn_h0 off (zeros, the state nn.GRU gets as None): the native step starts from the same state."""
    seed = 31
    model = tiny_model("gru", seed, learn_h0=False, num_layers=3)
    x = torch.randn(83, C, generator=torch.Generator().manual_seed(seed))
    lp_ref = offline(model, x, 1)[0]
    dec = StreamingDecoder(model, beam_width=BEAM)
    for chunk in (4, "mixed"):
        final, _ = stream(dec, x, 1, chunk)
        np.testing.assert_allclose(final.log_probs, lp_ref, rtol=1e-5, atol=2e-5, err_msg=f"seed {seed}, {chunk}")
    assert dec.frontend.gru_frames["native"] > 0 and dec.frontend.gru_frames["torch"] > 0


def test_bidirectional_refused():
    cfg = replace(load_config("b2t24").model, n_features=C, n_days=DAYS, hidden_size=8, num_layers=1)
    with pytest.raises(ValueError, match="bidirectional.*whole trial"):
        StreamingDecoder(GRUDecoder(cfg))


def test_reset_leaves_no_state():
    model = tiny_model("gru", 5)
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(90, C, generator=g), torch.randn(77, C, generator=g)
    fresh = StreamingDecoder(model, beam_width=BEAM).decode_trial(b, 1)
    dec = StreamingDecoder(model, beam_width=BEAM)
    dec.decode_trial(a, 0, chunk=5)
    again = dec.decode_trial(b, 1, chunk=3)
    dec.reset(0)
    dec.push(a[:40].numpy())  # abandoned mid-trial
    mid = dec.decode_trial(b, 1, chunk=9)
    for got in (again, mid):
        assert got.hypotheses == fresh.hypotheses or (
            [h[0] for h in got.hypotheses] == [h[0] for h in fresh.hypotheses])
        np.testing.assert_allclose(got.log_probs, fresh.log_probs, rtol=1e-5, atol=2e-5)


def test_bad_input_is_named_and_stream_stays_usable(word_decoder):
    model = tiny_model("gru", 6)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(70, C, generator=g)
    ref = StreamingDecoder(model, beam_width=BEAM, word_decoder=word_decoder).decode_trial(x, 2)
    dec = StreamingDecoder(model, beam_width=BEAM, word_decoder=word_decoder)
    with pytest.raises(RuntimeError, match="before reset"):
        dec.push(x[:3].numpy())
    with pytest.raises(ValueError, match="unknown day 3"):
        dec.reset(3)
    with pytest.raises(ValueError, match="day must be an integer"):
        dec.reset(1.5)
    dec.reset(2)
    dec.push(x[:20].numpy())
    with pytest.raises(ValueError, match=rf"\(n, {C}\).*\(4, {C + 1}\)"):
        dec.push(np.zeros((4, C + 1), np.float32))
    with pytest.raises(ValueError, match=r"\(n, 8\).*\(8,\)"):
        dec.push(np.zeros(C, np.float32))
    bad = x[20:30].clone()
    bad[4, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite value \\(nan\\) at bin 4, feature 2"):
        dec.push(bad.numpy())
    with pytest.raises(ValueError, match="float array"):
        dec.push(np.array([["a"] * C]))
    dec.push(np.zeros((0, C), np.float32))
    dec.push(x[20:].numpy())
    got = dec.finish()
    assert [h[0] for h in got.hypotheses] == [h[0] for h in ref.hypotheses]
    assert [h.words for h in got.words] == [h.words for h in ref.words]
    with pytest.raises(RuntimeError, match="after finish"):
        dec.push(x[:4].numpy())
    with pytest.raises(RuntimeError, match="after finish"):
        dec.finish()
    dec.reset(2)  # usable again
    with torch.no_grad():
        broken = tiny_model("gru", 6)
        broken.head.bias[3] = float("nan")
    dec = StreamingDecoder(broken, beam_width=BEAM)
    dec.reset(0)
    with pytest.raises(ValueError, match="model produced non-finite log-probabilities.*closed"):
        dec.push(x.numpy())
    with pytest.raises(RuntimeError, match="after finish"):
        dec.push(x[:4].numpy())
    with pytest.raises(ValueError, match="must be a fastdecoder.model.GRUDecoder"):
        StreamingDecoder(torch.nn.GRU(4, 4))
    with pytest.raises(ValueError, match=r"log_probs\[0, 0, 0\] = nan is not a log-probability"):
        BeamStream(41).advance(np.full((2, 41), np.nan))
    zero_mass = np.log(np.full((2, 41), 1 / 40))
    zero_mass[:, 5] = -np.inf  # -inf is probability 0 (the decoders' one input policy), not an error
    BeamStream(41).advance(zero_mass)
    with pytest.raises(ValueError, match=r"\(frames, 41\)"):
        BeamStream(41).advance(np.zeros((2, 40)))


def test_streams_in_threads_match_sequential(word_decoder):
    model = tiny_model("gru", 8)
    g = torch.Generator().manual_seed(8)
    trials = [(torch.randn(60 + 7 * i, C, generator=g), i % DAYS) for i in range(4)]
    want = [StreamingDecoder(model, beam_width=BEAM, word_decoder=word_decoder).decode_trial(x, d)
            for x, d in trials]
    got = [None] * len(trials)

    def run(i):
        dec = StreamingDecoder(model, beam_width=BEAM, word_decoder=word_decoder)
        got[i] = dec.decode_trial(*trials[i], chunk=4)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(trials))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w, r in zip(want, got):
        assert [h[0] for h in r.hypotheses] == [h[0] for h in w.hypotheses]
        assert [h.words for h in r.words] == [h.words for h in w.words]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A run folder of a tiny causal model, saved untrained (its accuracy does not matter here)."""
    from fastdecoder.testing.tiny import tiny_causal_run

    out = tmp_path_factory.mktemp("stream_run")
    trainer = tiny_causal_run(out, "tiny-stream")
    return out, trainer


def test_stream_cli_equals_eval(short_run, tmp_path, capsys):
    """`fastdecoder stream` reports the PER / WER that `fastdecoder eval` reports on the same split and settings."""
    from fastdecoder.cli import main

    out, trainer = short_run
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(trainer.train_split.transcriptions) + "\n")
    arpa = tmp_path / "lm.arpa"
    assert main(["lm", "build", "--text", str(corpus), "--order", "2", "--out", str(arpa)]) == 0
    words = ["--lm", str(arpa), "--lexicon", "train", "--word-beam-width", "16"]
    capsys.readouterr()
    assert main(["eval", "--run", str(out), "--checkpoint", "last", "--decoder", "beam", "--beam-width", "4",
                 *words]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert main(["stream", "--run", str(out), "--checkpoint", "last", "--beam-width", "4", "--hop", "3"] + words) == 0
    text = capsys.readouterr().out
    st = json.loads(text[text.index("{\n"):])
    assert st["trials"] == ev["trials"] == 10
    assert st["per_greedy"] == pytest.approx(ev["per_greedy"], abs=1e-12)
    assert st["per_beam"] == pytest.approx(ev["per_beam"], abs=1e-12)
    assert st["wer"] == pytest.approx(ev["wer"], abs=1e-12)
    assert st["lookahead_ms"] == 80 and st["real_time_factor"] > 0
    assert 0 < st["latency_ms"]["median"] <= st["latency_ms"]["p99"] <= st["latency_ms"]["max"]
    # trial by trial: the streamed hypotheses are eval's predictions
    from fastdecoder.decode import lexicon_from_split, normalize_text
    from fastdecoder.phonemes import ids_to_text
    from fastdecoder.stream.replay import replay

    preds = {p["trial"]: p for p in map(json.loads, open(ev["predictions"]))}
    split = trainer.val_split
    lexicon = lexicon_from_split(trainer.train_split.transcriptions, trainer.train_split.targets)
    dec = StreamingDecoder.from_run(out, "last", beam_width=4,
                                    word_decoder=WordDecoder(lexicon, str(arpa), beam_width=16))
    rep = replay(dec, split, hop=5)
    for tid, f in zip(split.trial_ids, rep.hypotheses):
        assert ids_to_text(f.phonemes) == preds[tid]["beam"], tid
        assert normalize_text(f.text) == preds[tid]["words"], tid
    assert sum(len(p["words"].split()) for p in preds.values()) > 0, "no words decoded: the check would be vacuous"
    assert main(["stream", "--run", str(tmp_path / "norun")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_from_run_matches_loaded_model(short_run):
    from fastdecoder.checkpoint import load_run

    out, _ = short_run
    _, model, _ = load_run(out, "last")
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(9))
    a = StreamingDecoder.from_run(out, "last", beam_width=4).decode_trial(x, 1, chunk=4)
    b = StreamingDecoder(model, beam_width=4).decode_trial(x, 1)
    np.testing.assert_allclose(a.log_probs, b.log_probs, rtol=1e-5, atol=2e-5)
    assert a.hypotheses[0][0] == b.hypotheses[0][0]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        StreamingDecoder.from_run(out / "nowhere")
