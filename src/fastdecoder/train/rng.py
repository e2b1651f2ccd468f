"""The run's random streams: how they are seeded, and their exact capture and restore for bitwise resumes.

Rank r of a run seeded s draws from its own streams, all derived from ``rank_seed(s, r)`` (rank 0: s itself, so a
single process is unaffected by multi-process training):

* the sampler (``rank_seed``; with ``train.data_seed`` that seed's), dropout (torch's global generator, re-seeded with ``rank_seed`` on ranks > 0),
* the random cut (a numpy generator, ``rank_seed + CUT_STREAM``; with ``train.data_seed`` the data's rank seed
  instead, so runs that share a data seed share their cuts as they share their batches), the time/channel masks
  (a torch generator, ``rank_seed + MASK_STREAM``),
* the augmentation noise of step t: ``noise_seed(rank_seed, t)``.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from fastdecoder.plain import to_plain

#: rank r's seed is seed + RANK_SEED_STRIDE * r (a prime, so the ranks' derived streams do not collide)
RANK_SEED_STRIDE = 10007
#: offsets of the random-cut and mask generators from the rank seed
CUT_STREAM = 1
MASK_STREAM = 2
#: noise seed of step t: (rank_seed * NOISE_SEED_MULTIPLIER + t) mod NOISE_SEED_MODULUS (a positive int32)
NOISE_SEED_MULTIPLIER = 1_000_003
NOISE_SEED_MODULUS = 2**31 - 1

#: what a captured RNG state must hold (plus "cuda" when it was written on a GPU)
RNG_KEYS = ("torch", "numpy_cut", "mask_gen", "python", "numpy_global")


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    return seed + RANK_SEED_STRIDE * rank


def noise_seed(rank_seed_: int, step: int) -> int:
    """Seed of the augmentation noise of step ``step`` (0-based) on the rank seeded ``rank_seed_``."""
    return (rank_seed_ * NOISE_SEED_MULTIPLIER + step) % NOISE_SEED_MODULUS


class RunStreams:
    """The per-rank generators of the augmentation (random cut, masks) and the capture of every RNG state."""

    def __init__(self, rank_seed_: int, device: torch.device, cut_seed: int | None = None):
        self.rank_seed = rank_seed_
        self.device = device
        self.cut = np.random.default_rng((rank_seed_ if cut_seed is None else cut_seed) + CUT_STREAM)
        self.masks = torch.Generator().manual_seed(rank_seed_ + MASK_STREAM)

    def state_dict(self) -> dict:
        """torch (+ CUDA), numpy and python global states, and the cut and mask generators."""
        d = {"torch": torch.get_rng_state(), "numpy_cut": to_plain(self.cut.bit_generator.state),
             "mask_gen": self.masks.get_state(), "python": to_plain(random.getstate()),
             "numpy_global": to_plain(np.random.get_state())}
        if self.device.type == "cuda":
            d["cuda"] = torch.cuda.get_rng_state(self.device)
        return d

    def load_state_dict(self, d: dict) -> None:
        """Restore a ``state_dict()``; ValueError saying what is missing or malformed."""
        if not isinstance(d, dict):
            raise ValueError(f"its RNG state is a {type(d).__name__}, not a dict")
        missing = [k for k in RNG_KEYS if k not in d]
        if missing:
            raise ValueError(f"its RNG state lacks {', '.join(missing)}")
        for k in ("torch", "mask_gen"):
            if not isinstance(d[k], torch.Tensor) or d[k].numel() == 0:
                raise ValueError(f"its RNG state '{k}' is empty or not a tensor")
        torch.set_rng_state(d["torch"])
        if "cuda" in d and self.device.type == "cuda":
            torch.cuda.set_rng_state(d["cuda"], self.device)
        self.cut.bit_generator.state = d["numpy_cut"]
        self.masks.set_state(d["mask_gen"])
        p = d["python"]
        random.setstate((p[0], tuple(p[1]), p[2]))
        g = d["numpy_global"]
        np.random.set_state((g[0], np.asarray(g[1], dtype=np.uint32), g[2], g[3], g[4]))
