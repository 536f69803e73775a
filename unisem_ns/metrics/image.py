"""Image metrics: PSNR, SSIM and (when its weights are on disk) LPIPS.

Layouts: a 2-D input is one [H, W] grey image, a 3-D input is one [H, W, C] image (Nerfstudio's layout), a
4-D input is a [B, C, H, W] batch. Values are expected in [0, data_range].
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._tensor import as_tensor as _as_tensor

__all__ = ["psnr", "ssim", "lpips", "lpips_available", "image_metrics", "ALEXNET_WEIGHTS"]

logger = logging.getLogger(__name__)

# torchvision's AlexNet weights, which torchmetrics' LPIPS (net_type="alex") needs. Never downloaded by us.
ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"

_lpips_warned = False
_lpips_models: Dict[str, Any] = {}


def _to_bchw(x: Any) -> Tensor:
    t = _as_tensor(x).to(torch.float64)
    if t.ndim == 2:
        return t[None, None]
    if t.ndim == 3:
        return t.permute(2, 0, 1)[None]
    if t.ndim == 4:
        return t
    raise ValueError(f"expected [H, W], [H, W, C] or [B, C, H, W], got shape {tuple(t.shape)}")


def _pair(pred: Any, gt: Any) -> tuple:
    p, g = _to_bchw(pred), _to_bchw(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred {tuple(p.shape)} and gt {tuple(g.shape)} differ in shape")
    return p, g.to(p.device)


def psnr(pred: Any, gt: Any, data_range: float = 1.0) -> float:
    """``10 * log10(data_range^2 / MSE)`` with the MSE over all elements (a batch is pooled, like torchmetrics'
    ``PeakSignalNoiseRatio`` defaults). ``inf`` for identical images."""
    p, g = _pair(pred, gt)
    mse = float(((p - g) ** 2).mean())
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def ssim(
    pred: Any,
    gt: Any,
    data_range: float = 1.0,
    win_size: int = 11,
    win_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    border: Literal["valid", "reflect"] = "valid",
) -> float:
    """Mean SSIM (Wang et al. 2004) with the standard 11x11 Gaussian window (sigma 1.5).

    Local statistics use a separable Gaussian filter per channel; the SSIM map is averaged over channels,
    pixels and the batch.

    * ``border="valid"`` (default): only windows fully inside the image (no padding), as Wang et al.'s
      reference code, ``pytorch_msssim.ssim`` and Splatfacto's SSIM.
    * ``border="reflect"``: the images are reflect-padded by half a window and the full-size map is averaged,
      as ``torchmetrics.image.StructuralSimilarityIndexMeasure`` (>= 1.0) does. Values differ from "valid" by
      the border pixels' share.
    """
    p, g = _pair(pred, gt)
    h, w = p.shape[-2:]
    if min(h, w) < win_size:
        raise ValueError(f"SSIM needs images of at least {win_size}x{win_size}, got {h}x{w}")
    if border == "reflect":
        r = (win_size - 1) // 2
        p = F.pad(p, (r, r, r, r), mode="reflect")
        g = F.pad(g, (r, r, r, r), mode="reflect")
    elif border != "valid":
        raise ValueError(f"border must be 'valid' or 'reflect', got {border!r}")
    # float32 like pytorch_msssim (float64 convolutions are ~6x slower on CPU; the difference is ~1e-7)
    p, g = p.float(), g.float()
    c = p.shape[1]
    maps = torch.cat([p, g, p * p, g * g, p * g], dim=1)  # one grouped convolution for all five
    win = _gaussian_window(win_size, win_sigma, torch.float32, p.device)
    wh = win.view(1, 1, -1, 1).repeat(5 * c, 1, 1, 1)
    ww = win.view(1, 1, 1, -1).repeat(5 * c, 1, 1, 1)
    mu_p, mu_g, e_pp, e_gg, e_pg = F.conv2d(F.conv2d(maps, wh, groups=5 * c), ww, groups=5 * c).split(c, dim=1)
    var_p = e_pp - mu_p**2
    var_g = e_gg - mu_g**2
    cov = e_pg - mu_p * mu_g
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * mu_p * mu_g + c1) * (2 * cov + c2)
    den = (mu_p**2 + mu_g**2 + c1) * (var_p + var_g + c2)
    return float((num / den).double().mean())


def lpips_available() -> bool:
    """True when torchvision's AlexNet weights are in ``torch.hub.get_dir()/checkpoints``."""
    return (Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS).is_file()


def lpips(pred: Any, gt: Any) -> Optional[float]:
    """LPIPS (AlexNet, torchmetrics' ``LearnedPerceptualImagePatchSimilarity(normalize=True)``), inputs in [0, 1].

    Returns None, logging one warning per process, when the AlexNet weights file ``alexnet-owt-7be5be79.pth`` is
    not in ``torch.hub.get_dir()/checkpoints``; nothing is ever downloaded. Needs torchmetrics and torchvision.
    """
    global _lpips_warned
    if not lpips_available():
        if not _lpips_warned:
            logger.warning(
                "LPIPS skipped: torchvision's AlexNet weights (%s) are not in %s; copy them there to report LPIPS.",
                ALEXNET_WEIGHTS,
                Path(torch.hub.get_dir()) / "checkpoints",
            )
            _lpips_warned = True
        return None
    p, g = _pair(pred, gt)
    key = str(p.device)
    if key not in _lpips_models:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        _lpips_models[key] = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(p.device)
    model = _lpips_models[key]
    with torch.no_grad():
        model.reset()
        return float(model(p.float().clamp(0, 1), g.float().clamp(0, 1)))


def image_metrics(pred: Any, gt: Any, with_lpips: bool = True) -> Dict[str, float]:
    """{"psnr", "ssim"} and, when available, "lpips" of an [H, W, 3] (or [B, 3, H, W]) image in [0, 1]."""
    out = {"psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}
    if with_lpips:
        value = lpips(pred, gt)
        if value is not None:
            out["lpips"] = value
    return out
