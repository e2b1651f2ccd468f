"""Neural-network layers: :class:`LayerNormGRU` (a ``torch.nn.GRU`` with layer norm inside the recurrence).

The op lives in ``fastdecoder.ops.ln_gru`` (reference, Triton path, dispatch); this package keeps the layer under
its public name."""
from fastdecoder.ops.ln_gru import LayerNormGRU, ln_gru_layer_reference, ln_gru_reference

__all__ = ["LayerNormGRU", "ln_gru_layer_reference", "ln_gru_reference"]
