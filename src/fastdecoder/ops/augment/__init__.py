"""Training augmentation: white noise, per-trial constant offset, Gaussian smoothing over time, time/channel masks.

One op, one folder:

* ``dispatch.py``: :func:`augment`, its argument checks and the choice of backend;
* ``reference.py``: the plain-PyTorch definition (``backend="reference"``), Philox or ``torch.randn`` noise;
* ``philox.py``: the counter-based generator in PyTorch (the parity oracle of the kernel's noise);
* ``launcher.py``: tile sizes and launch of the fused kernel (``fastdecoder.kernels.augment``, ``@triton.jit``);
* ``taps.py``: the presets' smoothing taps (:func:`gaussian_taps`); ``masks.py``: :func:`sample_masks`.
"""
from fastdecoder.ops.augment.dispatch import augment
from fastdecoder.ops.augment.masks import sample_masks
from fastdecoder.ops.augment.philox import normals, offset_noise, philox4x32_10, white_noise
from fastdecoder.ops.augment.reference import augment_reference
from fastdecoder.ops.augment.taps import MAX_TAPS, gaussian_taps

__all__ = ["augment", "augment_reference", "gaussian_taps", "sample_masks", "normals", "white_noise",
           "offset_noise", "philox4x32_10", "MAX_TAPS"]
