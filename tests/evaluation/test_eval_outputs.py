"""What ``fastdecoder eval`` hands on: competition submissions from an unlabelled test split (b2t25 CSV, b2t24
lines; single run and ensemble), per-day PER, saved log-probs, n-best files, tuned rescoring weights, the word
decoder's blank penalty / word bonus, and the word-decoding traps (lexicon coverage, options without --lm)."""
import csv
import json
import logging
import pickle
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fastdecoder.cli import main
from fastdecoder.config import config_from_dict
from fastdecoder.data import load_dataset
from fastdecoder.data.b2t24 import write_b2t24
from fastdecoder.decode import (WordDecoder, error_rate, greedy_decode, lexicon_from_split, normalize_text,
                                word_error_rate)
from fastdecoder.decode.submission import format_submission, submission_text
from fastdecoder.eval_outputs import load_logits
from fastdecoder.evaluation import evaluate_runs, per_by_day
from fastdecoder.testing.tiny import TRAIN_DEFAULTS, tiny_config, tiny_data
from fastdecoder.train.trainer import Trainer

WORDS = re.compile(r"[a-z0-9']+( [a-z0-9']+)*")


def _config(seed, **train):
    return config_from_dict(tiny_config(
        "tiny-out", data=tiny_data(7, trials_per_day=16, val_trials_per_day=5, test_trials_per_day=3, n_features=12,
                                   n_days=3),
        model={"hidden_size": 24}, augment=None, optim=None,
        train={**TRAIN_DEFAULTS, "seed": seed, **train}))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two run folders of tiny causal models on one synthetic b2t25 dataset (test split unlabelled), saved untrained
    with peaky posteriors so that words get decoded, and a 2-gram LM of the training transcripts."""
    root = tmp_path_factory.mktemp("evalout")
    runs = []
    for seed in (1, 2):
        trainer = Trainer(_config(seed), root / f"run{seed}", progress=False)
        with torch.no_grad():
            trainer.model.head.weight.mul_(8.0)
        trainer.save("last.pt")
        runs.append(root / f"run{seed}")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(trainer.train_split.transcriptions) + "\n")
    arpa = root / "lm.arpa"
    assert main(["lm", "build", "--text", str(corpus), "--order", "2", "--out", str(arpa)]) == 0
    return runs, trainer, arpa


def _eval(capsys, *argv, code=0):
    capsys.readouterr()
    try:
        rc = main(["eval", "--checkpoint", "last", *argv])
    except SystemExit as e:   # a bad option value: argparse's one-line error, exit 2
        rc = e.code
    assert rc == code
    if code:
        return capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _words(arpa):
    return ["--lm", str(arpa), "--lexicon", "train", "--word-beam-width", "8"]


# -- checkers written from the competitions' published formats ------------------------------------------------------
def b2t25_test_trials(folder):
    """The test trials in NEJM evaluate_model.py's order: sessions in (chronological) order, each session's
    data_test.hdf5 groups in h5py's key order; as loader trial ids."""
    out = []
    for sess in sorted(p for p in folder.iterdir() if (p / "data_test.hdf5").is_file()):
        with h5py.File(sess / "data_test.hdf5", "r") as f:
            out += [f"{sess.name}/data_test.hdf5/{k}" for k in f.keys()]
    return out


def check_b2t25(path, n_trials):
    """A Brain-to-Text '25 submission: CSV, header id,text, ids 0..N-1 in order, one row per test trial, the text
    lower-case words. Returns the texts."""
    raw = path.read_bytes().decode("utf-8")
    assert "\r" not in raw and raw.endswith("\n")
    rows = list(csv.reader(raw.splitlines()))
    assert rows[0] == ["id", "text"]
    assert len(rows) - 1 == n_trials
    assert [int(r[0]) for r in rows[1:]] == list(range(n_trials))
    assert all(len(r) == 2 for r in rows[1:])
    texts = [r[1] for r in rows[1:]]
    assert all(t == "" or WORDS.fullmatch(t) for t in texts), texts
    return texts


def check_b2t24(path, n_trials):
    """A Brain-to-Text '24 submission: one sentence per line (each ended by a newline), one per competition trial,
    no header. Returns the texts."""
    raw = path.read_bytes().decode("utf-8")
    assert "\r" not in raw and raw.endswith("\n")
    texts = raw[:-1].split("\n")
    assert len(texts) == n_trials
    assert all(t == "" or WORDS.fullmatch(t) for t in texts), texts
    return texts


def _predictions(res):
    return {p["trial"]: p for p in map(json.loads, open(res["predictions"]))}


# -- submissions --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ensemble", [False, True])
def test_b2t25_submission_from_unlabelled_test(setup, tmp_path, capsys, ensemble):
    runs, trainer, arpa = setup
    run_args = ["--run", str(runs[0])] + (["--run", str(runs[1])] if ensemble else [])
    sub = tmp_path / "submission.csv"
    res = _eval(capsys, *run_args, "--split", "test", *_words(arpa), "--submission", str(sub))
    assert res["labelled"] is False and "wer" not in res and "per_greedy" not in res
    assert res["submission_format"] == "b2t25"
    order = b2t25_test_trials(Path(trainer.cfg.data.path))
    assert len(order) == res["trials"] == 9
    texts = check_b2t25(sub, len(order))
    preds = _predictions(res)
    assert texts == [preds[t]["words"] for t in order]          # row k is the k-th test trial in the reference order
    assert sum(len(t.split()) for t in texts) > 0, "nothing decoded: the order check would be vacuous"
    assert len(set(texts)) > 1
    # as in the published data, a session without a test file: the ids run on over the sessions that have one
    data = tmp_path / "data"
    shutil.copytree(trainer.cfg.data.path, data)
    (data / trainer.dataset.day_names[1] / "data_test.hdf5").unlink()
    res = _eval(capsys, *run_args, "--data", str(data), "--split", "test", *_words(arpa), "--submission", str(sub))
    order = b2t25_test_trials(data)
    assert len(order) == res["trials"] == 6
    preds = _predictions(res)
    assert check_b2t25(sub, len(order)) == [preds[t]["words"] for t in order]
    assert all(t.startswith((trainer.dataset.day_names[0], trainer.dataset.day_names[2])) for t in order)


@pytest.mark.parametrize("ensemble", [False, True])
def test_b2t24_submission_in_competition_order(setup, tmp_path, capsys, ensemble):
    runs, trainer, arpa = setup
    pkl = tmp_path / "ptDecoder_ctc.pkl"
    write_b2t24(pkl, load_dataset(trainer.cfg.data.path))
    with open(pkl, "rb") as f:
        competition = pickle.load(f)["competition"]
    order = [f"b2t24/day{d:02d}/competition/{i}" for d, day in enumerate(competition)
             for i in range(len(day["sentenceDat"]))]
    run_args = ["--run", str(runs[0])] + (["--run", str(runs[1])] if ensemble else [])
    sub = tmp_path / "submission.txt"
    res = _eval(capsys, *run_args, "--data", str(pkl), "--split", "test", *_words(arpa), "--submission", str(sub))
    assert res["submission_format"] == "b2t24" and res["trials"] == len(order) == 9
    texts = check_b2t24(sub, len(order))
    preds = _predictions(res)
    assert texts == [preds[t]["words"] for t in order]
    assert sum(len(t.split()) for t in texts) > 0
    # the same data as b2t25: the same sentences, in the same order, in the other layout (--format)
    sub25 = tmp_path / "as25.csv"
    res = _eval(capsys, *run_args, "--data", str(pkl), "--split", "test", *_words(arpa), "--submission", str(sub25),
                "--format", "b2t25")
    assert check_b2t25(sub25, len(order)) == texts


def test_submission_text_and_layout():
    assert submission_text("Hello, World!  It's  me.") == "hello world it's me"
    assert format_submission(["A b", "", "c"], "b2t25") == "id,text\n0,a b\n1,\n2,c\n"
    assert format_submission(["A b", "", "c"], "b2t24") == "a b\n\nc\n"
    with pytest.raises(ValueError, match="b2t25, b2t24"):
        format_submission(["a"], "kaggle")


def test_submission_needs_words_and_the_word_options_need_lm(setup, tmp_path, capsys):
    runs, _, arpa = setup
    err = _eval(capsys, "--run", str(runs[0]), "--split", "test", "--submission", str(tmp_path / "s.csv"), code=2)
    assert "--submission" in err and "--lm" in err and not (tmp_path / "s.csv").exists()
    for opt in (["--lexicon", "train"], ["--word-bonus", "1"], ["--blank-penalty", "1"],
                ["--save-nbest", str(tmp_path / "n.jsonl")]):
        err = _eval(capsys, "--run", str(runs[0]), *opt, code=2)
        assert opt[0] in err and "--lm" in err
    assert main(["stream", "--run", str(runs[0]), "--checkpoint", "last", "--lexicon", "train"]) == 2
    assert "--lexicon" in capsys.readouterr().err
    err = _eval(capsys, "--run", str(runs[0]), "--split", "test", *_words(arpa), "--tune-weights", code=2)
    assert "labelled" in err
    for opt, value, named in (("--word-bonus", "nan", "--word-bonus"), ("--blank-penalty", "inf", "--blank-penalty"),
                              ("--lexicon", str(tmp_path / "missing.txt"), "missing.txt")):
        err = _eval(capsys, "--run", str(runs[0]), "--lm", str(arpa), opt, value, code=2)
        assert err.startswith("error: ") and named in err and "Traceback" not in err
    err = _eval(capsys, "--run", str(runs[0]), *_words(arpa), "--format", "b2t24", code=2)
    assert "--format" in err and "--submission" in err
    err = _eval(capsys, "--run", str(runs[0]), *_words(arpa), "--save-weights", str(tmp_path / "w.json"), code=2)
    assert "--save-weights" in err and "--tune-weights" in err


# -- outputs ------------------------------------------------------------------------------------------------------
def test_per_day_sums_to_the_overall_per(setup, capsys):
    runs, trainer, _ = setup
    for run_args in (["--run", str(runs[0])], ["--run", str(runs[0]), "--run", str(runs[1])]):
        res = _eval(capsys, *run_args, "--decoder", "beam", "--beam-width", "4")
        days = res["per_day"]
        assert sum(d["edits_beam"] for d in days.values()) / sum(d["phonemes"] for d in days.values()) == \
            pytest.approx(res["per_beam"], abs=1e-15)
        assert set(days) == set(trainer.dataset.day_names)
        edits, phonemes = sum(d["edits"] for d in days.values()), sum(d["phonemes"] for d in days.values())
        assert sum(d["trials"] for d in days.values()) == res["trials"]
        assert edits / phonemes == pytest.approx(res["per_greedy"], abs=1e-15)
        assert all(d["per"] == pytest.approx(d["edits"] / d["phonemes"]) for d in days.values())
    # per_by_day against a direct count
    hyps, refs, days = [[1, 2], [3], [4, 5, 6]], [[1, 2, 3], [3], [4]], [0, 1, 0]
    got = per_by_day(hyps, refs, days)
    assert got == {0: {"per": 3 / 4, "edits": 3, "phonemes": 4, "trials": 2},
                   1: {"per": 0.0, "edits": 0, "phonemes": 1, "trials": 1}}


def test_trainer_logs_per_day_per(tmp_path):
    cfg = _config(3, steps=2, eval_every=2, log_every=1, batch_size=4, beam_width=0)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.fit()
    recs = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    evals = [r for r in recs if "val_per" in r]
    assert evals and set(evals[-1]["val_per_day"]) == set(trainer.dataset.day_names)
    res = trainer.evaluate()
    assert evals[-1]["val_per_day"] == {trainer.dataset.day_names[d]: v["per"] for d, v in res.per_day.items()}
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (the plot extra)")
    from fastdecoder.train.plot import plot_run

    assert plot_run(tmp_path / "run").is_file()


@pytest.mark.parametrize("split", ["val", "test"])
def test_saved_logits_reproduce_eval(setup, tmp_path, capsys, split):
    runs, trainer, _ = setup
    path = tmp_path / "logits.npz"
    res = _eval(capsys, "--run", str(runs[0]), "--run", str(runs[1]), "--split", split, "--save-logits", str(path))
    z = load_logits(path)
    ds = load_dataset(trainer.cfg.data.path)
    sp = ds.splits[split]
    assert len(z["per_trial"]) == res["trials"] == len(sp)
    assert list(z["trial_index"]) == list(range(len(sp))) and str(z["split"]) == split
    assert list(z["day"]) == list(sp.day) and list(z["session"]) == [ds.day_names[d] for d in sp.day]
    assert list(z["trial_id"]) == sp.trial_ids and z["log_probs"].dtype == np.float32
    ev = evaluate_runs([runs[0], runs[1]], split, checkpoint="last")
    for a, b in zip(z["per_trial"], ev.result.log_probs):
        np.testing.assert_array_equal(a, b)
    hyps = [greedy_decode(x[None])[0] for x in z["per_trial"]]
    preds = _predictions(res)
    from fastdecoder.phonemes import ids_to_text

    assert [ids_to_text(h) for h in hyps] == [preds[t]["greedy"] for t in sp.trial_ids]
    if split == "val":
        assert error_rate(hyps, [sp.targets[i].tolist() for i in z["trial_index"]])[0] == res["per_greedy"]


def test_nbest_file_reproduces_wer(setup, tmp_path, capsys):
    runs, _, arpa = setup
    path = tmp_path / "nbest.jsonl"
    res = _eval(capsys, "--run", str(runs[0]), *_words(arpa), "--nbest", "4", "--save-nbest", str(path),
                "--decoder", "beam", "--beam-width", "4")
    preds = _predictions(res)
    plain = _eval(capsys, "--run", str(runs[0]), *_words(arpa))
    assert res["wer"] == plain["wer"]                          # an n-best decode's top-1 is the plain decode
    recs = [json.loads(line) for line in open(path)]
    assert len(recs) == res["trials"]
    best = [normalize_text(r["words"][0]["text"]) for r in recs]
    assert word_error_rate(best, [normalize_text(r["reference"]) for r in recs])[0] == pytest.approx(res["wer"],
                                                                                                     abs=1e-15)
    for r in recs:
        w = r["weights"]
        assert 1 <= len(r["words"]) <= 4 and 1 <= len(r["phonemes"]) <= 4
        totals = [h["total"] for h in r["words"]]
        assert totals == sorted(totals, reverse=True)
        for h in r["words"]:
            assert h["total"] == pytest.approx(h["acoustic"] + w["ngram"] * h["ngram"] + w["word"] * h["n_words"])
    assert [r["phonemes"][0]["phonemes"] for r in recs] == [preds[r["trial_id"]]["beam"] for r in recs]
    assert sum(len(b.split()) for b in best) > 0


def test_blank_penalty_and_word_bonus_reach_the_word_decoder(setup, tmp_path, capsys):
    runs, trainer, arpa = setup
    ev = evaluate_runs([runs[0]], "test", checkpoint="last")
    lex = lexicon_from_split(trainer.train_split.transcriptions, trainer.train_split.targets)
    plain = [normalize_text(t) for t in WordDecoder(lex, str(arpa), beam_width=8).decode_text(ev.result.log_probs)]
    for blank_penalty, word_bonus in ((3.0, 5.0), (-6.0, 0.0)):
        opts = ["--blank-penalty", str(blank_penalty), "--word-bonus", str(word_bonus)]
        res = _eval(capsys, "--run", str(runs[0]), "--split", "test", *_words(arpa), *opts)
        dec = WordDecoder(lex, str(arpa), beam_width=8, blank_penalty=blank_penalty, word_bonus=word_bonus)
        want = [normalize_text(t) for t in dec.decode_text(ev.result.log_probs)]
        preds = _predictions(res)
        assert [preds[t]["words"] for t in ev.split.trial_ids] == want
        assert want != plain, "the options changed nothing: the check would be vacuous"
    # stream decodes the unlabelled test split with the same options: the same words, no WER
    opts = ["--blank-penalty", "3", "--word-bonus", "5"]
    want = [normalize_text(t) for t in WordDecoder(lex, str(arpa), beam_width=8, blank_penalty=3.0,
                                                   word_bonus=5.0).decode_text(ev.result.log_probs)]
    capsys.readouterr()
    assert main(["stream", "--run", str(runs[0]), "--checkpoint", "last", "--split", "test", *_words(arpa),
                 *opts]) == 0
    text = capsys.readouterr().out
    report = json.loads(text[text.index("{\n"):])
    assert report["trials"] == 9 and "wer" not in report and "per_beam" not in report
    streamed: dict = {}
    for line in text[:text.index("{\n")].splitlines():
        tid, _, words = line[1:].partition("] ")
        streamed.setdefault(tid, []).extend(words.split())
    assert [" ".join(streamed.get(t, [])) for t in ev.split.trial_ids] == want


def test_tuned_weights_saved_on_val_and_applied_on_test(setup, tmp_path, capsys):
    runs, _, arpa = setup
    wfile = tmp_path / "weights.json"
    tuned = _eval(capsys, "--run", str(runs[0]), *_words(arpa), "--nbest", "6", "--tune-weights", "--save-weights",
                  str(wfile))
    assert tuned["weights_file"] == str(wfile)
    saved = json.loads(wfile.read_text())
    assert saved["weights"] == tuned["tuned_weights"] and saved["tuned_on"] == "val"
    nbest, sub = tmp_path / "nbest.jsonl", tmp_path / "sub.csv"
    res = _eval(capsys, "--run", str(runs[0]), "--split", "test", *_words(arpa), "--nbest", "6",
                "--rescore-weights", str(wfile), "--save-nbest", str(nbest), "--submission", str(sub))
    assert res["rescore_weights"] == saved["weights"]
    recs = [json.loads(line) for line in open(nbest)]
    assert all(r["weights"] == saved["weights"] for r in recs)
    texts = check_b2t25(sub, res["trials"])
    assert texts == [normalize_text(r["words"][0]["text"]) for r in recs]   # the weights' choice is submitted
    # default location: the run folder
    tuned = _eval(capsys, "--run", str(runs[0]), *_words(arpa), "--nbest", "6", "--tune-weights")
    assert tuned["weights_file"] == str(runs[0] / "rescore_weights.json")
    bad = tmp_path / "neural.json"
    bad.write_text(json.dumps({"weights": {"ngram": 0.5, "neural": 0.3, "word": 0.0}}))
    err = _eval(capsys, "--run", str(runs[0]), *_words(arpa), "--rescore-weights", str(bad), code=2)
    assert "--rescore-lm" in err
    (tmp_path / "junk.json").write_text("{}")
    err = _eval(capsys, "--run", str(runs[0]), *_words(arpa), "--rescore-weights", str(tmp_path / "junk.json"), code=2)
    assert "junk.json" in err and "not a rescoring weights file" in err


def test_predictions_named_by_decoder(setup, capsys):
    runs, _, arpa = setup
    files = {}
    for opts in ([], ["--decoder", "beam", "--beam-width", "4"], _words(arpa)):
        res = _eval(capsys, "--run", str(runs[0]), *opts)
        files[res["predictions"]] = open(res["predictions"]).read()
    assert len(files) == 3
    for path, text in files.items():                       # none overwrote another
        assert open(path).read() == text
    assert sorted(p.split("_last_")[1] for p in files) == ["beam.jsonl", "greedy.jsonl", "greedy_words.jsonl"]


# -- traps --------------------------------------------------------------------------------------------------------
def test_lexicon_coverage_warning(setup, caplog):
    _, trainer, arpa = setup
    lex = lexicon_from_split(trainer.train_split.transcriptions, trainer.train_split.targets)
    with caplog.at_level(logging.WARNING, logger="fastdecoder.decode.words"):
        dec = WordDecoder(lex, str(arpa))
    covered, total = dec.lm_coverage
    assert covered == total > 0 and not caplog.records
    few = {w: p for w, p in list(lex.pronunciations().items())[:3]}
    with caplog.at_level(logging.WARNING, logger="fastdecoder.decode.words"):
        dec = WordDecoder(few, str(arpa))
    assert dec.lm_coverage == (3, total)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert f"3 of the LM's {total} words" in msg


def test_decode_split_words_unlabelled_and_rescore_split(setup):
    from fastdecoder.decode import evaluate_words
    from fastdecoder.decode.rescore import RescoreWeights, decode_split_words, rescore_split

    runs, trainer, arpa = setup
    ev = evaluate_runs([runs[0]], "val", checkpoint="last")
    lex = lexicon_from_split(trainer.train_split.transcriptions, trainer.train_split.targets)
    refs = [ev.split.transcriptions[i] for i in ev.result.indices]
    plain = evaluate_words(ev.result.log_probs, refs, decoder=WordDecoder(lex, str(arpa), beam_width=8))
    report, hyps = rescore_split(ev.result.log_probs, refs, lexicon=lex, lm=str(arpa), lm_weight=0.5, beam_width=8,
                                 nbest=4, tune=True)
    assert report["wer"] == plain.wer and report["word_edits"] == plain.edits and report["wer_tuned"] <= plain.wer
    dec = WordDecoder(lex, str(arpa), beam_width=8, nbest=4)
    unlabelled = decode_split_words(dec, ev.result.log_probs)
    assert "wer" not in unlabelled.report and unlabelled.hypotheses == plain.hypotheses
    assert unlabelled.weights == RescoreWeights(0.5, 0.0, 0.0)
    with pytest.raises(ValueError, match="labelled"):
        decode_split_words(dec, ev.result.log_probs, tune=True)


def test_rescored_ensemble_submission_with_a_neural_lm(setup, tmp_path, capsys):
    pytest.importorskip("transformers", reason="rescoring needs transformers (pip install 'fastdecoder[llm]')")
    from fastdecoder.testing.tiny_lm import save_tiny_lm

    runs, trainer, arpa = setup
    vocab = {w for t in trainer.train_split.transcriptions for w in normalize_text(t).split()}
    llm = save_tiny_lm(tmp_path / "llm", vocab)
    sub, nbest = tmp_path / "sub.csv", tmp_path / "nbest.jsonl"
    res = _eval(capsys, "--run", str(runs[0]), "--run", str(runs[1]), "--split", "test", *_words(arpa),
                "--nbest", "4", "--rescore-lm", str(llm), "--rescore-weight", "2.0", "--save-nbest", str(nbest),
                "--submission", str(sub))
    assert res["rescore_weights"] == {"ngram": 0.5, "neural": 2.0, "word": 0.0} and "wer_rescored" not in res
    assert res["predictions"].endswith("_ensemble2_greedy_rescored.jsonl")
    recs = [json.loads(line) for line in open(nbest)]
    assert all("neural" in h for r in recs for h in r["words"])
    for r in recs:
        for h in r["words"]:
            assert h["total"] == pytest.approx(h["acoustic"] + 0.5 * h["ngram"] + 2.0 * h["neural"])
    assert check_b2t25(sub, res["trials"]) == [normalize_text(r["words"][0]["text"]) for r in recs]


def test_submission_from_a_run_on_a_subset_of_sessions_is_refused(setup, tmp_path, capsys):
    """A run trained with data.sessions on some sessions evaluates only those: its submission would leave the other
    sessions' test trials out, so it is refused with the sessions named (not written short)."""
    runs, trainer, arpa = setup
    keep = trainer.dataset.day_names[:2]
    data = dict(_config(1).to_dict()["data"], path=trainer.cfg.data.path, synthetic=None, sessions=keep)
    sub_cfg = config_from_dict({**_config(1).to_dict(), "data": data})
    Trainer(sub_cfg, tmp_path / "subset", progress=False).save("last.pt")
    sub = tmp_path / "submission.csv"
    err = _eval(capsys, "--run", str(tmp_path / "subset"), "--split", "test", *_words(arpa), "--submission", str(sub),
                code=2)
    assert err.startswith("error: --submission") and "data.sessions" in err and trainer.dataset.day_names[2] in err
    assert len(err.strip().splitlines()) == 1 and not sub.exists()


def test_eval_report_is_the_command_without_the_command_line(setup, capsys):
    """``fastdecoder eval`` prints what the library call `eval_report` returns (beam and words, ensemble of two)."""
    from fastdecoder.eval_report import EvalRequest, eval_report

    runs, trainer, arpa = setup
    printed = _eval(capsys, "--run", str(runs[0]), "--run", str(runs[1]), "--decoder", "beam", "--beam-width", "4",
                    *_words(arpa))
    tr = trainer.train_split
    words = WordDecoder(lexicon_from_split(tr.transcriptions, tr.targets), str(arpa), beam_width=8)
    req = EvalRequest(runs=[str(r) for r in runs], checkpoint="last", decoder="beam", beam_width=4, lm=str(arpa),
                      word_beam_width=8)
    report = eval_report(req, lambda ds, data_path, nbest: words)
    assert json.loads(json.dumps(report)) == printed
    assert printed["per_beam"] >= 0 and "wer" in printed
    with pytest.raises(TypeError, match="word_decoder"):
        eval_report(req)
