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

ext = Pybind11Extension(
    "fastdecoder._native",
    sorted(glob.glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=extra,
    extra_link_args=["-pthread"] if sys.platform.startswith("linux") else [],
)

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": build_ext},
)
