"""The Philox-4x32-10 constants (Salmon et al. 2011; those of triton.language.random) shared by the Triton noise kernel and its PyTorch twin (``fastdecoder.ops.augment.philox``).

Plain integers: importing this module does not import triton.
"""

PHILOX_KEY_A, PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85  # key increments per round (golden ratio, sqrt(3) - 1)
PHILOX_ROUND_A, PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57  # round multipliers
