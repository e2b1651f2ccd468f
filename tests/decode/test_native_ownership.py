"""The native objects that outlive a call own what they read: BeamStream and WordStream keep no view of a pushed
block, and the word decoder's lexicon and LM are copies of their text (held by the native decoder, which the stream
holds), so nothing a stream reads later can be freed or changed under it by Python. (The GRU step, which reads the
model's weights, takes them per call: tests/ops/test_native_gru.py and tests/stream/test_stream_model_state.py.)"""
from __future__ import annotations

import gc

import numpy as np

from fastdecoder import _native, _words
from fastdecoder.decode import beam_search

LEXICON = b"cat K AE1 T\ndog D AO1 G\nact AE1 K T\ntack T AE1 K\n"
ARPA = (b"\\data\\\nngram 1=6\nngram 2=2\n\n\\1-grams:\n-1.0\t<s>\t-0.3\n-0.5\t</s>\n-0.7\tcat\t-0.2\n-0.9\tdog\n"
        b"-0.8\tact\n-1.1\ttack\n\n\\2-grams:\n-0.2\t<s> cat\n-0.4\tcat </s>\n\n\\end\\\n")


def _log_probs(rng, T: int, V: int = 41) -> np.ndarray:
    return np.log(rng.dirichlet(np.full(V, 0.2), size=T) + 1e-12).astype(np.float32)


def test_beam_stream_keeps_no_view_of_a_pushed_block(rng):
    lp = _log_probs(rng, 40)
    want = beam_search(lp[None], beam_width=6, nbest=3)[0]
    bs = _native.BeamStream(41, 6, 0, float("-inf"))
    for a in range(0, 40, 7):
        block = lp[a:a + 7].copy()
        bs.advance_f32(block)
        block[:] = np.nan  # overwritten (and then freed) after the call: later frames must not see it
        del block
    got = bs.hypotheses(3)
    assert [h[0] for h in got] == [h[0] for h in want]
    np.testing.assert_allclose([h[1] for h in got], [h[1] for h in want], rtol=1e-9)


def test_word_stream_outlives_its_lexicon_lm_and_their_text(rng):
    lp = _log_probs(rng, 50)
    lex_text, arpa_text = bytearray(LEXICON), bytearray(ARPA)
    lex, _ = _words.Lexicon.from_text(bytes(lex_text))
    lm = _words.ArpaLM.from_text(bytes(arpa_text))
    dec = _words.WordDecoder(lex, lm, [lm.find(w) for w in lex.words()], 8, 2, 0.5, 0.0, 0.0, float("-inf"), -10.0,
                             True)
    want = dec.decode_f32(lp[None], np.array([50]), 1)[0][0]
    stream = _words.WordStream(dec)
    lex_text[:] = b"\xff" * len(lex_text)  # the sources changed and dropped: the native objects hold copies
    arpa_text[:] = b"\xff" * len(arpa_text)
    del lex, lm, dec, lex_text, arpa_text
    gc.collect()
    junk = [bytes(rng.integers(0, 256, size=len(LEXICON) + len(ARPA), dtype=np.uint8)) for _ in range(100)]
    for a in range(0, 50, 6):
        stream.advance_f32(lp[a:a + 6].copy())
    got = stream.finish(2)
    assert len(got) == len(want) > 0 and junk
    assert [(h[0], h[1]) for h in got] == [(h[0], h[1]) for h in want]
