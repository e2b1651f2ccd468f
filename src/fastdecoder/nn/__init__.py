"""Neural-network layers: :class:`LayerNormGRU` (a ``torch.nn.GRU`` with layer norm inside the recurrence)."""
from fastdecoder.nn.ln_gru import LayerNormGRU, ln_gru_layer_reference, ln_gru_reference

__all__ = ["LayerNormGRU", "ln_gru_layer_reference", "ln_gru_reference"]
