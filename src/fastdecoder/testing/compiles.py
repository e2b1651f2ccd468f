"""A torch.compile backend that counts compiles per frame (dynamo's frame id) and runs the graphs eagerly: the
compile-count tests of the fast step and the day layer use it."""
from __future__ import annotations

from collections import Counter

import torch

__all__ = ["CompilesPerFrame"]


class CompilesPerFrame:
    """A dynamo backend (runs the graphs eagerly) counting the compiles of each frame (code object) it is given."""

    def __init__(self):
        self.compiles = Counter()

    def __call__(self, gm, example_inputs):
        self.compiles[torch._guards.CompileContext.current_compile_id().frame_id] += 1
        return gm.forward
