"""Depth accuracy against ground truth, optionally after scale (and shift) alignment."""

from __future__ import annotations

from typing import Any, Dict, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ._tensor import as_tensor as _as_tensor

__all__ = ["depth_metrics", "align_depth"]

Align = Literal["none", "median", "lsq"]


def _median(x: Tensor) -> Tensor:
    """True median (mean of the two middle values for an even count, like numpy; torch.median takes the lower)."""
    s = x.sort().values
    n = s.numel()
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _fit_scale_shift(p: Tensor, g: Tensor) -> Tuple[float, float]:
    """Ordinary least squares ``min_{s,t} sum (s*p + t - g)^2`` in closed form (float64, centred)."""
    pm, gm = p.mean(), g.mean()
    var = ((p - pm) ** 2).sum()
    if var <= 0:  # constant prediction: the scale is undetermined; keep s = 1 and fit the shift only
        return 1.0, float(gm - pm)
    s = ((p - pm) * (g - gm)).sum() / var
    return float(s), float(gm - s * pm)


def _valid(pred: Tensor, gt: Tensor, mask: Optional[Any]) -> Tensor:
    valid = (gt > 0) & torch.isfinite(gt) & torch.isfinite(pred)
    if mask is not None:
        valid &= _as_tensor(mask).reshape(-1).to(valid.device).bool()
    return valid


def align_depth(
    pred: Any,
    gt: Any,
    align: Align = "lsq",
    mask: Optional[Any] = None,
    trim: float = 0.2,
) -> Tuple[Tensor, float, float]:
    """Align a predicted depth map to ground truth: returns ``(scale * pred + shift, scale, shift)``.

    Only valid pixels (gt > 0, both finite, and ``mask`` when given) enter the fit.

    * ``"none"``: scale 1, shift 0.
    * ``"median"``: scale = median(gt) / median(pred) over valid pixels (true medians), shift 0.
    * ``"lsq"``: scale-and-shift by least squares with trimming, exactly:
      1. fit (s, t) minimising ``sum (s*p + t - g)^2`` over all n valid pixels;
      2. sort the valid pixels by ``|s*p + t - g|`` and drop the ``floor(trim * n)`` largest (ties kept in pixel
         order);
      3. refit (s, t) once by least squares on the remaining pixels; that is the result.
      A constant prediction keeps s = 1 and fits t only.

    Args:
        pred: [H, W] or [H, W, 1] predicted depth (torch or numpy).
        gt: same shape; values <= 0 or non-finite are missing.
        align: "none" | "median" | "lsq".
        mask: optional boolean map of pixels to use.
        trim: fraction of largest residuals dropped before the refit (0.2 = 20%).

    Returns:
        (aligned prediction with the input's shape as float64 tensor, scale, shift). With no valid pixel
        (or a zero median prediction) scale and shift are NaN.
    """
    pred_t = _as_tensor(pred).to(torch.float64)
    p_all = pred_t.reshape(-1)
    g_all = _as_tensor(gt).reshape(-1).to(torch.float64).to(p_all.device)
    if p_all.shape != g_all.shape:
        raise ValueError(f"pred and gt differ in size: {tuple(pred_t.shape)} vs {tuple(np.shape(gt))}")
    if align == "none":
        return pred_t, 1.0, 0.0
    if align not in ("median", "lsq"):
        raise ValueError(f"align must be 'none', 'median' or 'lsq', got {align!r}")
    valid = _valid(p_all, g_all, mask)
    p, g = p_all[valid], g_all[valid]
    nan = float("nan")
    if p.numel() == 0:
        return pred_t * nan, nan, nan
    if align == "median":
        mp = float(_median(p))
        scale = float(_median(g)) / mp if mp != 0 else nan
        return pred_t * scale, scale, 0.0
    s, t = _fit_scale_shift(p, g)
    n_drop = int(np.floor(trim * p.numel()))
    if n_drop > 0 and p.numel() - n_drop >= 2:
        residual = (s * p + t - g).abs()
        keep = torch.sort(residual, stable=True).indices[: p.numel() - n_drop]
        s, t = _fit_scale_shift(p[keep], g[keep])
    return pred_t * s + t, s, t


def depth_metrics(
    pred: Tensor,
    gt: Tensor,
    thresholds: Sequence[float] = (1.25, 1.03),
    align: Align = "none",
    mask: Optional[Any] = None,
    trim: float = 0.2,
) -> Dict[str, float]:
    """AbsRel, RMSE and delta accuracies over pixels with valid ground truth (gt > 0).

    With ``align="none"`` (default) no scale alignment happens: both depths must be in the same units
    (Nerfstudio scales GT depth by the dataparser's scale, so rendered and GT depth agree). ``"median"`` and
    ``"lsq"`` first align the prediction with :func:`align_depth` (fit on the valid pixels) and evaluate the
    aligned depth on all valid pixels.

    Args:
        pred: [H, W, 1] or [H, W] predicted depth (torch or numpy).
        gt: same shape, ground-truth depth; 0 marks missing values.
        thresholds: delta thresholds t, reported as ``delta_<t>`` = fraction with max(p/g, g/p) < t.
        align: "none" | "median" | "lsq" (see :func:`align_depth`).
        mask: optional boolean map restricting the evaluated (and fitted) pixels.
        trim: trimming fraction of the "lsq" fit.

    Returns:
        {"abs_rel", "rmse", "delta_1.25", "delta_1.03"} as floats (NaN when no pixel is valid); with alignment
        also "align_scale" and "align_shift".
    """
    pred = _as_tensor(pred)
    gt = _as_tensor(gt)
    extra: Dict[str, float] = {}
    if align != "none":
        pred, scale, shift = align_depth(pred, gt, align, mask=mask, trim=trim)
        extra = {"align_scale": scale, "align_shift": shift}
    pred = pred.reshape(-1).double()
    gt = gt.reshape(-1).double().to(pred.device)
    valid = _valid(pred, gt, mask)
    if not valid.any():
        return {
            "abs_rel": float("nan"),
            "rmse": float("nan"),
            **{f"delta_{t:g}": float("nan") for t in thresholds},
            **extra,
        }
    p, g = pred[valid], gt[valid]
    out = {
        "abs_rel": float(((p - g).abs() / g).mean()),
        "rmse": float(((p - g) ** 2).mean().sqrt()),
    }
    ratio = torch.maximum(p / g, g / p.clamp_min(1e-12))
    for t in thresholds:
        out[f"delta_{t:g}"] = float((ratio < t).double().mean())
    out.update(extra)
    return out
