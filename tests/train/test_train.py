"""A short training run on synthetic data through the real file formats: loss falls, PER drops, files written;
``fastdecoder train`` and ``fastdecoder eval`` end to end."""
import json

import pytest
import torch

from fastdecoder.cli import main
from fastdecoder.config import config_from_dict
from fastdecoder.decode import normalize_text, word_error_rate
from fastdecoder.checkpoint import load_checkpoint
from fastdecoder.train.trainer import Trainer

from fastdecoder.testing.tiny import TINY_RUN

TINY = TINY_RUN


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    trainer = Trainer(config_from_dict(TINY), out, progress=False)
    untrained = trainer.evaluate()
    summary = trainer.fit()
    return out, trainer, untrained, summary


def test_loss_falls_and_per_drops(tiny_run):
    out, trainer, untrained, summary = tiny_run
    losses = [r["loss"] for r in trainer.history if "loss" in r]
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses
    assert untrained.per > 0.85, untrained.per
    assert summary["val_per"] < untrained.per - 0.3, (untrained.per, summary["val_per"])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_run_folder_contents(tiny_run):
    out, trainer, _, summary = tiny_run
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("val_per", "steps", "train_seconds", "batches_per_second", "val_per_beam"):
        assert key in on_disk
    assert on_disk["steps"] == 160 and on_disk["train_seconds"] > 0
    assert on_disk["batches_per_second"] == pytest.approx(160 / on_disk["train_seconds"], rel=1e-3)
    # beam search over the same posteriors: close to greedy (never far worse), and far below the untrained PER
    assert on_disk["val_per_beam"] <= on_disk["val_per"] + 0.05
    assert on_disk["val_per_beam"] < trainer_untrained_per(tiny_run) - 0.3
    best = load_checkpoint(out / "best.pt")
    last = load_checkpoint(out / "last.pt")
    assert last["step"] == 160
    evals = [r for r in trainer.history if "val_per" in r]
    assert best["val_per"] == min(r["val_per"] for r in evals)   # the real PER, not an average
    assert (out / "config.yaml").is_file() and (out / "data").is_dir()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 8 + 2


def trainer_untrained_per(tiny_run) -> float:
    return tiny_run[2].per


def test_eval_cli(tiny_run, capsys):
    out, trainer, _, summary = tiny_run
    assert main(["eval", "--run", str(out), "--checkpoint", "last", "--decoder", "beam", "--beam-width", "4"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["per_greedy"] == pytest.approx(summary["val_per"], abs=1e-9)
    assert res["per_beam"] == pytest.approx(summary["val_per_beam"], abs=1e-9)
    preds = [json.loads(l) for l in open(res["predictions"])]
    assert len(preds) == res["trials"] == 24 and {"trial", "greedy", "beam", "target"} <= set(preds[0])
    # the unlabelled test split decodes too
    assert main(["eval", "--run", str(out), "--split", "test"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["trials"] == 8 and "per_greedy" not in res


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["train", "--config", "demo", "--set", "model.hiden=3", "--out", str(tmp_path / "x")]) == 2
    assert "model.hiden" in capsys.readouterr().err
    assert main(["train", "--config", "demo", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert "nothing" in capsys.readouterr().err
    assert main(["eval", "--run", str(tmp_path / "norun")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_data_synth_and_info(tmp_path, capsys):
    path = tmp_path / "s24.pkl"
    assert main(["data", "synth", "--format", "b2t24", "--out", str(path), "--days", "2", "--trials-per-day", "5",
                 "--features", "16"]) == 0
    assert main(["data", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "format b2t24, 2 days, 16 features" in out and "train: 10 trials" in out


def test_lm_build_and_eval_with_words(tiny_run, tmp_path, capsys):
    """`fastdecoder lm build` on the training transcripts, then `eval --lm --lexicon train` reports WER."""
    out, trainer, _, summary = tiny_run
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(trainer.train_split.transcriptions) + "\n")
    arpa = tmp_path / "lm.arpa"
    assert main(["lm", "build", "--text", str(corpus), "--order", "2", "--out", str(arpa)]) == 0
    assert "2-grams" in capsys.readouterr().out
    assert "\\data\\" in arpa.read_text() and "\\2-grams:" in arpa.read_text()
    assert main(["eval", "--run", str(out), "--lm", str(arpa), "--lexicon", "train", "--word-beam-width", "16"]) == 0
    res = json.loads(capsys.readouterr().out)
    preds = [json.loads(line) for line in open(res["predictions"])]
    assert all("words" in p and "transcription" in p for p in preds)
    # the reported WER is the WER of the written hypotheses, and the trained model + LM gets words right
    wer, edits, n_words = word_error_rate([p["words"] for p in preds],
                                          [normalize_text(p["transcription"]) for p in preds])
    assert (res["wer"], res["word_edits"], res["reference_words"]) == (wer, edits, n_words) and n_words > 0
    assert wer < 0.8
    assert main(["lm", "build", "--text", str(tmp_path / "missing.txt"), "--out", str(arpa)]) == 2
    assert "does not exist" in capsys.readouterr().err
