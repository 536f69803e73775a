"""Evaluation-time target pose alignment (Uni3R ``TestLoss(pose_align_steps=100)``): a 9-D delta (3 translation +
6-D rotation) on the target's world-to-camera matrix, refined by Adam on the photometric L1 against the target
image, with the predicted Gaussians frozen.

align_pose(render_rgb: viewmat [4, 4] -> [H, W, 3], viewmat0 [4, 4], image [H, W, 3], steps, lr) -> viewmat [4, 4]
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rotation_6d_to_matrix", "delta_matrix", "align_pose"]


def rotation_6d_to_matrix(d6: Tensor) -> Tensor:
    """Zhou et al.'s 6-D rotation [..., 6] -> [..., 3, 3] (Gram-Schmidt on the two columns)."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-2)


def delta_matrix(delta: Tensor) -> Tensor:
    """[9] (t, r6) -> [4, 4] rigid transform; delta = (0, 0, 0, 1, 0, 0, 0, 1, 0) is the identity."""
    T = torch.eye(4, dtype=delta.dtype, device=delta.device)
    T = T.clone()
    T[:3, :3] = rotation_6d_to_matrix(delta[3:])
    T[:3, 3] = delta[:3]
    return T


def identity_delta(device=None, dtype=torch.float32) -> Tensor:
    return torch.tensor([0, 0, 0, 1, 0, 0, 0, 1, 0], dtype=dtype, device=device)


def align_pose(
    render_rgb: Callable[[Tensor], Tensor],
    viewmat0: Tensor,
    image: Tensor,
    steps: int = 100,
    lr: float = 5e-3,
) -> Tuple[Tensor, float, float]:
    """Refine a target viewmat by ``steps`` Adam steps on mean |render - image|.

    Returns:
        (refined viewmat [4, 4] detached, initial L1, final L1). ``steps=0`` returns ``viewmat0``.
    """
    delta = identity_delta(viewmat0.device, viewmat0.dtype).requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=lr)
    first = last = float("nan")
    best, best_vm = float("inf"), viewmat0.detach()
    for it in range(steps + 1):
        vm = delta_matrix(delta) @ viewmat0
        loss = (render_rgb(vm) - image).abs().mean()
        val = float(loss)
        if it == 0:
            first = val
        if val < best:
            best, best_vm = val, vm.detach()
        last = val
        if it == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return best_vm, first, min(best, last)
