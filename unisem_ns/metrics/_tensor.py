"""Input normalisation shared by the metric functions (they accept torch tensors or numpy arrays)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor


def as_tensor(x: Any) -> Tensor:
    """A detached tensor view of a tensor, or a tensor made from an array-like (numpy, lists)."""
    if isinstance(x, Tensor):
        return x.detach()
    return torch.as_tensor(np.ascontiguousarray(x))
