"""Let torch >= 2.6 load Nerfstudio checkpoints with ``weights_only=True`` still on.

Nerfstudio 1.1.5 checkpoints hold a few numpy scalars (in scheduler state), which torch's safe
unpickler rejects (nerfstudio#3683). We allow exactly those types instead of turning ``weights_only``
off for everything.
"""

from __future__ import annotations

import numpy as np
import torch


def safe_checkpoint_globals() -> list:
    """The non-tensor types a Nerfstudio 1.1.5 checkpoint holds: float64 numpy scalars (found by loading
    a real unisem-splat checkpoint with ``weights_only=True`` until it stopped complaining)."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    kinds = [scalar, np.dtype]
    if hasattr(np, "dtypes"):  # numpy >= 1.25 pickles dtypes by their class
        kinds.append(np.dtypes.Float64DType)
    return kinds


def register_safe_globals() -> None:
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals(safe_checkpoint_globals())


register_safe_globals()
