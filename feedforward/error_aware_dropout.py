"""Error-aware Gaussian dropout (EGD), UniSem (docs/methods/unisem_feedforward.md, step 6) — a reconstruction [R];
constants in :class:`EGDConfig`.

Gaussians are pixel-aligned, so Gaussian i <-> (context view v, pixel u). Per iteration:

1. render the context views (no grad) and take the per-pixel error e = |I^ - I|_1 (mean over RGB; optionally
   + (1 - SSIM map));
2. rank errors (within each view, or globally): rank_pct in [0, 1], 0 = lowest error;
3. candidates = rank_pct < q (the low-error, redundancy-prone Gaussians);
4. drop probability p_i = r(t) * (1 - rank_pct_i) on candidates, 0 elsewhere; r(t) ramps linearly
   0 -> r_max over ``ramp_fraction`` of training;
5. one Bernoulli keep-mask per iteration, applied to every training render of that iteration.

No dropout at inference.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import EGDConfig

__all__ = ["dropout_rate", "pixel_error", "drop_probabilities", "sample_keep_mask"]


def dropout_rate(step: int, total_steps: int, cfg: EGDConfig) -> float:
    """r(t): linear ramp 0 -> r_max over the first ``ramp_fraction`` of ``total_steps``, then r_max; 0 if disabled."""
    if not cfg.enabled or total_steps <= 0:
        return 0.0
    ramp = cfg.ramp_fraction * total_steps
    if ramp <= 0:
        return float(cfg.r_max)
    return float(cfg.r_max * min(1.0, max(0.0, step / ramp)))


def _ssim_map(a: Tensor, b: Tensor, window: int = 7) -> Tensor:
    """Per-pixel SSIM [C, H, W] of images [C, H, W, 3] (box window, mean over channels)."""
    x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
    pad = window // 2
    mu = lambda t: F.avg_pool2d(F.pad(t, [pad] * 4, mode="reflect"), window, 1)  # noqa: E731
    mx, my = mu(x), mu(y)
    sxx, syy, sxy = mu(x * x) - mx ** 2, mu(y * y) - my ** 2, mu(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return s.mean(1)


def pixel_error(rendered: Tensor, target: Tensor, kind: str = "l1") -> Tensor:
    """Per-pixel error [C, H, W] between renders and images [C, H, W, 3] (detached)."""
    with torch.no_grad():
        e = (rendered - target).abs().mean(-1)
        if kind == "l1+ssim":
            e = e + (1.0 - _ssim_map(rendered, target)).clamp(0, 2)
        elif kind != "l1":
            raise ValueError(f"unknown EGD error {kind!r}; use 'l1' or 'l1+ssim'")
    return e


def _rank_pct(x: Tensor) -> Tensor:
    """Rank of each entry of a 1-D tensor as a fraction in [0, 1] (0 = smallest; ties broken by position)."""
    n = x.numel()
    order = torch.argsort(x, stable=True)
    rank = torch.empty(n, dtype=torch.float32, device=x.device)
    rank[order] = torch.arange(n, dtype=torch.float32, device=x.device)
    return rank / max(n - 1, 1)


def drop_probabilities(errors: Tensor, rate: float, cfg: EGDConfig) -> Tensor:
    """Drop probability per Gaussian [V*H*W] from context-view errors [V, H, W] (view-major, like the Gaussians)."""
    v = errors.shape[0]
    if cfg.ranking == "per_view":
        pct = torch.stack([_rank_pct(errors[i].reshape(-1)) for i in range(v)]).reshape(-1)
    elif cfg.ranking == "global":
        pct = _rank_pct(errors.reshape(-1))
    else:
        raise ValueError(f"unknown EGD ranking {cfg.ranking!r}; use 'per_view' or 'global'")
    candidate = pct < cfg.quantile
    return torch.where(candidate, rate * (1.0 - pct), torch.zeros_like(pct))


def sample_keep_mask(errors: Tensor, rate: float, cfg: EGDConfig,
                     generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """One Bernoulli keep-mask per iteration: (keep [V*H*W] bool, drop probabilities [V*H*W])."""
    p = drop_probabilities(errors, rate, cfg)
    u = torch.rand(p.shape, generator=generator, device="cpu").to(p.device)
    return u >= p, p
