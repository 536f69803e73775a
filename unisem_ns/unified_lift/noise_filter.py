"""Unified-Lift's noisy-label filter (uncertainty map, docs/methods/unified_lift.md, step 5).

The contrastive prototype softmax of :mod:`.contrastive`, evaluated on **every** pixel of the view with a sharper
temperature range, gives each pixel the probability that it belongs to its own SAM mask. A SAM mask that wrongly
swallows part of another object has that part's rendered features (shaped by the other views) pointing at the
other object's prototype, so its confidence collapses and its label is dropped from L_class and L_concen.

Shapes: ``P`` pixels of the view, ``D`` feature width.
"""

from __future__ import annotations

from typing import Tuple

import torch

from .contrastive import TEMP_LOG_OFFSET, mask_prototypes, unit_features

__all__ = ["FILTER_TEMP_SCALE", "FILTER_TEMP_MIN", "FILTER_TEMP_MAX", "CONF_THRESHOLD", "label_confidence"]

FILTER_TEMP_SCALE = 0.1
FILTER_TEMP_MIN = 0.1
FILTER_TEMP_MAX = 1.0
#: conf > 0.2 -> label kept (binarised); the reference config's "0.5 (use)" then reads the binary map, so it changes
#: nothing.
CONF_THRESHOLD = 0.2
#: Pixels per block of the [P, C] logits: bounds memory on large views.
_CHUNK = 65536


@torch.no_grad()
def label_confidence(
    features: torch.Tensor,
    mask_ids: torch.Tensor,
    temp_scale: float = FILTER_TEMP_SCALE,
    temp_min: float = FILTER_TEMP_MIN,
    temp_max: float = FILTER_TEMP_MAX,
    threshold: float = CONF_THRESHOLD,
    temp_log_offset: float = TEMP_LOG_OFFSET,
    min_pixels: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel confidence of the SAM label and the binarised keep map (no gradient).

    Args:
        features: ``[P, D]`` rendered features of all pixels of the view (raw; normalised here).
        mask_ids: ``[P]`` int SAM ids, ``0`` = void.
        min_pixels: masks with ``<= min_pixels`` pixels get no prototype; their pixels get conf 0. The default 0
            gives every mask a prototype: over a whole view there is no sampling noise to guard against.

    Returns:
        ``conf [P]`` float in [0, 1]: softmax probability of the pixel's own mask among all masks of the view
        (0 on void pixels); ``keep [P]`` bool: ``conf > threshold`` (False on void).
    """
    features = features.detach()
    conf = features.new_zeros(mask_ids.shape[0])
    valid = mask_ids > 0
    labels, inverse, counts = torch.unique(mask_ids[valid], return_inverse=True, return_counts=True)
    big = counts > min_pixels
    if not bool(big.any()):
        return conf, torch.zeros_like(valid)

    remap = torch.full_like(counts, -1)
    remap[big] = torch.arange(int(big.sum()), device=counts.device)
    pix_mask = remap[inverse]
    sel = pix_mask >= 0
    target = pix_mask[sel]
    fbar = unit_features(features[valid][sel])
    mu, phi, _ = mask_prototypes(fbar, target, int(big.sum()), temp_scale, temp_min, temp_max, temp_log_offset)

    own = torch.empty_like(target, dtype=features.dtype)
    scaled = (mu / phi[:, None]).T  # [D, C]
    for s in range(0, fbar.shape[0], _CHUNK):
        prob = torch.softmax(fbar[s : s + _CHUNK] @ scaled, dim=-1)
        own[s : s + _CHUNK] = prob.gather(1, target[s : s + _CHUNK, None])[:, 0]

    # scatter back: valid pixels -> pixels of big masks
    conf_valid = features.new_zeros(int(valid.sum()))
    conf_valid[sel] = own
    conf[valid] = conf_valid
    keep = (conf > threshold) & valid
    return conf, keep
