"""Ensembles: the per-frame mean of members' posteriors (log domain) against a direct computation, the identity of
one member, and clear errors for members that do not line up."""
import numpy as np
import pytest
import torch

from fastdecoder.config import config_from_dict
from fastdecoder.decode.ensemble import check_framing, ensemble_log_probs

SEED = 20261201


def _members(rng, M, lengths, V=41, dtype=np.float32, peaky=True):
    """M lists of per-trial (N_i, V) log-softmax arrays (peaky: some classes far below the others)."""
    out = []
    for _ in range(M):
        trials = []
        for n in lengths:
            z = rng.normal(size=(n, V)) * (8.0 if peaky else 1.0)
            trials.append((z - np.logaddexp.reduce(z, axis=1, keepdims=True)).astype(dtype))
        out.append(trials)
    return out


@pytest.mark.parametrize("M,lengths,dtype", [(2, [5, 1, 9], np.float32), (3, [17, 4], np.float64),
                                             (5, [30], np.float32), (2, [0, 3], np.float64)])
def test_average_matches_direct_computation(M, lengths, dtype):
    seed = SEED + 7 * M + len(lengths)
    rng = np.random.default_rng(seed)
    members = _members(rng, M, lengths, dtype=dtype)
    members[0][-1][0, 3] = -np.inf            # probability 0 in one member only
    for m in range(M):
        members[m][-1][-1, 5] = -np.inf       # probability 0 in every member
    got = ensemble_log_probs(members)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for b, n in enumerate(lengths):
        probs = np.mean([np.exp(members[m][b].astype(np.float64)) for m in range(M)], axis=0)
        with np.errstate(divide="ignore"):
            direct = np.log(probs)
        assert got[b].dtype == dtype and got[b].shape == (n, 41)
        assert not np.isnan(got[b]).any(), f"seed {seed}"
        np.testing.assert_allclose(got[b], direct, rtol=tol, atol=tol, err_msg=f"seed {seed}, trial {b}")
        if b < len(lengths) - 1:   # rows untouched by the -inf edits still sum to 1 in probability
            np.testing.assert_allclose(np.exp(got[b].astype(np.float64)).sum(1), 1.0, rtol=1e-5)
    assert got[-1][-1, 5] == -np.inf and np.isfinite(got[-1][0, 3])


def test_padded_batches_and_torch_inputs():
    rng = np.random.default_rng(SEED)
    lengths = [6, 2, 4]
    lists = _members(rng, 3, lengths)
    padded = []
    for mem in lists:
        arr = np.full((3, 8, 41), 7.0, dtype=np.float32)       # garbage in the padding must not matter
        for b, x in enumerate(mem):
            arr[b, : len(x)] = x
        padded.append(torch.from_numpy(arr))
    got = ensemble_log_probs(padded, torch.tensor(lengths))
    want = ensemble_log_probs(lists)
    assert got.shape == (3, 8, 41)
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(got[b, :n], want[b])
        assert (got[b, n:] == 0).all()


def test_one_member_is_that_member():
    rng = np.random.default_rng(SEED + 1)
    (member,) = _members(rng, 1, [7, 3, 12])
    got = ensemble_log_probs([member])
    for a, b in zip(got, member):
        np.testing.assert_array_equal(a, b)
    # two copies of one run average to the run itself
    for a, b in zip(ensemble_log_probs([member, member]), member):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_mismatched_members_name_the_problem():
    rng = np.random.default_rng(SEED + 2)
    a, b = _members(rng, 2, [5, 6])
    names = ["runs/a", "runs/b"]
    with pytest.raises(ValueError, match=r"member 1 \(runs/b\) and member 0 \(runs/a\) differ in output frames at "
                                         r"trial 1"):
        ensemble_log_probs([a, [b[0], b[1][:-1]]], names=names)
    with pytest.raises(ValueError, match="differ in classes at trial 0"):
        ensemble_log_probs([a, [b[0][:, :40], b[1]]], names=names)
    with pytest.raises(ValueError, match=r"member 1 \(runs/b\) has 1 trials, member 0 \(runs/a\) has 2"):
        ensemble_log_probs([a, b[:1]], names=names)
    bad = [b[0].copy(), b[1]]
    bad[0][2, 4] = np.nan
    with pytest.raises(ValueError, match=r"member 1 \(runs/b\), trial 0: log-prob \[2, 4\] is nan"):
        ensemble_log_probs([a, bad], names=names)
    with pytest.raises(ValueError, match="at least one member"):
        ensemble_log_probs([])
    with pytest.raises(ValueError, match="all be lists"):
        ensemble_log_probs([a, np.zeros((2, 6, 41))])


def _cfg(**model):
    return config_from_dict({"name": "t", "data": {"synthetic": {"n_features": 16}},
                             "model": {"n_features": 16, "n_days": 2, **model}})


def test_check_framing_names_key_and_runs():
    check_framing([_cfg(), _cfg(hidden_size=8)], ["A", "B"], 16)      # other keys may differ
    with pytest.raises(ValueError, match=r"model.patch_stride \(A: 4, B: 2\)"):
        check_framing([_cfg(), _cfg(patch_stride=2)], ["A", "B"])
    with pytest.raises(ValueError, match=r"model.patch_size \(A: 14, B: 14, C: 8\)"):
        check_framing([_cfg(), _cfg(), _cfg(patch_size=8)], ["A", "B", "C"])
    with pytest.raises(ValueError, match="run B takes 16 features, the data has 32"):
        check_framing([_cfg(n_features=32), _cfg()], ["A", "B"], 32)
