"""Native greedy decoding and edit distance against plain-Python versions, on fresh random inputs."""
import numpy as np
import pytest
import torch

from fastdecoder.decode import edit_distances, error_rate, greedy_decode, word_error_rate


def py_greedy(scores, length, blank=0):
    out, prev = [], None
    for t in range(length):
        k = int(np.argmax(scores[t]))
        if k != prev and k != blank:
            out.append(k)
        prev = k
    return out


def py_edit(a, b):
    d = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(b) + 1):
            cur = d[j]
            d[j] = min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] != b[j - 1]))
            prev = cur
    return d[len(b)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,T,V", [(1, 1, 2), (5, 17, 4), (8, 60, 41)])
def test_greedy_matches_python(B, T, V, dtype):
    rng = np.random.default_rng()
    scores = rng.normal(size=(B, T, V)).astype(dtype)
    scores[:, :, 0] += 1.0  # many blanks
    scores[:, ::3, V - 1] = scores[:, ::3].max(-1) + 1  # repeats to merge
    lens = rng.integers(0, T + 1, size=B)
    got = greedy_decode(scores, lens)
    assert got == [py_greedy(scores[b], lens[b]) for b in range(B)]


def test_greedy_accepts_strided_torch_and_blank():
    x = torch.randn(6, 20, 3).permute(2, 1, 0)  # (3, 20, 6) non-contiguous
    got = greedy_decode(x, blank=5)
    assert got == [py_greedy(x[b].numpy(), 20, blank=5) for b in range(3)]


def test_greedy_bad_input():
    with pytest.raises(ValueError, match="batch, time, classes"):
        greedy_decode(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="lengths"):
        greedy_decode(np.zeros((2, 4, 3)), [5, 1])
    with pytest.raises(ValueError, match="blank"):
        greedy_decode(np.zeros((2, 4, 3)), blank=3)


def test_edit_distance_matches_python():
    rng = np.random.default_rng()
    hyps = [list(rng.integers(1, 5, size=rng.integers(0, 12))) for _ in range(200)]
    refs = [list(rng.integers(1, 5, size=rng.integers(0, 12))) for _ in range(200)]
    assert edit_distances(hyps, refs).tolist() == [py_edit(h, r) for h, r in zip(hyps, refs)]
    per, edits, n = error_rate(hyps, refs)
    assert edits == sum(py_edit(h, r) for h, r in zip(hyps, refs)) and n == sum(map(len, refs))
    assert per == pytest.approx(edits / n)


def test_word_error_rate():
    wer, edits, n = word_error_rate(["the cat sat", "hello"], ["the cat sat down", "hello world"])
    assert (edits, n) == (2, 6) and wer == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="hypotheses"):
        edit_distances([[1]], [])
