"""The sanitizer fuzz run (``make fuzz``): the native extensions built with ASAN + UBSAN into build/fuzz/ are loaded
in place of the normal build (they are found first on the package path), and the oracles of tests/ are importable."""
from __future__ import annotations

import os
from pathlib import Path

import fastdecoder

ROOT = Path(__file__).resolve().parent.parent
SANITIZED = ROOT / "build" / "fuzz" / "fastdecoder"
os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("FASTDECODER_FUZZ_SANITIZED", "1") == "1":
    if not any(SANITIZED.glob("_native*.so")) or not any(SANITIZED.glob("_words*.so")):
        raise RuntimeError(f"no sanitized extensions in {SANITIZED}: run `make fuzz` (it builds them first)")
    fastdecoder.__path__.insert(0, str(SANITIZED))
    from fastdecoder import _native, _words  # noqa: E402

    for mod in (_native, _words):
        assert Path(mod.__file__).parent == SANITIZED, f"{mod.__name__} loaded from {mod.__file__}, not {SANITIZED}"
        # linked against the runtimes is not enough: the compiled code must call the checks (a build whose compiler
        # flags never reached the C++ sources has no __asan_report_* / __ubsan_handle_* references)
        so = Path(mod.__file__).read_bytes()
        if b"__asan_report_load" not in so or b"__ubsan_handle_" not in so:
            raise RuntimeError(f"{mod.__file__} is not instrumented by ASAN and UBSAN: rebuild it with `make fuzz` "
                               "(remove build/fuzz first)")
