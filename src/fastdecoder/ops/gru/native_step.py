"""One time step of a unidirectional ``torch.nn.GRU`` (batch 1, fp32, CPU) in native code (csrc/gru_step.cpp).

The streaming decoder's per-hop path: a step of b2t25's 5 x 768 GRU is memory-bound (it reads ~124 MiB of fp32
weights), and the native step reads them at close to the core's memory bandwidth (8 weight rows per pass, AVX2+FMA
or AVX-512F picked at run time), where ``nn.GRU`` on one frame does not. :class:`StepAhead` computes the parts of a
step that do not need the frame's last bin at the pushes before it. Same math and weight layout as ``nn.GRU``
(gates r, z, n; h' = (1 - z) n + z h), fp32 throughout, so results agree to fp32 round-off.
"""
from __future__ import annotations

import numpy as np
import torch

from fastdecoder import _native

__all__ = ["NativeGRUStep", "StepAhead", "ISAS", "unsupported_reason"]

# The paths this CPU supports, in the order isa="auto" prefers (csrc/gru_step.hpp: AVX2+FMA, AVX-512F, scalar).
ISAS: tuple[str, ...] = tuple(_native.gru_isas())


def unsupported_reason(rnn) -> str | None:
    """Why :class:`NativeGRUStep` cannot run ``rnn`` (None when it can)."""
    if not isinstance(rnn, torch.nn.GRU):
        return f"{type(rnn).__name__} is not a torch.nn.GRU"
    if rnn.bidirectional or not rnn.bias or rnn.proj_size:
        return "only unidirectional nn.GRU with biases (no projection) is supported"
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in rnn.parameters()):
        return "the weights must be float32 on the CPU"
    return None


_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class NativeGRUStep:
    """``step(x, h)`` / ``run(x, h)``: time steps of every layer of ``rnn``, ``h`` updated in place.

    The native object keeps no pointer into the weights: every call reads ``rnn``'s parameters as they are at that
    moment (``getattr(rnn, "weight_ih_l0")``, ...), checks them (float32 on the CPU, the shapes of construction) and
    passes them for that call only. So in-place updates, parameters replaced by new tensors (``load_state_dict(...,
    assign=True)``, ``.half()`` then ``.float()``) and storages moved by torch (``share_memory()``) are all read as
    they are now; a parameter that is no longer float32 on the CPU raises ValueError. A non-contiguous parameter is
    copied per call. Moving the weights while a call runs in another thread is a data race, as it is for ``nn.GRU``.

    Args:
        rnn: a unidirectional ``torch.nn.GRU`` with biases, fp32 on the CPU.
        isa: "auto" (the first of :data:`ISAS`) or one of them; a path the CPU lacks raises ValueError.
    """

    def __init__(self, rnn: torch.nn.GRU, isa: str = "auto"):
        reason = unsupported_reason(rnn)
        if reason is not None:
            raise ValueError(f"NativeGRUStep: {reason}")
        self.rnn = rnn
        self.input_size, self.hidden_size, self.num_layers = rnn.input_size, rnn.hidden_size, rnn.num_layers
        self._step = _native.GruStep(self.input_size, self.hidden_size, self.num_layers, isa)
        self.isa: str = self._step.isa
        self._names = {k: [f"{k}_l{l}" for l in range(self.num_layers)] for k in _KINDS}

    def weights(self) -> dict[str, list]:
        """The GRU's current parameters as C-contiguous float32 arrays, per kind one per layer (the native call's
        arguments; valid while the parameters are neither replaced nor moved). ValueError when one is no longer
        float32 on the CPU."""
        out = {}
        for kind, names in self._names.items():
            arrays = []
            for name in names:
                p = getattr(self.rnn, name)
                if p.dtype != torch.float32 or p.device.type != "cpu":
                    raise ValueError(f"NativeGRUStep: {name} is now {p.dtype} on {p.device}; the native step needs "
                                     "float32 on the CPU")
                arrays.append(p.detach().contiguous().numpy())
            out[kind] = arrays
        return out

    def run(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """x (frames, input_size) float32; h (num_layers, hidden_size) float32 contiguous CPU tensor, overwritten
        with the states after the last frame. Returns (frames, hidden_size): the last layer's state after each frame.
        Runs without the GIL."""
        out = torch.empty(x.shape[0], self.hidden_size, dtype=torch.float32)
        self._step.run(x.detach().contiguous().numpy(), h.numpy(), out.numpy(), **self.weights())
        return out

    def step(self, x: torch.Tensor, h: torch.Tensor) -> None:
        """One frame: x (input_size,) float32; h (num_layers, hidden_size) float32 contiguous CPU tensor, overwritten
        with the new states (h[-1] is the step's output). Runs without the GIL."""
        if x.dim() != 1:
            raise ValueError(f"x must be ({self.input_size},), got shape {tuple(x.shape)}")
        self.run(x[None], h)

    def run_projected(self, gi0: np.ndarray, h: torch.Tensor, gh: np.ndarray | None = None) -> torch.Tensor:
        """As :meth:`run`, given layer 0's input products: gi0 (frames, 3 H) float32, row t = weight_ih_l0 x_t
        without the bias (weight_ih_l0 is not read); gh (num_layers, 3 H) or None: the first frame's W_hh h + b_hh of
        every layer for this ``h`` (:meth:`hidden_products`; no weight_hh is read for that frame)."""
        out = torch.empty(gi0.shape[0], self.hidden_size, dtype=torch.float32)
        self._step.run_projected(gi0, h.numpy(), out.numpy(), **self.weights(), gh=gh)
        return out

    def hidden_products(self, h: torch.Tensor, gh: np.ndarray) -> None:
        """gh (num_layers, 3 H) float32 := W_hh h + b_hh of every layer, for h (num_layers, H)."""
        w = self.weights()
        self._step.hidden_products(h.numpy(), gh, w["weight_hh"], w["bias_hh"])


class StepAhead:
    """The parts of the next GRU steps that do not need the bin completing a frame, computed at the pushes before it
    (in the idle time between bins), so that the push of that bin reads about a quarter of the weights at b2t25 size:

    * layer 0's input product of each patched frame, one input bin at a time as the bins arrive (that push then
      reads one bin's columns of ``weight_ih_l0``, 1/14 of it at b2t25, instead of all: about half of the GRU's
      weights);
    * every layer's hidden product W_hh h + b_hh for the state the next frame starts from (the same values as the
      step computes itself: the same function on the same inputs).

    A frame's window holds ``patch_size`` bins of ``n_features`` in time-major order (bin k: columns
    ``[k C, (k + 1) C)``), one window every ``patch_stride`` bins. Its input product is summed bin block by bin block
    in the order k = 0, 1, ..., so it does not depend on when the blocks were computed; it differs from one product
    over the whole window by fp32 round-off only.

    ``absorb(features, h)`` computes what it can: ``features`` (n, C) are the bins from the next frame's first bin on
    (fewer than a frame's worth), ``h`` (L, H) the state the next frame starts from. ``run(windows, h)`` completes
    the products of the next N frames (from the windows themselves for whatever was not computed yet), steps the GRU
    and drops those frames. Products computed with other weights (a weight replaced, moved or updated in place
    since: torch's version counter) are computed again; an update torch does not count (writing through ``.data``
    or a NumPy view of a weight) reaches the products computed after it, and every product from the next trial.
    When nothing of the next frames was computed ahead (pushes of a frame's worth of bins or more), ``run`` is the
    plain step (one pass over ``weight_ih_l0``, faster than block by block; the same values to fp32 round-off).
    ``counts`` says where the work was done in this object's lifetime: input blocks and hidden products computed
    ahead, and at a step; frames run as the plain step.
    """

    def __init__(self, step: NativeGRUStep, patch_size: int, patch_stride: int, n_features: int):
        if step.input_size != patch_size * n_features:
            raise ValueError(f"the GRU takes {step.input_size} inputs, not patch_size x n_features = "
                             f"{patch_size} x {n_features}")
        self.step, self.K, self.S, self.C = step, patch_size, patch_stride, n_features
        self.in_flight = -(-patch_size // patch_stride)  # frames whose window can hold a bin present before a frame
        G = 3 * step.hidden_size
        self._acc = np.zeros((self.in_flight, G), np.float32)
        self._done = [0] * self.in_flight  # bins of each frame already added to its product
        self._gh = np.zeros((step.num_layers, G), np.float32)
        self._gh_ready = False  # _gh holds the hidden products of the state the next frame starts from
        self._order = [n for names in step._names.values() for n in names]
        self._keys: tuple = ()  # the weights the products were computed with, and their arrays
        self._arrays: dict | None = None
        self.counts = {"input_blocks_ahead": 0, "input_blocks_at_step": 0, "hidden_ahead": 0, "hidden_at_step": 0,
                       "plain_steps": 0}

    def reset(self) -> None:
        """Forget every product (a new trial, or the state changed elsewhere)."""
        self._acc[:] = 0.0
        self._done = [0] * self.in_flight
        self._gh_ready = False

    def _check_weights(self) -> dict | None:
        """The GRU's weights as the native call's arrays (None, and no product kept, when one is not a contiguous
        float32 CPU tensor); forgets every product when a weight is not the tensor, version, storage and layout they
        were computed with."""
        rnn = self.step.rnn
        keys = tuple((p, p._version, p.data_ptr(), p.stride()) for p in (getattr(rnn, n) for n in self._order))
        if len(keys) == len(self._keys) and all(a[0] is b[0] and a[1:] == b[1:] for a, b in zip(keys, self._keys)):
            return self._arrays
        self.reset()
        self._keys, self._arrays = (), None
        if any(k[0].dtype != torch.float32 or k[0].device.type != "cpu" or not k[0].is_contiguous() for k in keys):
            return None
        self._keys = keys
        arrays = iter([k[0].detach().numpy() for k in keys])
        self._arrays = {kind: [next(arrays) for _ in names] for kind, names in self.step._names.items()}
        return self._arrays

    def _add(self, frame: int, block: np.ndarray, w: np.ndarray, when: str) -> None:
        k = self._done[frame]
        self.step._step.project(block, self._acc[frame], w, k * self.C)
        self._done[frame] = k + 1
        self.counts[f"input_blocks_{when}"] += 1

    def absorb(self, features: torch.Tensor, h: torch.Tensor) -> None:
        """Compute ahead: the input products' blocks of the bins in ``features`` (n, C) float32 (the bins from the
        next frame's start on), and the hidden products of ``h`` (L, H), the state the next frame starts from."""
        weights = self._check_weights()
        if weights is None:
            return
        w = weights["weight_ih"][0]
        if not self._gh_ready:
            self.step._step.hidden_products(h.numpy(), self._gh, weights["weight_hh"], weights["bias_hh"])
            self._gh_ready = True
            self.counts["hidden_ahead"] += 1
        x = features.detach().numpy()
        for m in range(self.in_flight):
            start = m * self.S
            while self._done[m] < self.K and start + self._done[m] < x.shape[0]:
                self._add(m, x[start + self._done[m]], w, "ahead")

    def run(self, windows: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """windows (N, K C) float32: the next N frames' windows; h (L, H) as :meth:`NativeGRUStep.run`. Returns
        (N, H) and forgets those N frames."""
        weights = self._check_weights()
        if weights is None:  # the weights are no longer usable here: the plain step (it names the problem)
            return self.step.run(windows, h)
        w = weights["weight_ih"][0]
        x = windows.detach().numpy()
        N = x.shape[0]
        out = torch.empty(N, self.step.hidden_size, dtype=torch.float32)
        if not self._gh_ready and not any(self._done[:N]):
            # nothing computed ahead (pushes of a frame's worth of bins or more): the plain step, which reads
            # weight_ih_l0 in one pass (faster than block by block)
            self.step._step.run(np.ascontiguousarray(x), h.numpy(), out.numpy(), **weights)
            self.counts["plain_steps"] += N
            self._drop(N)
            return out
        if N > self.in_flight:  # frames absorb() never saw: their products from the windows alone
            self._acc = np.concatenate([self._acc, np.zeros((N - self.in_flight, self._acc.shape[1]), np.float32)])
            self._done += [0] * (N - self.in_flight)
        for m in range(N):
            while self._done[m] < self.K:
                k = self._done[m]
                self._add(m, x[m, k * self.C:(k + 1) * self.C], w, "at_step")
        self.step._step.run_projected(self._acc[:N].copy(), h.numpy(), out.numpy(), **weights,
                                      gh=self._gh if self._gh_ready else None)
        self.counts["hidden_at_step"] += N - int(self._gh_ready)
        self._drop(N)
        return out

    def _drop(self, N: int) -> None:
        """The next N frames were run: the frames after them keep what they hold; h has moved on."""
        rest = max(0, self.in_flight - N)
        acc = np.zeros((self.in_flight, self._acc.shape[1]), np.float32)
        acc[:rest] = self._acc[N:N + rest]
        self._acc, self._done = acc, self._done[N:N + rest] + [0] * (self.in_flight - rest)
        self._gh_ready = False
