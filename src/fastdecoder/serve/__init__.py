"""Closed-loop serving of the streaming decoder: ``fastdecoder serve`` (decode binned features read from Redis
streams, as the NEJM/BRAND rig's decoder node does) and ``fastdecoder replay`` (publish a split's trials to a
running ``serve`` and score what comes back). The decoding logic (``session``, ``normalize``) does no I/O; the Redis
transport (``server``, ``redis_io``) is apart from it.
"""
from fastdecoder.serve.normalize import RollingZScore
from fastdecoder.serve.session import DecodeSession, parse_samples

__all__ = ["DecodeSession", "RollingZScore", "parse_samples"]
