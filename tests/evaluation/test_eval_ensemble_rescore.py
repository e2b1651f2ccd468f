"""``fastdecoder eval --run A --run B`` (ensembles) and ``eval --lm ... --rescore-lm / --tune-weights`` end to end
on two tiny trained runs."""
import json

import numpy as np
import pytest
import torch

from fastdecoder.cli import main
from fastdecoder.config import config_from_dict
from fastdecoder.decode import error_rate, greedy_decode, normalize_text
from fastdecoder.evaluation import evaluate_runs
from fastdecoder.checkpoint import load_checkpoint, save_checkpoint
from fastdecoder.train.trainer import Trainer

from fastdecoder.testing.tiny import tiny_config, tiny_data


def _config(seed, steps=12, **model):
    return config_from_dict(tiny_config(
        data=tiny_data(5, trials_per_day=24, val_trials_per_day=6, n_features=16),
        model={"hidden_size": 32, **model}, augment={"random_cut": 0}, optim={"warmup_steps": 2, "decay_steps": 12},
        train={"steps": steps, "batch_size": 8, "eval_every": 12, "log_every": 4, "checkpoint_every": 12,
               "seed": seed}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # these shapes are too small to gain from a second thread (and lose on a busy CPU)
    try:
        for seed in (1, 2):
            trainer = Trainer(_config(seed), root / f"seed{seed}", progress=False)
            trainer.fit()
            out.append(root / f"seed{seed}")
    finally:
        torch.set_num_threads(threads)
    return out, trainer


def _eval(capsys, *argv):
    assert main(["eval", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_ensemble_reports_members_and_average(runs, capsys):
    (a, b), _ = runs
    single = [_eval(capsys, "--run", str(r), "--decoder", "beam", "--beam-width", "4") for r in (a, b)]
    res = _eval(capsys, "--run", str(a), "--run", str(b), "--decoder", "beam", "--beam-width", "4")
    assert res["run"] == [str(a), str(b)] and res["trials"] == single[0]["trials"] == 12
    for m, s in zip(res["members"], single):
        assert m["per_greedy"] == s["per_greedy"] and m["per_beam"] == s["per_beam"]
    # the ensemble's PER from the members' log-probs, averaged directly
    ev = evaluate_runs([a, b])
    lps = [np.logaddexp(x, y) - np.log(2) for x, y in zip(ev.members[0].log_probs, ev.members[1].log_probs)]
    T = max(len(x) for x in lps)
    arr = np.zeros((len(lps), T, 41), np.float32)
    for i, x in enumerate(lps):
        arr[i, : len(x)] = x
    hyps = greedy_decode(arr, [len(x) for x in lps])
    per = error_rate(hyps, [ev.split.targets[i].tolist() for i in ev.members[0].indices])[0]
    assert res["per_greedy"] == pytest.approx(per, abs=1e-12)
    preds = [json.loads(line) for line in open(res["predictions"])]
    assert res["predictions"].endswith("_ensemble2_beam.jsonl") and len(preds) == 12 and "beam" in preds[0]


def test_eval_ensemble_of_mismatched_runs_fails_clearly(runs, tmp_path, capsys):
    (a, _), _ = runs
    other = tmp_path / "stride2"              # run A's checkpoint with another patch stride (same weight shapes)
    other.mkdir()
    state = load_checkpoint(a / "best.pt")
    state["config"]["model"]["patch_stride"] = 2
    save_checkpoint(state, other / "best.pt")
    assert main(["eval", "--run", str(a), "--run", str(other)]) == 2
    err = capsys.readouterr().err
    assert "model.patch_stride" in err and str(a) in err and str(other) in err


def test_eval_rescore_and_tune(runs, tmp_path, capsys):
    pytest.importorskip("transformers", reason="rescoring needs transformers (pip install 'fastdecoder[llm]')")
    from fastdecoder.testing.tiny_lm import save_tiny_lm

    (a, b), trainer = runs
    texts = trainer.train_split.transcriptions
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n")
    arpa = tmp_path / "lm.arpa"
    assert main(["lm", "build", "--text", str(corpus), "--order", "2", "--out", str(arpa)]) == 0
    llm = save_tiny_lm(tmp_path / "llm", {w for t in texts for w in normalize_text(t).split()})
    capsys.readouterr()
    words = ["--lm", str(arpa), "--lexicon", "train", "--word-beam-width", "8"]
    plain = _eval(capsys, "--run", str(a), *words)
    res = _eval(capsys, "--run", str(a), *words, "--rescore-lm", str(llm), "--rescore-weight", "0.7",
                "--tune-weights")
    assert res["wer"] == pytest.approx(plain["wer"], abs=1e-12)        # n-best top-1 = the plain word decode
    assert res["rescore_weights"] == {"ngram": 0.5, "neural": 0.7, "word": 0.0}
    assert 0.0 <= res["wer_rescored"] <= 2.0 and res["tune_default_wer"] == res["wer_rescored"]
    assert res["wer_tuned"] <= res["wer_rescored"] and set(res["tuned_weights"]) == {"ngram", "neural", "word"}
    preds = [json.loads(line) for line in open(res["predictions"])]
    assert len(preds) == res["trials"] and all("words" in p for p in preds)
    # tuning without a neural LM; ensembles rescore too
    res = _eval(capsys, "--run", str(a), "--run", str(b), *words, "--tune-weights")
    assert res["tuned_weights"]["neural"] == 0.0 and res["wer_tuned"] <= res["wer"]
    assert main(["eval", "--run", str(a), "--rescore-lm", str(llm)]) == 2
    assert "need --lm" in capsys.readouterr().err
