"""Dense reference compositor: every pixel against every Gaussian, plain autograd.

Slow (memory and time grow as pixels x Gaussians) but simple enough to trust. The tests use it as the
reference for values and gradients, and the renderer benchmark measures the sparse backend against it.
It follows the same gsplat rules as :mod:`unisem_ns.render.composite`.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .projection import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_MIN, tile_bounds


def composite_dense(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    colors: Tensor,
    radii: Tensor,
    depths: Tensor,
    width: int,
    height: int,
    tile_size: int = 16,
    chunk_elems: int = 1 << 22,
) -> Tuple[Tensor, Tensor]:
    """Composite one camera densely (same arguments as ``composite_camera``).

    Returns:
        colors: [H, W, D] without background; transmittance: [H, W, 1].
    """
    visible = (radii > 0).nonzero().squeeze(1)
    order = visible[torch.sort(depths.detach()[visible], stable=True)[1]]
    m2, cn, op, col = means2d[order], conics[order], opacities[order], colors[order]
    x0, x1, y0, y1 = tile_bounds(m2.detach(), radii[order], width, height, tile_size)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=m2.dtype, device=m2.device),
        torch.arange(width, dtype=m2.dtype, device=m2.device),
        indexing="ij",
    )
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    n = max(order.numel(), 1)
    step = max(1, chunk_elems // n)
    outs, ts = [], []
    for s in range(0, xs.numel(), step):
        px, py = xs[s : s + step, None], ys[s : s + step, None]
        dx = m2[None, :, 0] - (px + 0.5)
        dy = m2[None, :, 1] - (py + 0.5)
        sigma = 0.5 * (cn[None, :, 0] * dx * dx + cn[None, :, 2] * dy * dy) + cn[None, :, 1] * dx * dy
        alpha = torch.clamp(op[None] * torch.exp(-sigma), max=MAX_ALPHA)
        in_tile = (px >= x0) & (px < x1) & (py >= y0) & (py < y1)
        alpha = alpha * ((sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & in_tile)
        used = torch.cumprod(1.0 - alpha.detach(), dim=1) > TRANSMITTANCE_MIN
        alpha = alpha * used
        one_minus = 1.0 - alpha
        t_excl = torch.cumprod(torch.cat([torch.ones_like(one_minus[:, :1]), one_minus[:, :-1]], dim=1), dim=1)
        outs.append((alpha * t_excl) @ col)
        ts.append(torch.prod(one_minus, dim=1, keepdim=True))
    d = colors.shape[-1]
    return torch.cat(outs, 0).reshape(height, width, d), torch.cat(ts, 0).reshape(height, width, 1)
