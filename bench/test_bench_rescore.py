"""Neural-LM n-best rescoring throughput: n-best lists of 100 hypotheses scored by a tiny causal LM (GPT-2
architecture, randomly initialised, word-level tokenizer over a 2,000-word vocabulary; built in a temporary folder,
no download), then ranked with the rescoring formula.

Sentences/s counts n-best lists (one per decoded sentence) per second, from the fastest round; hypotheses/s and
tokens/s follow from it. The LM's weights do not change the time, only its shape does.

    .venv/bin/python -m pytest -q bench/test_bench_rescore.py
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="rescoring needs transformers (pip install 'fastdecoder[llm]')")

from fastdecoder.decode import WordHypothesis  # noqa: E402
from fastdecoder.decode.rescore import NBestList, NeuralLM, RescoreWeights  # noqa: E402

from fastdecoder.testing.tiny_lm import save_tiny_lm  # noqa: E402

SEED = 20261201
NBEST = 100
SENTENCES = 8
WORDS = (6, 14)            # words per hypothesis, uniform
VOCAB = [f"w{i}" for i in range(2000)]
SHAPES = {"tiny (1 layer, 32 wide)": dict(n_layer=1, n_embd=32)}


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(SEED)
    hyps = []
    for _ in range(SENTENCES):
        trial = []
        for h in range(NBEST):
            words = list(rng.choice(VOCAB, size=int(rng.integers(*WORDS))))
            trial.append(WordHypothesis(words, 0.0, float(-h), float(rng.normal(-30, 5))))
        hyps.append(trial)
    root = Path(tempfile.mkdtemp(prefix="fastdecoder_bench_rescore_"))
    paths = {name: save_tiny_lm(root / str(i), VOCAB, seed=SEED, n_positions=32, **kw)
             for i, (name, kw) in enumerate(SHAPES.items())}
    return hyps, paths


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch_size", [32, 128])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_rescore_nbest_100(benchmark, setup, shape, batch_size, threads):
    hyps, paths = setup
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    lm = NeuralLM(paths[shape], device="cpu", batch_size=batch_size)
    weights = RescoreWeights(0.5, 0.5, 0.0)

    def rescore():
        nb = NBestList.from_hypotheses(hyps).add_neural_scores(lm)
        return nb.best(weights)

    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        best = benchmark.pedantic(rescore, rounds=3, warmup_rounds=1, iterations=1)
    finally:
        torch.set_num_threads(torch_threads)
    cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - t0) / threads
    assert best.shape == (SENTENCES,) and np.isfinite(best).all()
    rate = SENTENCES / benchmark.stats.stats.min
    tokens = sum(len(h.words) + 1 for t in hyps for h in t)
    benchmark.group = "rescore n-best 100"
    benchmark.extra_info.update(sentences_per_s=round(rate, 2), hypotheses_per_s=round(rate * NBEST),
                                tokens_per_s=round(rate * tokens / SENTENCES), load_average=load,
                                cpu_share=round(cpu_share, 2))
    print(f"\n{shape}, batch {batch_size}, {threads} thread(s): {rate:.2f} sentences/s ({rate * NBEST:.0f} "
          f"hypotheses/s, {rate * tokens / SENTENCES:.0f} tokens/s); load average {load:.1f}, CPU share of its "
          f"threads {cpu_share:.2f}")
