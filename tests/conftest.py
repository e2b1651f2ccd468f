"""Test set-up: Triton runs through its interpreter where CUDA is absent (set before triton is imported); GPU tests
are skipped without a GPU; random tests are seeded reproducibly.

Seeds: every test gets ``test_seed`` / ``rng`` derived from one base seed and the test's id. The base is
FASTDECODER_TEST_SEED if set, else drawn fresh per session (printed in the header). A failing test prints
``FASTDECODER_TEST_SEED=<base>``, with which the same run replays exactly. Modules that draw seeds themselves call
``seeding.fresh_seed()`` (tests/seeding.py), which follows the same rule and is reported the same way.
"""
import os

import pytest
import torch

from fastdecoder.testing import seeding

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is available on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_report_header(config):
    return f"random tests: {seeding.ENV}={seeding.BASE_SEED} ({seeding.origin()})"


def pytest_runtest_setup(item):
    seeding.start_test(item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.append(("random seed", seeding.describe()))


@pytest.fixture
def test_seed() -> int:
    """This test's seed (see the module docstring)."""
    return seeding.fresh_seed()


@pytest.fixture
def rng(test_seed):
    """A NumPy generator seeded with ``test_seed``."""
    import numpy as np

    return np.random.default_rng(test_seed)
