"""Build the native extension ``fastdecoder._native`` from ``csrc/``.

Plain C++17 (-O3, portable: no -march=native) behind a thin pybind11 binding that takes NumPy buffers;
no torch headers, so the extension builds against any torch.
"""
import glob
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

extra = ["-O3"] if sys.platform != "win32" else ["/O2"]
if sys.platform.startswith("linux"):
    extra += ["-pthread"]


def native(name: str, sources: list[str]) -> Pybind11Extension:
    return Pybind11Extension(
        name,
        sources,
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=extra,
        extra_link_args=["-pthread"] if sys.platform.startswith("linux") else [],
    )


# _native: greedy CTC, edit distance, phoneme prefix beam search. _words: lexicon + n-gram word decoding.
extensions = [native("fastdecoder._native", sorted(glob.glob("csrc/*.cpp"))),
              native("fastdecoder._words", sorted(glob.glob("csrc/words/*.cpp")))]

setup(
    ext_modules=extensions,
    cmdclass={"build_ext": build_ext},
)
