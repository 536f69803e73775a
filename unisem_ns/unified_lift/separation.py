"""Cross-view separation of far-apart objects' features (a training loss; [R], not in the paper).

The contrastive loss only compares masks of one view, so two objects that are never seen together are never pushed
apart: their features may coincide, and then one codebook entry serves both (the one-to-one ID mapping is per
view too). At one seed of the benchmark scene, two codes each served two such objects far apart in the room. What
does tell two such masks apart is where they are. A mask's pixels, lifted to 3D with the rendered depth, give it a
centre and a radius; two masks whose spheres are far apart relative to their size (``|c_a - c_b| > factor (r_a +
r_b)``) cannot be one object. For such pairs, the current view's mask prototype is pushed away from a remembered
one (from earlier views) while their cosine exceeds a margin; pairs that may be one object (near, or large like a
wall seen piecewise) are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def mask_prototypes_and_spheres(
    features: torch.Tensor, xyz: torch.Tensor, mask_ids: torch.Tensor, min_pixels: int, quantile: float = 0.9
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit prototype, 3D centre and radius of each mask of a view.

    Args:
        features: ``[H, W, D]`` rendered features (the prototypes keep their gradient).
        xyz: ``[H, W, 3]`` world position of each pixel (rendered depth lifted; no gradient needed).
        mask_ids: ``[H, W]`` int mask ids, ``0`` = void.
        min_pixels: masks with fewer pixels are skipped.
        quantile: the radius is this quantile of the pixels' distances to the centre (robust to depth-edge
            pixels that land on the background).

    Returns:
        ``protos [M, D]`` unit, ``centres [M, 3]``, ``radii [M]``, one row per mask with at least ``min_pixels``.
    """
    ids = mask_ids.reshape(-1).long()
    feats = features.reshape(-1, features.shape[-1])
    pts = xyz.reshape(-1, 3).detach()
    protos, centres, radii = [], [], []
    for m in torch.unique(ids).tolist():
        if m == 0:
            continue
        sel = ids == m
        if int(sel.sum()) < min_pixels:
            continue
        p = pts[sel]
        c = p.mean(0)
        protos.append(F.normalize(feats[sel].mean(0), dim=-1))
        centres.append(c)
        radii.append(torch.quantile((p - c).norm(dim=-1), quantile))
    if not protos:
        D = features.shape[-1]
        return features.new_zeros(0, D), xyz.new_zeros(0, 3), xyz.new_zeros(0)
    return torch.stack(protos), torch.stack(centres), torch.stack(radii)


def separation_loss(
    protos: torch.Tensor,
    centres: torch.Tensor,
    radii: torch.Tensor,
    memory_protos: torch.Tensor,
    memory_centres: torch.Tensor,
    memory_radii: torch.Tensor,
    factor: float = 2.0,
    margin: float = 0.5,
) -> Tuple[torch.Tensor, int]:
    """Mean over far pairs of ``relu(cos(proto, memory proto) - margin)``.

    Args:
        protos, centres, radii: ``[M, D]`` unit, ``[M, 3]``, ``[M]``: the current view's masks (protos with grad).
        memory_protos, memory_centres, memory_radii: ``[B, D]``, ``[B, 3]``, ``[B]``: remembered masks (detached).
        factor: a pair is far when its centres are more than ``factor (r_a + r_b)`` apart.
        margin: far pairs whose cosine is at most this cost nothing.

    Returns:
        (scalar loss, number of far pairs); 0 (with grad) when there is none.
    """
    if protos.shape[0] == 0 or memory_protos.shape[0] == 0:
        return protos.sum() * 0.0, 0
    dist = torch.cdist(centres[None].float(), memory_centres[None].float())[0]  # [M, B]
    far = dist > factor * (radii[:, None] + memory_radii[None])
    if not bool(far.any()):
        return protos.sum() * 0.0, 0
    cos = protos @ memory_protos.T
    return F.relu(cos - margin)[far].mean(), int(far.sum())


@dataclass
class MaskMemory:
    """A FIFO of the last ``capacity`` masks' (prototype, centre, radius), all detached."""

    capacity: int = 512

    def __post_init__(self):
        self.protos: Optional[torch.Tensor] = None
        self.centres: Optional[torch.Tensor] = None
        self.radii: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return 0 if self.protos is None else int(self.protos.shape[0])

    def get(self, like: torch.Tensor, dim: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.protos is None:
            return like.new_zeros(0, dim), like.new_zeros(0, 3), like.new_zeros(0)
        return self.protos, self.centres, self.radii

    def push(self, protos: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> None:
        if protos.shape[0] == 0:
            return
        new = (protos.detach(), centres.detach(), radii.detach())
        if self.protos is not None:
            new = tuple(torch.cat([old, n])[-self.capacity :] for old, n in zip((self.protos, self.centres, self.radii), new))
        self.protos, self.centres, self.radii = new
