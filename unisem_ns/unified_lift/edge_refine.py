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
    counts as an id). The filter's band here; the SAM-boundary pixels ``mask_boundary_ignore`` leaves out in training."""
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


def snap_mask_to_edges(
    mask_ids: torch.Tensor,
    image: torch.Tensor,
    radius: int = 4,
    sigma_space: float = 4.0,
    sigma_rgb: float = 0.03,
    core: int = 2,
    chunk_elements: int = 1 << 22,
) -> torch.Tensor:
    """Move a view's mask boundaries onto the photograph's colour edges (training labels; a one-shot joint
    bilateral vote).

    Pixels more than ``core`` pixels from every change of mask id (void counts) are trusted and keep their id. Each
    labelled pixel nearer a change takes the id with the most weight among the trusted labelled pixels of its
    ``(2 radius + 1)^2`` window, weights ``exp(-|p - q|^2 / (2 sigma_space^2) - |image[p] - image[q]|^2 / (2
    sigma_rgb^2))`` (the :func:`edge_aware_argmax` weights, on one-hot votes). A mask grown over its neighbour then
    hands the neighbour-coloured pixels back, and a shrunken one takes its own colour back from a neighbour. Void
    stays void and no pixel becomes void. A mask with no trusted pixel (no pixel more than ``core`` px inside it)
    keeps its pixels but does not vote, so small objects are neither voted away nor spread; a pixel with no trusted
    neighbour keeps its id.

    Args:
        mask_ids: ``[H, W]`` int mask ids, ``0`` = void (arbitrary per view).
        image: ``[H, W, C]`` float image of the view (RGB in [0, 1]).
        radius: half window of the vote (pixels); 0 returns the ids unchanged.
        sigma_space: spatial std (pixels).
        sigma_rgb: std of the colour difference (Euclidean over the C channels).
        core: pixels within this distance of an id change are re-decided.
        chunk_elements: bound on the per-step vote block (memory).

    Returns:
        ``[H, W]`` long ids, a relabelling of ``mask_ids``'s labelled pixels among its own ids.
    """
    if mask_ids.dim() != 2 or image.dim() != 3 or mask_ids.shape != image.shape[:2]:
        raise ValueError(f"snap_mask_to_edges wants mask_ids [H, W] and image [H, W, C] of the same H, W; got "
                         f"{tuple(mask_ids.shape)} and {tuple(image.shape)}")
    if radius < 0 or core < 0 or sigma_space <= 0 or sigma_rgb <= 0:
        raise ValueError("snap_mask_to_edges needs radius, core >= 0 and positive sigmas")
    ids = mask_ids.to(torch.long)
    if radius == 0 or core == 0 or int(ids.max()) <= 0:
        return ids.clone()
    H, W = ids.shape
    labelled = ids > 0
    band = boundary_band(ids, core)
    num_ids = int(ids.max()) + 1
    core_count = torch.bincount(ids[~band & labelled], minlength=num_ids)
    small = core_count == 0  # no trusted pixel: the mask is kept as it is
    small[0] = False
    trusted = ~band & labelled
    ys, xs = torch.nonzero(band & labelled & ~small[ids], as_tuple=True)
    out = ids.clone()
    if ys.numel() == 0:
        return out
    flat_ids, flat_trusted, flat_out = ids.reshape(-1), trusted.reshape(-1), out.view(-1)
    flat_image = image.to(torch.float32).reshape(H * W, -1)
    step = max(1, chunk_elements // max((2 * radius + 1) ** 2, num_ids))
    for start in range(0, ys.numel(), step):
        y, x = ys[start : start + step], xs[start : start + step]
        p, q, w = _bilateral_windows(y, x, H, W, radius, sigma_space, flat_image, sigma_rgb)
        w = w * flat_trusted[q]
        votes = torch.zeros(p.numel(), num_ids, dtype=torch.float32, device=ids.device)
        votes.scatter_add_(1, flat_ids[q], w)
        decided = votes.sum(1) > 0
        flat_out[p[decided]] = votes[decided].argmax(1)  # trusted ids only: ``out`` is written, ``ids`` read
    return out
