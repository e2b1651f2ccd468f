"""Neural-LM n-best rescoring with a tiny randomly initialised GPT-2 and a word-level tokenizer built here (no
download): sentence log-probs against an unbatched direct computation, the rescoring formula, a toy LM that moves
its sentence to the top, the weight search, and the error when transformers is missing."""
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the rescoring tests need transformers (pip install 'fastdecoder[llm]')")
import torch  # noqa: E402

from fastdecoder.decode import WordHypothesis  # noqa: E402
from fastdecoder.decode.rescore import (NBestList, NeuralLM, RescoreWeights, tune_weights,  # noqa: E402
                                        wer_of)

from fastdecoder.testing.tiny_lm import save_tiny_lm, train_on  # noqa: E402

SEED = 20261201
VOCAB = "the cat sat on a mat dog ran far away big red house is here there".split()
PREFERRED = "the big red dog ran far away"


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory):
    return save_tiny_lm(tmp_path_factory.mktemp("tiny_lm"), VOCAB, seed=SEED)


def _direct_log_prob(model, ids):
    """Unbatched, unpadded: sum over positions of log p(ids[i+1] | ids[:i+1])."""
    with torch.no_grad():
        lp = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
    return float(sum(lp[i, ids[i + 1]] for i in range(len(ids) - 1)))


def test_sentence_log_probs_match_direct_computation(lm_path):
    rng = np.random.default_rng(SEED)
    sentences = [" ".join(rng.choice(VOCAB, size=n)) for n in (1, 7, 3, 12, 2, 5, 9)] + ["", "the <unk>"]
    lm = NeuralLM(lm_path, batch_size=3, device="cpu")
    assert lm.context_id == lm.tokenizer.bos_token_id is not None
    for s, ids in zip(sentences, lm.token_ids(sentences)):
        assert ids[0] == lm.context_id and len(ids) == 1 + len(s.split())
    want = np.array([_direct_log_prob(lm.model, ids) for ids in lm.token_ids(sentences)])
    got = lm.score(sentences)
    assert got[sentences.index("")] == 0.0 and (got[:-2] < 0).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"seed {SEED}")
    np.testing.assert_allclose(NeuralLM(lm_path, batch_size=1).score(sentences), got, rtol=1e-5, atol=1e-5)
    eos = NeuralLM(lm_path, score_eos=True).score(sentences[:2])
    assert (eos < got[:2]).all()          # p(sentence, </s>) < p(sentence)


def _hyp(text, acoustic, ngram):
    words = text.split()
    return WordHypothesis(words, acoustic + 0.5 * ngram, acoustic, ngram)


def _random_nbest(rng, n_trials, refs):
    """Per trial 1-6 hypotheses: the reference or corrupted copies, with random acoustic / n-gram scores."""
    hyps = []
    for b in range(n_trials):
        ref = refs[b].split()
        trial = []
        for _ in range(int(rng.integers(1, 7))):
            words = [w if rng.random() > 0.3 else str(rng.choice(VOCAB)) for w in ref]
            if rng.random() < 0.3:
                words = words[:-1]
            trial.append((" ".join(words), float(rng.normal(-20, 3)), float(rng.normal(-15, 4))))
        trial.sort(key=lambda t: -(t[1] + 0.5 * t[2]))
        hyps.append([_hyp(*t) for t in trial])
    return hyps


def test_rescored_scores_equal_the_formula(lm_path):
    rng = np.random.default_rng(SEED + 1)
    refs = [" ".join(rng.choice(VOCAB, size=int(rng.integers(2, 8)))) for _ in range(12)]
    hyps = _random_nbest(rng, len(refs), refs)
    lm = NeuralLM(lm_path, batch_size=4)
    nb = NBestList.from_hypotheses(hyps).add_neural_scores(lm)
    w = RescoreWeights(ngram=0.7, neural=1.3, word=-0.4)
    totals = nb.totals(w)
    k = 0
    for b, trial in enumerate(hyps):
        neural = [_direct_log_prob(lm.model, ids) for ids in lm.token_ids([h.text for h in trial])]
        direct = [h.acoustic_score + 0.7 * h.lm_score + 1.3 * n - 0.4 * len(h.words) for h, n in zip(trial, neural)]
        np.testing.assert_allclose(totals[k:k + len(trial)], direct, rtol=1e-6, err_msg=f"seed {SEED + 1}")
        assert nb.best(w)[b] == k + int(np.argmax(direct))
        k += len(trial)
    # the decoder's own weights (a = lm_weight, b = 0, c = word bonus) reproduce its ranking
    assert nb.best_sentences(RescoreWeights(0.5, 0.0, 0.0)) == nb.decoder_best() == [t[0].text for t in hyps]


def test_toy_lm_moves_its_sentence_to_the_top(lm_path, tmp_path):
    path = tmp_path / "toy"
    shutil.copytree(lm_path, path)
    train_on(path, PREFERRED, steps=40)
    others = ["the big red cat ran far away", "the big red dog sat far away", "a big red dog ran away"]
    trial = [_hyp(others[0], -10.0, -8.0), _hyp(others[1], -10.5, -8.0), _hyp(others[2], -11.0, -8.0),
             _hyp(PREFERRED, -13.0, -8.0)]
    nb = NBestList.from_hypotheses([trial]).add_neural_scores(NeuralLM(path))
    assert nb.neural[3] > nb.neural[:3].max() + 5, nb.neural   # the toy LM strongly prefers its sentence
    assert nb.best_sentences(RescoreWeights(0.5, 0.0, 0.0)) == [others[0]]
    assert nb.best_sentences(RescoreWeights(0.5, 1.0, 0.0)) == [PREFERRED]


def test_weight_search_is_at_least_as_good_as_the_defaults():
    rng = np.random.default_rng(SEED + 2)
    refs = [" ".join(rng.choice(VOCAB, size=int(rng.integers(2, 8)))) for _ in range(40)]
    nb = NBestList.from_hypotheses(_random_nbest(rng, len(refs), refs))
    nb.neural = rng.normal(-20, 5, size=len(nb.sentences))
    for s, i in zip(nb.sentences, range(len(nb.sentences))):   # a neural LM that knows the references
        if s in refs:
            nb.neural[i] += 8.0
    default = RescoreWeights(0.5, 0.5, 0.0)
    res = tune_weights(nb, refs, default=default)
    assert res.default_wer == pytest.approx(wer_of(nb, refs, default))
    assert res.wer <= res.default_wer
    assert res.wer == pytest.approx(wer_of(nb, refs, res.weights))
    assert res.wer < res.default_wer and res.weights.neural > 0   # here the neural scores help
    assert res.evaluated == 9 * 9 * 9
    # without neural scores only (a, c) are searched; a grid without the default still contains it
    nb.neural = None
    res2 = tune_weights(nb, refs, default=RescoreWeights(0.33, 0.5, 0.0), grid={"ngram": [1.0], "word": [0.0]})
    assert res2.default_weights == RescoreWeights(0.33, 0.0, 0.0) and res2.evaluated == 2
    assert res2.wer <= res2.default_wer


def test_bad_input_errors(lm_path):
    with pytest.raises(ValueError, match="non-finite acoustic"):
        NBestList.from_hypotheses([[WordHypothesis(["a"], 0.0)]])   # no acoustic score (NaN)
    nb = NBestList.from_hypotheses([[_hyp("a b", -1.0, -2.0)], []])
    assert nb.sentences == ["a b", ""] and list(nb.best(RescoreWeights(neural=0.0))) == [0, 1]
    with pytest.raises(ValueError, match="no neural LM scores"):
        nb.totals(RescoreWeights(neural=1.0))
    with pytest.raises(ValueError, match="2 n-best lists but 1 references"):
        wer_of(nb, ["a"], RescoreWeights())
    with pytest.raises(ValueError, match="weight word must be a finite number"):
        RescoreWeights(word=float("nan"))
    with pytest.raises(ValueError, match="more than the 64 positions"):
        NeuralLM(lm_path).score(["the " * 70])
    with pytest.raises(ValueError, match="cannot load a causal LM from"):
        NeuralLM("/nonexistent/lm", local_files_only=True)


def test_missing_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ValueError, match=r"pip install 'fastdecoder\[llm\]'"):
        NeuralLM("gpt2")
