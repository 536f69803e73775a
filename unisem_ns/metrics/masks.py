"""Binary-mask metrics: mask IoU, Boundary IoU, and LangSplat / GSemSplat open-vocabulary query evaluation.

All masks are [H, W] (bool or 0/1, torch or numpy). Every metric returns a Python float.

Empty masks: when prediction and ground truth are both empty (union 0) :func:`mask_iou` and
:func:`boundary_iou` return 1.0 (nothing to find, nothing predicted). Skip such queries yourself if your
protocol does (GSemSplat skips queries whose ground truth is empty).

Query evaluation (:func:`postprocess_relevancy`, :func:`query_iou`, :func:`localization_hit`) follows the
LangSplat evaluation (``eval/evaluate_iou_loc.py``, also used by LangSplat-derived methods on LERF-OVS) and
the GSemSplat variant of it, for one relevancy map of one text query at one feature level (choosing the level
is the caller's business; :mod:`.open_vocab` does it the way both scripts do):

1. ``avg = box_mean_30x30(r)``: mean over a 30x30 window (offsets -15..+14 around the pixel, the anchor of
   ``cv2.filter2D`` with an even kernel).
2. ``smoothed = 0.5 * (r + avg)``.
3. ``n = 2 * (smoothed - min) / (max - min + eps) - 1`` (min-max to [-1, 1]; a constant map gives -1),
   ``clip(n, 0, 1)``. Both scripts use ``eps = 1e-9`` (``norm_eps``; 0 by default here).
4. ``mask = n > threshold`` (LangSplat 0.4 = their ``--mask_thresh``; GSemSplat 0.5).
5. 7x7 majority (mode) filter on the binary mask; a tie gives 0, like ``argmax(bincount)``. LangSplat filters
   the prediction only; GSemSplat filters prediction and ground truth.

Border handling (``border=``) of steps 1 and 5:

* ``"clip"`` (the default of the functions in this module): the box mean averages only the pixels inside the
  image and the mode filter's window is the 7x7 square clipped to the image.
* ``"reference"`` (what both scripts compute, and the default of :mod:`.open_vocab`): the box mean reflects the
  image at its border without repeating the edge pixel (OpenCV's ``BORDER_REFLECT_101``, the default of
  ``cv2.filter2D``) and always divides by 900; the mode filter is the scripts' ``smooth`` loop, whose window
  is rows ``max(0, i-3) .. min(i+4, H-1) - 1`` (columns alike). The exclusive end ``H-1`` instead of ``H``
  means the last row and the last column of the image never enter any window: interior windows are the full
  7x7, windows of the last four rows/columns are cut short at row ``H-2`` / column ``W-2``, so the last
  row/column is decided by its neighbours only. An empty window (an image 1 pixel high or wide) gives 0.

The two only differ in the border band (15 pixels for the box mean, 3-4 for the mode filter).

Localisation (``localization_hit``): the pixels where the *score map* attains its maximum (all of them when
tied, as in both reference scripts) are tested; a hit is 1.0 when any of them lies in the target region.
LangSplat: score map = ``avg`` (step 1 alone, as in its ``lerf_localization``), region = the ground-truth
bounding box(es), inclusive pixel coordinates. GSemSplat: score map = ``smoothed`` (step 2) times the
visibility mask, region = the mode-filtered ground-truth mask times the visibility mask.
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
Border = Literal["clip", "reference"]

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
    "BORDERS",
    "REFERENCE_NORM_EPS",
]

STYLE_THRESHOLDS = {"langsplat": 0.4, "gsemsplat": 0.5}
#: Border rules of :func:`box_mean` / :func:`mode_filter` (see the module docstring).
BORDERS = ("clip", "reference")
#: The epsilon both reference scripts add to the min-max denominator (step 3).
REFERENCE_NORM_EPS = 1e-9


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


def _border(border: str) -> str:
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    return border


def _reflect101(idx: Tensor, n: int) -> Tensor:
    """Indices folded into ``0..n-1`` by mirror reflection without repeating the edge (``BORDER_REFLECT_101``:
    ``-1 -> 1``, ``n -> n-2``), repeated as often as needed, so kernels larger than the image work too."""
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = idx.remainder(period)  # non-negative
    return torch.where(idx >= n, period - idx, idx)


def box_mean(x: ArrayLike, kernel: int = 30, border: Border = "clip") -> Tensor:
    """Mean over a kernel x kernel window of every pixel of an [H, W] map, same-size float64 output.

    The window covers offsets ``-(kernel // 2) .. kernel - 1 - kernel // 2`` (cv2's default anchor, so
    -15..+14 for 30).

    Args:
        x: [H, W] real map.
        kernel: window side.
        border: ``"clip"`` averages only the pixels inside the image (avg-pooling with
            ``count_include_pad=False``); ``"reference"`` reflects the image (``BORDER_REFLECT_101``) and divides
            by ``kernel**2``, i.e. ``cv2.filter2D(x, -1, ones((k, k)) / k**2)`` as both reference scripts call it.

    Returns:
        [H, W] float64 tensor (separable sums, so exact up to float rounding).
    """
    border = _border(border)
    t = _as_tensor(x).to("cpu", torch.float64)
    if t.ndim != 2:
        raise ValueError(f"expected an [H, W] map, got shape {tuple(t.shape)}")
    h, w = t.shape
    pad = kernel // 2
    if border == "reference":
        # Gather the reflected rows/columns the window reaches (offsets -pad .. kernel-1-pad), then a plain
        # (unpadded) average over every full window.
        rows = _reflect101(torch.arange(-pad, h + kernel - 1 - pad), h)
        cols = _reflect101(torch.arange(-pad, w + kernel - 1 - pad), w)
        padded = t[rows][:, cols]
        y = F.avg_pool2d(padded[None, None], (kernel, 1), stride=1)
        y = F.avg_pool2d(y, (1, kernel), stride=1)
        return y[0, 0]
    y = F.avg_pool2d(t[None, None], (kernel, 1), stride=1, padding=(pad, 0), count_include_pad=False)[..., :h, :]
    y = F.avg_pool2d(y, (1, kernel), stride=1, padding=(0, pad), count_include_pad=False)[..., :, :w]
    return y[0, 0]


def _window_sums(x: Tensor, radius: int, border: str = "clip") -> Tuple[Tensor, Tensor]:
    """Exact integer sums over the (2r+1)^2 windows of every pixel, and the window sizes.

    ``"clip"``: the square clipped to the image. ``"reference"``: the scripts' slice
    ``[max(0, i-r) : min(i+r+1, H-1)]``, whose end never reaches the last row (columns alike).
    """
    h, w = x.shape
    s = torch.zeros(h + 1, w + 1, dtype=torch.int64)
    s[1:, 1:] = x.to(torch.int64).cumsum(0).cumsum(1)
    ri, ci = torch.arange(h), torch.arange(w)
    end_h, end_w = (h, w) if border == "clip" else (h - 1, w - 1)
    r0, c0 = (ri - radius).clamp(0, h), (ci - radius).clamp(0, w)
    r1, c1 = (ri + radius + 1).clamp(max=end_h), (ci + radius + 1).clamp(max=end_w)
    # An empty slice (end <= start, only when H or W is 1 under "reference") has no pixels.
    r1, c1 = torch.maximum(r1, r0), torch.maximum(c1, c0)
    sums = s[r1][:, c1] - s[r0][:, c1] - s[r1][:, c0] + s[r0][:, c0]
    counts = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    return sums, counts


def mode_filter(mask: ArrayLike, size: int = 7, border: Border = "clip") -> Tensor:
    """Majority filter of an [H, W] binary mask over size x size windows (size odd).

    A pixel becomes 1 when more than half of its window is 1; ties give 0 (``argmax(bincount)``).

    Args:
        mask: [H, W] binary mask.
        size: window side (odd).
        border: ``"clip"`` clips the square at the image border; ``"reference"`` uses the window of the
            reference scripts' ``smooth`` loop, which never includes the last row/column of the image (see the
            module docstring).

    Returns:
        [H, W] bool tensor.
    """
    border = _border(border)
    if size % 2 != 1:
        raise ValueError(f"mode filter size must be odd, got {size}")
    m = _as_mask(mask)
    ones, counts = _window_sums(m, size // 2, border)
    return 2 * ones > counts


# ----------------------------------------------------------------------------------------- queries


def _style(style: str) -> str:
    if style not in STYLE_THRESHOLDS:
        raise ValueError(f"style must be one of {sorted(STYLE_THRESHOLDS)}, got {style!r}")
    return style


def _smooth(r: Tensor, avg_kernel: int, border: str = "clip") -> Tuple[Tensor, Tensor]:
    avg = box_mean(r, avg_kernel, border)
    return 0.5 * (r + avg), avg


def _relevancy_map(relevancy: ArrayLike) -> Tensor:
    r = _as_tensor(relevancy).to("cpu", torch.float64)
    if r.ndim == 3 and r.shape[-1] == 1:  # a rendered [H, W, 1] map
        r = r[..., 0]
    if r.ndim != 2:
        raise ValueError(f"relevancy must be [H, W], got shape {tuple(r.shape)}")
    return r


def postprocess_relevancy(
    relevancy: ArrayLike,
    style: Style = "langsplat",
    threshold: Optional[float] = None,
    avg_kernel: int = 30,
    mode_size: int = 7,
    border: Border = "clip",
    norm_eps: float = 0.0,
) -> Tuple[Tensor, Tensor]:
    """Binary query mask from a relevancy map (steps 1-5 of the module docstring).

    Args:
        relevancy: [H, W] (or [H, W, 1]) real relevancy of one query (typically in [0, 1]).
        style: "langsplat" (threshold 0.4) or "gsemsplat" (threshold 0.5); both mode-filter the prediction.
        threshold: overrides the style's threshold (applied as ``normalised > threshold``).
        avg_kernel: box-filter size (30 in both references).
        mode_size: majority-filter size (7 in both references).
        border: border rule of the box mean and the mode filter ("clip" or "reference").
        norm_eps: added to ``max - min`` in the min-max normalisation (the scripts: 1e-9,
            :data:`REFERENCE_NORM_EPS`).

    Returns:
        (mask [H, W] bool, smoothed [H, W] float64 = 0.5 * (r + box_mean(r))).
    """
    thr = STYLE_THRESHOLDS[_style(style)] if threshold is None else float(threshold)
    border = _border(border)
    r = _relevancy_map(relevancy)
    smoothed, _ = _smooth(r, avg_kernel, border)
    lo, hi = smoothed.min(), smoothed.max()
    if hi > lo or norm_eps > 0:
        norm = 2.0 * (smoothed - lo) / (hi - lo + norm_eps) - 1.0
    else:
        norm = torch.full_like(smoothed, -1.0)
    mask = norm.clamp(0.0, 1.0) > thr
    return mode_filter(mask, mode_size, border), smoothed


def query_iou(
    relevancy: ArrayLike,
    gt_mask: ArrayLike,
    style: Style = "langsplat",
    threshold: Optional[float] = None,
    valid: Optional[ArrayLike] = None,
    border: Border = "clip",
    norm_eps: float = 0.0,
) -> float:
    """IoU of the post-processed query mask with the ground-truth mask.

    Args:
        relevancy: [H, W] relevancy map.
        gt_mask: [H, W] binary ground truth of the query (union of its instances).
        style: "langsplat" (pred mode-filtered) or "gsemsplat" (pred and gt mode-filtered).
        threshold: overrides the style's threshold.
        valid: optional [H, W] mask of evaluated pixels (GSemSplat's visibility mask); both masks are AND-ed
            with it after filtering.
        border: border rule of the filters ("clip" or "reference", see the module docstring).
        norm_eps: epsilon of the min-max normalisation (see :func:`postprocess_relevancy`).
    """
    style = _style(style)
    pred, _ = postprocess_relevancy(relevancy, style, threshold, border=border, norm_eps=norm_eps)
    gt = _as_mask(gt_mask, "gt_mask")
    if gt.shape != pred.shape:
        raise ValueError(f"gt_mask {tuple(gt.shape)} and relevancy {tuple(pred.shape)} differ in shape")
    if style == "gsemsplat":
        gt = mode_filter(gt, border=border)
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
    border: Border = "clip",
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
        border: border rule of the box mean and of GSemSplat's gt mode filter ("clip" or "reference").

    Ties: every pixel attaining the maximum is tested (a constant map therefore always hits).
    """
    style = _style(style)
    border = _border(border)
    r = _relevancy_map(relevancy)
    smoothed, avg = _smooth(r, avg_kernel, border)
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
    gt = mode_filter(_as_mask(gt_mask, "gt_mask"), border=border)
    if v is not None:
        gt = gt & v
    return 1.0 if bool(gt[ys, xs].any()) else 0.0
