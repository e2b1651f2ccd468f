"""Property fuzzing of the native decoders' Python API against the plain-Python oracles of tests/ (run under ASAN +
UBSAN by ``make fuzz``; any sanitizer report aborts the run). Values are drawn continuous (no float ties, which the
two implementations may break differently after rounding) plus the awkward specials: -inf, NaN, +inf, huge."""
from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from fastdecoder.testing.ctc_oracle import prefix_beam_search
from fastdecoder.testing.word_oracle import PRON_IDS, word_beam_oracle
from fastdecoder.decode import ArpaLM, Lexicon, WordDecoder, beam_search, edit_distances, greedy_decode

EXAMPLES = int(__import__("os").environ.get("FUZZ_EXAMPLES", "150"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
SPECIALS = [-np.inf, np.nan, np.inf, 1e100, -1e100, 1.5e100, 9e307, 0.0]


def valid(x) -> bool:
    return bool(np.all((x == -np.inf) | (np.abs(x) <= 1e100)))


@st.composite
def log_prob_batches(draw, vocab=None, max_t=7):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    B = draw(st.integers(0, 3))
    T = draw(st.integers(0, max_t))
    V = vocab or draw(st.integers(1, 6))
    x = np.log(rng.dirichlet(np.full(V, 0.3), size=(B, T)) + 1e-12)
    n_special = draw(st.integers(0, 3))
    special = []
    for _ in range(n_special if B * T else 0):
        value = draw(st.sampled_from(SPECIALS))
        idx = (int(rng.integers(B)), int(rng.integers(T)), int(rng.integers(V)))
        x[idx] = value
        special.append(value)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    with np.errstate(over="ignore"):
        x = x.astype(dtype)
    layout = draw(st.sampled_from(["c", "fortran", "reversed", "field"]))
    if layout == "fortran":
        x = np.asfortranarray(x)
    elif layout == "reversed":
        x = np.ascontiguousarray(x[:, ::-1])[:, ::-1]
    elif layout == "field":
        rec = np.zeros(x.shape, dtype=[("pad", "i1"), ("v", x.dtype)])
        rec["v"] = x
        x = rec["v"]
    lengths = np.array([draw(st.integers(0, T)) for _ in range(B)], dtype=np.int64)
    return x, lengths, special


@fuzz
@given(log_prob_batches(), st.integers(1, 6), st.data())
def test_beam_search_matches_the_oracle(batch, beam, data):
    x, lengths, special = batch
    V = x.shape[2]
    nbest = data.draw(st.integers(1, beam))
    blank = data.draw(st.integers(0, V - 1))
    cut = data.draw(st.sampled_from([None, -1.0, -3.0]))
    used_valid = all(valid(np.asarray(x[b, :L], dtype=np.float64)) for b, L in enumerate(lengths))
    try:
        out = beam_search(x, lengths, beam_width=beam, nbest=nbest, blank=blank, token_min_logprob=cut,
                          num_threads=data.draw(st.integers(0, 3)))
    except ValueError as e:
        assert not used_valid and "not a log-probability" in str(e)
        return
    assert used_valid
    huge = any(abs(v) >= 1e99 for v in special if not math.isnan(v))
    for b, L in enumerate(lengths):
        hyps = out[b]
        assert all(math.isfinite(h[1]) for h in hyps)
        assert [h[1] for h in hyps] == sorted((h[1] for h in hyps), reverse=True)
        if huge:  # rounding at 1e100 makes ties: well-formed is all we can ask
            continue
        want = prefix_beam_search(np.asarray(x[b, :L], dtype=np.float64), beam, blank=blank, nbest=nbest,
                                  token_min_logprob=cut)
        assert [h[0] for h in hyps] == [h[0] for h in want]
        for h, w in zip(hyps, want):
            assert math.isclose(h[1], w[1], rel_tol=1e-9, abs_tol=1e-6)


@fuzz
@given(log_prob_batches())
def test_greedy_matches_argmax(batch):
    x, lengths, _ = batch
    B, T, V = x.shape
    if V < 1:
        return
    if any(np.isnan(np.asarray(x[b, :L])).any() for b, L in enumerate(lengths)):
        try:
            greedy_decode(x, lengths)
        except ValueError as e:
            assert "is NaN" in str(e)
            return
        raise AssertionError("a NaN in a used frame was not refused")
    got = greedy_decode(x, lengths)
    for b, L in enumerate(lengths):
        path = [int(np.argmax(np.asarray(x[b, t]))) for t in range(L)]
        want = [p for i, p in enumerate(path) if p != 0 and (i == 0 or p != path[i - 1])]
        assert got[b] == want


def levenshtein(a, b):
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


seqs = st.lists(st.lists(st.integers(-3, 5), max_size=12), max_size=5)


@fuzz
@given(seqs, seqs)
def test_edit_distance_matches_the_dp(hyps, refs):
    refs = (refs + [[]] * len(hyps))[: len(hyps)]
    assert list(edit_distances(hyps, refs)) == [levenshtein(h, r) for h, r in zip(hyps, refs)]


@fuzz
@given(log_prob_batches(vocab=41, max_t=9), st.integers(1, 6), st.data())
def test_word_decoder_matches_the_oracle(batch, beam, data):
    x, lengths, special = batch
    cut = data.draw(st.sampled_from([None, -2.0, -5.0]))
    blank_penalty = data.draw(st.sampled_from([0.0, 0.5]))
    dec = WordDecoder({w: [list(p) for p in ps] for w, ps in FUZZ_PRONS.items()}, beam_width=beam, nbest=1, token_min_logprob=cut, blank_penalty=blank_penalty,
                      num_threads=data.draw(st.integers(0, 2)))
    used_valid = all(valid(np.asarray(x[b, :L], dtype=np.float64)) for b, L in enumerate(lengths))
    try:
        out = dec.decode(x, lengths)
    except ValueError as e:
        assert not used_valid and "not a log-probability" in str(e)
        return
    assert used_valid
    if any(abs(v) >= 1e99 for v in special if not math.isnan(v)):
        return
    for b, L in enumerate(lengths):
        want = word_beam_oracle(np.asarray(x[b, :L], dtype=np.float64), FUZZ_PRONS, beam=beam, cut=cut,
                                blank_penalty=blank_penalty, nbest=1)
        assert [h.words for h in out[b]] == [w for w, *_ in want]
        for h, w in zip(out[b], want):
            assert math.isclose(h.score, w[1], rel_tol=1e-9, abs_tol=1e-6)


def _without_homophones(prons: dict) -> dict:
    """The oracle lexicon minus words that share a pronunciation (homophones tie exactly, and the two
    implementations may keep either one at the beam's edge): tie-free, so results must agree exactly."""
    owners: dict = {}
    for w, ps in prons.items():
        for p in ps:
            owners.setdefault(p, set()).add(w)
    return {w: ps for w, ps in prons.items() if all(len(owners[p]) == 1 for p in ps)}


FUZZ_PRONS = _without_homophones(PRON_IDS)


ARPA = (b"\\data\\\nngram 1=4\nngram 2=2\n\n\\1-grams:\n-1.0\t<s>\t-0.3\n-0.5\t</s>\n-0.7\tcat\t-0.2\n-0.9\tdog\n\n"
        b"\\2-grams:\n-0.2\t<s> cat\n-0.4\tcat </s>\n\n\\end\\\n")
LEXICON = b"cat K AE1 T\ndog D AO1 G\nread(2) R EH D\n# comment\n"


def mutate(data, text: bytes) -> bytes:
    out = bytearray(text)
    for _ in range(data.draw(st.integers(0, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        i = data.draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "flip" and out:
            out[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del out[i:i + data.draw(st.integers(1, 20))]
        elif op == "insert":
            out[i:i] = data.draw(st.sampled_from([b"9999999999", b"\xff\xfe", b"\n", b" ", b"-inf", b"nan", b"=",
                                                  b"ngram 3=5\n", b"\\2-grams:\n", b"\x00"]))
        else:
            out[i:i] = out[i:i + data.draw(st.integers(1, 40))]
    return bytes(out)


@fuzz
@given(st.data())
def test_arpa_loading_never_crashes(data):
    text = mutate(data, ARPA)
    try:
        lm = ArpaLM.from_text(text)
    except ValueError:
        return
    words = lm.vocabulary
    assert len(words) == lm.counts[0]
    for w in words:
        p = lm.log_prob(w)
        assert math.isnan(p) or p <= 0


@fuzz
@given(st.data())
def test_lexicon_loading_never_crashes(data):
    text = mutate(data, LEXICON)
    skip = data.draw(st.booleans())
    try:
        lex = Lexicon.from_text(text, skip_invalid=skip)
    except ValueError:
        return
    for w, prons in lex.pronunciations().items():
        assert w in lex and all(prons)


def gru_step_oracle(x, h, weights):
    """One nn.GRU time step in float64 (gates r, z, n): x (I,), h (L, H), weights [(W_ih, W_hh, b_ih, b_hh)]."""
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    out, inp = h.astype(np.float64), x.astype(np.float64)
    for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
        (i_r, i_z, i_n), (h_r, h_z, h_n) = np.split(w_ih @ inp + b_ih, 3), np.split(w_hh @ out[layer] + b_hh, 3)
        r, z = sig(i_r + h_r), sig(i_z + h_z)
        n = np.tanh(i_n + r * h_n)
        out[layer] = (1 - z) * n + z * out[layer]
        inp = out[layer]
    return out


@fuzz
@given(st.integers(1, 3), st.integers(1, 20), st.integers(1, 70), st.integers(0, 2**32 - 1))
def test_gru_step_matches_the_oracle(layers, hidden, inputs, seed):
    """Every ISA path on shapes with row and column tails (any 3H rows, any input width) against float64."""
    from fastdecoder import _native

    rng = np.random.default_rng(seed)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    weights = [(f32(3 * hidden, inputs if l == 0 else hidden), f32(3 * hidden, hidden), f32(3 * hidden),
                f32(3 * hidden)) for l in range(layers)]
    x, h = f32(inputs), f32(layers, hidden)
    want = gru_step_oracle(x, h, weights)
    for isa in _native.gru_isas():
        step = _native.GruStep(inputs, hidden, layers, isa=isa)
        got, out = h.copy(), np.empty((1, hidden), np.float32)
        step.run(x[None], got, out, *[list(ws) for ws in zip(*weights)])
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"isa {isa}")
        np.testing.assert_array_equal(out[0], got[-1])


# -- the native-view case: the weights moved or replaced by torch between pushes --------------------------------------
def _share_memory(gru, rng):
    gru.share_memory()  # new (shared) storages; the old buffers are freed


def _assign(gru, rng):
    other = torch.nn.GRU(gru.input_size, gru.hidden_size, gru.num_layers)
    with torch.no_grad():
        for p in other.parameters():
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32)))
    gru.load_state_dict(other.state_dict(), assign=True)  # new Parameter objects; the old ones freed


def _half_float(gru, rng):
    gru.half()
    gru.float()


def _data_replaced(gru, rng):
    names = [n for n, _ in gru.named_parameters()]
    p = getattr(gru, names[int(rng.integers(len(names)))])
    p.data = p.data.clone() * float(rng.uniform(-2, 2))  # the same Parameter on a new storage


def _strided(gru, rng):
    name = f"weight_hh_l{int(rng.integers(gru.num_layers))}"
    w = getattr(gru, name).detach()
    setattr(gru, name, torch.nn.Parameter(w.t().contiguous().t()))  # same values, column-major


def _in_place(gru, rng):
    with torch.no_grad():
        for p in gru.parameters():
            p.mul_(float(rng.uniform(0.5, 1.5)))


WEIGHT_CHANGES = [_share_memory, _assign, _half_float, _data_replaced, _strided, _in_place]


def _current_weights(gru):
    return [tuple(getattr(gru, f"{k}_l{l}").detach().double().numpy() for k in ("weight_ih", "weight_hh", "bias_ih",
                                                                                 "bias_hh"))
            for l in range(gru.num_layers)]


@fuzz
@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 40), st.integers(0, 2**32 - 1),
       st.lists(st.tuples(st.sampled_from(WEIGHT_CHANGES), st.integers(1, 3)), min_size=1, max_size=4))
def test_gru_step_reads_weights_moved_or_replaced_between_pushes(layers, hidden, inputs, seed, pushes):
    """NativeGRUStep built once, then torch moves, replaces, re-lays or updates the weights before each push of 1-3
    frames: every push equals the float64 oracle on the weights the module holds at that push (on every ISA path; the
    scalar path's loads are instrumented, so a read of a freed buffer is an ASAN report, not just a wrong value)."""
    from fastdecoder.ops.gru.native_step import ISAS, NativeGRUStep

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed % 2**31)
    gru = torch.nn.GRU(inputs, hidden, layers)
    steps = {isa: NativeGRUStep(gru, isa) for isa in sorted(ISAS, key=lambda i: i != "scalar")}  # instrumented first
    h = {isa: torch.zeros(layers, hidden) for isa in steps}
    want_h = np.zeros((layers, hidden))
    for change, frames in [(None, 1)] + pushes:  # a first push on the weights of construction, then the changes
        if change is not None:
            change(gru, rng)  # torch frees the replaced storages at once (reference counts; no collection needed)
        junk = [np.full(n, np.nan, np.float32) for n in (3 * hidden * inputs, 3 * hidden * hidden, 3 * hidden)]
        x = rng.standard_normal((frames, inputs)).astype(np.float32)
        weights = _current_weights(gru)
        want = []
        for t in range(frames):
            want_h = gru_step_oracle(x[t], want_h, weights)
            want.append(want_h[-1].copy())
        for isa, step in steps.items():
            out = step.run(torch.from_numpy(x), h[isa])
            msg = f"isa {isa}, after {getattr(change, '__name__', 'construction')}"
            assert torch.isfinite(out).all(), msg
            np.testing.assert_allclose(out.numpy(), np.array(want), rtol=1e-4, atol=1e-4, err_msg=msg)
            np.testing.assert_allclose(h[isa].numpy(), want_h, rtol=1e-4, atol=1e-4, err_msg=msg)
        del junk


@fuzz
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(0, 6), min_size=1, max_size=8), st.integers(1, 6))
def test_word_stream_owns_its_lexicon_and_lm(seed, chunks, beam):
    """The native word objects copy what they are built from: a WordStream whose lexicon text, ARPA text and Python
    decoder objects are all gone (freed, memory reused) decodes any chunking as the whole-trial decode did."""
    from fastdecoder import _words

    rng = np.random.default_rng(seed)
    T = sum(chunks)
    lp = np.log(rng.dirichlet(np.full(41, 0.3), size=T) + 1e-12).astype(np.float32)
    lex_text, arpa_text = bytes(LEXICON), bytes(ARPA)
    lex, _ = _words.Lexicon.from_text(lex_text)
    lm = _words.ArpaLM.from_text(arpa_text)
    lm_ids = [lm.find(w) for w in lex.words()]
    dec = _words.WordDecoder(lex, lm, lm_ids, beam, 1, 0.5, 0.0, 0.0, float("-inf"), -10.0, True)
    want = dec.decode_f32(lp[None], np.array([T]), 1)[0][0]
    stream = _words.WordStream(dec)
    del lex, lm, dec, lex_text, arpa_text  # freed at once (reference counts): only the stream holds them now
    junk = [bytes(rng.integers(0, 256, size=len(LEXICON) + len(ARPA), dtype=np.uint8)) for _ in range(50)]
    start = 0
    for n in chunks:
        block = lp[start:start + n].copy()
        stream.advance_f32(block)
        block[:] = np.nan  # the stream keeps no view of a pushed block either
        start += n
    got = stream.finish(1)
    assert [(h[0], h[1]) for h in got] == [(h[0], h[1]) for h in want]
    del junk
