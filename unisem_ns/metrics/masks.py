"""Binary-mask metrics: mask IoU, Boundary IoU, and LangSplat / GSemSplat open-vocabulary query evaluation.

All masks are [H, W] (bool or 0/1, torch or numpy). Every metric returns a Python float.

Empty masks: when prediction and ground truth are both empty (union 0) :func:`mask_iou` and
:func:`boundary_iou` return 1.0 (nothing to find, nothing predicted). Skip such queries yourself if your
protocol does (GSemSplat skips queries whose ground truth is empty).

Query evaluation (:func:`postprocess_relevancy`, :func:`query_iou`, :func:`localization_hit`) follows the
LangSplat evaluation (``eval/evaluate_iou_loc.py``, also used by LangSplat-derived methods on LERF-OVS) and
the GSemSplat variant of it, for one relevancy map of one text query at one feature level (choosing the level
is the caller's business):

1. ``avg = box_mean_30x30(r)``: mean over a 30x30 window (offsets -15..+14 around the pixel, the anchor of
   ``cv2.filter2D`` with an even kernel), counting only pixels inside the image (``count_include_pad=False``;
   LangSplat's cv2 call reflects the border instead, which only changes the 15-pixel border band).
2. ``smoothed = 0.5 * (r + avg)``.
3. ``n = 2 * (smoothed - min) / (max - min) - 1`` (min-max to [-1, 1]; a constant map gives -1), ``clip(n, 0, 1)``.
4. ``mask = n > threshold`` (LangSplat 0.4 = their ``--mask_thresh``; GSemSplat 0.5).
5. 7x7 majority (mode) filter on the binary mask; the window is clipped at the image border and a tie
   (possible only in clipped windows) gives 0, like ``argmax(bincount)``. LangSplat filters the prediction
   only; GSemSplat filters prediction and ground truth. (LangSplat's loop ``smooth`` also drops the last
   row/column from every window by an off-by-one; we use the plain clipped window.)

Localisation (``localization_hit``): the pixels where the *score map* attains its maximum (all of them when
tied, as in both reference scripts) are tested; a hit is 1.0 when any of them lies in the target region.
LangSplat: score map = ``avg`` (step 1 alone, as in its ``lerf_localization``), region = the ground-truth
bounding box(es), inclusive pixel coordinates. GSemSplat: score map = ``smoothed`` (step 2), region = the
mode-filtered ground-truth mask.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._tensor import as_tensor as _as_tensor

ArrayLike = Union[Tensor, np.ndarray]
Style = Literal["langsplat", "gsemsplat"]

__all__ = [
    "mask_iou",
    "boundary_width",
    "mask_boundary",
    "boundary_iou",
    "box_mean",
    "mode_filter",
    "postprocess_relevancy",
    "query_iou",
    "localization_hit",
    "STYLE_THRESHOLDS",
]

STYLE_THRESHOLDS = {"langsplat": 0.4, "gsemsplat": 0.5}


def _as_mask(x: Any, name: str = "mask") -> Tensor:
    t = _as_tensor(x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be [H, W], got shape {tuple(t.shape)}")
    return t.to("cpu") != 0


def _iou(a: Tensor, b: Tensor) -> float:
    union = int((a | b).sum())
    if union == 0:
        return 1.0
    return int((a & b).sum()) / union


def mask_iou(pred: ArrayLike, gt: ArrayLike) -> float:
    """|P ∩ G| / |P ∪ G| of two [H, W] binary masks (1.0 when both are empty)."""
    p, g = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {tuple(p.shape)} and gt {tuple(g.shape)} differ in shape")
    return _iou(p, g)


# ----------------------------------------------------------------------------------------- boundary IoU


def boundary_width(height: int, width: int, dilation_ratio: float = 0.02) -> int:
    """Boundary width d in pixels: ``max(1, round(dilation_ratio * image diagonal))``."""
    return max(1, int(round(dilation_ratio * math.sqrt(height**2 + width**2))))


def mask_boundary(mask: ArrayLike, dilation_ratio: float = 0.02) -> Tensor:
    """Inner boundary band of a mask: ``mask & ~erode(mask)`` (Cheng et al. 2021, ``G_d ∩ G``).

    The erosion uses a (2d+1)x(2d+1) square (= d iterations of a 3x3 erosion) with everything outside the image
    counted as background, so a mask touching the image border has a boundary there too.

    Args:
        mask: [H, W] binary mask.
        dilation_ratio: d as a fraction of the image diagonal (see :func:`boundary_width`).

    Returns:
        [H, W] bool tensor: mask pixels within Chebyshev distance d of a background pixel (or of the outside).
    """
    m = _as_mask(mask)
    h, w = m.shape
    d = boundary_width(h, w, dilation_ratio)
    k = 2 * d + 1
    # erode(m) = NOT dilate(NOT m), with the outside padded as background (NOT m = 1); the square max filter is
    # separable: a k x 1 max-pool followed by a 1 x k one.
    bg = F.pad((~m).to(torch.float32)[None, None], (d, d, d, d), value=1.0)
    bg = F.max_pool2d(bg, kernel_size=(k, 1), stride=1)
    bg = F.max_pool2d(bg, kernel_size=(1, k), stride=1)
    eroded = bg[0, 0] < 0.5
    return m & ~eroded


def boundary_iou(pred: ArrayLike, gt: ArrayLike, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU (Cheng et al., CVPR 2021) of two [H, W] binary masks.

    ``|(G_d ∩ G) ∩ (P_d ∩ P)| / |(G_d ∩ G) ∪ (P_d ∩ P)|`` with the inner boundary bands of
    :func:`mask_boundary` (d = ``max(1, round(0.02 * diagonal))`` by default, as in the LERF-Mask /
    Gaussian-Grouping evaluation). 1.0 when both masks are empty.
    """
    p, g = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {tuple(p.shape)} and gt {tuple(g.shape)} differ in shape")
    return _iou(mask_boundary(p, dilation_ratio), mask_boundary(g, dilation_ratio))


# ----------------------------------------------------------------------------------------- filters


def box_mean(x: ArrayLike, kernel: int = 30) -> Tensor:
    """Mean over a kernel x kernel window of every pixel of an [H, W] map, same-size float64 output.

    The window covers offsets ``-(kernel // 2) .. kernel - 1 - kernel // 2`` (cv2's default anchor, so
    -15..+14 for 30) and averages only the pixels inside the image (avg-pooling with padding and
    ``count_include_pad=False``; separable, so exact up to float rounding).
    """
    t = _as_tensor(x).to("cpu", torch.float64)
    if t.ndim != 2:
        raise ValueError(f"expected an [H, W] map, got shape {tuple(t.shape)}")
    h, w = t.shape
    pad = kernel // 2
    y = F.avg_pool2d(t[None, None], (kernel, 1), stride=1, padding=(pad, 0), count_include_pad=False)[..., :h, :]
    y = F.avg_pool2d(y, (1, kernel), stride=1, padding=(0, pad), count_include_pad=False)[..., :, :w]
    return y[0, 0]


def _window_sums(x: Tensor, radius: int) -> Tuple[Tensor, Tensor]:
    """Exact integer sums over (2r+1)^2 windows clipped to the image, and the clipped window sizes."""
    h, w = x.shape
    s = torch.zeros(h + 1, w + 1, dtype=torch.int64)
    s[1:, 1:] = x.to(torch.int64).cumsum(0).cumsum(1)
    ri, ci = torch.arange(h), torch.arange(w)
    r0, r1 = (ri - radius).clamp(0, h), (ri + radius + 1).clamp(0, h)
    c0, c1 = (ci - radius).clamp(0, w), (ci + radius + 1).clamp(0, w)
    sums = s[r1][:, c1] - s[r0][:, c1] - s[r1][:, c0] + s[r0][:, c0]
    counts = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    return sums, counts


def mode_filter(mask: ArrayLike, size: int = 7) -> Tensor:
    """Majority filter of an [H, W] binary mask over size x size windows (size odd), clipped at the border.

    A pixel becomes 1 when more than half of its (clipped) window is 1; ties give 0.
    """
    if size % 2 != 1:
        raise ValueError(f"mode filter size must be odd, got {size}")
    m = _as_mask(mask)
    ones, counts = _window_sums(m, size // 2)
    return 2 * ones > counts


# ----------------------------------------------------------------------------------------- queries


def _style(style: str) -> str:
    if style not in STYLE_THRESHOLDS:
        raise ValueError(f"style must be one of {sorted(STYLE_THRESHOLDS)}, got {style!r}")
    return style


def _smooth(r: Tensor, avg_kernel: int) -> Tuple[Tensor, Tensor]:
    avg = box_mean(r, avg_kernel)
    return 0.5 * (r + avg), avg


def postprocess_relevancy(
    relevancy: ArrayLike,
    style: Style = "langsplat",
    threshold: Optional[float] = None,
    avg_kernel: int = 30,
    mode_size: int = 7,
) -> Tuple[Tensor, Tensor]:
    """Binary query mask from a relevancy map (steps 1-5 of the module docstring).

    Args:
        relevancy: [H, W] (or [H, W, 1]) real relevancy of one query (typically in [0, 1]).
        style: "langsplat" (threshold 0.4) or "gsemsplat" (threshold 0.5); both mode-filter the prediction.
        threshold: overrides the style's threshold (applied as ``normalised > threshold``).
        avg_kernel: box-filter size (30 in both references).
        mode_size: majority-filter size (7 in both references).

    Returns:
        (mask [H, W] bool, smoothed [H, W] float64 = 0.5 * (r + box_mean(r))).
    """
    thr = STYLE_THRESHOLDS[_style(style)] if threshold is None else float(threshold)
    r = _as_tensor(relevancy).to("cpu", torch.float64)
    if r.ndim == 3 and r.shape[-1] == 1:  # a rendered [H, W, 1] map
        r = r[..., 0]
    if r.ndim != 2:
        raise ValueError(f"relevancy must be [H, W], got shape {tuple(r.shape)}")
    smoothed, _ = _smooth(r, avg_kernel)
    lo, hi = smoothed.min(), smoothed.max()
    if hi > lo:
        norm = 2.0 * (smoothed - lo) / (hi - lo) - 1.0
    else:
        norm = torch.full_like(smoothed, -1.0)
    mask = norm.clamp(0.0, 1.0) > thr
    return mode_filter(mask, mode_size), smoothed


def query_iou(
    relevancy: ArrayLike,
    gt_mask: ArrayLike,
    style: Style = "langsplat",
    threshold: Optional[float] = None,
    valid: Optional[ArrayLike] = None,
) -> float:
    """IoU of the post-processed query mask with the ground-truth mask.

    Args:
        relevancy: [H, W] relevancy map.
        gt_mask: [H, W] binary ground truth of the query (union of its instances).
        style: "langsplat" (pred mode-filtered) or "gsemsplat" (pred and gt mode-filtered).
        threshold: overrides the style's threshold.
        valid: optional [H, W] mask of evaluated pixels (GSemSplat's visibility mask); both masks are AND-ed
            with it after filtering.
    """
    style = _style(style)
    pred, _ = postprocess_relevancy(relevancy, style, threshold)
    gt = _as_mask(gt_mask, "gt_mask")
    if gt.shape != pred.shape:
        raise ValueError(f"gt_mask {tuple(gt.shape)} and relevancy {tuple(pred.shape)} differ in shape")
    if style == "gsemsplat":
        gt = mode_filter(gt)
    if valid is not None:
        v = _as_mask(valid, "valid")
        pred, gt = pred & v, gt & v
    return _iou(pred, gt)


def _mask_bbox(mask: Tensor) -> Optional[Tuple[int, int, int, int]]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def localization_hit(
    relevancy: ArrayLike,
    gt_mask: Optional[ArrayLike] = None,
    style: Style = "langsplat",
    boxes: Optional[Sequence[Sequence[float]]] = None,
    score_map: Optional[Literal["avg", "smoothed"]] = None,
    valid: Optional[ArrayLike] = None,
    avg_kernel: int = 30,
) -> float:
    """1.0 when the maximum of the query's score map falls in the target region, else 0.0.

    Args:
        relevancy: [H, W] relevancy map.
        gt_mask: [H, W] ground-truth mask of the query. LangSplat uses its tight bounding box when ``boxes`` is
            None; GSemSplat uses the mode-filtered mask itself.
        style: "langsplat" (score = 30x30 box mean, region = box(es)) or "gsemsplat" (score = smoothed map,
            region = mode-filtered gt mask).
        boxes: LangSplat only: ground-truth boxes ``(x1, y1, x2, y2)`` in pixels (inclusive; the LERF-OVS
            annotation boxes, one per instance); any box containing a maximum counts.
        score_map: override the style's score map ("avg" or "smoothed").
        valid: optional [H, W] mask of evaluated pixels (GSemSplat): the score map and gt mask are multiplied by
            it, as in GSemSplat's script.
        avg_kernel: box-filter size (30 in both references).

    Ties: every pixel attaining the maximum is tested (a constant map therefore always hits).
    """
    style = _style(style)
    r = _as_tensor(relevancy).to("cpu", torch.float64)
    if r.ndim != 2:
        raise ValueError(f"relevancy must be [H, W], got shape {tuple(r.shape)}")
    smoothed, avg = _smooth(r, avg_kernel)
    which = score_map or ("avg" if style == "langsplat" else "smoothed")
    if which not in ("avg", "smoothed"):
        raise ValueError(f"score_map must be 'avg' or 'smoothed', got {score_map!r}")
    score = avg if which == "avg" else smoothed
    v = _as_mask(valid, "valid") if valid is not None else None
    if v is not None:
        score = score * v
    ys, xs = torch.nonzero(score == score.max(), as_tuple=True)

    if style == "langsplat":
        if boxes is None:
            if gt_mask is None:
                raise ValueError("localization_hit needs gt_mask or boxes")
            box = _mask_bbox(_as_mask(gt_mask, "gt_mask"))
            boxes = [] if box is None else [box]
        for x1, y1, x2, y2 in boxes:
            x_lo, x_hi = min(x1, x2), max(x1, x2)
            y_lo, y_hi = min(y1, y2), max(y1, y2)
            if bool(((xs >= x_lo) & (xs <= x_hi) & (ys >= y_lo) & (ys <= y_hi)).any()):
                return 1.0
        return 0.0

    if gt_mask is None:
        raise ValueError("localization_hit(style='gsemsplat') needs gt_mask")
    gt = mode_filter(_as_mask(gt_mask, "gt_mask"))
    if v is not None:
        gt = gt & v
    return 1.0 if bool(gt[ys, xs].any()) else 0.0
