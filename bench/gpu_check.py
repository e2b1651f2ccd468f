"""One call on a GPU machine: check versions, build, run every GPU-marked parity test, time every fast path.

    python bench/gpu_check.py [--out DIR] [--skip-build] [--quick]

Steps (each one's output is kept; the script goes on after a failed step and exits non-zero at the end):
  1. versions: python, torch (+ CUDA), triton, GPU name; refuses to go on without CUDA (use the CPU test suite there)
  2. build: ``pip install --no-build-isolation --no-deps -e .`` (no registry needed: pybind11 must be installed)
  3. parity: ``pytest -m gpu tests`` (the Triton kernels and LN-GRU against their references, on CUDA, fp32 + bf16)
  4. speed: ``pytest bench`` (augmentation, LN-GRU, beam search) with the markdown tables of each suite collected
     into DIR/tables.md, headed by the device's name and the date, ready for bench/RESULTS.md
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIN_TRITON = (3, 6)


def run(cmd: list[str], log: Path, env: dict | None = None) -> int:
    print(f"$ {' '.join(cmd)}", flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        f.write(proc.stdout)
    tail = "\n".join(proc.stdout.splitlines()[-25:])
    print(tail, flush=True)
    print(f"-> exit {proc.returncode} (full log: {log})\n", flush=True)
    return proc.returncode


def versions() -> tuple[dict, bool]:
    info = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda or "none"
        ok = torch.cuda.is_available()
        if ok:
            info["device"] = torch.cuda.get_device_name(0)
            p = torch.cuda.get_device_properties(0)
            info["memory_gib"] = f"{p.total_memory / 2**30:.0f}"
            info["capability"] = f"{p.major}.{p.minor}"
    except ImportError:
        info["torch"] = "missing"
        ok = False
    try:
        import triton

        info["triton"] = triton.__version__
        if tuple(int(v) for v in triton.__version__.split(".")[:2]) < MIN_TRITON:
            print(f"warning: triton {triton.__version__} is older than the {MIN_TRITON} the kernels are written for")
    except ImportError:
        info["triton"] = "missing"
    return info, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="folder for logs and tables")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer benchmark rounds")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    info, has_cuda = versions()
    print("versions:", ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    if not has_cuda:
        print("error: CUDA is not available here; this script checks the GPU paths. On a CPU machine run `make test`.")
        return 2
    failures = []
    if not args.skip_build:
        if run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."],
               out / "build.log"):
            failures.append("build")
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests", "-p", "no:cacheprovider"],
           out / "parity.log", env):
        failures.append("parity")
    tables = out / "tables.md"
    if tables.exists():
        tables.unlink()
    env["FASTDECODER_BENCH_TABLE"] = str(tables.resolve())
    bench_cmd = [sys.executable, "-m", "pytest", "-q", "bench", "-p", "no:cacheprovider",
                 "--benchmark-columns=min,median,mean,rounds"]
    if args.quick:
        bench_cmd += ["--benchmark-max-time=0.5", "--benchmark-min-rounds=3"]
    if run(bench_cmd, out / "bench.log", env):
        failures.append("bench")
    header = (f"# GPU check {dt.date.today().isoformat()}: {info.get('device')} "
              f"(torch {info['torch']}, CUDA {info['cuda']}, triton {info['triton']}, Python {info['python']})\n\n")
    body = tables.read_text() if tables.exists() else "(no tables were written)\n"
    tables.write_text(header + body)
    print(header + body)
    if failures:
        print(f"FAILED steps: {', '.join(failures)}")
        return 1
    print("all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
