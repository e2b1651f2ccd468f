"""fastdecoder: train and decode the GRU + CTC phoneme decoder of intracortical speech BCIs."""

__version__ = "0.1.0"
