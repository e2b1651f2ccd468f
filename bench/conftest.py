"""Benchmark set-up: the test suite's own (tests/conftest.py: Triton interpreter without CUDA, GPU skips,
reproducible seeds), loaded from there rather than copied."""
import importlib.util
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1] / "tests"
_spec = importlib.util.spec_from_file_location("fastdecoder_tests_conftest", _TESTS / "conftest.py")
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)

pytest_collection_modifyitems = _shared.pytest_collection_modifyitems
pytest_report_header = _shared.pytest_report_header
pytest_runtest_setup = _shared.pytest_runtest_setup
pytest_runtest_makereport = _shared.pytest_runtest_makereport
test_seed = _shared.test_seed
rng = _shared.rng
