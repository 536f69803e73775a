"""DPT head and the per-pixel Gaussian parameterisation.

The DPT module names follow DUSt3R's ``DPTOutputAdapter`` (``act_postprocess``, ``scratch.layer{i}_rn``,
``scratch.refinenet{i}.resConfUnit{1,2}.conv{1,2}``, ``out_conv``, ``head``) so a published head loads by name.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SH_C0 = 0.28209479177387814


def rgb_to_sh(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


class ResidualConvUnit(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """RefineNet fusion: (coarse [+ residual(skip)]) -> residual -> x2 upsample -> 1x1."""

    def __init__(self, dim: int):
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(dim)
        self.resConfUnit2 = ResidualConvUnit(dim)
        self.out_conv = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor, skip: Tensor = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """Dense prediction from 4 token maps (one encoder, three decoder hooks) to ``out_channels`` per pixel.

    forward(tokens: list of 4 [B, N, C_i], grid (h, w), image (H, W)) -> [B, out_channels, H, W]
    """

    def __init__(self, dim_tokens: Sequence[int], layer_dims: Sequence[int], feature_dim: int, out_channels: int):
        super().__init__()
        ld = list(layer_dims)
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(dim_tokens[0], ld[0], 1), nn.ConvTranspose2d(ld[0], ld[0], 4, stride=4)),
            nn.Sequential(nn.Conv2d(dim_tokens[1], ld[1], 1), nn.ConvTranspose2d(ld[1], ld[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(dim_tokens[2], ld[2], 1)),
            nn.Sequential(nn.Conv2d(dim_tokens[3], ld[3], 1), nn.Conv2d(ld[3], ld[3], 3, stride=2, padding=1)),
        ])
        self.scratch = nn.Module()
        for i in range(4):
            setattr(self.scratch, f"layer{i + 1}_rn", nn.Conv2d(ld[i], feature_dim, 3, padding=1, bias=False))
            setattr(self.scratch, f"refinenet{i + 1}", FeatureFusionBlock(feature_dim))
        last = max(feature_dim // 2, 8)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1),
            nn.Identity(),  # DUSt3R upsamples x2 here; we interpolate to the image size instead (any patch size)
            nn.Conv2d(feature_dim // 2, last, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(last, out_channels, 1),
        )

    def forward(self, tokens: List[Tensor], grid: Tuple[int, int], image: Tuple[int, int]) -> Tensor:
        h, w = grid
        maps = []
        for i, t in enumerate(tokens):
            x = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)
            maps.append(self.act_postprocess[i](x))
        rn = [getattr(self.scratch, f"layer{i + 1}_rn")(m) for i, m in enumerate(maps)]
        p4 = self.scratch.refinenet4(rn[3])[:, :, : rn[2].shape[2], : rn[2].shape[3]]
        p3 = self.scratch.refinenet3(p4, rn[2])
        p2 = self.scratch.refinenet2(p3, rn[1])
        p1 = self.scratch.refinenet1(p2, rn[0])
        x = self.head[0](p1)
        x = F.interpolate(x, size=image, mode="bilinear", align_corners=True)
        return self.head[4](self.head[3](self.head[2](x)))


def head_channels(sem_dim: int, sh_degree: int) -> Dict[str, int]:
    """Channel layout of the head output, in order."""
    return {"pts": 3, "conf": 1, "scale": 3, "rot": 4, "opacity": 1, "sh": 3 * (sh_degree + 1) ** 2, "sem": sem_dim}


def grid_nn_distance(pts: Tensor, mode: str = "min") -> Tensor:
    """Distance of each pixel's point to its 4 grid neighbours (edge pixels use the ones they have): their mean
    (``mode='mean4'``) or the nearest one (``'min'``, which does not jump across depth edges).

    Args:
        pts: [..., H, W, 3] pointmap.
    Returns:
        [..., H, W] distances (a cheap, pixel-aligned stand-in for simple_knn's distCUDA2).
    """
    dx = (pts[..., :, 1:, :] - pts[..., :, :-1, :]).norm(dim=-1)  # [..., H, W-1]
    dy = (pts[..., 1:, :, :] - pts[..., :-1, :, :]).norm(dim=-1)  # [..., H-1, W]
    if mode == "min":
        best = torch.full_like(pts[..., 0], float("inf"))
        best[..., :, 1:] = torch.minimum(best[..., :, 1:], dx)
        best[..., :, :-1] = torch.minimum(best[..., :, :-1], dx)
        best[..., 1:, :] = torch.minimum(best[..., 1:, :], dy)
        best[..., :-1, :] = torch.minimum(best[..., :-1, :], dy)
        return best
    if mode != "mean4":
        raise ValueError(f"grid_nn_distance: unknown mode {mode!r} (min | mean4)")
    total = torch.zeros_like(pts[..., 0])
    count = torch.zeros_like(total)
    total[..., :, 1:] += dx
    total[..., :, :-1] += dx
    count[..., :, 1:] += 1
    count[..., :, :-1] += 1
    total[..., 1:, :] += dy
    total[..., :-1, :] += dy
    count[..., 1:, :] += 1
    count[..., :-1, :] += 1
    return total / count.clamp_min(1)


def pixel_rays(Ks: Tensor, height: int, width: int) -> Tensor:
    """Unit viewing rays [..., H, W, 3] (OpenCV camera axes) of pixel centres for intrinsics ``Ks`` [..., 3, 3]."""
    v, u = torch.meshgrid(torch.arange(height, dtype=Ks.dtype, device=Ks.device) + 0.5,
                          torch.arange(width, dtype=Ks.dtype, device=Ks.device) + 0.5, indexing="ij")
    fx, fy = Ks[..., 0, 0, None, None], Ks[..., 1, 1, None, None]
    cx, cy = Ks[..., 0, 2, None, None], Ks[..., 1, 2, None, None]
    d = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like((u - cx) / fx)], dim=-1)
    return F.normalize(d, dim=-1)


def gaussians_from_head(raw: Tensor, images: Tensor, cfg, rays: Tensor = None) -> Dict[str, Tensor]:
    """Activate the raw head output into pixel-aligned Gaussians (one per context pixel).

    Args:
        raw: [B, V, C, H, W] head output (layout :func:`head_channels`).
        images: [B, V, 3, H, W] input colours in [0, 1] (added to the SH DC term, as Uni3R).
        cfg: :class:`~feedforward.config.PredictorConfig`.
        rays: optional [B, V, H, W, 3] unit pixel rays of each view's own camera. [R] The point channels are
            offsets from ``log1p(init_depth) * ray`` (an intrinsics prior, in the spirit of Uni3R's intrinsic
            embedding), so an untrained model starts from a fronto-parallel plane instead of a single point.

    Returns:
        dict of per-pixel tensors, [B, V, H, W, ...]: ``means`` (3, in view 1's OpenCV camera frame), ``conf`` (1+exp),
        ``scales`` (3), ``quats`` (4, unit, wxyz), ``opacities`` (), ``sh`` (K, 3), ``sem`` (sem_dim).
    """
    chans = head_channels(cfg.sem_dim, cfg.sh_degree)
    parts = dict(zip(chans, torch.split(raw, list(chans.values()), dim=2)))
    to_last = lambda x: x.permute(0, 1, 3, 4, 2)  # noqa: E731
    xyz = to_last(parts["pts"])
    if rays is not None:
        xyz = xyz + math.log1p(cfg.init_depth) * rays
    else:
        xyz = xyz + torch.tensor([0.0, 0.0, math.log1p(cfg.init_depth)], device=xyz.device, dtype=xyz.dtype)
    d = xyz.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    means = xyz / d * torch.expm1(d)  # DUSt3R's 'exp' depth mode
    conf = 1.0 + torch.exp(to_last(parts["conf"])[..., 0])
    nn_dist = grid_nn_distance(means.detach(), cfg.nn_distance)  # [B, V, H, W]
    med = nn_dist.flatten(2).median(dim=-1).values[..., None, None].clamp_min(1e-6)  # [B, V, 1, 1]
    s = to_last(parts["scale"]).clamp(max=10.0)
    scales = torch.exp(s) * cfg.scale_multiplier * nn_dist[..., None]
    scales = torch.minimum(torch.maximum(scales, (cfg.scale_min_ratio * med)[..., None]), (cfg.scale_max_ratio * med)[..., None])
    quats = F.normalize(to_last(parts["rot"]), dim=-1)
    opac = torch.sigmoid(to_last(parts["opacity"])[..., 0])
    k = (cfg.sh_degree + 1) ** 2
    sh = to_last(parts["sh"]).reshape(*means.shape[:-1], k, 3)
    if k > 1:  # higher bands start small (Uni3R masks them with 0.5 * 0.25^degree)
        band = torch.cat([torch.full((2 * l + 1,), 0.5 * 0.25 ** l) for l in range(cfg.sh_degree + 1)]).to(sh)
        band[0] = 1.0
        sh = sh * band[:, None]
    dc = rgb_to_sh(images.permute(0, 1, 3, 4, 2))
    sh = torch.cat([sh[..., :1, :] + dc[..., None, :], sh[..., 1:, :]], dim=-2)
    return {"means": means, "conf": conf, "scales": scales, "quats": quats, "opacities": opac, "sh": sh,
            "sem": to_last(parts["sem"])}


def init_head_bias(last: nn.Conv2d, sem_dim: int, sh_degree: int, zero_semantic: bool = False,
                   weight_scale: float = 0.1) -> None:
    """Start near the depth prior of :func:`gaussians_from_head`, identity rotations, opacity 0.5 and the input
    colour: weights times ``weight_scale``, zero biases except the rotation's w; ``zero_semantic`` also zeroes the
    semantic channels' weights (the latent starts as the lifted cue alone)."""
    chans = head_channels(sem_dim, sh_degree)
    with torch.no_grad():
        last.weight.mul_(weight_scale)
        last.bias.zero_()
        start = 0
        for name, n in chans.items():
            if name == "rot":
                last.bias[start] = 1.0
            if name == "sem" and zero_semantic:
                last.weight[start:start + n].zero_()
            start += n
