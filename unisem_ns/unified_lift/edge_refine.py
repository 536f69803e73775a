"""Edge-aware refinement of per-pixel instance scores (inference only).

Rendered instance features blur across object boundaries: a pixel on an edge mixes the features of the Gaussians on
either side, and with masks whose boundaries jitter from view to view the learned boundary sits about a pixel off
all round. The rendered colour image comes from the same Gaussians but is fitted to sharp photographs, so its edges
are where the objects' are. A joint bilateral filter of the score maps, guided by that render, pulls each pixel
towards the scores of the neighbours that look like it, which moves the argmax boundary onto the colour edge.
Nothing is clustered: the ids are still the argmax over the method's own scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def edge_aware_filter(
    scores: torch.Tensor,
    guide: torch.Tensor,
    radius: int = 2,
    sigma_space: float = 1.5,
    sigma_guide: float = 0.1,
) -> torch.Tensor:
    """Joint bilateral filter of per-pixel scores, guided by an image.

    Pixel ``p`` gets ``sum_q w(p, q) scores[q] / sum_q w(p, q)`` over the ``(2 radius + 1)^2`` window, with
    ``w(p, q) = exp(-|p - q|^2 / (2 sigma_space^2) - |guide[p] - guide[q]|^2 / (2 sigma_guide^2))``; borders
    replicate. Linear in ``scores``, so constant maps are unchanged and ``radius=0`` is the identity.

    Args:
        scores: ``[H, W, K]`` float, one map per id (probabilities, similarities, one-hot votes...).
        guide: ``[H, W, C]`` float guide image, e.g. the rendered RGB in [0, 1].
        radius: half window in pixels (0 = return ``scores``).
        sigma_space: spatial std in pixels.
        sigma_guide: std of the guide difference (Euclidean over the C channels).

    Returns:
        ``[H, W, K]`` filtered scores, same dtype and device as ``scores``.
    """
    if scores.dim() != 3 or guide.dim() != 3 or scores.shape[:2] != guide.shape[:2]:
        raise ValueError(f"edge_aware_filter wants scores [H, W, K] and guide [H, W, C] of the same H, W; got "
                         f"{tuple(scores.shape)} and {tuple(guide.shape)}")
    if radius < 0 or sigma_space <= 0 or sigma_guide <= 0:
        raise ValueError("edge_aware_filter needs radius >= 0 and positive sigmas")
    if radius == 0:
        return scores
    H, W, _ = scores.shape
    r = radius
    s = scores.permute(2, 0, 1)
    g = guide.to(scores.dtype).permute(2, 0, 1)
    s_pad = F.pad(s[None], (r, r, r, r), mode="replicate")[0]
    g_pad = F.pad(g[None], (r, r, r, r), mode="replicate")[0]
    num = torch.zeros_like(s)
    den = torch.zeros_like(s[:1])
    # One shifted copy at a time keeps memory at O(K H W), not O(window K H W).
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            g_q = g_pad[:, r + dy : r + dy + H, r + dx : r + dx + W]
            log_w = -(dy * dy + dx * dx) / (2.0 * sigma_space**2) - ((g_q - g) ** 2).sum(0, keepdim=True) / (
                2.0 * sigma_guide**2
            )
            w = log_w.exp()
            num += w * s_pad[:, r + dy : r + dy + H, r + dx : r + dx + W]
            den += w
    return (num / den).permute(1, 2, 0)
