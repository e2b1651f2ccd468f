"""Real-time streaming decoding of causal models: push 20 ms bins, get phonemes and words as they firm up.

Exact: for any way of cutting a trial into pushes, :meth:`StreamingDecoder.finish` equals offline decoding of the
whole trial (the model's forward + the eval transform + ``beam_search`` / ``WordDecoder``), and the final prefix of a
partial result never changes afterwards.
"""
from fastdecoder.stream.decoder import Final, Partial, StreamingDecoder
from fastdecoder.stream.frontend import IncrementalFrontend
from fastdecoder.stream.search import BeamStream, WordStream

__all__ = ["StreamingDecoder", "Partial", "Final", "IncrementalFrontend", "BeamStream", "WordStream"]
