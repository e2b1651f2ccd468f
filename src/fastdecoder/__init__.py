"""fastdecoder: train and decode the GRU + CTC phoneme decoder of intracortical speech BCIs.

The main API, importable from here (each loaded on first use, so ``import fastdecoder`` stays light)::

    from fastdecoder import load_config, Trainer, load_run, evaluate, beam_search, WordDecoder, StreamingDecoder
"""

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access: PEP 562)
_API = {
    "load_config": "fastdecoder.config",
    "Config": "fastdecoder.config",
    "GRUDecoder": "fastdecoder.model",
    "load_reference_checkpoint": "fastdecoder.model",
    "Trainer": "fastdecoder.train.trainer",
    "load_run": "fastdecoder.checkpoint",
    "evaluate": "fastdecoder.evaluation",
    "EvalSettings": "fastdecoder.evaluation",
    "greedy_decode": "fastdecoder.decode.metrics",
    "error_rate": "fastdecoder.decode.metrics",
    "beam_search": "fastdecoder.decode.beam",
    "WordDecoder": "fastdecoder.decode.words",
    "ensemble_log_probs": "fastdecoder.decode.ensemble",
    "StreamingDecoder": "fastdecoder.stream.decoder",
    "UserError": "fastdecoder.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastdecoder' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
