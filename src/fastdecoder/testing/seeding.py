"""Reproducible seeds for random tests: one base seed per session (FASTDECODER_TEST_SEED, or drawn and printed),
and per test a sequence of seeds derived from the base and the test's id. Replay a failure with the printed
``FASTDECODER_TEST_SEED=...``."""
from __future__ import annotations

import hashlib
import os
import secrets

ENV = "FASTDECODER_TEST_SEED"
_given = os.environ.get(ENV, "").strip()
BASE_SEED = int(_given) if _given else secrets.randbelow(2**31)

_test = {"id": "", "drawn": []}


def origin() -> str:
    return f"from ${ENV}" if _given else f"drawn for this session; replay with {ENV}={BASE_SEED}"


def start_test(nodeid: str) -> None:
    _test["id"] = nodeid
    _test["drawn"] = []


def fresh_seed() -> int:
    """The next seed of the current test: a function of (base seed, test id, how many were drawn before)."""
    text = f"{BASE_SEED}:{_test['id']}:{len(_test['drawn'])}".encode()
    seed = int.from_bytes(hashlib.sha256(text).digest()[:4], "little") & 0x7FFFFFFF
    _test["drawn"].append(seed)
    return seed


def describe() -> str:
    drawn = ", ".join(map(str, _test["drawn"])) or "none drawn"
    return f"{ENV}={BASE_SEED} ({origin()}); seeds of this test: {drawn}"
