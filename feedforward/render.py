"""Rendering predicted Gaussians through the shared renderer (gsplat on CUDA, PyTorch on CPU).

render_gaussians(g: flat dict of [N, ...], viewmats [C, 4, 4], Ks [C, 3, 3], width, height)
  -> {"rgb": [C, H, W, 3], "feature": [C, H, W, d], "depth": [C, H, W, 1] (expected depth), "alpha": [C, H, W, 1]}

RGB and the semantic latent ride in one pass (``colors = cat[rgb, latent]``, render mode RGB+ED), as Uni3R does.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from unisem_ns.render import rasterization, sh_colors

from .heads import SH_C0

__all__ = ["render_gaussians", "select_gaussians"]


def select_gaussians(g: Dict[str, Tensor], keep: Optional[Tensor]) -> Dict[str, Tensor]:
    """The Gaussians where ``keep`` [N] is True (all of them when None); dropped ones get no gradient."""
    if keep is None:
        return g
    idx = keep.nonzero(as_tuple=True)[0]
    return {k: v.index_select(0, idx) for k, v in g.items()}


def render_gaussians(
    g: Dict[str, Tensor],
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    sh_degree: int = 0,
    with_features: bool = True,
    background: Optional[Tensor] = None,
    backend: str = "auto",
) -> Dict[str, Tensor]:
    """Render flat Gaussians (``means, quats, scales, opacities, sh [N, K, 3], sem [N, d]``) into C cameras."""
    c = viewmats.shape[0]
    if sh_degree > 0:
        rgb = sh_colors(g["means"], g["sh"], viewmats, sh_degree)  # [C, N, 3]
    else:
        rgb = torch.clamp_min(g["sh"][:, 0] * SH_C0 + 0.5, 0.0)[None].expand(c, -1, -1)
    colors = rgb
    if with_features:
        colors = torch.cat([rgb, g["sem"][None].expand(c, -1, -1)], dim=-1)
    bg = None
    if background is not None:
        bg = torch.zeros(c, colors.shape[-1], device=colors.device, dtype=colors.dtype)
        bg[:, :3] = background
    render, alpha, info = rasterization(
        means=g["means"], quats=g["quats"], scales=g["scales"], opacities=g["opacities"], colors=colors,
        viewmats=viewmats, Ks=Ks, width=width, height=height, near_plane=0.01, far_plane=1e10,
        render_mode="RGB+ED", sh_degree=None, backgrounds=bg, backend=backend,
    )
    out = {"rgb": render[..., :3].clamp(0.0, 1.0), "depth": render[..., -1:], "alpha": alpha}
    if with_features:
        out["feature"] = render[..., 3:-1]
    return out
