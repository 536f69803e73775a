"""Depth accuracy against ground truth."""

from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import Tensor


def depth_metrics(pred: Tensor, gt: Tensor, thresholds: Sequence[float] = (1.25, 1.03)) -> Dict[str, float]:
    """AbsRel, RMSE and delta accuracies over pixels with valid ground truth (gt > 0).

    No scale alignment: both depths must be in the same units (Nerfstudio scales GT depth by the
    dataparser's scale, so rendered and GT depth agree).

    Args:
        pred: [H, W, 1] or [H, W] predicted depth.
        gt: same shape, ground-truth depth; 0 marks missing values.
        thresholds: delta thresholds t, reported as ``delta_<t>`` = fraction with max(p/g, g/p) < t.

    Returns:
        {"abs_rel", "rmse", "delta_1.25", "delta_1.03"} as floats (NaN when no pixel is valid).
    """
    pred = pred.reshape(-1).double()
    gt = gt.reshape(-1).double().to(pred.device)
    valid = (gt > 0) & torch.isfinite(gt) & torch.isfinite(pred)
    if not valid.any():
        return {"abs_rel": float("nan"), "rmse": float("nan"), **{f"delta_{t:g}": float("nan") for t in thresholds}}
    p, g = pred[valid], gt[valid]
    out = {
        "abs_rel": float(((p - g).abs() / g).mean()),
        "rmse": float(((p - g) ** 2).mean().sqrt()),
    }
    ratio = torch.maximum(p / g, g / p.clamp_min(1e-12))
    for t in thresholds:
        out[f"delta_{t:g}"] = float((ratio < t).double().mean())
    return out
