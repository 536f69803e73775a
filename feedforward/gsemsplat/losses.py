"""GSemSplat's training losses: Splatt3R's visibility loss mask, the masked RGB loss, the dual semantic loss.

All functions are pure tensor code (no model, no renderer); shapes are in each docstring. T rendered views,
V context views, H x W pixels, D text-space width.
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import unproject_depth

__all__ = ["visibility_mask", "rgb_loss", "masked_l1", "masked_cosine", "semantic_loss", "dual_semantic_loss"]


def visibility_mask(target_depth: Tensor, target_K: Tensor, target_viewmat: Tensor, context_depth: Tensor,
                    context_K: Tensor, context_viewmat: Tensor, rel_tol: float = 0.1,
                    abs_tol: Optional[float] = None) -> Tensor:
    """Pixels of the rendered views that the context pair sees (Splatt3R's loss mask).

    A pixel p of view t is kept iff its GT depth is valid (> 0, finite) and, for at least one context view c, the
    3D point of p (GT depth, back-projected) lies in front of c, inside c's image, and c's GT depth at the pixel it
    projects to (nearest pixel) is valid with |z_c - depth_c| / depth_c < ``rel_tol`` (not occluded in c).

    [R] Splatt3R's ``calculate_in_frustum_mask`` differs in three details: an absolute tolerance
    (``torch.isclose(atol=0.1)``; pass ``abs_tol=0.1`` for it), a bilinear depth lookup, and "in some view's frustum"
    and "depth matches in some view" taken over the views separately; here both must hold in the same view.

    Args:
        target_depth: [T, H, W] z-depth (0 = missing).
        target_K: [T, 3, 3]; target_viewmat: [T, 4, 4] world(view-1 camera)-to-camera, OpenCV.
        context_depth: [V, H', W']; context_K: [V, 3, 3]; context_viewmat: [V, 4, 4].
        rel_tol: relative depth tolerance.
        abs_tol: absolute tolerance instead (in depth units), when given.

    Returns:
        [T, H, W] bool.
    """
    valid_t = (target_depth > 0) & torch.isfinite(target_depth)
    pts = unproject_depth(torch.where(valid_t, target_depth, torch.ones_like(target_depth)), target_K,
                          target_viewmat)  # [T, H, W, 3] world
    hc, wc = context_depth.shape[-2:]
    seen = torch.zeros_like(valid_t)
    for c in range(context_depth.shape[0]):
        cam = pts @ context_viewmat[c, :3, :3].T + context_viewmat[c, :3, 3]
        z = cam[..., 2]
        zs = z.clamp_min(1e-8)
        u = context_K[c, 0, 0] * cam[..., 0] / zs + context_K[c, 0, 2]
        v = context_K[c, 1, 1] * cam[..., 1] / zs + context_K[c, 1, 2]
        inside = (z > 0) & (u >= 0) & (u < wc) & (v >= 0) & (v < hc)
        ui = u.floor().long().clamp(0, wc - 1)
        vi = v.floor().long().clamp(0, hc - 1)
        dc = context_depth[c][vi, ui]
        tol = rel_tol * dc if abs_tol is None else torch.full_like(dc, abs_tol)
        ok = inside & (dc > 0) & torch.isfinite(dc) & ((z - dc).abs() < tol)
        seen |= ok
    return valid_t & seen


def rgb_loss(pred: Tensor, gt: Tensor, mask: Tensor, lpips: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
             lpips_weight: float = 0.25) -> Tensor:
    """Masked MSE (+ ``lpips_weight`` x LPIPS of the masked images, when an ``lpips`` callable is given).

    Args:
        pred, gt: [T, H, W, 3] colours in [0, 1].
        mask: [T, H, W] bool (or 0/1 float).
        lpips: optional callable (a [T, 3, H, W], b [T, 3, H, W]) -> LPIPS (any shape; its mean is taken), on
            images in [0, 1] with masked-out pixels zeroed in both.

    Returns:
        scalar: sum over masked pixels of |pred - gt|^2 / (3 x masked pixels); 0 (with grad) when nothing is masked.
    """
    m = mask.to(pred.dtype)[..., None]
    n = m.sum() * pred.shape[-1]
    loss = (((pred - gt) ** 2) * m).sum() / n.clamp_min(1.0)
    if lpips is not None and lpips_weight > 0:
        a = (pred * m).permute(0, 3, 1, 2)
        b = (gt * m).permute(0, 3, 1, 2)
        loss = loss + lpips_weight * lpips(a, b).mean()
    return loss


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over masked pixels of the channel-mean |pred - target| (``F.l1_loss`` per pixel).

    pred, target: [..., D]; mask: [...] bool. Returns a scalar (0 with grad when the mask is empty)."""
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return (pred[mask] - target[mask]).abs().mean()


def masked_cosine(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over masked pixels of 1 - cos(pred, target). pred, target: [..., D]; mask: [...] bool."""
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return (1.0 - F.cosine_similarity(pred[mask], target[mask], dim=-1, eps=1e-8)).mean()


def semantic_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """One branch: mean over masked pixels of |pred - target|_1 (channel mean) + (1 - cos(pred, target)).

    Args:
        pred: [..., D] decoded features (not normalised).
        target: [..., D] target features (the cue's unit embeddings).
        mask: [...] bool: visible (:func:`visibility_mask`) and the target valid there.
    """
    return masked_l1(pred, target, mask) + masked_cosine(pred, target, mask)


def dual_semantic_loss(decode: Callable[[Tensor, str], Tensor], latents: Mapping[str, Tensor],
                       targets: Mapping[str, Tuple[Tensor, Tensor]], mask: Tensor) -> Dict[str, Tensor]:
    """GSemSplat's two semantic terms, one per branch present in both ``latents`` and ``targets``.

    Args:
        decode: ``(latent maps [T, H, W, 16], branch) -> [T, H, W, D]`` (:meth:`GSemSplatPredictor.decode`).
        latents: {"region": [T, H, W, 16], "context": [T, H, W, 16]} rendered latents.
        targets: {"region": (features [T, H, W, D], valid [T, H, W] bool), "context": (...)}: region = the
            per-mask features of each pixel's SAM mask, context = dense (patch) features.
        mask: [T, H, W] bool visibility mask.

    Returns:
        {branch: scalar :func:`semantic_loss`} over pixels that are visible and have a valid target.
    """
    out: Dict[str, Tensor] = {}
    for branch in ("region", "context"):
        if branch not in latents or branch not in targets or targets[branch] is None:
            continue
        feat, valid = targets[branch]
        pred = decode(latents[branch], branch)
        if pred.shape[-3:-1] != feat.shape[-3:-1]:
            raise ValueError(f"{branch}: decoded {tuple(pred.shape)} and target {tuple(feat.shape)} sizes differ")
        out[branch] = semantic_loss(pred, feat.to(pred), mask & valid)
    return out
