"""Every code block of README.md and docs/*.md runs here.

- ``python`` blocks run, in order, one namespace per page, against small stand-ins for what they name: the published
  reference checkpoints (random weights in the cffan and NEJM layouts, at the paths the pages use), run folders (tiny
  untrained runs), ``lm.arpa`` (a 2-gram of English sentences), a local causal LM, and the arrays the text describes
  (``x``, ``day_idx``, ``lengths``, ``targets``, ...).
- ``bash`` blocks: every command is checked (``fastdecoder ...`` against the command line's parser: the subcommand and
  every flag must exist and every value must parse; ``make`` targets against the Makefile; ``pip install`` extras
  against pyproject.toml; scripts and their flags against the script). A block preceded by ``<!-- test: run -->``
  also runs, in the page's order, in a temporary folder; every other block says why it cannot run here with
  ``<!-- needs: REASON -->`` (real data, a GPU, a server, minutes of CPU).
- ``yaml`` blocks (configs, search spaces) carry ``<!-- file: NAME -->``: they are written to NAME for the page's
  later blocks, which read them.

Also: the README stays a front page (at most 180 lines) and every relative link of the README and the docs resolves.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
OTHER_MARKDOWN = [ROOT / "CHANGELOG.md"]
SENTENCES = ["hello world", "how are you", "the cat sat on the mat", "you are here", "hello there"]
SHELL = {"bash", "sh", "shell"}
LANGUAGES = SHELL | {"python", "text", "yaml"}
MARKER = re.compile(r"<!--\s*(test:\s*run|needs:\s*(?P<reason>[^>]*?)|file:\s*(?P<file>[\w./-]+))\s*-->")


@dataclass
class Block:
    page: Path
    line: int           # 1-based line of the opening fence
    lang: str
    code: str
    run: bool           # <!-- test: run -->
    needs: str | None   # <!-- needs: REASON -->
    file: str | None    # <!-- file: NAME --> (a yaml block the page's later blocks read)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page, each with the marker comment on the lines just before it (if any)."""
    lines = page.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        assert j < len(lines), f"{page.name}:{start + 1}: code block never closed"
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = MARKER.fullmatch(lines[k].strip()) if k >= 0 else None
        out.append(Block(page, start + 1, lang, "\n".join(lines[start + 1:j]) + "\n",
                         run=bool(marker and marker.group(1).startswith("test")),
                         needs=marker.group("reason").strip() if marker and marker.group("reason") else None,
                         file=marker.group("file") if marker else None))
        i = j + 1
    return out


def shell_commands(code: str) -> list[list[str]]:
    """argv of each command of a shell block: continuation lines joined, comments and a trailing ``&`` dropped."""
    joined = re.sub(r"\\\n", " ", code)
    cmds = []
    for line in joined.splitlines():
        argv = shlex.split(line, comments=True)
        if argv and argv[-1] == "&":
            argv = argv[:-1]
        if argv:
            cmds.append(argv)
    return cmds


def fastdecoder_argv(argv: list[str]) -> list[str] | None:
    """The arguments given to the fastdecoder command line, or None when ``argv`` calls something else."""
    if Path(argv[0]).name == "fastdecoder":
        return argv[1:]
    if Path(argv[0]).name in ("python", "python3", "torchrun") and "-m" in argv:
        i = argv.index("-m")
        if argv[i + 1] in ("fastdecoder", "fastdecoder.cli"):
            return argv[i + 2:]
    return None


class _Parsed(Exception):
    pass


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with the fastdecoder command line's own parser and stop there (nothing runs)."""
    from fastdecoder import cli

    parse_args = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        raise _Parsed(parse_args(self, args, namespace))

    err = io.StringIO()
    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_only), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main(list(argv))
        except _Parsed as parsed:
            return parsed.args[0]
        except SystemExit as e:
            raise AssertionError(f"'fastdecoder {shlex.join(argv)}' does not parse (exit {e.code}): "
                                 f"{err.getvalue().strip()}") from None
    raise AssertionError(f"'fastdecoder {shlex.join(argv)}': the command line returned without parsing")


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w.-]*):", (ROOT / "Makefile").read_text(), re.M))


def _extras() -> set[str]:
    import tomllib

    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def check_command(argv: list[str], where: str) -> str:
    """Check one documented command against what it names; returns its kind."""
    fd = fastdecoder_argv(argv)
    if fd is not None:
        parse_cli(fd)
        return "fastdecoder"
    if argv[0] == "make":
        missing = set(argv[1:]) - _makefile_targets()
        assert not missing, f"{where}: no make target {sorted(missing)}"
        return "make"
    if argv[:2] == ["pip", "install"]:
        for spec in argv[2:]:
            if spec == "-e":
                continue
            m = re.fullmatch(r"(fastdecoder|\.)(\[([\w,-]+)\])?", spec)
            assert m, f"{where}: pip installs {spec!r}, not this package"
            missing = set((m.group(3) or "").split(",")) - {""} - _extras()
            assert not missing, f"{where}: pyproject.toml has no extra {sorted(missing)}"
        return "pip"
    if Path(argv[0]).name in ("python", "python3") and argv[1].endswith(".py"):
        script = ROOT / argv[1]
        assert script.is_file(), f"{where}: no script {argv[1]}"
        source = script.read_text()
        for flag in (a for a in argv[2:] if a.startswith("--")):
            assert f'"{flag}"' in source, f"{where}: {argv[1]} has no option {flag}"
        return "script"
    raise AssertionError(f"{where}: a command this test cannot check: {shlex.join(argv)}")


# ---- the stand-ins the pages' examples use --------------------------------------------------------------------------

def _gru_state(prefix, n_in, hidden, layers, bidirectional):
    gru = torch.nn.GRU(n_in, hidden, layers, bidirectional=bidirectional, batch_first=True)
    return {f"{prefix}.{k}": v.detach().clone() for k, v in gru.state_dict().items()}


def _reference_checkpoints(root: Path, C: int, D: int, H: int) -> None:
    """Random-weight checkpoints in the layouts load_reference_checkpoint reads, where the pages point."""
    sd = {"dayWeights": torch.eye(C).repeat(D, 1, 1), "dayBias": torch.zeros(D, 1, C),
          "gaussianSmoother.weight": torch.full((C, 1, 20), 1 / 20), "fc_decoder_out.weight": torch.randn(41, 2 * H),
          "fc_decoder_out.bias": torch.zeros(41), "inpLayer0.weight": torch.eye(C), "inpLayer0.bias": torch.zeros(C)}
    sd.update(_gru_state("gru_decoder", 32 * C, H, 1, True))
    (root / "neural_seq_decoder/outputs").mkdir(parents=True)
    torch.save(sd, root / "neural_seq_decoder/outputs/modelWeights")
    msd = {f"day_weights.{i}": torch.eye(C) for i in range(D)}
    msd.update({f"day_biases.{i}": torch.zeros(1, C) for i in range(D)})
    msd.update(_gru_state("gru", 14 * C, H, 1, False))
    msd.update({"out.weight": 4 * torch.randn(41, H), "out.bias": torch.zeros(41), "h0": torch.zeros(1, 1, H)})
    (root / "trained_models/baseline_rnn/checkpoint").mkdir(parents=True)
    torch.save({"model_state_dict": msd}, root / "trained_models/baseline_rnn/checkpoint/best_checkpoint")


C, D, H, B, T = 8, 3, 16, 3, 60


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder holding what the pages' examples read: checkpoints, run folders, a corpus and a 2-gram LM (the causal
    LM is added for the pages that load one)."""
    from fastdecoder.config import config_from_dict
    from fastdecoder.decode import build_lm
    from fastdecoder.testing.tiny import TRAIN_DEFAULTS, tiny_config, tiny_data
    from fastdecoder import Trainer

    root = tmp_path_factory.mktemp("docs")
    torch.manual_seed(0)
    _reference_checkpoints(root, C, D, H)
    cfg = config_from_dict(tiny_config(
        "readme", data=tiny_data(3, trials_per_day=8, val_trials_per_day=3, n_features=C), model={"hidden_size": H},
        augment=None, optim=None, train=TRAIN_DEFAULTS))
    trainer = Trainer(cfg, root / "runs/b2t25", progress=False)
    trainer.save("best.pt")
    for name in ("a", "b", "demo"):
        shutil.copytree(root / "runs/b2t25", root / "runs" / name)
    # the stand-in corpus: English sentences and the tiny data's own (so `--lexicon train` covers the LM's words)
    (root / "corpus.txt").write_text("\n".join(SENTENCES + list(trainer.train_split.transcriptions)) + "\n")
    build_lm(root / "corpus.txt", 2, root / "lm.arpa")
    return root, list(trainer.val_split.transcriptions)


def _namespace(references) -> dict:
    from fastdecoder.ops import sample_masks

    rng = np.random.default_rng(0)

    def log_softmax(a):
        return a - np.logaddexp.reduce(a, axis=-1, keepdims=True)

    ns = {
        "torch": torch, "np": np,
        "x": torch.randn(B, T, C), "day_idx": torch.tensor([0, 2, 1]), "lengths": torch.tensor([T, 50, 40]),
        "targets": [[7, 3, 40], [20, 40], [1, 2, 3, 40]], "step": 5,
        "day": 1, "source": [rng.standard_normal((n, C)).astype(np.float32) for n in (5, 0, 17, 30)],
        "lp_a": [log_softmax(rng.standard_normal((n, 41))).astype(np.float32) for n in (7, 4)],
        "lp_b": [log_softmax(rng.standard_normal((n, 41))).astype(np.float32) for n in (7, 4)],
        "references": references,
    }
    ns["tm"], ns["fm"] = sample_masks(B, T, C, lengths=ns["lengths"], time_prob=0.5, time_max_width=5,
                                      time_max_count=2, freq_prob=0.5, freq_max_width=2, freq_max_count=1)
    return ns


def _after_readme(ns, cwd):
    assert ns["log_probs"].shape[0] == 2 and ns["log_probs"].shape[2] == 41 and len(ns["nbest"]) == 2


def _after_decoding(ns, cwd):
    from fastdecoder.eval_outputs import load_logits

    assert sorted(p.name for p in (cwd / "runs/b2t25").glob("predictions_val_best_*words*.jsonl"))
    assert load_logits(cwd / "logits.npz")["per_trial"] and (cwd / "nbest.jsonl").read_text().strip()
    assert (cwd / "submission.csv").read_text() == "id,text\n0,hello world\n1,how are you\n"
    assert isinstance(ns["per"], float) and ns["n_phonemes"] == 9
    assert len(ns["best"]) == len(ns["references"])


def _after_streaming(ns, cwd):
    assert ns["final"].hypotheses is not None and ns["p"].bins >= 0


def _after_fast_path(ns, cwd):
    assert tuple(ns["y"].shape) == (3, 60, 16) and tuple(ns["h"].shape) == (2, 3, 16)


def _after_training(ns, cwd):
    assert (cwd / "runs/tiny/best.pt").is_file() and (cwd / "runs/tiny/predictions_val_best_beam.jsonl").is_file()


def _after_tuning(ns, cwd):
    assert ns["space"].keys[:2] == ["optim.lr", "optim.eps"] and len(ns["space"].keys) == 6


AFTER = {"tuning.md": _after_tuning, "README.md": _after_readme, "decoding.md": _after_decoding, "streaming.md": _after_streaming,
         "fast-path.md": _after_fast_path, "training.md": _after_training}


# ---- the tests -----------------------------------------------------------------------------------------------------

def _runs_code(page: Path) -> bool:
    return any(b.lang == "python" or b.file or (b.lang in SHELL and b.run) for b in blocks(page))


@pytest.mark.parametrize("page", [p for p in PAGES if _runs_code(p)], ids=lambda p: p.name)
def test_code_blocks_run(page, workspace, tmp_path, monkeypatch):
    """The page's python blocks and its ``test: run`` shell blocks, in order, in a copy of the workspace."""
    from fastdecoder import cli

    root, references = workspace
    page_blocks = blocks(page)
    cwd = tmp_path / "ws"
    shutil.copytree(root, cwd)
    if any("NeuralLM(" in b.code for b in page_blocks if b.lang == "python"):
        pytest.importorskip("transformers", reason="a rescoring example loads a causal LM (pip install "
                                                    "'fastdecoder[llm]')")
        from fastdecoder.testing.tiny_lm import save_tiny_lm

        save_tiny_lm(cwd / "path/to/llm", {w for s in SENTENCES for w in s.split()})
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)   # CPU tensors take the reference ops (backend 'auto')
    torch.manual_seed(0)
    ns = _namespace(references)
    for block in page_blocks:
        if block.file:
            (cwd / block.file).write_text(block.code)
        elif block.lang == "python":
            exec(compile(block.code, block.where, "exec"), ns)
        elif block.lang in SHELL and block.run:
            for argv in shell_commands(block.code):
                fd = fastdecoder_argv(argv)
                assert fd is not None, f"{block.where}: only fastdecoder commands run here: {shlex.join(argv)}"
                assert cli.main(fd) == 0, f"{block.where}: '{shlex.join(argv)}' failed"
    if page.name in AFTER:
        AFTER[page.name](ns, cwd)


def test_shell_blocks_checked():
    """Every command of every shell block names what exists; each block runs here or says what it needs."""
    counts = {"run": 0, "needs": 0}
    kinds: dict[str, int] = {}
    for page in PAGES:
        for block in blocks(page):
            assert block.lang in LANGUAGES, f"{block.where}: code block language {block.lang!r} (one of " \
                                            f"{sorted(LANGUAGES)})"
            if block.lang == "yaml":
                assert block.file, f"{block.where}: a yaml block needs '<!-- file: NAME -->' (a later block reads it)"
            if block.lang not in SHELL:
                continue
            assert block.run or block.needs, f"{block.where}: a shell block needs '<!-- test: run -->' or " \
                                             "'<!-- needs: REASON -->' on the line before it"
            counts["run" if block.run else "needs"] += 1
            for argv in shell_commands(block.code):
                kind = check_command(argv, block.where)
                kinds[kind] = kinds.get(kind, 0) + 1
    print(f"shell blocks: {counts}; commands checked: {kinds}")
    assert counts["run"] >= 3 and kinds.get("fastdecoder", 0) >= 50, (counts, kinds)


def test_parse_check_catches_a_wrong_flag():
    """The parser check is a real one: an unknown flag, subcommand or bad value fails it."""
    parse_cli(["eval", "--run", "runs/x", "--decoder", "beam"])
    for bad in (["eval", "--run", "runs/x", "--decoder", "nope"], ["eval", "--run", "runs/x", "--no-such-flag"],
                ["no-such-command"], ["eval", "--beam-width", "0", "--run", "r"]):
        with pytest.raises(AssertionError, match="does not parse"):
            parse_cli(bad)


def test_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 180, f"README.md has {len(lines)} lines; move detail to docs/"
    first_shell = next(b for b in blocks(README) if b.lang in SHELL)
    assert [a[:2] for a in shell_commands(first_shell.code)] == [["make", "run"], ["make", "test"]]
    ci = (ROOT / ".ci/run").read_text()
    assert re.search(r"^make test$", ci, re.M), "CI runs the README's test command"
    linked = set(re.findall(r"\]\((docs/[^)#]+)", README.read_text()))
    assert {p.relative_to(ROOT).as_posix() for p in PAGES[1:]} <= linked, "the README links every page of docs/"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a page."""
    out = set()
    for line in page.read_text().splitlines():
        m = re.match(r"^#+\s+(.*)$", line)
        if m:
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", m.group(1).strip().lower())))
    return out


@pytest.mark.parametrize("page", PAGES + OTHER_MARKDOWN, ids=lambda p: p.name)
def test_links_resolve(page):
    """Every relative link (and its #anchor) points at a file of the repository (and a heading of it)."""
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target}: no such file"
        assert ROOT in dest.parents or dest == ROOT, f"{page.name}: link {target} leaves the repository"
        if anchor:
            assert anchor in _anchors(dest), f"{page.name}: link to {target}: no such heading"


def _resolve(dotted: str):
    """The object a dotted name ``fastdecoder.a.b`` names: the longest importable module, then attributes."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


@pytest.mark.parametrize("page", PAGES + OTHER_MARKDOWN, ids=lambda p: p.name)
def test_named_code_exists(page):
    """Every ``fastdecoder.x.y`` the text names resolves, and every repository path it names exists."""
    spans = re.findall(r"`([^`\n]+)`", page.read_text())
    for span in spans:
        for dotted in re.findall(r"^(fastdecoder(?:\.\w+)+)", span):
            try:
                _resolve(dotted)
            except (ImportError, AttributeError) as e:
                raise AssertionError(f"{page.name}: `{span}` names nothing ({e})") from None
        m = re.fullmatch(r"((?:src|csrc|tests|bench|fuzz)/[\w./-]*|fastdecoder/[\w./-]+)", span)
        if m:
            path = ROOT / ("src/" + span if span.startswith("fastdecoder/") else span)
            assert path.exists(), f"{page.name}: `{span}`: no such file or folder in the repository"


def _deviation_entries():
    """(key, value or None, presets the value is a deviation for) of each key in the faithfulness table."""
    text = (ROOT / "docs/faithfulness.md").read_text()
    table = text[text.index("## Deviations"):]
    table = table[:table.index("\n## ")]
    out = []
    for row in re.findall(r"^\| (`.*?) \|", table, re.M):
        key = None
        # `section.key: value` (preset), or `section.key`; "/ `value` (preset)" gives the same key another value
        for m in re.finditer(r"(/\s*)?`([^`]+)`(?:\s*\((b2t2[45])\))?", row):
            km = re.fullmatch(r"([a-z_]+\.[a-z0-9_*]+)(?::\s*(.+))?", m.group(2))
            if km:
                key, value = km.group(1), km.group(2)
            elif m.group(1) and key:
                value = m.group(2)
            else:
                continue
            out.append((key, value, (m.group(3),) if m.group(3) else ("b2t25", "b2t24")))
    return out


def test_faithfulness_table_keys_are_config_keys_off_in_the_presets():
    """Each key of the faithfulness table is a config key, and the presets do not hold its deviation value."""
    import dataclasses

    import yaml

    from fastdecoder.config import Config, load_config

    entries = _deviation_entries()
    assert len(entries) >= 22, entries
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    presets = {name: load_config(name) for name in ("b2t25", "b2t24")}
    defaults = Config()
    for key, value, which in entries:
        section, name = key.split(".")
        fields = [f.name for f in dataclasses.fields(getattr(defaults, section))]
        matching = [f for f in fields if re.fullmatch(name.replace("*", ".*"), f)]
        assert matching, f"faithfulness table: {key} is not a config key"
        if value is None or "*" in name:
            continue
        for preset in which:
            held = getattr(getattr(presets[preset], section), name)
            if re.fullmatch(r"[A-Z]+", value):     # a placeholder (N, K, RUN): off means the field's default
                assert held == getattr(getattr(defaults, section), name), f"{preset} sets {key} = {held!r}"
            else:
                assert held != yaml.safe_load(value), f"the {preset} preset holds the deviation {key}: {value}"
