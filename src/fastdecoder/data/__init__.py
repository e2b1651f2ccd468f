"""Data layer: the b2t24 pickle and b2t25 HDF5 formats, a synthetic look-alike, and batching.

    ds = load_dataset("path/to/ptDecoder_ctc")            # or a folder of t15.* session folders
    split = ds.splits["train"]                            # features (T, C) float32, targets 1..40, day index
    sampler = DayBatchSampler(split, 64, days_per_batch=4, seed=0)
    batch = collate(split, next(sampler))                 # x (B, T_max, C), x_lens, y (B, L_max), y_lens, day
"""
from fastdecoder.data.batching import (Batch, DayBatchSampler, EpochBatchSampler, RandomBatchSampler, collate,
                                       eval_batches, make_sampler)
from fastdecoder.data.b2t24 import load_b2t24, write_b2t24
from fastdecoder.data.b2t25 import load_b2t25, write_b2t25
from fastdecoder.data.dataset import SPLIT_NAMES, DataFormatError, Dataset, Split
from fastdecoder.data.loader import FORMATS, detect_format, load_dataset
from fastdecoder.data.safe_pickle import UnsafePickleError, safe_load
from fastdecoder.data.synthetic import SynthSpec, generate_synthetic, write_synthetic

__all__ = [
    "Batch", "DataFormatError", "Dataset", "DayBatchSampler", "EpochBatchSampler", "FORMATS", "RandomBatchSampler", "SPLIT_NAMES",
    "Split", "SynthSpec", "UnsafePickleError", "collate", "detect_format", "eval_batches", "generate_synthetic",
    "load_b2t24", "load_b2t25", "load_dataset", "make_sampler", "safe_load", "write_b2t24", "write_b2t25", "write_synthetic",
]
