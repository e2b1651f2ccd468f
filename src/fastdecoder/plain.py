"""Plain containers for checkpoints read with ``torch.load(weights_only=True)``."""
from __future__ import annotations

from typing import Any

import numpy as np


def to_plain(obj: Any) -> Any:
    """numpy scalars/arrays and tuples inside nested containers -> Python ints/floats/lists; dict keys -> str."""
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
