"""The command line's error boundary: every subcommand, given a bad option or a bad file, prints exactly one line
``error: ...`` naming the problem and exits with status 2, never a traceback; results printed as JSON are valid
JSON (no NaN); the decode API raises UserError (a ValueError) for bad input, so the CLI catches exactly that."""
import gzip
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fastdecoder.cli import main
from fastdecoder.config import config_from_dict
from fastdecoder.errors import UserError
from fastdecoder.testing.tiny import DEFAULT, tiny_config, tiny_data
from fastdecoder.train.trainer import Trainer

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A trained run folder (2 steps), its data, a matching ARPA LM, and a set of bad files."""
    from fastdecoder.decode import build_lm

    root = tmp_path_factory.mktemp("cli_errors")
    cfg = tiny_config("cli-errors", data=tiny_data(11, trials_per_day=6, val_trials_per_day=2, test_trials_per_day=1,
                                                   n_features=8),
                      model={"hidden_size": 16}, augment=None, optim=None,
                      train={"steps": 2, "batch_size": 4, "eval_every": 2, "log_every": DEFAULT, "checkpoint_every": 2,
                             "plot": False})
    run = root / "run"
    trainer = Trainer(config_from_dict(cfg), run, progress=False)
    trainer.fit()
    data = trainer.cfg.data.path
    corpus = [t for s in trainer.dataset.splits.values() for t in (s.transcriptions or [])]
    arpa = root / "good.arpa"
    build_lm(corpus, 2, arpa)
    (root / "other").mkdir()
    (root / "other" / "last.pt").write_bytes((run / "last.pt").read_bytes())
    (root / "empty").mkdir()
    for name, key, value in (("synth_days", "n_days", 0), ("synth_words", "words_per_sentence", [3, 1]),
                             ("synth_seed", "seed", -1)):
        raw = yaml.safe_load((run / "config.yaml").read_text())
        raw["data"]["path"] = None
        raw["data"]["synthetic"][key] = value
        (root / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    files = {
        "run": run, "data": data, "arpa": arpa, "root": root, "empty": root / "empty",
        "missing": root / "missing.arpa",
        "garbage": _write(root / "garbage.arpa", b"this is not\nan ARPA file\n"),
        "malformed": _write(root / "malformed.arpa", b"\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0\ta\n"),
        "emptyfile": _write(root / "empty.txt", b""),
        "badgz": _write(root / "bad.arpa.gz", b"\x1f\x8b\x08\x00garbage"),
        "gzgarbage": _write(root / "garbage.arpa.gz", gzip.compress(b"\x00\x01\x02 not text")),
        "badlex": _write(root / "bad.lex", b"HELLO HH AH L OW\nWORLD W ER1 XX\n"),
        "emptylex": _write(root / "empty.lex", b"# only a comment\n"),
        "badyaml": _write(root / "bad.yaml", b"model: {hidden_size: [\n"),
        "listyaml": _write(root / "list.yaml", b"- 1\n- 2\n"),
        "badpickle": _write(root / "bad.pkl", b"\x80\x04garbage"),
        "corpus": _write(root / "corpus.txt", ("\n".join(corpus) + "\n").encode()),
        "blankcorpus": _write(root / "blank.txt", b"\n  \n...\n"),
    }
    return files


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _t5_folder(root: Path) -> Path:
    """A tiny T5 (encoder-decoder, not a causal LM) saved as a Hugging Face model folder."""
    transformers = pytest.importorskip("transformers", reason="the --rescore-lm cases need transformers")
    out = root / "t5"
    if not out.exists():
        cfg = transformers.T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2)
        transformers.T5ForConditionalGeneration(cfg).save_pretrained(out)
    return out


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """main(argv) in-process: (exit status, stdout, stderr); argparse's exit becomes the status."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# (argv, a fragment the error line must contain); {name} is filled from env
CASES = [
    # top level
    ([], "required"),
    (["nosuchcommand"], "invalid choice"),
    # train
    (["train"], "--config is required"),
    (["train", "--config", "{missing}"], "missing.arpa"),
    (["train", "--config", "{badyaml}"], "bad.yaml"),
    (["train", "--config", "{listyaml}"], "list.yaml"),
    (["train", "--config", "demo", "--set", "model.hiden=3"], "model.hiden"),
    (["train", "--config", "{root}/synth_days.yaml", "--out", "{root}/t1"], "n_days"),
    (["train", "--config", "{root}/synth_words.yaml", "--out", "{root}/t2"], "words_per_sentence"),
    (["train", "--config", "{root}/synth_seed.yaml", "--out", "{root}/t3"], "data.synthetic.seed"),
    (["train", "--config", "demo", "--set", "noequals"], "noequals"),
    (["train", "--config", "demo", "--set", "train.steps=abc"], "train.steps"),
    (["train", "--config", "demo", "--set", "data.batching=!!python/object:os.system 'echo'"], "not valid YAML"),
    (["train", "--config", "demo", "--set", "train.steps=[1, "], "not valid YAML"),
    (["train", "--config", "demo", "--data", "{root}/nothing"], "nothing"),
    (["train", "--config", "demo", "--resume"], "--resume needs --out"),
    (["train", "--resume", "--overwrite", "--out", "{empty}"], "conflict"),
    (["train", "--resume", "--out", "{empty}"], "last.pt"),
    (["train", "--config", "demo", "--out", "{run}"], "already holds a run"),
    (["train", "--config", "demo", "--out", "{garbage}"], "garbage.arpa"),
    # eval: the run and the checkpoint
    (["eval", "--run", "{root}/norun"], "does not exist"),
    (["eval", "--run", "{empty}"], "does not exist"),
    (["eval", "--run", "{run}", "--checkpoint", "../other/last.pt"], "run folder"),
    (["eval", "--run", "{run}", "--checkpoint", "{root}/other/last.pt"], "run folder"),
    (["eval", "--run", "{run}", "--checkpoint", ".."], "run folder"),
    (["eval", "--run", "{run}", "--checkpoint", "nosuch"], "nosuch.pt does not exist"),
    (["eval", "--run", "{run}", "--checkpoint", "config.yaml"], "config.yaml"),
    (["eval", "--run", "{run}", "--split", "nosuch"], "nosuch"),
    (["eval", "--run", "{run}", "--data", "{root}/nothing"], "nothing"),
    (["eval", "--run", "{run}", "--data", "{badpickle}"], "bad.pkl"),
    (["eval", "--run", "{run}", "--device", "foo"], "--device"),
    # eval: decoder options
    (["eval", "--run", "{run}", "--decoder", "viterbi"], "--decoder"),
    (["eval", "--run", "{run}", "--decoder", "beam", "--beam-width", "0"], "--beam-width"),
    (["eval", "--run", "{run}", "--decoder", "beam", "--beam-width", "-5"], "--beam-width"),
    (["eval", "--run", "{run}", "--decoder", "beam", "--beam-width", "abc"], "--beam-width"),
    (["eval", "--run", "{run}", "--decoder", "beam", "--beam-width", "99999999"], "--beam-width"),
    # eval: word decoding files and options
    (["eval", "--run", "{run}", "--lm", "{missing}"], "missing.arpa"),
    (["eval", "--run", "{run}", "--lm", "{garbage}", "--lexicon", "train"], "garbage.arpa"),
    (["eval", "--run", "{run}", "--lm", "{malformed}", "--lexicon", "train"], "malformed.arpa"),
    (["eval", "--run", "{run}", "--lm", "{emptyfile}", "--lexicon", "train"], "empty.txt"),
    (["eval", "--run", "{run}", "--lm", "{badgz}", "--lexicon", "train"], "bad.arpa.gz"),
    (["eval", "--run", "{run}", "--lm", "{gzgarbage}", "--lexicon", "train"], "garbage.arpa.gz"),
    (["eval", "--run", "{run}", "--lm", "{arpa}", "--lexicon", "{badlex}"], "bad.lex"),
    (["eval", "--run", "{run}", "--lm", "{arpa}", "--lexicon", "{emptylex}"], "empty.lex"),
    (["eval", "--run", "{run}", "--lm", "{arpa}", "--lexicon", "{missing}"], "missing.arpa"),
    (["eval", "--run", "{run}", "--lm", "{arpa}", "--lexicon", "{corpus}"], "corpus.txt"),
    (["eval", "--run", "{run}", "--lm", "{arpa}", "--lexicon", "train", "--word-beam-width", "0"],
     "--word-beam-width"),
    (["eval", "--run", "{run}", "--lm", "{arpa}", "--lexicon", "train", "--lm-weight", "nan"], "--lm-weight"),
    (["eval", "--run", "{run}", "--lm", "{arpa}", "--lexicon", "train", "--lm-weight", "inf"], "--lm-weight"),
    (["eval", "--run", "{run}", "--lm", "{arpa}", "--lexicon", "train", "--lm-weight", "-1"], "--lm-weight"),
    # eval: n-best rescoring options
    (["eval", "--run", "{run}", "--tune-weights"], "need --lm"),
    (["eval", "--run", "{run}", "--rescore-lm", "{empty}"], "need --lm"),
    (["eval", "--run", "{run}", "--lm", "{arpa}", "--tune-weights", "--nbest", "0"], "--nbest"),
    (["eval", "--run", "{run}", "--lm", "{arpa}", "--tune-weights", "--nbest", "-3"], "--nbest"),
    (["eval", "--run", "{run}", "--lm", "{arpa}", "--tune-weights", "--nbest", "100"], "--word-beam-width"),
    (["eval", "--run", "{run}", "--lm", "{arpa}", "--tune-weights", "--word-beam-width", "4", "--nbest", "5"],
     "--nbest 5 exceeds --word-beam-width 4"),
    (["eval", "--run", "{run}", "--lm", "{arpa}", "--tune-weights", "--rescore-weight", "nan"], "--rescore-weight"),
    (["eval", "--run", "{run}", "--lm", "{arpa}", "--tune-weights", "--rescore-ngram-weight", "inf"],
     "--rescore-ngram-weight"),
    (["eval", "--run", "{run}", "--lm", "{arpa}", "--tune-weights", "--rescore-word-bonus", "nan"],
     "--rescore-word-bonus"),
    (["eval", "--run", "{run}", "--lm", "{arpa}", "--tune-weights", "--rescore-batch-size", "0"],
     "--rescore-batch-size"),
    # stream
    (["stream", "--run", "{root}/norun"], "does not exist"),
    (["stream", "--run", "{run}", "--checkpoint", "../other/last.pt"], "run folder"),
    (["stream", "--run", "{run}", "--beam-width", "0"], "--beam-width"),
    (["stream", "--run", "{run}", "--hop", "0"], "--hop"),
    (["stream", "--run", "{run}", "--max-trials", "-1"], "--max-trials"),
    (["stream", "--run", "{run}", "--max-trials", "0"], "--max-trials"),
    (["stream", "--run", "{run}", "--split", "nosuch"], "nosuch"),
    (["stream", "--run", "{run}", "--device", "foo"], "--device"),
    (["stream", "--run", "{run}", "--lm", "{garbage}", "--lexicon", "train"], "garbage.arpa"),
    (["stream", "--run", "{run}", "--lm", "{missing}"], "missing.arpa"),
    (["stream", "--run", "{run}", "--lm", "{arpa}", "--lexicon", "{badlex}"], "bad.lex"),
    (["stream", "--run", "{run}", "--lm", "{arpa}", "--lexicon", "train", "--word-beam-width", "0"],
     "--word-beam-width"),
    (["stream", "--run", "{run}", "--lm", "{arpa}", "--lexicon", "train", "--lm-weight", "nan"], "--lm-weight"),
    # plot
    (["plot", "{root}/norun"], "norun"),
    (["plot", "{empty}"], "metrics.jsonl"),
    (["plot", "{run}", "--out", "{root}/nofolder/curves.png"], "nofolder"),
    (["plot", "{run}", "--out", "{root}/curves.txt"], "image format"),
    (["plot", "{run}", "--out", "{root}/curves"], "image format"),  # matplotlib would write curves.png instead
    (["plot", "{run}", "--out", "{root}/curves.pgf"], "image format"),
    (["plot", "{run}", "--out", "{empty}"], "it is a folder"),
    # data synth / info
    (["data", "synth", "--format", "b2t24", "--out", "{root}/s.pkl", "--days", "0"], "--days"),
    (["data", "synth", "--format", "b2t24", "--out", "{root}/s.pkl", "--trials-per-day", "-1"], "--trials-per-day"),
    (["data", "synth", "--format", "b2t25", "--out", "{root}/s25", "--features", "0"], "--features"),
    (["data", "synth", "--format", "b2t24", "--out", "{root}/s.pkl", "--seed", "-1"], "--seed"),
    (["data", "synth", "--format", "b2t26", "--out", "{root}/s.pkl"], "--format"),
    (["data", "synth", "--format", "b2t24", "--out", "{empty}"], "empty"),
    (["data", "synth", "--format", "b2t25", "--out", "{garbage}"], "garbage.arpa"),
    (["data", "synth", "--format", "b2t24", "--out", "{corpus}"], "corpus.txt"),
    (["data", "info", "{root}/nothing"], "nothing"),
    (["data", "info", "{badpickle}"], "bad.pkl"),
    (["data", "info", "{empty}"], "empty"),
    (["data", "info", "{corpus}"], "corpus.txt"),
    # bench train
    (["bench", "train", "--config", "{missing}"], "missing.arpa"),
    (["bench", "train", "--config", "demo", "--steps", "0"], "--steps"),
    (["bench", "train", "--config", "demo", "--warmup", "-1"], "--warmup"),
    (["bench", "train", "--config", "demo", "--set", "model.nokey=1"], "model.nokey"),
    # lm build
    (["lm", "build", "--text", "{root}/missing.txt", "--out", "{root}/x.arpa"], "missing.txt"),
    (["lm", "build", "--text", "{corpus}", "--order", "0", "--out", "{root}/x.arpa"], "--order"),
    (["lm", "build", "--text", "{corpus}", "--out", "{root}/nofolder/x.arpa"], "nofolder"),
    (["lm", "build", "--text", "{corpus}", "--out", "{empty}"], "empty"),
    (["lm", "build", "--text", "{blankcorpus}", "--out", "{root}/x.arpa"], "sentence"),
    (["lm", "build", "--text", "{empty}", "--out", "{root}/x.arpa"], "empty"),
    # parity
    (["parity", "--ops", "nosuch"], "nosuch"),
    (["parity", "--device", "foo"], "foo"),
    (["parity", "--dtype", "fp64"], "--dtype"),
    (["parity", "--seed", "abc"], "--seed"),
    (["parity", "--seed", "-5"], "--seed"),  # numpy refuses it: every check would be reported as failed
    # serve's word decoding: the same option group and checks as eval and stream
    (["serve", "--run", "{run}", "--lexicon", "train"], "--lexicon is a word decoding option"),
    (["serve", "--run", "{run}", "--lm", "{arpa}", "--lm-weight", "-1"], "--lm-weight"),
    (["serve", "--run", "{run}", "--lm", "{arpa}", "--word-beam-width", "0"], "--word-beam-width"),
    (["serve", "--run", "{run}", "--lm", "{missing}"], "missing.arpa: no such file"),
]


@pytest.mark.parametrize("argv, needle", CASES, ids=[" ".join(a) or "(none)" for a, _ in CASES])
def test_bad_option_or_file_gives_one_error_line_and_exit_2(env, capsys, argv, needle):
    if argv[:1] == ["plot"] and importlib.util.find_spec("matplotlib") is None:
        pytest.skip("plot checks its --out after importing matplotlib (the plot extra), which is not installed")
    code, _, err = run_cli([a.format(**env) for a in argv], capsys)
    line = one_error_line(err)
    assert code == 2, err
    assert needle in line, line


def test_rescore_lm_on_an_empty_folder_and_on_a_non_causal_model(env, capsys):
    pytest.importorskip("transformers", reason="--rescore-lm needs transformers")
    base = ["eval", "--run", env["run"], "--lm", env["arpa"], "--lexicon", "train", "--rescore-lm"]
    code, _, err = run_cli(base + [env["empty"]], capsys)
    line = one_error_line(err)
    assert code == 2 and "not a model folder" in line and "sentencepiece" not in line, line
    code, _, err = run_cli(base + [_t5_folder(env["root"])], capsys)
    line = one_error_line(err)
    assert code == 2 and "t5 model, which is not a causal LM" in line, line
    assert len(line) < 300, line  # the reason, not transformers' list of every model type
    assert not list(env["run"].glob("predictions_*")), "refused before evaluating"


def test_checkpoint_outside_the_run_folder_is_refused_before_evaluating(env, capsys):
    code, _, err = run_cli(["eval", "--run", env["run"], "--checkpoint", "../other/last.pt"], capsys)
    assert code == 2 and "a path to another folder is refused" in one_error_line(err)
    assert not list(env["run"].glob("predictions_*")) and not list(env["root"].glob("other/predictions_*"))
    from fastdecoder.checkpoint import run_checkpoint_path

    assert run_checkpoint_path(env["run"], "best") == env["run"] / "best.pt"
    assert run_checkpoint_path(env["run"], "step2.pt") == env["run"] / "step2.pt"


def test_lm_build_creates_no_folder(env, capsys):
    target = env["root"] / "made" / "deeper" / "x.arpa"
    code, _, err = run_cli(["lm", "build", "--text", env["corpus"], "--out", target], capsys)
    assert code == 2 and "is not an existing folder" in one_error_line(err)
    assert not (env["root"] / "made").exists()


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"not valid JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_stream_and_eval_print_valid_json(env, capsys):
    code, out, _ = run_cli(["stream", "--run", env["run"], "--max-trials", "1", "--beam-width", "2"], capsys)
    assert code == 0 and _strict_json(out)["trials"] == 1
    code, out, _ = run_cli(["eval", "--run", env["run"], "--decoder", "beam", "--beam-width", "2"], capsys)
    assert code == 0 and _strict_json(out)["beam_width"] == 2


def test_undefined_rates_are_null_not_nan(env):
    """A split whose references are all empty has no PER: the report and the CLI's JSON say null."""
    from dataclasses import replace

    from fastdecoder.cli import _json_text
    from fastdecoder.data import load_dataset
    from fastdecoder.stream import StreamingDecoder
    from fastdecoder.stream.replay import replay

    split = load_dataset(env["data"]).splits["val"]
    empty_refs = replace(split, targets=[np.zeros(0, dtype=np.int64) for _ in split.targets])
    report = replay(StreamingDecoder.from_run(env["run"], "best", beam_width=2), empty_refs, max_trials=1)
    assert report.per_beam is None and report.per_greedy is None
    assert "per_beam" not in report.as_dict()
    assert _strict_json(_json_text({"per": float("nan"), "x": [float("inf"), 1.5]})) == {"per": None, "x": [None, 1.5]}


def test_replay_refuses_a_negative_trial_count(env):
    from fastdecoder.data import load_dataset
    from fastdecoder.stream import StreamingDecoder
    from fastdecoder.stream.replay import replay

    split = load_dataset(env["data"]).splits["val"]
    dec = StreamingDecoder.from_run(env["run"], "best", beam_width=2)
    for bad in (-1, 0, 1.5, True):
        with pytest.raises(UserError, match="max_trials"):
            replay(dec, split, max_trials=bad)


def test_streaming_decoder_names_the_bad_beam_width(env):
    from fastdecoder.stream import StreamingDecoder

    with pytest.raises(UserError, match="beam_width must be >= 1, got 0"):
        StreamingDecoder.from_run(env["run"], "best", beam_width=0)


def test_decode_api_raises_user_error_for_bad_input(env, tmp_path):
    """The documented error type of fastdecoder.decode: UserError (a ValueError) naming the argument or file."""
    from fastdecoder.decode import Lexicon, WordDecoder, beam_search, build_lm, load_arpa, load_lexicon

    lp = torch.log_softmax(torch.randn(1, 5, 41), -1)
    cases = [
        (lambda: beam_search(lp, beam_width=0), "beam_width must be >= 1"),
        (lambda: beam_search(lp, beam_width=2, nbest=3), "nbest=3 exceeds beam_width=2"),
        (lambda: load_arpa(env["missing"]), "missing.arpa: no such file"),
        (lambda: load_arpa(env["garbage"]), "garbage.arpa: ARPA"),
        (lambda: load_arpa(env["badgz"]), "broken gzip"),
        (lambda: Lexicon.from_file(env["badlex"]), "bad.lex: lexicon line 2"),
        (lambda: load_lexicon(env["emptylex"]), "empty"),
        (lambda: WordDecoder(Lexicon.from_pronunciations({"a": [1]}), lm_weight=float("nan")), "lm_weight"),
        (lambda: WordDecoder(Lexicon.from_pronunciations({"a": [1]}), beam_width=0), "beam_width"),
        (lambda: WordDecoder(Lexicon.from_pronunciations({"a": [1]}), beam_width=2, nbest=3), "nbest=3"),
        (lambda: build_lm(["a b"], 2, tmp_path / "no" / "x.arpa"), "is not an existing folder"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message):
            call()
    assert issubclass(UserError, ValueError)


def test_a_plain_value_error_is_a_bug_and_keeps_its_traceback(monkeypatch):
    import fastdecoder.cli as cli

    def buggy(args):
        raise ValueError("a bug inside a command")

    monkeypatch.setattr(cli, "cmd_lm", buggy)
    with pytest.raises(ValueError, match="a bug inside a command"):
        main(["lm", "build", "--text", "x", "--out", "y"])


@pytest.mark.parametrize("argv, needle", [
    (["eval", "--run", "{run}", "--lm", "{missing}"], "missing.arpa"),
    (["stream", "--run", "{run}", "--lm", "{arpa}", "--lexicon", "train", "--lm-weight", "nan"], "--lm-weight"),
    (["data", "synth", "--format", "b2t24", "--out", "{root}/s.pkl", "--days", "0"], "--days"),
    (["lm", "build", "--text", "{corpus}", "--out", "{root}/nofolder/x.arpa"], "nofolder"),
])
def test_real_process_exit_status_and_stderr(env, argv, needle):
    argv = [a.format(**env) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "fastdecoder.cli", *argv], capture_output=True, text=True,
                          timeout=300, env={**_env(), "PYTHONPATH": SRC})
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert needle in line, line


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


# ---------------------------------------------------------------------------------------------------------- probe
# Hypothesis draws option values (integers of any size, floats with nan / inf / negatives, odd strings, paths to
# missing, empty, garbage and special files) for eval / stream / data / lm; whatever it draws, the command either
# works (exit 0, valid JSON where it prints JSON) or prints one error line (exit 2). CLI_PROBE_EXAMPLES=500 runs
# longer; sizes that only cost time (data synth counts, lm build --order) are drawn small.
import collections  # noqa: E402

from hypothesis import HealthCheck, example, given, settings, strategies as st  # noqa: E402

PROBE = settings(max_examples=int(__import__("os").environ.get("CLI_PROBE_EXAMPLES", "12")), deadline=None,
                 suppress_health_check=list(HealthCheck), derandomize=False)

_ODD = ["", " ", "-", "--", "0x10", "1e3", "1_0", "+3", "٣", "nan", "-inf", "inf", "1e309", "-0", "None", "true",
        "a b", "é", "\t", "~", ".", "..", "../..", "/", "-1e-300"]
_INTS = st.one_of(st.integers(-3, 80), st.integers(-2**70, 2**70), st.sampled_from([65536, 65537, 2**31, 2**63]))
_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-320, 1e308]))


PROBE_EXITS: collections.Counter = collections.Counter()  # (command, exit status) -> examples, for a long run's note


def _number_text(draw_ints=True):
    parts = [_FLOATS.map(repr), st.sampled_from(_ODD)]
    if draw_ints:
        parts.insert(0, _INTS.map(str))
    return st.one_of(*parts)


def _paths(env):
    names = ["missing", "garbage", "malformed", "emptyfile", "badgz", "gzgarbage", "badlex", "emptylex", "badyaml",
             "badpickle", "corpus", "empty", "root", "arpa", "run"]
    return st.one_of(st.sampled_from([str(env[n]) for n in names]),
                     st.sampled_from(["/dev/null", "/dev/zero", "/", "/proc/self/status", "../x", "nosuch"]),
                     st.sampled_from(_ODD))


def _options(env, table):
    """A list of (option, value) pairs drawn from ``table``: option -> strategy of its text."""
    keys = sorted(table)
    return st.lists(st.sampled_from(keys), max_size=4, unique=True).flatmap(
        lambda ks: st.tuples(*[st.tuples(st.just(k), table[k]) for k in ks]) if ks else st.just(()))


def _probe(argv):
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    assert code in (0, 2), (argv, code, err.getvalue())
    PROBE_EXITS[argv[0] if argv[0] != "data" else f"data {argv[1]}", code] += 1
    if code == 2:
        one_error_line(err.getvalue())
    return code, out.getvalue()


def _flat(pairs):
    return [x for k, v in pairs for x in ((k,) if v is None else (k, v))]


def test_probe_eval_options(env):
    paths = _paths(env)
    table = {"--beam-width": _number_text(), "--word-beam-width": _number_text(), "--nbest": _number_text(),
             "--lm-weight": _number_text(), "--rescore-weight": _number_text(False),
             "--rescore-ngram-weight": _number_text(False), "--rescore-word-bonus": _number_text(False),
             "--rescore-batch-size": _number_text(), "--split": st.sampled_from(["val", "test", "train", "x", ""]),
             "--checkpoint": st.one_of(st.sampled_from(["best", "last", "best.pt", "config.yaml", "x"]), paths),
             "--lm": paths, "--lexicon": st.one_of(st.sampled_from(["train", "cmudict"]), paths), "--data": paths,
             "--decoder": st.sampled_from(["greedy", "beam", "x"]), "--device": st.sampled_from(["cpu", "auto", "x"]),
             "--tune-weights": st.none()}

    @PROBE
    @given(_options(env, table))
    @example((("--decoder", "beam"), ("--beam-width", "3"), ("--lm", str(env["arpa"])), ("--lm-weight", "1e-300")))
    def probe(pairs):
        pairs = list(pairs)
        if any(k == "--lm" for k, _ in pairs) and not any(k == "--lexicon" for k, _ in pairs):
            pairs.append(("--lexicon", "train"))  # the default lexicon (cmudict) does not know the synthetic words
        code, out = _probe(["eval", "--run", str(env["run"]), *_flat(pairs)])
        if code == 0:
            _strict_json(out)

    probe()
    assert PROBE_EXITS["eval", 0] >= 1, "the probe never reached a working command"


def test_probe_stream_options(env):
    paths = _paths(env)
    table = {"--beam-width": _number_text(), "--hop": _number_text(), "--max-trials": _number_text(),
             "--word-beam-width": _number_text(), "--lm-weight": _number_text(),
             "--checkpoint": st.one_of(st.sampled_from(["best", "last"]), paths), "--lm": paths,
             "--lexicon": st.one_of(st.just("train"), paths), "--split": st.sampled_from(["val", "test", "x"]),
             "--quiet": st.none()}

    @PROBE
    @given(_options(env, table))
    @example((("--hop", "7"), ("--lm", str(env["arpa"])), ("--word-beam-width", "2"), ("--quiet", None)))
    def probe(pairs):
        pairs = list(pairs)
        if any(k == "--lm" for k, _ in pairs) and not any(k == "--lexicon" for k, _ in pairs):
            pairs.append(("--lexicon", "train"))
        if not any(k == "--max-trials" for k, _ in pairs):
            pairs.append(("--max-trials", "1"))
        code, out = _probe(["stream", "--run", str(env["run"]), *_flat(pairs)])
        if code == 0:
            _strict_json(out)

    probe()
    assert PROBE_EXITS["stream", 0] >= 1, "the probe never reached a working command"


def test_probe_data_and_lm_options(env, tmp_path_factory):
    paths = _paths(env)
    small = st.one_of(st.integers(-3, 6).map(str), st.sampled_from(_ODD), _FLOATS.map(repr))
    probe_root = tmp_path_factory.mktemp("probe_out")
    (probe_root / "file.txt").write_text("not a dataset\n")
    (probe_root / "full").mkdir()
    (probe_root / "full" / "keep.txt").write_text("x\n")
    # outputs go to fresh names or to targets in probe_root only (nothing relative to the working folder, no device)
    fresh = st.integers(0, 10**9).map(lambda i: str(probe_root / f"new{i}"))
    outs = st.one_of(fresh, st.sampled_from([str(probe_root / "file.txt"), str(probe_root / "full"),
                                             str(probe_root / "nofolder" / "x"), "/proc/nope/x"]))
    synth = {"--days": small, "--trials-per-day": small, "--features": small, "--seed": _number_text()}
    lm = {"--order": small}

    @PROBE
    @given(st.sampled_from(["synth", "info", "lm"]), st.sampled_from(["b2t24", "b2t25"]),
           outs, _options(env, synth), _options(env, lm), paths)
    @example("synth", "b2t24", str(probe_root / "ok.pkl"), (("--days", "2"), ("--trials-per-day", "3")), (), "")
    @example("info", "b2t24", "", (), (), str(env["data"]))
    @example("lm", "b2t24", str(probe_root / "ok.arpa"), (), (("--order", "2"),), str(env["corpus"]))
    def probe(which, fmt, out, synth_pairs, lm_pairs, path):
        if which == "synth":
            _probe(["data", "synth", "--format", fmt, "--out", out, *_flat(synth_pairs)])
        elif which == "info":
            _probe(["data", "info", path])
        else:
            _probe(["lm", "build", "--text", path, "--out", out, *_flat(lm_pairs)])

    probe()
    assert all(PROBE_EXITS[c, 0] >= 1 for c in ("data synth", "data info", "lm")), PROBE_EXITS
    print("probe exits:", dict(PROBE_EXITS))


def test_probe_hostile_lm_lexicon_and_data_files(env, tmp_path_factory):
    """Mutated ARPA files, lexicons, corpora and pickles (plain and gzip): loading raises UserError or works."""
    from fastdecoder.data import load_dataset
    from fastdecoder.decode import Lexicon, build_lm, load_arpa

    good_arpa = Path(env["arpa"]).read_bytes().splitlines(keepends=True)
    tokens = st.sampled_from([b"\\data\\", b"\\end\\", b"\\1-grams:", b"\\2-grams:", b"ngram 1=3", b"ngram 2=-1",
                              b"ngram 9=99999999999", b"-1.5", b"nan", b"inf", b"-99", b"<s>", b"</s>", b"<unk>",
                              b"\xff\xfe", b"\x00", b"\t", b" ", b"\n", b"AH", b"HH", b"XX", b"(2)", b"#", b"word"])
    noise = st.lists(tokens, max_size=12).map(b"".join)
    mutated = st.tuples(st.lists(st.tuples(st.integers(0, len(good_arpa)), noise), max_size=4),
                        st.lists(st.integers(0, len(good_arpa) - 1), max_size=4))
    folder = tmp_path_factory.mktemp("probe_files")

    def mutate(spec) -> bytes:
        inserts, deletes = spec
        lines = [line for i, line in enumerate(good_arpa) if i not in set(deletes)]
        for at, text in inserts:
            lines.insert(min(at, len(lines)), text + b"\n")
        return b"".join(lines)

    @PROBE
    @given(st.one_of(mutated.map(mutate), st.binary(max_size=200), noise), st.booleans(),
           st.sampled_from(["arpa", "lexicon", "corpus", "pickle"]))
    def probe(data, gz, kind):
        if kind == "pickle":
            data = b"\x80\x04" + data
        path = folder / f"f.{kind}"
        path.write_bytes(gzip.compress(data) if gz else data)
        load = {"arpa": load_arpa, "lexicon": Lexicon.from_file, "corpus": lambda p: build_lm(p, 2),
                "pickle": load_dataset}[kind]
        try:
            load(path)
        except UserError as e:
            assert str(e).strip(), kind
        PROBE_EXITS["files", kind] += 1

    probe()
