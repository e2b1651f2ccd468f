"""The batch transforms of a run: the eval-time transform (shared by training, ``eval`` and ``bench``) and the
training augmentation.

Both take x (B, T, C) float and lens (B,) int64 bins. Eval: b2t25 smooths the input ('same' padding, no noise);
b2t24 smooths inside the model, so its eval transform is the identity. Training: random cut of
randint(0, augment.random_cut) bins from the start of the batch, then one fused pass of white noise, constant
offset, input smoothing and time/channel masks.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fastdecoder.train.rng import RunStreams, noise_seed


class EvalTransform:
    """``transform(x, lens) -> x``: the model's eval-time transform (``GRUDecoder.input_transform``), with its taps
    made once for the run; the training augmentation smooths with the same taps, padding rule and op backend."""

    def __init__(self, model):
        self.model = model
        self.taps = model.input_taps()  # (n,) on the model's device; None: no input smoothing

    @property
    def backend(self) -> str:
        """The smoothing op's backend: the model's (``GRUDecoder.smoothing_backend``)."""
        return self.model.smoothing_backend

    @backend.setter
    def backend(self, value: str) -> None:
        self.model.smoothing_backend = value

    def span(self, lens: torch.Tensor) -> torch.Tensor | None:
        """The lengths the transforms respect (``GRUDecoder.padding_lengths``)."""
        return self.model.padding_lengths(lens)

    def __call__(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return self.model.input_transform(x, lens, taps=self.taps)


class TrainAugmentation:
    """``augment(x, lens, step) -> (x, lens)``: the training-time augmentation drawn from the run's streams."""

    def __init__(self, cfg, smoothing: EvalTransform, streams: RunStreams, out_dtype: torch.dtype | None = None):
        self.cfg = cfg.augment
        self.smoothing = smoothing  # its taps, padding rule and op backend (a self-check fallback changes it there)
        self.streams = streams
        self.out_dtype = out_dtype  # bf16 under bf16 autocast when the next op is the day layer's matmul
        self.last_cut = 0  # bins the last call cut from the start of the batch

    def batch(self, batch, step: int):
        """``batch`` augmented for training step ``step``: x and x_lens replaced, host_lens and cut updated (the
        host lengths cut as the device ones are)."""
        x, lens = self(batch.x, batch.x_lens, step)
        host = batch.host_lens
        if host is not None and self.last_cut:
            host = np.maximum(host - self.last_cut, 1)
        return dataclasses.replace(batch, x=x, x_lens=lens, host_lens=host, cut=self.last_cut)

    def __call__(self, x: torch.Tensor, lens: torch.Tensor, step: int):
        from fastdecoder.ops import augment, sample_masks

        a = self.cfg
        self.last_cut = 0
        if a.random_cut > 0:
            cut = self.last_cut = int(self.streams.cut.integers(0, a.random_cut))
            if cut:
                x = x[:, cut:]
                lens = (lens - cut).clamp(min=1)
        B, T, C = x.shape
        tm = fm = None
        if (a.time_mask_count and a.time_mask_prob) or (a.freq_mask_count and a.freq_mask_prob):
            tm, fm = sample_masks(B, T, C, lengths=lens, time_prob=a.time_mask_prob, time_max_width=a.time_mask_width,
                                  time_max_count=a.time_mask_count, freq_prob=a.freq_mask_prob,
                                  freq_max_width=a.freq_mask_width, freq_max_count=a.freq_mask_count,
                                  generator=self.streams.masks, device=x.device)
        s = self.smoothing
        x = augment(x, s.span(lens), white_noise_std=a.white_noise_std, constant_offset_std=a.constant_offset_std,
                    smooth_taps=s.taps, time_masks=tm, freq_masks=fm, seed=noise_seed(self.streams.rank_seed, step),
                    noise=a.noise, out_dtype=self.out_dtype, backend=s.backend)
        return x, lens
