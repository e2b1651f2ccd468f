"""ARPA loading (native back-off model) and the modified Kneser-Ney estimator (fastdecoder.decode.lm)."""
from __future__ import annotations

import gzip
import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from fastdecoder.decode import ArpaLM, build_lm, load_arpa, normalize_text
from fastdecoder.decode.lm import BOS, EOS, UNK, estimate_kneser_ney

# A hand-written 3-gram model: every probability below is worked out by hand from these lines.
ARPA = """\\data\\
ngram 1=5
ngram 2=4
ngram 3=2

\\1-grams:
-1.0\t<s>\t-0.5
-0.7\t</s>
-0.6\ta\t-0.3
-0.8\tb\t-0.2
-1.2\t<unk>

\\2-grams:
-0.3\t<s> a\t-0.1
-0.4\ta b\t-0.25
-0.5\tb </s>
-0.2\tb a

\\3-grams:
-0.05\t<s> a b
-0.15\ta b </s>

\\end\\
"""


@pytest.fixture(scope="module")
def lm():
    return ArpaLM.from_text(ARPA)


@pytest.mark.parametrize("word, context, expected", [
    ("a", [], -0.6),                 # unigram
    ("b", ["a"], -0.4),              # bigram in the file
    ("a", ["a"], -0.3 - 0.6),        # "a a" absent: bo(a) + p(a)
    ("b", ["<s>", "a"], -0.05),      # trigram in the file
    ("</s>", ["<s>", "a"], -0.1 - 0.3 - 0.7),  # bo(<s> a) + [bo(a) + p(</s>)]
    ("</s>", ["a", "b"], -0.15),
    ("a", ["a", "b"], -0.25 - 0.2),  # bo(a b) + p(a | b)
    ("b", ["b", "a"], -0.4),         # context "b a" is a bigram without back-off: weight 1
    ("a", ["b", "b"], -0.2),         # context "b b" not in the model: weight 1, then p(a | b)
    ("b", ["x", "y", "<s>", "a"], -0.05),  # only the last order-1 words matter (x, y -> <unk> anyway)
    ("zzz", ["a"], -0.3 - 1.2),      # unknown word -> <unk>
    ("a", ["zzz"], -0.6),            # <unk> as history: no bigram "<unk> a", <unk> has no back-off
])
def test_arpa_backoff_matches_hand_computation(lm, word, context, expected):
    assert lm.log10_prob(word, context) == pytest.approx(expected, abs=1e-6)
    assert lm.log_prob(word, context) == pytest.approx(expected * math.log(10), abs=1e-5)


def test_arpa_metadata_and_sentence_score(lm):
    assert lm.order == 3 and lm.counts == [5, 2 * 2, 2]
    assert set(lm.vocabulary) == {"<s>", "</s>", "a", "b", "<unk>"} and lm.has_unk
    assert "a" in lm and "zzz" not in lm and len(lm) == 5
    # p(a | <s>) + p(b | <s> a) + p(</s> | a b)
    assert lm.score_sentence("a b") == pytest.approx(-0.3 - 0.05 - 0.15, abs=1e-6)
    assert lm.score_sentence(["a", "b"], eos=False) == pytest.approx(-0.35, abs=1e-6)


def test_arpa_missing_prefix_and_preamble_and_gzip(tmp_path):
    # The trigram "b b a" has no bigram "b b": the prefix becomes a placeholder (no probability, back-off 1).
    text = ("written by hand\n\n\\data\\\nngram 1=3\nngram 2=1\nngram 3=1\n\n\\1-grams:\n-0.5 <s> -0.1\n-0.4 a -0.2\n"
            "-0.3 b -0.7\n\n\\2-grams:\n-0.2 a b\n\n\\3-grams:\n-0.01 b b a\n\\end\\\n")
    path = tmp_path / "lm.arpa.gz"
    path.write_bytes(gzip.compress(text.encode()))
    m = load_arpa(path)
    assert m.log10_prob("a", ["b", "b"]) == pytest.approx(-0.01)
    assert m.log10_prob("b", ["b", "b"]) == pytest.approx(-0.7 - 0.3)  # placeholder "b b": weight 1; bo(b) + p(b)
    assert m.log10_prob("b", ["b"]) == pytest.approx(-0.7 - 0.3)
    assert not m.has_unk
    with pytest.raises(ValueError, match="not in the LM vocabulary"):
        m.log10_prob("zzz")


def _broken(lines_to_replace: dict[int, str], drop: set[int] = frozenset()) -> str:
    lines = ARPA.split("\n")
    out = [lines_to_replace.get(i + 1, l) for i, l in enumerate(lines) if i + 1 not in drop]
    return "\n".join(out)


@pytest.mark.parametrize("text, pattern", [
    (_broken({8: "-0.7x\t</s>"}), r"ARPA line 8: bad log10 probability '-0.7x'"),
    (_broken({9: "-0.6\ta\t-0.3\tjunk"}), r"ARPA line 9: a 1-gram line needs 2 or 3 fields"),
    (_broken({9: "-0.6\ta\tnan"}), r"ARPA line 9: bad log10 back-off"),
    (_broken({20: "-0.05\t<s> a b\t-0.3"}), r"ARPA line 20: a 3-gram line needs 4 fields"),
    (_broken({16: "-0.5\tb c"}), r"ARPA line 16: word 'c' of this 2-gram is not in the 1-grams"),
    (_broken({17: "-0.4\ta b"}), r"ARPA line 17: duplicate 2-gram"),
    (_broken({10: "0.3\tb\t-0.2"}), r"ARPA line 10: positive log10 probability"),
    (_broken({3: "ngram 2=5"}), r"ARPA line 1[89]: the \\2-grams: section has 4 entries but the header declares 5"),
    (_broken({4: "ngram 4=2"}), r"ARPA line 4: ngram orders must be listed 1, 2, 3"),
    (_broken({3: "ngram two=4"}), r"ARPA line 3: expected 'ngram N=COUNT'"),
    (_broken({13: "\\two-grams:"}), r"ARPA line 13: expected '\\2-grams:'"),
    (_broken({}, drop={23}), r"ends without '\\end\\'"),
    ("hello\nworld\n", r"no '\\data\\' header"),
])
def test_malformed_arpa_names_the_line(text, pattern):
    with pytest.raises(ValueError, match=pattern):
        ArpaLM.from_text(text)


def test_malformed_arpa_file_error_names_the_path(tmp_path):
    p = tmp_path / "bad.arpa"
    p.write_text(_broken({8: "oops\t</s>"}))
    with pytest.raises(ValueError, match=r"bad\.arpa: ARPA line 8"):
        load_arpa(p)
    with pytest.raises(ValueError, match="no such file"):
        load_arpa(tmp_path / "missing.arpa")


# ----------------------------------------------------------------------------------------------- Kneser-Ney

TINY = ["a b", "a b b", "b a"]


def test_kn_counts_on_tiny_corpus():
    m = estimate_kneser_ney(TINY, order=2)
    assert m.raw_counts[1] == {(BOS,): 3, ("a",): 3, ("b",): 4, (EOS,): 3}
    assert m.raw_counts[2] == {(BOS, "a"): 2, ("a", "b"): 2, ("b", EOS): 2, ("b", "b"): 1, (BOS, "b"): 1,
                               ("b", "a"): 1, ("a", EOS): 1}
    # highest order: raw counts; unigrams: distinct left neighbours (a: <s>, b; b: a, b, <s>; </s>: b, a)
    assert m.adjusted_counts[2] == m.raw_counts[2]
    assert m.adjusted_counts[1] == {(BOS,): 3, ("a",): 2, ("b",): 3, (EOS,): 2}
    # count-of-counts: order 2 has t3 = 0, order 1 has t1 = 0 -> both fall back to (0.5, 1, 1.5)
    assert m.fallback[1:] == [True, True] and m.discounts[1:] == [(0.5, 1.0, 1.5)] * 2


def test_kn_probabilities_on_tiny_corpus_by_hand():
    lm = build_lm(TINY, order=2)
    # unigrams: adjusted a=2, b=3, </s>=2 (sum 7); gamma() = (1.0 * 2 + 1.5 * 1) / 7 = 0.5; |V| = {a b </s> <unk>}
    u = 0.5 / 4
    p1 = {"a": (2 - 1.0) / 7 + u, "b": (3 - 1.5) / 7 + u, "</s>": (2 - 1.0) / 7 + u, "<unk>": u}
    for w, p in p1.items():
        assert 10 ** lm.log10_prob(w) == pytest.approx(p, abs=1e-6), w
    # context <s>: a(<s> a)=2, a(<s> b)=1 -> gamma = (0.5 * 1 + 1.0 * 1) / 3 = 0.5
    assert 10 ** lm.log10_prob("a", ["<s>"]) == pytest.approx((2 - 1.0) / 3 + 0.5 * p1["a"], abs=1e-6)
    assert 10 ** lm.log10_prob("b", ["<s>"]) == pytest.approx((1 - 0.5) / 3 + 0.5 * p1["b"], abs=1e-6)
    assert 10 ** lm.log10_prob("</s>", ["<s>"]) == pytest.approx(0.5 * p1["</s>"], abs=1e-6)  # unseen: back-off
    # context b: b </s> = 2, b b = 1, b a = 1 (sum 4) -> gamma = (0.5 * 2 + 1.0 * 1) / 4 = 0.5
    assert 10 ** lm.log10_prob("</s>", ["b"]) == pytest.approx((2 - 1.0) / 4 + 0.5 * p1["</s>"], abs=1e-6)
    assert 10 ** lm.log10_prob("a", ["b"]) == pytest.approx((1 - 0.5) / 4 + 0.5 * p1["a"], abs=1e-6)
    assert 10 ** lm.log10_prob("<unk>", ["b"]) == pytest.approx(0.5 * u, abs=1e-6)
    assert 10 ** lm.log10_prob("zzz", ["a"]) == pytest.approx(0.5 * u, abs=1e-6)  # OOV -> <unk>
    # explicit discounts replace the estimate
    lm2 = build_lm(TINY, order=2, discounts=[(0.7, 1.1, 1.4), (0.6, 1.2, 1.3)])
    g = (1.1 * 2 + 1.4 * 1) / 7
    pa = (2 - 1.1) / 7 + g / 4
    assert 10 ** lm2.log10_prob("a") == pytest.approx(pa, abs=1e-6)
    assert 10 ** lm2.log10_prob("a", ["<s>"]) == pytest.approx((2 - 1.2) / 3 + (0.6 + 1.2) / 3 * pa, abs=1e-6)


def _random_corpus(rng, n_sent, vocab, max_len=8):
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()
    return [" ".join(rng.choice(vocab, size=rng.integers(1, max_len + 1), p=zipf)) for _ in range(n_sent)]


def test_kn_adjusted_counts_and_discounts_against_brute_force():
    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(300)]  # Zipfian: rare words have few distinct left neighbours
    corpus = _random_corpus(rng, 400, vocab)
    N = 3
    m = estimate_kneser_ney(corpus, order=N)
    # brute force: every n-gram occurrence with its left neighbour
    raw = [None] + [Counter() for _ in range(N)]
    left = [None] + [defaultdict(set) for _ in range(N)]
    for s in corpus:
        toks = [BOS] + s.split() + [EOS]
        for n in range(1, N + 1):
            for i in range(len(toks) - n + 1):
                g = tuple(toks[i:i + n])
                raw[n][g] += 1
                if i > 0:
                    left[n][g].add(toks[i - 1])
    for n in range(1, N + 1):
        assert m.raw_counts[n] == dict(raw[n])
        want = {g: (c if n == N or g[0] == BOS else len(left[n][g])) for g, c in raw[n].items()}
        assert m.adjusted_counts[n] == want
        t = Counter(a for g, a in want.items() if g != (BOS,))
        if all(t[k] for k in (1, 2, 3, 4)):
            y = t[1] / (t[1] + 2 * t[2])
            d = (1 - 2 * y * t[2] / t[1], 2 - 3 * y * t[3] / t[2], 3 - 4 * y * t[4] / t[3])
            if all(0 < d[k] <= k + 1 for k in range(3)):
                assert m.discounts[n] == pytest.approx(d) and not m.fallback[n]
                continue
        assert m.fallback[n] and m.discounts[n] == (0.5, 1.0, 1.5)
    assert not any(m.fallback[1:]), "this corpus is big enough for estimated discounts at every order"


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kn_distributions_sum_to_one_in_every_context(tmp_path, order):
    rng = np.random.default_rng(order)
    vocab = [f"w{i}" for i in range(12)]
    corpus = _random_corpus(rng, 150, vocab, max_len=6)
    lm = build_lm(corpus, order=order, out_path=tmp_path / "lm.arpa")
    assert lm.order == order and (tmp_path / "lm.arpa").is_file()
    words = [w for w in lm.vocabulary if w != BOS]
    assert set(words) == set(vocab) | {EOS, UNK}
    km = lm.kneser_ney
    contexts = [()] + [g for n in range(1, order) for g in km.prob[n]] + [(BOS,)]
    contexts += [("w1", "w2", "w3")[: order - 1], ("zzz",)]  # unseen contexts back off all the way
    for c in contexts:
        if EOS in c:
            continue
        ps = [10 ** lm.log10_prob(w, list(c)) for w in words]
        assert sum(ps) == pytest.approx(1.0, abs=2e-5), c
        # the ARPA back-off query equals the interpolated estimate
        for w, p in zip(words, ps):
            assert p == pytest.approx(10 ** km.log10_prob(w, c), rel=2e-5)


def test_kn_matches_kenlm_query_of_the_written_arpa(tmp_path):
    kenlm = pytest.importorskip("kenlm", reason="kenlm not installed (pip install kenlm)")
    rng = np.random.default_rng(7)
    vocab = [f"w{i}" for i in range(40)]
    corpus = _random_corpus(rng, 300, vocab)
    path = tmp_path / "lm.arpa"
    lm = build_lm(corpus, order=3, out_path=path)
    ken = kenlm.Model(str(path))
    assert ken.order == 3
    for s in _random_corpus(rng, 50, vocab + ["oov"]):
        assert lm.score_sentence(s) == pytest.approx(ken.score(s, bos=True, eos=True), abs=1e-4), s


def test_build_lm_from_file_normalises_and_writes_gzip(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat.\n\nThe DOG sat!\n'Quoted' words, don't split\n")
    with pytest.raises(ValueError, match="is not an existing folder"):  # no folder is created for the output
        build_lm(corpus, order=2, out_path=tmp_path / "out" / "lm.arpa.gz")
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    lm = build_lm(corpus, order=2, out_path=tmp_path / "out" / "lm.arpa.gz")
    assert set(lm.vocabulary) == {BOS, EOS, UNK, "the", "cat", "sat", "dog", "quoted", "words", "don't", "split"}
    again = load_arpa(tmp_path / "out" / "lm.arpa.gz")
    assert again.counts == lm.counts
    assert again.score_sentence("the cat sat") == pytest.approx(lm.score_sentence("the cat sat"))
    with pytest.raises(ValueError, match="no \\(non-empty\\) sentence"):
        build_lm(["", "  ", "..."], order=2)
    with pytest.raises(ValueError, match="order must be"):
        build_lm(["a b"], order=0)


def test_normalize_text():
    assert normalize_text("I don't know, 'Bob'.") == "i don't know bob"
    assert normalize_text("  Well-known   FACTS!! ") == "well known facts"
    assert normalize_text("") == ""
