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


def boundary_band(ids: torch.Tensor, radius: int) -> torch.Tensor:
    """``[H, W]`` bool: pixels whose ``(2 radius + 1)^2`` window holds more than one id of ``ids`` ``[H, W]`` (void
    counts as an id): the band :func:`edge_aware_argmax` filters."""
    side = 2 * radius + 1
    x = ids[None, None].float()
    window_max = F.max_pool2d(x, side, stride=1, padding=radius)[0, 0]
    window_min = -F.max_pool2d(-x, side, stride=1, padding=radius)[0, 0]
    return window_max != window_min


def _bilateral_windows(ys: torch.Tensor, xs: torch.Tensor, H: int, W: int, radius: int, sigma_space: float,
                       flat_guide: torch.Tensor, sigma_guide: float):
    """Joint bilateral weights around pixels ``(ys, xs)`` ``[M]`` of an ``H x W`` image whose guide is
    ``flat_guide`` ``[H W, C]``: returns flat pixel indices ``p [M]``, their window's flat indices ``q [M, S]``
    (``S = (2 radius + 1)^2``, borders replicate) and ``w [M, S] = exp(-|p - q|^2 / (2 sigma_space^2) -
    |guide[p] - guide[q]|^2 / (2 sigma_guide^2))``."""
    offsets = torch.arange(-radius, radius + 1, device=ys.device)
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    dy, dx = dy.reshape(-1), dx.reshape(-1)
    log_space = -(dy * dy + dx * dx).to(flat_guide.dtype) / (2.0 * sigma_space**2)
    qy = (ys[:, None] + dy).clamp(0, H - 1)  # clamping = replicated borders
    qx = (xs[:, None] + dx).clamp(0, W - 1)
    p, q = ys * W + xs, qy * W + qx
    diff = flat_guide[q] - flat_guide[p][:, None]  # [M, S, C]
    return p, q, (log_space - (diff * diff).sum(-1) / (2.0 * sigma_guide**2)).exp()


def edge_aware_argmax(
    scores: torch.Tensor,
    guide: torch.Tensor,
    radius: int = 2,
    sigma_space: float = 1.5,
    sigma_guide: float = 0.1,
    chunk_elements: int = 1 << 23,
) -> torch.Tensor:
    """Argmax id per pixel of the scores after a joint bilateral filter guided by an image.

    The filtered score of pixel ``p`` is ``sum_q w(p, q) scores[q] / sum_q w(p, q)`` over the ``(2 radius + 1)^2``
    window (borders replicate), ``w(p, q) = exp(-|p - q|^2 / (2 sigma_space^2) - |guide[p] - guide[q]|^2 /
    (2 sigma_guide^2))``. Only pixels whose window holds more than one plain argmax are filtered: elsewhere every
    neighbour's score vector peaks at the same id, so their weighted mean peaks there too and the id cannot change.
    That is a small band along the boundaries, which keeps viewer-size renders cheap.

    Args:
        scores: ``[H, W, K]`` float, one score per id (probabilities, similarities...).
        guide: ``[H, W, C]`` float guide image, e.g. the rendered RGB in [0, 1].
        radius: half window in pixels (0 = plain argmax).
        sigma_space: spatial std in pixels.
        sigma_guide: std of the guide difference (Euclidean over the C channels).
        chunk_elements: bound on the gathered ``[pixels, window, K]`` block per step (memory).

    Returns:
        ``[H, W]`` long ids in ``[0, K)``.
    """
    if scores.dim() != 3 or guide.dim() != 3 or scores.shape[:2] != guide.shape[:2]:
        raise ValueError(f"edge_aware_argmax wants scores [H, W, K] and guide [H, W, C] of the same H, W; got "
                         f"{tuple(scores.shape)} and {tuple(guide.shape)}")
    if radius < 0 or sigma_space <= 0 or sigma_guide <= 0:
        raise ValueError("edge_aware_argmax needs radius >= 0 and positive sigmas")
    ids = scores.argmax(dim=-1)
    if radius == 0:
        return ids
    H, W, K = scores.shape
    ys, xs = torch.nonzero(boundary_band(ids, radius), as_tuple=True)
    if ys.numel() == 0:
        return ids
    flat_scores = scores.reshape(H * W, K)
    flat_guide = guide.to(scores.dtype).reshape(H * W, -1)
    out = ids.reshape(-1).clone()
    step = max(1, chunk_elements // ((2 * radius + 1) ** 2 * K))
    for start in range(0, ys.numel(), step):
        y, x = ys[start : start + step], xs[start : start + step]
        p, q, w = _bilateral_windows(y, x, H, W, radius, sigma_space, flat_guide, sigma_guide)
        filtered = (w[..., None] * flat_scores[q]).sum(1)  # [M, K]; the normaliser does not change the argmax
        out[p] = filtered.argmax(dim=-1)
    return out.reshape(H, W)

