"""Unified-Lift's area-aware ID mapping (docs/methods/unified_lift.md, step 6): per-view Hungarian matching of SAM
ids to codebook ids.

For the SAM masks ``j`` of one view and codebook entries ``k``:

    cost(j, k) = - sum_{u in Omega_j} P_u(k)                 (area-aware, Unified-Lift)
    cost(j, k) = - (1 / |Omega_j|) sum_{u in Omega_j} P_u(k)  (``normalised=True``: Panoptic Lifting)

Summing instead of averaging lets large masks win contested codebook entries: a big object is seen by many
pixels and its assignment is the most reliable one to keep stable across views.

Shapes: ``P`` pixels, ``L`` codebook entries.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["area_aware_assignment"]

#: pixels per float64 block of the cost accumulation
_CHUNK = 65536


@torch.no_grad()
def area_aware_assignment(
    probs: torch.Tensor,
    mask_ids: torch.Tensor,
    keep: Optional[torch.Tensor] = None,
    normalised: bool = False,
    max_ids: Optional[int] = None,
) -> Tuple[torch.Tensor, Dict[int, int]]:
    """Hungarian assignment of the view's SAM ids to codebook ids, and the per-pixel pseudo labels.

    Args:
        probs: ``[P, L]`` softmax over the codebook per pixel.
        mask_ids: ``[P]`` int SAM ids, ``0`` = void.
        keep: ``[P]`` bool confident pixels (noise filter) or None (all non-void pixels).
            Only kept pixels vote in the cost: a pixel whose label the filter rejected should not pull its mask
            towards the codebook entry of the object it really shows. A mask with no kept pixel takes part in
            nothing (no row, no labels), so it cannot occupy a codebook entry another mask needs.
        normalised: divide each row by the mask's (kept) pixel count (Panoptic Lifting's cost).
        max_ids: at most this many SAM ids (the smallest, after sorting) are matched; default and cap ``L``,
            since a one-to-one matching cannot place more than ``L`` masks.

    Returns:
        ``pseudo_labels [P]`` long codebook id per pixel, ``-1`` where no label: void, dropped by ``keep``, or a
        SAM id beyond the cap; ``mapping`` ``{sam_id: codebook_id}``.
    """
    mask_ids = mask_ids.long()
    num_codes = probs.shape[-1]
    cap = num_codes if max_ids is None else min(int(max_ids), num_codes)
    valid = mask_ids > 0
    if keep is not None:
        valid = valid & keep.to(torch.bool)
    pseudo = torch.full(mask_ids.shape, -1, dtype=torch.long, device=mask_ids.device)
    labels = torch.unique(mask_ids[valid])[:cap]  # torch.unique sorts
    if labels.numel() == 0 or cap <= 0:
        return pseudo, {}

    # pixels of the matched masks and their row index
    row = torch.searchsorted(labels, mask_ids)
    row = row.clamp_max(labels.numel() - 1)
    in_set = valid & (labels[row] == mask_ids)
    rows = row[in_set]
    # float64 sums (a large mask adds up ~1e5 probabilities per entry), converted in chunks to bound memory
    score = torch.zeros(labels.numel(), num_codes, dtype=torch.float64, device=probs.device)
    pix = torch.nonzero(in_set)[:, 0]
    for s in range(0, pix.numel(), _CHUNK):
        score.index_add_(0, rows[s : s + _CHUNK], probs[pix[s : s + _CHUNK]].to(torch.float64))
    if normalised:
        score /= torch.bincount(rows, minlength=labels.numel()).to(score.dtype)[:, None]
    r, c = linear_sum_assignment(-score.cpu().numpy())

    code_of_row = torch.full((labels.numel(),), -1, dtype=torch.long)
    code_of_row[torch.as_tensor(r, dtype=torch.long)] = torch.as_tensor(c, dtype=torch.long)
    code_of_row = code_of_row.to(mask_ids.device)
    pseudo[in_set] = code_of_row[rows]
    mapping = {int(labels[i]): int(k) for i, k in zip(np.asarray(r).tolist(), np.asarray(c).tolist())}
    return pseudo, mapping
