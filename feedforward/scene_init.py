"""Place a feed-forward predictor's Gaussians in a scene's world frame, to initialise per-scene training.

Steps (docs/FEEDFORWARD_INIT.md):

1. The chosen views are resized to the predictor's input size (intrinsics scaled to match) and split into windows
   of ``window`` neighbouring views (consecutive in the order given): the predictor places a view far from its
   reference badly, pairs are what it does best. Windows do not overlap; when fewer than ``window`` views are left
   at the end, the last window takes the last ``window`` views and keeps only the Gaussians of the views not placed
   yet; a scene with fewer views than ``window`` repeats its last view (a one-view window would leave the
   cross-view decoder with nothing to attend to).
2. Each window is one predictor pass, in its reference (first) view's OpenCV camera frame, metric.
3. Scale: with a depth map of the reference view, the window's points are multiplied by the median over valid
   pixels of (scene depth / predicted z-depth); without one the predicted scale is kept.
4. Placement: p_world = s * R_cv @ (r * p) + t, with (R_cv, t) the reference view's camera-to-world in the
   scene's (Nerfstudio, post-dataparser) frame, R_cv = R_gl @ diag(1, -1, -1) the OpenGL -> OpenCV axis flip,
   r the depth ratio of step 3 and s the dataparser scale; scales are multiplied by s * r and quaternions
   left-multiplied by R_cv's.
5. ``stride`` keeps every stride-th pixel row and column of every view (rows/cols 0, s, 2s, ...).

Nothing here imports nerfstudio.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .predictor import PredictedGaussians, Predictor

__all__ = ["read_rgb", "scene_cues", "evenly_spaced", "make_windows", "rotmat_to_quat", "quat_multiply", "depth_ratio", "to_world",
           "predict_scene", "input_size", "GL_TO_CV"]

GL_TO_CV = torch.tensor([1.0, -1.0, -1.0])
MIN_DEPTH_PIXELS = 16


def evenly_spaced(n: int, k: int) -> List[int]:
    """``k`` indices spread evenly over ``range(n)`` (first and last included); k <= 0 or k >= n: all."""
    if k <= 0 or k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)})


def make_windows(n: int, window: int) -> List[Tuple[List[int], List[int]]]:
    """(views of the window, views whose Gaussians it keeps) over ``n`` views in windows of ``window``.

    Each view is kept exactly once and every window has ``window`` views: a short tail window takes the last
    ``window`` views, and with fewer views than that the last one is repeated (a one-view window would leave the
    cross-view decoder with nothing to attend to).
    """
    if n <= 0:
        return []
    w = max(1, int(window))
    out = []
    for start in range(0, n, w):
        keep = list(range(start, min(start + w, n)))
        views = list(keep)
        if len(views) < w:
            views = list(range(max(0, n - w), n))
            views += [n - 1] * (w - len(views))
        out.append((views, keep))
    return out


def rotmat_to_quat(R: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] (wxyz, w >= 0)."""
    m = R.double()
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cand = torch.stack([
        torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                     m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0],
                     1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
    ], -2)  # [..., 4, 4]: row i is 4 q_i q (up to sign), best conditioned where |q_i| is largest
    diag = torch.stack([1 + tr, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                        1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                        1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    best = diag.argmax(-1)
    q = torch.gather(cand, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = F.normalize(q, dim=-1)
    q = torch.where(q[..., :1] < 0, -q, q)
    return q.to(R.dtype)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b of wxyz quaternions (broadcasting): the rotation b, then a."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def depth_ratio(pred_z: Tensor, scene_depth: Tensor) -> Optional[float]:
    """Median of scene depth / predicted z-depth over pixels where both are valid (> 0, finite); None when fewer
    than ``MIN_DEPTH_PIXELS`` are. Both [H, W] at the same resolution, the scene's in its own (pre-dataparser)
    units."""
    valid = (scene_depth > 0) & torch.isfinite(scene_depth) & (pred_z > 1e-6) & torch.isfinite(pred_z)
    if int(valid.sum()) < MIN_DEPTH_PIXELS:
        return None
    return float((scene_depth[valid] / pred_z[valid]).median())


def to_world(pred: PredictedGaussians, c2w_gl: Tensor, scale: float = 1.0, ratio: float = 1.0) -> PredictedGaussians:
    """Reference-camera (OpenCV) Gaussians -> world, for the reference view's OpenGL camera-to-world ``c2w_gl``
    [3 or 4, 4] (Nerfstudio frame, after the dataparser transform), dataparser ``scale`` and depth ``ratio``."""
    c2w = c2w_gl.to(pred.means)
    R = c2w[:3, :3] * GL_TO_CV.to(c2w)  # OpenCV camera axes in the world
    t = c2w[:3, 3]
    k = float(scale) * float(ratio)
    means = (k * pred.means) @ R.T + t
    q_cam = rotmat_to_quat(R)
    quats = F.normalize(quat_multiply(q_cam[None], pred.quats), dim=-1)
    return pred.replace(means=means, scales=pred.scales * k, quats=quats, frame="world")


def _resize(x: Tensor, size: Tuple[int, int], mode: str) -> Tensor:
    """[C, H, W] -> [C, h, w]."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x[None].float(), size=size, mode="nearest")[0]
    return F.interpolate(x[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def input_size(predictor: Predictor, h: int, w: int) -> Tuple[int, int]:
    """(H, W) the views go into the predictor at: its ``image_size``, else (h, w) cut down to multiples of its
    ``size_multiple``."""
    if predictor.image_size is not None:
        return tuple(int(s) for s in predictor.image_size)  # type: ignore[return-value]
    m = max(1, int(predictor.size_multiple))
    hh, ww = max(m, h // m * m), max(m, w // m * m)
    return hh, ww


def _scale_K(K: Tensor, src: Tuple[int, int], dst: Tuple[int, int]) -> Tensor:
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    K = K.clone().float()
    K[0, 0] *= sx
    K[0, 2] *= sx
    K[1, 1] *= sy
    K[1, 2] *= sy
    return K


def predict_scene(
    predictor: Predictor,
    images: Sequence[Tensor],
    intrinsics: Tensor,
    c2w: Tensor,
    dataparser_scale: float = 1.0,
    depths: Optional[Sequence[Optional[Tensor]]] = None,
    cues: Optional[Sequence[Optional[Tensor]]] = None,
    window: int = 2,
    stride: int = 1,
    align_depth: bool = True,
) -> PredictedGaussians:
    """World-frame Gaussians of a scene's chosen views (see the module docstring).

    Args:
        predictor: a :class:`~feedforward.predictor.Predictor`.
        images: V images [3, H, W] in [0, 1] (sizes may differ), in trajectory order (windows are consecutive).
        intrinsics: [V, 3, 3] at each image's own resolution.
        c2w: [V, 3 or 4, 4] camera-to-world, OpenGL axes, in the scene's frame after the dataparser transform.
        dataparser_scale: the dataparser's scale factor (world units per scene unit).
        depths: optional V depth maps [H, W] in the scene's own units (0 = missing), or None entries.
        cues: optional V unit cue maps [H, W, C] in the predictor's cue space (zeros where none), or None entries;
            given to the predictor only when every view of a window has one.
        window: views per predictor pass (>= 2).
        stride: keep every stride-th pixel row and column.
        align_depth: use the depth maps for the metric scale (step 3).

    Returns:
        :class:`PredictedGaussians` in the world frame; ``view_index`` indexes ``images``; ``info`` holds the
        windows, each window's depth ratio (None = predicted scale kept) and the input size.
    """
    v = len(images)
    if v == 0:
        raise ValueError("predict_scene: no views")
    if window < 2:
        raise ValueError(f"predict_scene: window {window} < 2; the predictor needs a reference and another view")
    stride = max(1, int(stride))
    sizes = [tuple(int(s) for s in im.shape[-2:]) for im in images]
    size = input_size(predictor, *sizes[0])
    ims = torch.stack([_resize(im.float(), size, "bilinear").clamp(0, 1) for im in images])
    Ks = torch.stack([_scale_K(intrinsics[i], sizes[i], size) for i in range(v)])
    parts: List[PredictedGaussians] = []
    ratios: List[Optional[float]] = []
    wins = make_windows(v, window)
    for views, keep in wins:
        cue_in = None
        if cues is not None and all(cues[i] is not None for i in views):
            cue_in = torch.stack([_resize(cues[i].permute(2, 0, 1), size, "nearest").permute(1, 2, 0) for i in views])
        pred = predictor.predict(ims[views], Ks[views], cue_in).to("cpu")
        ratio = None
        ref = views[0]
        if align_depth and depths is not None and depths[ref] is not None:
            d = _resize(torch.as_tensor(depths[ref]).float()[None], size, "nearest")[0]
            on_ref = pred.view_index == 0
            z = torch.zeros(size)
            px = pred.pixel[on_ref]
            z[px[:, 0], px[:, 1]] = pred.means[on_ref, 2].float()
            ratio = depth_ratio(z, d)
        ratios.append(ratio)
        kept_local = torch.tensor([views.index(i) for i in keep])
        mask = torch.isin(pred.view_index, kept_local)
        if stride > 1:
            mask &= (pred.pixel[:, 0] % stride == 0) & (pred.pixel[:, 1] % stride == 0)
        pred = pred.select(mask)
        pred = pred.replace(view_index=torch.as_tensor(views)[pred.view_index])
        parts.append(to_world(pred, c2w[ref], dataparser_scale, 1.0 if ratio is None else ratio))
    out = PredictedGaussians.cat(parts)
    out.info = {"windows": [w for w, _ in wins], "depth_ratios": ratios, "input_size": size, "stride": stride,
                "dataparser_scale": float(dataparser_scale)}
    return out.check()


def read_rgb(path: Path) -> Tensor:
    """[3, H, W] float RGB in [0, 1] of an image file; an unreadable file is an :class:`InputError`."""
    from PIL import Image

    from unisem_ns.data.scene_io import InputError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except OSError as e:
        raise InputError(f"{path}: unreadable image ({e})") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def scene_cues(scene: Path, stem: str, size: Tuple[int, int]) -> Optional[Tensor]:
    """Level-0 language cue of one view as unit features [h, w, C] at ``size`` (nearest; zero where no mask), or
    None when the view has no readable cue."""
    from unisem_ns.cues.layout import CueError, language_paths, load_language_cue

    if not all(p.exists() for p in language_paths(scene, stem)):
        return None
    try:
        seg, feats = load_language_cue(scene, stem)
    except CueError:
        return None
    idx = torch.as_tensor(seg[0].astype("int64"))[None, None].float()
    idx = F.interpolate(idx, size=size, mode="nearest")[0, 0].long()
    f = F.normalize(torch.as_tensor(feats).float(), dim=-1)
    if f.shape[0] == 0:
        return torch.zeros(*size, f.shape[1])
    return f[idx.clamp(min=0)] * (idx >= 0)[..., None]
