"""Unified-Lift's prototype contrastive loss (docs/methods/unified_lift.md, step 3; OmniSeg3D-style ProtoNCE) and norm
regulariser (step 4).

Per training view, a random batch of pixels is drawn (:func:`sample_pixels`); every SAM mask with more than
``min_pixels`` samples gets a prototype ``mu_c`` (mean unit feature) and a concentration temperature ``phi_c``
(PCL's estimate, detached); each pixel is classified against all prototypes with an InfoNCE softmax.

Because the loss is built from the masks *present in this view*, it never looks at the SAM id values: it is
invariant to permuting them, which is what lets Unified-Lift train on raw per-frame SAM masks.

Shapes: ``M`` sampled pixels, ``D`` feature width, ``C`` masks kept in the view.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "N_PIXELS",
    "MIN_PIXELS",
    "TEMP_SCALE",
    "TEMP_MIN",
    "TEMP_MAX",
    "TEMP_LOG_OFFSET",
    "sample_pixels",
    "unit_features",
    "mask_prototypes",
    "contrastive_loss",
    "norm_regulariser",
]

#: Code defaults (train_unified_lift.py); :class:`~unisem_ns.unified_lift.codebook.UnifiedLiftLossConfig` repeats them.
N_PIXELS = 32768
MIN_PIXELS = 20
TEMP_SCALE = 10.0
TEMP_MIN = 0.5
TEMP_MAX = 1.0
#: The ``alpha`` of PCL's concentration ``sum ||f - mu|| / (n log(n + alpha))``; keeps tiny masks from blowing up.
TEMP_LOG_OFFSET = 10.0

_EPS = 1e-8


def sample_pixels(
    num_pixels_total: int,
    n: int = N_PIXELS,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Indices ``[min(n, num_pixels_total)]`` (long) of distinct random pixels of a flattened view.

    Without replacement: a view smaller than ``n`` is used whole (in order), so small images see every pixel
    once per step instead of duplicates.
    """
    if num_pixels_total <= n:
        return torch.arange(num_pixels_total, device=device)
    # randperm on the generator's device, then moved: keeps the draw reproducible for a CPU generator.
    gen_device = generator.device if generator is not None else torch.device("cpu")
    idx = torch.randperm(num_pixels_total, generator=generator, device=gen_device)[:n]
    return idx.to(device) if device is not None else idx


def unit_features(features: torch.Tensor) -> torch.Tensor:
    """``f / ||f||`` ``[..., D]`` with the norm **detached** (as in the reference code).

    Detaching the norm means the contrastive gradient only rotates features; their length is driven by the norm
    regulariser alone.
    """
    return features / features.norm(dim=-1, keepdim=True).detach().clamp_min(_EPS)


def mask_prototypes(
    fbar: torch.Tensor,
    inverse: torch.Tensor,
    num_masks: int,
    temp_scale: float,
    temp_min: float,
    temp_max: float,
    temp_log_offset: float = TEMP_LOG_OFFSET,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prototypes and temperatures of ``num_masks`` masks.

    Args:
        fbar: ``[M, D]`` unit features.
        inverse: ``[M]`` long, the mask index ``0..C-1`` of every pixel (every mask must have a pixel).
        num_masks: ``C``.

    Returns:
        ``mu [C, D]`` mean unit feature per mask (not re-normalised: a spread-out mask gets a shorter prototype,
        i.e. weaker pull, exactly as the documented "mean f-bar", docs/methods/unified_lift.md, step 3),
        differentiable w.r.t. ``fbar``;
        ``phi [C]`` = clip(temp_scale * sum ||fbar - mu|| / (n log(n + offset)), temp_min, temp_max), detached;
        ``counts [C]`` pixels per mask.
    """
    counts = torch.bincount(inverse, minlength=num_masks)
    cnt = counts.to(fbar.dtype)
    mu = fbar.new_zeros(num_masks, fbar.shape[-1]).index_add(0, inverse, fbar) / cnt[:, None]
    with torch.no_grad():
        dist = (fbar - mu[inverse]).norm(dim=-1)
        spread = fbar.new_zeros(num_masks).index_add(0, inverse, dist)
        phi = (temp_scale * spread / (cnt * torch.log(cnt + temp_log_offset))).clamp(temp_min, temp_max)
    return mu, phi, counts


def contrastive_loss(
    features: torch.Tensor,
    mask_ids: torch.Tensor,
    min_pixels: int = MIN_PIXELS,
    temp_scale: float = TEMP_SCALE,
    temp_min: float = TEMP_MIN,
    temp_max: float = TEMP_MAX,
    temp_log_offset: float = TEMP_LOG_OFFSET,
    reduction: str = "pixel",
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Prototype InfoNCE over the masks of one view.

    ``loss_u = -log softmax_k(fbar_u . mu_k / phi_k)[c(u)]`` for every sampled pixel ``u`` of a kept mask.

    The written form of the loss is ``(1/C) sum_c sum_{u in c}``: a sum over pixels, which scales with the batch
    size (32768 pixels -> losses in the thousands). We take the **per-pixel mean** instead (``reduction="pixel"``,
    what ``F.cross_entropy`` does): it is the written form's value times ``C / M``, i.e. the same gradient
    direction, and Adam is invariant to that constant. ``reduction="mask"`` gives the mask-balanced mean
    ``(1/C) sum_c mean_{u in c}``, where small masks weigh as much as large ones.

    Args:
        features: ``[M, D]`` raw rendered features at the sampled pixels (not normalised).
        mask_ids: ``[M]`` int SAM ids; ``0`` = void (excluded). Id values are arbitrary per view.
        min_pixels: a mask needs **more than** this many samples to get a prototype; others are excluded.

    Returns:
        ``loss`` scalar (zero, not requiring grad, when no mask qualifies; one mask gives exactly 0) and
        ``info``: ``num_masks`` (C), ``num_pixels`` (long scalars), ``phi [C]``, ``labels`` (the kept SAM ids).
    """
    if reduction not in ("pixel", "mask"):
        raise ValueError(f"reduction must be 'pixel' or 'mask', not {reduction!r}")
    valid = mask_ids > 0
    labels, inverse, counts = torch.unique(mask_ids[valid], return_inverse=True, return_counts=True)
    big = counts > min_pixels
    info: Dict[str, torch.Tensor] = {}
    if not bool(big.any()):
        info.update(num_masks=torch.tensor(0), num_pixels=torch.tensor(0), phi=features.new_zeros(0),
                    labels=labels[:0])
        return features.new_zeros(()), info

    # re-index the kept masks 0..C-1 and drop pixels of small masks
    remap = torch.full_like(counts, -1)
    remap[big] = torch.arange(int(big.sum()), device=counts.device)
    pix_mask = remap[inverse]
    keep = pix_mask >= 0
    target = pix_mask[keep]
    fbar = unit_features(features[valid][keep])
    num_masks = int(big.sum())
    mu, phi, _ = mask_prototypes(fbar, target, num_masks, temp_scale, temp_min, temp_max, temp_log_offset)
    logits = (fbar @ mu.T) / phi[None, :]  # [M', C]
    per_pixel = F.cross_entropy(logits, target, reduction="none")
    if reduction == "pixel":
        loss = per_pixel.mean()
    else:
        per_mask = per_pixel.new_zeros(num_masks).index_add(0, target, per_pixel)
        loss = (per_mask / torch.bincount(target, minlength=num_masks).to(per_pixel.dtype)).mean()
    info.update(num_masks=torch.tensor(num_masks), num_pixels=torch.tensor(int(target.numel())), phi=phi,
                labels=labels[big])
    return loss, info


def norm_regulariser(features: torch.Tensor) -> torch.Tensor:
    """``mean_u (||F_u|| - 1)^2`` over features ``[M, D]``: keeps rendered features near the unit sphere."""
    if features.numel() == 0:
        return features.new_zeros(())
    return (features.norm(dim=-1) - 1.0).square().mean()

