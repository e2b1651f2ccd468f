"""Hostile but fair inputs to the native decoders: the log-probability policy, size limits checked before
allocating, thread-creation failures, crafted ARPA / lexicon files, odd array layouts. Each must give a clear error
or the right answer, never a crash, an abort, a memory blow-up or a silently wrong result."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastdecoder.testing.ctc_oracle import peaky_log_probs
from fastdecoder.testing.word_oracle import word_beam_oracle
from fastdecoder.decode import ArpaLM, Lexicon, WordDecoder, beam_search, greedy_decode
from fastdecoder.decode.beam import MAX_BEAM_WIDTH, MAX_THREADS_PER_CORE, num_cpu_threads
from fastdecoder.phonemes import PHONEME_TO_ID


def fresh_rng():
    seed = int(np.random.SeedSequence().entropy % 2**63)
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- size limits

@pytest.mark.parametrize("width", [MAX_BEAM_WIDTH + 1, 2**31 - 1, 2**31, 2**63])
def test_beam_widths_past_the_limit_are_value_errors(width):
    x = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(ValueError, match=f"beam_width must be <= {MAX_BEAM_WIDTH}"):
        beam_search(x, beam_width=width)
    with pytest.raises(ValueError, match=f"beam_width must be <= {MAX_BEAM_WIDTH}"):
        WordDecoder({"at": "AE T"}, beam_width=width)


def test_thread_counts_past_the_limit_are_clamped_with_a_warning():
    x = peaky_log_probs(fresh_rng(), 4, 12, 6)
    limit = MAX_THREADS_PER_CORE * num_cpu_threads()
    with pytest.warns(RuntimeWarning, match=f"using {limit}"):
        got = beam_search(x, beam_width=4, num_threads=100_000)
    assert got == beam_search(x, beam_width=4, num_threads=1)
    with pytest.warns(RuntimeWarning, match=f"using {limit}"):
        WordDecoder({"at": "AE T"}, num_threads=limit + 1)


def test_a_refused_thread_is_no_abort():
    # Under an address-space limit the system refuses new threads (8 MB stacks): the decoders finish on the threads
    # they have (this aborted the interpreter: 'terminate called without an active exception').
    code = textwrap.dedent("""
        import resource, numpy as np
        from fastdecoder.decode import WordDecoder, beam_search
        x = np.log(np.full((64, 20, 41), 1 / 41))
        one = beam_search(x, beam_width=4, num_threads=1)
        dec = WordDecoder({"at": "AE T"}, beam_width=4, num_threads=1)
        words_one = dec.decode(x)
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (12 << 20), resource.RLIM_INFINITY))
        assert beam_search(x, beam_width=4, num_threads=8) == one
        dec.num_threads = 8
        assert dec.decode(x) == words_one
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


# ---------------------------------------------------------------- array layouts

def test_strides_that_are_not_whole_elements_decode_like_a_copy():
    rng = fresh_rng()
    rec = np.zeros((3, 9, 5), dtype=[("pad", "i1"), ("lp", "f8")])  # a float field: 9-byte strides
    rec["lp"] = rng.normal(size=(3, 9, 5))
    view = rec["lp"]
    assert any(s % view.itemsize for s in view.strides)
    plain = np.ascontiguousarray(view)
    assert greedy_decode(view) == greedy_decode(plain)
    assert beam_search(view, beam_width=3) == beam_search(plain, beam_width=3)


def test_single_element_fields_and_nan_in_greedy():
    rec = np.zeros((1, 1, 1), dtype=[("pad", "i1"), ("lp", "f4")])  # a misaligned start (found by make fuzz)
    assert not rec["lp"].flags.aligned
    assert greedy_decode(rec["lp"]) == [[]] and beam_search(rec["lp"]) == [[([], 0.0)]]
    empty = np.zeros((0, 0, 3), dtype=[("p", "i1"), ("lp", "f4")])["lp"]
    assert greedy_decode(empty) == [] and beam_search(empty) == []
    field = np.zeros((1, 1, 41), dtype=[("p", "i1"), ("lp", "f8")])["lp"]
    dec = WordDecoder({"at": "AE T"})
    assert dec.decode(field) == dec.decode(np.zeros((1, 1, 41)))
    x = np.zeros((2, 4, 3), np.float32)
    x[1, 2, 1] = np.nan
    with pytest.raises(ValueError, match=r"scores\[1, 2, 1\] is NaN"):
        greedy_decode(x)
    assert greedy_decode(x, [4, 2]) == [[], []]  # beyond the length: ignored


# ---------------------------------------------------------------- word decoder token cut

def test_token_cut_feeds_no_zero_mass_hypothesis():
    # (AE T) enters at frame 1, loses all mass at frame 2; at frame 3 only T (below the cut) could revive it from
    # its parent (AE): by the cut's definition (tests/test_words_oracle.py) nothing is decoded.
    AE, T = PHONEME_TO_ID["AE"], PHONEME_TO_ID["T"]
    x = np.full((4, 41), -np.inf)
    x[0, AE] = 0.0
    x[1, AE] = x[1, T] = -1.0
    x[2, AE] = 0.0
    x[3, T] = -10.0
    oracle = word_beam_oracle(x, {"at": [(AE, T)]}, beam=8, cut=-5.0)
    assert oracle == []
    assert WordDecoder({"at": "AE T"}, beam_width=8, token_min_logprob=-5.0).decode(x[None]) == [[]]
    # without the cut the word is there, at the oracle's score
    got = WordDecoder({"at": "AE T"}, beam_width=8).decode(x[None])[0]
    want = word_beam_oracle(x, {"at": [(AE, T)]}, beam=8)
    assert [h.words for h in got] == [w for w, *_ in want] == [["at"]]
    assert got[0].score == pytest.approx(want[0][1], abs=1e-9)


# ---------------------------------------------------------------- crafted files

ARPA_HEAD = "\\data\\\nngram 1=3\n{}\n\\1-grams:\n-1.0\t<s>\n-1.0\t</s>\n-1.0\t{}\n"


@pytest.mark.parametrize("declared", ["ngram 2=50000000", "ngram 2=1\nngram 3=999999999"])
def test_arpa_counts_beyond_the_file_are_refused_before_allocating(tmp_path, declared):
    path = tmp_path / "bomb.arpa"
    path.write_text(ARPA_HEAD.format(declared, "a") + "\n\\2-grams:\n-1.0 a </s>\n\n\\end\\\n")
    with pytest.raises(ValueError, match=r"bomb\.arpa: ARPA line \d+: the header declares \d+ \d-grams but the file "
                                         r"has only \d+ lines"):
        ArpaLM.load(path)


def test_non_utf8_words_are_named_at_load_time(tmp_path):
    arpa = tmp_path / "latin1.arpa"
    arpa.write_bytes(ARPA_HEAD.format("", "caf\xe9").replace("\n\n", "\n").encode("latin-1") + b"\n\\end\\\n")
    with pytest.raises(ValueError, match=r"latin1\.arpa: ARPA line 6: the word is not valid UTF-8"):
        ArpaLM.load(arpa)
    lex = tmp_path / "latin1.dict"
    lex.write_bytes("at AE T\ncaf\xe9 K AE F EY\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.dict: lexicon line 2: the word is not valid UTF-8"):
        Lexicon.from_file(lex)
    ok = tmp_path / "utf8.dict"
    ok.write_bytes("café K AE F EY\n".encode())
    assert "café" in Lexicon.from_file(ok).words
