"""The batched GRUDecoder of a ``train.members: K`` run: K GRUDecoders (model.rnn: gru or ln_gru, unidirectional)
with their parameters stacked along a leading member dimension, computed together.

Forward: x (K, B, T, C) each member's augmented features, day (B,) host int64 days, lengths (B,) ->
logits (K, B, N, 41). Per member the solo forward: [in-model smoothing] -> day layer softsign(x W[day] + b[day])
(one batched GEMM per distinct day of the batch) -> input dropout -> patching -> GRU (ops.gru.members: one batched
input projection per layer, one batched product per time step) or LayerNorm-GRU (ops.ln_gru.members: the same with
the member dimension in its Triton kernels, or its batched reference off CUDA) -> head (one batched GEMM).

Dropout is drawn per member from its own generator (``generators``), each mask with the op and shape the solo
run draws it with (``torch.empty(shape).bernoulli_(1 - p)``: input dropout (B, T, C), then between layers
(N, B, H) for nn.GRU, (B, N, H) for the LayerNorm-GRU's F.dropout; none at p = 1, which zeroes), so member k draws
exactly the masks of its solo run, whose dropout stream is torch's global generator.

Parameters are named after the solo model's (``SOLO``), so each member's weights go to and from a GRUDecoder state
dict (``member_state_dict`` / ``load_member``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdecoder.ops.gru.members import members_gru
from fastdecoder.ops.ln_gru.members import members_ln_gru


#: the recurrent parameters of one layer, per model.rnn, in the order the batched ops take them
RNN_PARAMS = {"gru": ("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
              "ln_gru": ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "ln_ih_weight", "ln_hh_weight")}


def _solo_names(num_layers: int, learn_h0: bool, rnn: str = "gru") -> list[str]:
    """The solo GRUDecoder's parameter names in its own order (``named_parameters``)."""
    names = ["day_weights", "day_biases"]
    for layer in range(num_layers):
        names += [f"rnn.{k}_l{layer}" for k in RNN_PARAMS[rnn]]
    return names + (["h0"] if learn_h0 else []) + ["head.weight", "head.bias"]


def _attr(solo_name: str) -> str:
    return solo_name.replace(".", "__")


def _day_affine(x: torch.Tensor, day: np.ndarray, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """One member's day layer before its activation: x (B, T, C), day (B,) host, W (D, C, C), b (D, 1, C) ->
    x W[day] + b[day], one GEMM per distinct day."""
    B, T, C = x.shape
    days, inverse = np.unique(day, return_inverse=True)
    if days.size == 1:
        return torch.addmm(b[int(days[0])], x.reshape(B * T, C), W[int(days[0])]).view(B, T, C)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    parts = []
    for j, d in enumerate(days):
        rows = torch.from_numpy(order[inverse[order] == j]).to(x.device)
        parts.append(torch.addmm(b[int(d)], x.index_select(0, rows).reshape(-1, C), W[int(d)]).view(-1, T, C))
    back = torch.from_numpy(np.argsort(order, kind="stable")).to(x.device)
    return torch.cat(parts).index_select(0, back)


def _equal_day_runs(day: np.ndarray) -> tuple[np.ndarray, int] | None:
    """day (K, B) host -> (the day of each run (K, R), run length L) where every member's batch is R runs of L
    trials of one day each (the day sampler's batches, whose trials come day by day); None otherwise (or where one
    run is the whole batch: one day, one GEMM per member already)."""
    K, B = day.shape
    starts = np.flatnonzero(np.diff(day, axis=1).any(axis=0)) + 1  # where some member's day changes
    if starts.size == 0:
        return None
    edges = np.concatenate([[0], starts, [B]])
    L = int(edges[1] - edges[0])
    if not np.all(np.diff(edges) == L):
        return None
    run_day = day[:, edges[:-1]]  # (K, R)
    if not np.array_equal(np.repeat(run_day, L, axis=1), day):
        return None
    return np.ascontiguousarray(run_day, dtype=np.int64), L


class _SoftsignDropout(torch.autograd.Function):
    """softsign(y) * m = y / (1 + |y|) * m, the day layer's activation and the input dropout in one pass, with one
    fused backward, dy = (g * m) / (1 + |y|)^2 (autograd's through the division and the product is several passes
    and allocations over each (B, T, C) tensor). ``m``: the dropout multiplier (already divided by 1 - p) or None.
    The same ops in the same order as F.softsign and F.dropout's product: equal to them to fp32 round-off."""

    @staticmethod
    def forward(ctx, y, m):
        ctx.save_for_backward(y, m)
        out = y.abs().add_(1)
        torch.div(y, out, out=out)
        return out if m is None else out.mul_(m)

    @staticmethod
    def backward(ctx, grad):
        y, m = ctx.saved_tensors
        d = y.abs().add_(1)
        g = grad if m is None else grad * m
        return g / d.mul_(d), None


def _activate(y: torch.Tensor, activation: str, m: torch.Tensor | None) -> torch.Tensor:
    """One member's day-layer activation (``model.day_activation``) times its input-dropout multiplier ``m``."""
    if activation == "softsign":
        if y.dtype == torch.float32 and y.requires_grad:
            return _SoftsignDropout.apply(y, m)
        y = F.softsign(y)
    return y if m is None else y * m


class BatchedGRUDecoder(nn.Module):
    """K GRUDecoders of one shape as stacked (K, ...) parameters; build it from the solo models (``from_solo``)."""

    def __init__(self, solos: list[nn.Module]):
        super().__init__()
        cfg = solos[0].cfg
        if cfg.rnn not in RNN_PARAMS or cfg.bidirectional:
            raise ValueError("BatchedGRUDecoder takes unidirectional model.rnn: gru or ln_gru models")
        self.cfg = cfg
        self.k = len(solos)
        self.input_dropout = [float(s.cfg.input_dropout) for s in solos]  # p per member
        self.rnn_dropout = [float(s.cfg.rnn_dropout) if cfg.num_layers > 1 else 0.0 for s in solos]
        self.solo_names = _solo_names(cfg.num_layers, cfg.learn_h0, cfg.rnn)
        # the LayerNorm-GRU's implementation and eps as the solo model has them
        self.ln_backend = solos[0].rnn.backend if cfg.rnn == "ln_gru" else None
        self.ln_eps = solos[0].rnn.eps if cfg.rnn == "ln_gru" else None
        sds = [s.state_dict() for s in solos]
        for name in self.solo_names:
            self.register_parameter(_attr(name), nn.Parameter(torch.stack([sd[name].detach() for sd in sds])))
        self.register_buffer("smooth_taps", sds[0]["smooth_taps"].clone())
        self.smoothing_backend = solos[0].smoothing_backend

    @classmethod
    def from_solo(cls, solos: list[nn.Module]) -> "BatchedGRUDecoder":
        return cls(solos)

    def _ln_backend(self, device: torch.device) -> str:
        """The batched LayerNorm-GRU's implementation where the solo model's would be Triton: the Triton kernels
        with the member dimension; else the batched reference (its definition with a member dimension)."""
        from fastdecoder.ops.ln_gru import LayerNormGRU

        return LayerNormGRU.backend_for(self.ln_backend, device)

    def solo_parameter(self, name: str) -> nn.Parameter:
        """The stacked (K, ...) parameter of the solo model's parameter ``name``."""
        return getattr(self, _attr(name))

    def member_state_dict(self, k: int) -> dict:
        """Member k's weights as a GRUDecoder state dict (copies)."""
        sd = {name: self.solo_parameter(name).detach()[k].clone() for name in self.solo_names}
        sd["smooth_taps"] = self.smooth_taps.clone()
        return sd

    @torch.no_grad()
    def load_member(self, k: int, state: dict) -> None:
        """Set member k's weights from a GRUDecoder state dict."""
        for name in self.solo_names:
            self.solo_parameter(name)[k].copy_(state[name])

    # -- the forward --------------------------------------------------------------------------------------------
    def day_layer(self, x, day: np.ndarray) -> list[torch.Tensor]:
        """x (K, B, T, C) or K (B, T, C) tensors, day (B,) shared or (K, B) per member -> K (B, T, C) tensors,
        x W_k[day] + b_k[day] per member before the activation: where each member's trials come in runs of one
        day all alike long (the day sampler's batches), one batched GEMM per member over its runs; else one GEMM
        per distinct day. Per member, so no tensor holds more than one member's batch."""
        xs = list(x.unbind(0)) if isinstance(x, torch.Tensor) else list(x)
        K = len(xs)
        B, T, C = xs[0].shape
        W, b = self.solo_parameter("day_weights"), self.solo_parameter("day_biases")
        days = np.broadcast_to(day, (K, B))
        runs = _equal_day_runs(days)
        Ws, bs = W.unbind(0), b.unbind(0)
        if runs is None:
            return [_day_affine(xs[k], days[k], Ws[k], bs[k]) for k in range(K)]
        run_day, L = runs
        R = B // L
        run_day = torch.from_numpy(run_day).to(xs[0].device)  # (K, R) each run's day
        return [torch.baddbmm(bs[k].index_select(0, run_day[k]), xs[k].reshape(R, L * T, C),
                              Ws[k].index_select(0, run_day[k])).view(B, T, C) for k in range(K)]

    def patch(self, x: torch.Tensor) -> torch.Tensor:
        """(K, B, T, C) -> (K, B, N, K*C) as GRUDecoder.patch does per member."""
        K_, S = self.cfg.patch_size, self.cfg.patch_stride
        if x.shape[2] < K_:
            raise ValueError(f"input has {x.shape[2]} time bins, fewer than one patch of {K_}")
        w = x.unfold(2, K_, S)  # (K, B, N, C, Kp)
        if self.cfg.patch_order == "time_major":
            w = w.transpose(3, 4)
        return w.reshape(x.shape[0], x.shape[1], w.shape[2], -1)

    def _masks(self, shape: tuple, p: list[float], generators, shapes: list[tuple] | None = None
               ) -> list[torch.Tensor | None] | None:
        """Per member its dropout multiplier of ``shape``: ``bernoulli_(1 - p_k)`` drawn from ``generators[k]`` and
        divided by 1 - p_k, as F.dropout does on the CPU (zeros without drawing at p_k >= 1; None at p_k = 0, no
        dropout); None when no member drops. ``shapes``: member k's own (smaller) shape to draw at (its solo batch),
        the rest of ``shape`` filled with ones (padding)."""
        if not self.training or not any(p):
            return None
        out = []
        for k in range(self.k):
            own = tuple(shape) if shapes is None else tuple(shapes[k])
            if p[k] >= 1:  # F.dropout and nn.GRU zero the values without drawing
                m = torch.zeros(own)
            elif p[k] > 0:
                m = torch.empty(own).bernoulli_(1 - p[k], generator=generators[k]).div_(1 - p[k])
            else:
                m = None
            if m is not None and own != tuple(shape):
                full = torch.ones(shape)
                full[tuple(slice(0, n) for n in own)] = m
                m = full
            out.append(m)
        return out

    def forward(self, x, day: np.ndarray, lengths: torch.Tensor | None = None,
                generators=None, member_shapes: list[tuple[int, int]] | None = None,
                frames: torch.Tensor | None = None) -> torch.Tensor:
        """x (K, B, T, C) (or K (B, T, C) tensors, one per member: no stacking copy), day host int64 (B,) shared
        or (K, B) per member, lengths (B,) or (K, B) -> logits
        (K, B, N, n_classes). In training mode with dropout, ``generators`` holds one CPU torch.Generator per member
        (its solo dropout stream). ``member_shapes``: member k's own (trials, bins) when the members' batches were
        padded to (B, T) (``train.member_batch_order: own``): its dropout masks are drawn at its own shapes, as its
        solo run draws them; None: every member's batch is (B, T). ``frames``: (B,) or (K, B) the output frames per
        trial a loss reads (the CTC input lengths): with model.rnn: gru on the CPU, frames past them are not computed
        (their logits are not the model's; see ops.gru.members.members_gru); None: all."""
        cfg = self.cfg
        if not isinstance(x, torch.Tensor):
            shapes = {tuple(t.shape) for t in x}
            if len(shapes) != 1 or len(next(iter(shapes))) != 3:
                raise ValueError(f"x as a sequence must hold {self.k} (batch, time, {cfg.n_features}) tensors of one "
                                 f"shape, got shapes {sorted(shapes)}")
            x = list(x)
            K, (B, T, C) = len(x), x[0].shape
        else:
            K, B, T, C = x.shape
        if K != self.k or C != cfg.n_features:
            raise ValueError(f"x must be ({self.k}, batch, time, {cfg.n_features}), got {(K, B, T, C)}")
        day = np.asarray(day, dtype=np.int64)
        if day.ndim != 2:
            day = day.reshape(-1)
        if day.shape not in ((B,), (K, B)):
            raise ValueError(f"day must be ({B},) or ({K}, {B}), got {day.shape}")
        if member_shapes is not None and (len(member_shapes) != K or any(
                not (1 <= b <= B and 1 <= t <= T) for b, t in member_shapes)):
            raise ValueError(f"member_shapes must be {K} (trials, bins) within ({B}, {T}), got {member_shapes}")
        if self.training and generators is None and (any(self.input_dropout) or any(self.rnn_dropout)):
            raise ValueError("training with dropout needs one generator per member")
        if cfg.smoothing == "model":
            from fastdecoder.ops import augment

            lens = None
            if cfg.mask_padding and lengths is not None:
                lens = lengths.reshape(-1) if lengths.dim() == 2 else lengths.repeat(K)
            x = x if isinstance(x, torch.Tensor) else torch.stack(x)
            x = augment(x.reshape(K * B, T, C), lens, smooth_taps=self.smooth_taps,
                        backend=self.smoothing_backend).view(K, B, T, C)
        xs = self.day_layer(x, day)  # K (B, T, C): per member from here to the GRU's input projection
        device = xs[0].device
        ms = self._masks((B, T, C), self.input_dropout, generators,
                         None if member_shapes is None else [(b, t, C) for b, t in member_shapes]) or [None] * K
        xs = [_activate(y, cfg.day_activation, None if m is None else m.to(device)) for y, m in zip(xs, ms)]
        if T < cfg.patch_size:
            raise ValueError(f"input has {T} time bins, fewer than one patch of {cfg.patch_size}")
        N = (T - cfg.patch_size) // cfg.patch_stride + 1
        ln = cfg.rnn == "ln_gru"
        if ln:  # model.rnn: gru makes its patches inside members_gru
            x = self.patch(torch.stack(xs))
        H = cfg.hidden_size
        weights = [tuple(self.solo_parameter(f"rnn.{w}_l{layer}") for w in RNN_PARAMS[cfg.rnn])
                   for layer in range(cfg.num_layers)]
        masks = None
        if self.training and any(self.rnn_dropout) and cfg.num_layers > 1:
            # each member's mask at its own (patches, trials): nn.GRU draws (N, B, H), F.dropout (B, N, H)
            own = None
            if member_shapes is not None:
                own = [((t - cfg.patch_size) // cfg.patch_stride + 1, b) for b, t in member_shapes]
                own = [(b, n, H) if ln else (n, b, H) for n, b in own]
            shape = (B, N, H) if ln else (N, B, H)
            masks = [torch.stack([torch.ones(shape) if m is None else m
                                  for m in self._masks(shape, self.rnn_dropout, generators, own)]).to(device)
                     for _ in range(cfg.num_layers - 1)]
            if not ln:
                masks = [m.transpose(0, 1) for m in masks]
        h0 = None
        if cfg.learn_h0:
            h0 = self.solo_parameter("h0").view(K, 1, H).expand(cfg.num_layers, K, B, H)
        if ln:
            y = members_ln_gru(x, weights, h0, masks, eps=self.ln_eps, backend=self._ln_backend(device))
        else:
            y = members_gru(xs, weights, h0, masks, frames=frames,  # (K, B, N, H); patches made by the op
                            patch=(cfg.patch_size, cfg.patch_stride, cfg.patch_order == "time_major"))
        w, b = self.solo_parameter("head.weight"), self.solo_parameter("head.bias")
        return torch.baddbmm(b.unsqueeze(1), y.reshape(K, B * N, H), w.transpose(1, 2)).view(K, B, N, -1)
