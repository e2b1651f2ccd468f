"""No top-level module name of this checkout shadows another distribution: run from the repository root (as
``python -m pytest``, a notebook or a script there would), ``import kernels`` must not find our Triton kernels,
and a Hugging Face model that probes for the ``kernels`` distribution must import as it does anywhere else."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib.util, json, sys
sys.path.insert(0, "")  # what `python -m ...` and an interactive session put first: the working folder
spec = importlib.util.find_spec("kernels")
origin = None if spec is None else (spec.origin or str(list(spec.submodule_search_locations or [])))
import fastdecoder, fastdecoder.kernels
print(json.dumps({"kernels": origin, "ours": fastdecoder.kernels.__file__}))
"""

GPT2 = """
import sys
sys.path.insert(0, "")
from transformers import GPT2Config, GPT2LMHeadModel
GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=11, n_positions=8))
print("ok")
"""


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_kernels_is_not_a_top_level_name_of_ours(where, tmp_path):
    cwd = ROOT if where == "root" else tmp_path
    r = _python(PROBE, cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    found = json.loads(r.stdout.strip().splitlines()[-1])
    ours = Path(found["ours"]).resolve().parent
    assert ours.parent.name == "fastdecoder", f"fastdecoder.kernels resolved to {ours}"
    if found["kernels"] is not None:  # only an installed distribution may own the name, never this checkout
        owner = Path(found["kernels"].strip("[]'")).resolve()
        assert "site-packages" in owner.parts or ROOT.resolve() not in owner.parents, found["kernels"]


def test_no_top_level_folder_is_a_package():
    """Folders at the root are namespace portions at most (a regular package installed elsewhere wins over them);
    only ``src/`` holds packages."""
    packages = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))
    assert packages == [], f"top-level folders importable as regular packages: {packages}"


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_hugging_face_model_imports_beside_the_checkout(where, tmp_path):
    pytest.importorskip("transformers", reason="transformers is not installed (the dev extra brings it)")
    r = _python(GPT2, ROOT if where == "root" else tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
