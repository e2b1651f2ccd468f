"""Decoding: greedy, the native CTC prefix beam search, word decoding, and error rates."""
from fastdecoder.decode.beam import beam_search, num_cpu_threads
from fastdecoder.decode.metrics import edit_distances, error_rate, greedy_decode, word_error_rate

__all__ = ["beam_search", "num_cpu_threads", "greedy_decode", "edit_distances", "error_rate", "word_error_rate"]
