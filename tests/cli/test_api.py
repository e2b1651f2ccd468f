"""The package's front door: the main API importable from ``fastdecoder``, ``python -m fastdecoder``, ``--version``."""
from __future__ import annotations

import subprocess
import sys

import pytest

import fastdecoder


@pytest.mark.parametrize("name", [n for n in fastdecoder.__all__ if n != "__version__"])
def test_every_exported_name_resolves(name):
    value = getattr(fastdecoder, name)
    assert value is not None and getattr(value, "__name__", name) == name


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        fastdecoder.no_such_thing  # noqa: B018


def test_python_m_fastdecoder_and_version():
    r = subprocess.run([sys.executable, "-m", "fastdecoder", "--version"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"fastdecoder {fastdecoder.__version__}"


def test_help_imports_no_torch():
    """``fastdecoder --help`` builds every parser without importing torch (the commands import it when they run)."""
    code = ("import sys\nfrom fastdecoder.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False", "fastdecoder --help imported torch"


def test_parity_choices_match_the_parity_module():
    from fastdecoder import cli, parity

    assert cli.PARITY_OPS == parity.OPS
    assert sorted(cli.PARITY_DTYPES) == sorted(parity.DTYPES)


def test_every_command_is_registered_with_its_handler():
    """Each command's parser names the function that runs it (``set_defaults(handler=)``), the same way for all."""
    import argparse

    from fastdecoder.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(["train", "eval", "plot", "data", "bench", "lm", "stream", "config", "parity",
                                          "serve", "replay", "tune", "lr-find"])
    for name, parser in sub.choices.items():
        assert callable(parser.get_default("handler")), name
        assert parser.get_default("handler").__name__ == "cmd_" + name.replace("-", "_"), name
