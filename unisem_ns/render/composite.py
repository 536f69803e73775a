"""Sparse, depth-sorted alpha compositing on CPU (or any device) in pure PyTorch.

The cost of splatting is the number of (pixel, Gaussian) pairs that pass the alpha test, so we build
exactly those pairs and nothing else:

1. every projected Gaussian gets a pixel box: the tiles gsplat would assign it (3-sigma radius,
   16-px tiles) intersected with the box where ``opacity * exp(-sigma) >= 1/255`` can hold;
2. the pairs inside the boxes are enumerated Gaussian-major in depth order, alpha-tested, and one
   stable int32 sort by pixel gives a per-pixel front-to-back list (CSR layout);
3. transmittance is a segmented cumulative sum of ``log(1 - alpha)`` in float64; the gsplat early
   stop (a Gaussian is used only while the transmittance after it stays above 1e-4) is a prefix mask;
4. every D-dependent sum is a CSR sparse-dense product (``W @ colors`` forward; ``W^T @ grad`` and a
   sampled dot product backward), which costs far less than a gather/scatter over pairs.

The backward pass is written by hand in :class:`_Composite`; the pair lists are built without
gradients, so autograd only sees per-Gaussian tensors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from .projection import ALPHA_THRESHOLD, LOG_TRANSMITTANCE_MIN, MAX_ALPHA, opacity_extent, tile_bounds

PAIRS_PER_BAND = 1 << 20

# CSR tensors warn that they are beta on every construction; the layout we build is valid by construction.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


@dataclass
class PixelPairs:
    """The (pixel, Gaussian) pairs of one camera that pass the alpha test, sorted per pixel.

    Attributes:
        pix: [P] int64 flat pixel index ``y * W + x``, ascending.
        gid: [P] int64 index into the camera's depth-sorted visible Gaussians.
        dx, dy: [P] ``mean2d - pixel_centre`` for each pair.
        crow: [H*W + 1] int64 CSR row pointers over ``pix``.
        sorted_pos: [P] int64 position in the pixel-sorted lists of each pair in Gaussian-major order.
        crow_t: [Nv + 1] int64 CSR row pointers of the Gaussian-major layout.
        pix_t: [P] int64 pixel index of each pair in Gaussian-major order.
    """

    pix: Tensor
    gid: Tensor
    dx: Tensor
    dy: Tensor
    crow: Tensor
    sorted_pos: Tensor
    crow_t: Tensor
    pix_t: Tensor


def _pixel_boxes(
    means2d: Tensor, radii: Tensor, conics: Tensor, opacities: Tensor, width: int, height: int, tile_size: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inclusive-exclusive pixel boxes [x0, x1) x [y0, y1) per Gaussian (all [Nv] int64)."""
    tx0, tx1, ty0, ty1 = tile_bounds(means2d, radii, width, height, tile_size)
    # Opacity-aware box: pixel centres x + 0.5 within mean -+ extent (widened a hair for rounding;
    # the exact alpha test happens per pair afterwards).
    ext_x, ext_y = opacity_extent(conics, opacities)
    ext_x = ext_x * 1.0001 + 1e-3
    ext_y = ext_y * 1.0001 + 1e-3
    ox0 = torch.ceil(means2d[:, 0] - ext_x - 0.5)
    ox1 = torch.floor(means2d[:, 0] + ext_x - 0.5) + 1
    oy0 = torch.ceil(means2d[:, 1] - ext_y - 0.5)
    oy1 = torch.floor(means2d[:, 1] + ext_y - 0.5) + 1
    x0 = torch.maximum(tx0, ox0).clamp(0, width)
    x1 = torch.minimum(torch.minimum(tx1, ox1), torch.tensor(float(width))).clamp(min=0)
    y0 = torch.maximum(ty0, oy0).clamp(0, height)
    y1 = torch.minimum(torch.minimum(ty1, oy1), torch.tensor(float(height))).clamp(min=0)
    x1 = torch.maximum(x1, x0)
    y1 = torch.maximum(y1, y0)
    return x0.long(), x1.long(), y0.long(), y1.long()


@torch.no_grad()
def build_pairs(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    boxes: Tuple[Tensor, Tensor, Tensor, Tensor],
    width: int,
    row_lo: int,
    row_hi: int,
) -> Tuple[PixelPairs, Tensor]:
    """Enumerate and alpha-test the (pixel, Gaussian) pairs of one camera within rows [row_lo, row_hi).

    Args:
        means2d: [Nv, 2] centres of the visible Gaussians, sorted front to back.
        conics: [Nv, 3] inverse 2D covariances.
        opacities: [Nv] effective opacities.
        boxes: (x0, x1, y0, y1) [Nv] int64 pixel boxes from :func:`_pixel_boxes`.
        width: image width.
        row_lo, row_hi: the band of rows; pixel indices are relative to ``row_lo``.

    Returns:
        (pairs, alpha): the pair lists and [P] alpha per sorted pair (no gradient).
    """
    device = means2d.device
    x0, x1, y0, y1 = boxes
    y0 = y0.clamp(row_lo, row_hi)
    y1 = y1.clamp(row_lo, row_hi)
    height = row_hi - row_lo
    bw = x1 - x0
    counts = bw * (y1 - y0)
    total = int(counts.sum())
    nv = means2d.shape[0]
    # Expand per-Gaussian values to candidate pairs with repeat_interleave (a streaming copy; a random
    # gather per attribute costs several times more).
    start = torch.cumsum(counts, 0) - counts
    ints = torch.repeat_interleave(
        torch.stack([torch.arange(nv, device=device), x0, y0, bw.clamp_min(1), start], 1), counts, dim=0, output_size=total
    )
    gid, px0, py0, bw_g, start_g = ints.unbind(1)
    local = torch.arange(total, device=device) - start_g
    rows = torch.div(local, bw_g, rounding_mode="floor")
    py = py0 + rows
    px = px0 + (local - rows * bw_g)
    floats = torch.repeat_interleave(torch.cat([means2d, conics, opacities[:, None]], 1), counts, dim=0, output_size=total)
    dx = floats[:, 0] - (px.to(floats.dtype) + 0.5)
    dy = floats[:, 1] - (py.to(floats.dtype) + 0.5)
    sigma = 0.5 * (floats[:, 2] * dx * dx + floats[:, 4] * dy * dy) + floats[:, 3] * dx * dy
    alpha = torch.clamp(floats[:, 5] * torch.exp(-sigma), max=MAX_ALPHA)
    idx = ((sigma >= 0) & (alpha >= ALPHA_THRESHOLD)).nonzero().squeeze(1)
    gid = gid.index_select(0, idx)
    pix_t = ((py - row_lo) * width + px).index_select(0, idx)
    vals = torch.stack([dx, dy, alpha], 1).index_select(0, idx)
    # Gaussian-major (= depth-major) order now; one stable sort by pixel keeps depth order per pixel.
    key = pix_t.to(torch.int32) if width * height < 2**31 else pix_t
    _, order = torch.sort(key, stable=True)
    p = order.numel()
    sorted_pos = torch.empty_like(order).index_copy_(0, order, torch.arange(p, device=device))
    pix = pix_t.index_select(0, order)
    vals = vals.index_select(0, order)
    crow = torch.zeros(width * height + 1, dtype=torch.int64, device=device)
    crow[1:] = torch.cumsum(torch.bincount(pix, minlength=width * height), 0)
    crow_t = torch.zeros(nv + 1, dtype=torch.int64, device=device)
    crow_t[1:] = torch.cumsum(torch.bincount(gid, minlength=nv), 0)
    pairs = PixelPairs(
        pix=pix,
        gid=gid.index_select(0, order),
        dx=vals[:, 0].contiguous(),
        dy=vals[:, 1].contiguous(),
        crow=crow,
        sorted_pos=sorted_pos,
        crow_t=crow_t,
        pix_t=pix_t,
    )
    return pairs, vals[:, 2].contiguous()


def _segment_scan(values: Tensor, crow: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-pixel prefix sums of ``values`` ([P], sorted by pixel, CSR row pointers ``crow``).

    Returns:
        exclusive: [P] sum of the earlier values in the same pixel.
        totals: [H*W] sum per pixel.
    """
    cs = torch.zeros(values.shape[0] + 1, dtype=values.dtype, device=values.device)
    torch.cumsum(values, 0, out=cs[1:])
    at_rows = cs.index_select(0, crow)  # [HW + 1] running sum at each pixel start
    counts = crow[1:] - crow[:-1]
    exclusive = cs[:-1] - torch.repeat_interleave(at_rows[:-1], counts, output_size=values.shape[0])
    return exclusive, at_rows[1:] - at_rows[:-1]


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: Tuple[int, int]) -> Tensor:
    return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


class _Composite(torch.autograd.Function):
    """Front-to-back compositing of per-pair Gaussians with a hand-written backward.

    Forward inputs are per-Gaussian (depth-sorted visible set of one camera); the pair structure is
    passed in and carries no gradient.
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, pairs: PixelPairs, alpha: Tensor, hw: int, absgrad_sink):
        # means2d/conics enter only through alpha, which build_pairs computed without grad; we keep
        # them as inputs so the backward can return their gradients.
        nv, d = colors.shape
        log1m = torch.log1p(-alpha.double())
        log_t_excl, _ = _segment_scan(log1m, pairs.crow)
        used = (log_t_excl + log1m) > LOG_TRANSMITTANCE_MIN  # gsplat's early stop, a per-pixel prefix
        t_excl = torch.exp(log_t_excl).to(alpha.dtype)
        weights = torch.where(used, alpha * t_excl, torch.zeros_like(alpha))
        _, log_t_final = _segment_scan(torch.where(used, log1m, torch.zeros_like(log1m)), pairs.crow)
        t_final = torch.exp(log_t_final).to(colors.dtype)
        w_mat = _csr(pairs.crow, pairs.gid, weights.to(colors.dtype), (hw, nv))
        out = w_mat @ colors.contiguous()  # [HW, D]
        ctx.save_for_backward(means2d, conics, opacities, colors, alpha, t_excl, weights, used, t_final)
        ctx.pairs = pairs
        ctx.hw = hw
        ctx.absgrad_sink = absgrad_sink
        return out, t_final

    @staticmethod
    def backward(ctx, v_out: Tensor, v_t_final: Tensor):
        means2d, conics, opacities, colors, alpha, t_excl, weights, used, t_final = ctx.saved_tensors
        pairs: PixelPairs = ctx.pairs
        hw = ctx.hw
        nv, d = colors.shape
        p = alpha.shape[0]
        dtype = colors.dtype
        if v_out is None:
            v_out = torch.zeros(hw, d, dtype=dtype, device=colors.device)
        if v_t_final is None:
            v_t_final = torch.zeros(hw, dtype=dtype, device=colors.device)
        v_out = v_out.contiguous()

        # d out / d colors: W^T @ v_out, with W^T laid out Gaussian-major.
        w_t = _csr(pairs.crow_t, pairs.pix_t, weights.index_select(0, pairs.sorted_pos).to(dtype), (nv, hw))
        v_colors = w_t @ v_out if ctx.needs_input_grad[3] else None

        # c_i . v_out[pixel_i] for every pair, as a sampled dense product on W's pattern.
        pattern = _csr(pairs.crow, pairs.gid, torch.ones(p, dtype=dtype, device=colors.device), (hw, nv))
        dots = torch.sparse.sampled_addmm(pattern, v_out, colors.t().contiguous(), beta=0.0).values()
        # Contributions after pair i in its pixel: S_i = sum_{j>i} w_j (c_j . v), plus the background
        # path through the final transmittance.
        wd = (weights * dots).double()
        excl, totals = _segment_scan(wd, pairs.crow)
        counts = pairs.crow[1:] - pairs.crow[:-1]
        per_pixel = totals + (v_t_final * t_final).double()  # everything behind pair i, plus background
        tail = torch.repeat_interleave(per_pixel, counts, output_size=p) - (excl + wd)
        one_minus = (1.0 - alpha).double()
        v_alpha = (t_excl * dots).double() - tail / one_minus
        v_alpha = torch.where(used, v_alpha, torch.zeros_like(v_alpha)).to(dtype)

        # alpha = min(0.999, op * exp(-sigma)); gsplat passes no gradient through the clamp.
        a, b, c, op = torch.cat([conics, opacities[:, None]], 1).index_select(0, pairs.gid).unbind(1)
        vis = alpha / op.clamp_min(1e-30)
        v_alpha = torch.where(alpha < MAX_ALPHA, v_alpha, torch.zeros_like(v_alpha))
        v_op_pair = vis * v_alpha
        v_sigma = -alpha * v_alpha
        dx, dy = pairs.dx, pairs.dy
        per_pair = torch.stack(
            [
                v_sigma * (a * dx + b * dy),  # d sigma / d mean_x
                v_sigma * (b * dx + c * dy),  # d sigma / d mean_y
                v_sigma * 0.5 * dx * dx,  # d sigma / d conic_a
                v_sigma * dx * dy,  # d sigma / d conic_b
                v_sigma * 0.5 * dy * dy,  # d sigma / d conic_c
                v_op_pair,
            ],
            dim=1,
        )
        # Sum pairs into their Gaussians with a CSR product over the Gaussian-major layout.
        gather = _csr(pairs.crow_t, pairs.sorted_pos, torch.ones(p, dtype=dtype, device=colors.device), (nv, p))
        if ctx.absgrad_sink is not None:
            acc_all = gather @ torch.cat([per_pair, per_pair[:, :2].abs()], 1)
            acc, abs_acc = acc_all[:, :6], acc_all[:, 6:]
            sink, index = ctx.absgrad_sink
            sink.index_add_(0, index, abs_acc)
        else:
            acc = gather @ per_pair
        return acc[:, 0:2], acc[:, 2:5], acc[:, 5], v_colors, None, None, None, None


def sorted_visible(means2d, conics, opacities, colors, radii, depths, width, height, tile_size):
    """The visible Gaussians front to back and their pixel boxes, or None when none is visible.

    Returns:
        (order [Nv] indices into the inputs, means2d [Nv, 2], conics [Nv, 3], opacities [Nv], colors [Nv, D],
        (x0, x1, y0, y1) [Nv] int64 boxes from :func:`_pixel_boxes`).
    """
    visible = ((radii > 0) & (opacities >= ALPHA_THRESHOLD)).nonzero().squeeze(1)
    if visible.numel() == 0:
        return None
    # Front-to-back order; stable so equal depths keep index order, as gsplat's radix sort does.
    order = visible.index_select(0, torch.sort(depths.detach().index_select(0, visible), stable=True)[1])
    m2 = means2d.index_select(0, order)
    cn = conics.index_select(0, order)
    op = opacities.index_select(0, order)
    col = colors.index_select(0, order)
    boxes = _pixel_boxes(m2.detach(), radii.index_select(0, order), cn.detach(), op.detach(), width, height, tile_size)
    return order, m2, cn, op, col, boxes


def composite_camera(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    colors: Tensor,
    radii: Tensor,
    depths: Tensor,
    width: int,
    height: int,
    tile_size: int = 16,
    absgrad_sink: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, int]:
    """Composite one camera's Gaussians front to back.

    Args:
        means2d: [N, 2] projected centres.
        conics: [N, 3] inverse 2D covariances.
        opacities: [N] effective opacities (after antialiasing compensation).
        colors: [N, D] per-Gaussian features (depth already appended if wanted).
        radii: [N] int gsplat radii; 0 marks culled Gaussians.
        depths: [N] camera-space z, the sort key.
        width, height: image size.
        tile_size: gsplat tile size (only used to reproduce gsplat's pixel coverage).
        absgrad_sink: optional [N, 2] tensor that the backward pass adds the per-pixel absolute
            ``means2d`` gradients into (gsplat's absgrad, used for densification).

    Returns:
        colors: [H, W, D] composited features (no background).
        transmittance: [H, W, 1] final transmittance ``T``; alpha is ``1 - T``.
        n_pairs: number of (pixel, Gaussian) pairs composited.
    """
    hw = width * height
    d = colors.shape[-1]
    sorted_set = sorted_visible(means2d, conics, opacities, colors, radii, depths, width, height, tile_size)
    if sorted_set is None:
        return _empty(means2d, conics, opacities, colors, width, height)
    order, m2, cn, op, col, boxes = sorted_set
    # Work in bands of rows of about PAIRS_PER_BAND candidate pairs: the per-pair arrays then stay
    # small enough for the caches, and memory stays bounded on large images.
    candidates = int(((boxes[1] - boxes[0]) * (boxes[3] - boxes[2])).sum())
    band_rows = max(1, -(-height // max(1, -(-candidates // PAIRS_PER_BAND))))
    sink = None if absgrad_sink is None else (absgrad_sink, order)
    outs, ts, n_pairs = [], [], 0
    for lo in range(0, height, band_rows):
        hi = min(height, lo + band_rows)
        pairs, alpha = build_pairs(m2.detach(), cn.detach(), op.detach(), boxes, width, lo, hi)
        if alpha.numel() == 0:
            outs.append(torch.zeros((hi - lo) * width, d, dtype=colors.dtype, device=colors.device))
            ts.append(torch.ones((hi - lo) * width, dtype=colors.dtype, device=colors.device))
            continue
        out, t_final = _Composite.apply(m2, cn, op, col, pairs, alpha, (hi - lo) * width, sink)
        outs.append(out)
        ts.append(t_final)
        n_pairs += int(alpha.shape[0])
    if n_pairs == 0:
        return _empty(means2d, conics, opacities, colors, width, height)
    return torch.cat(outs).reshape(height, width, d), torch.cat(ts).reshape(height, width, 1), n_pairs


def _empty(means2d, conics, opacities, colors, width, height) -> Tuple[Tensor, Tensor, int]:
    """An empty image that is still connected to the inputs, so ``backward()`` gives zero gradients."""
    zero = (colors.sum() + means2d.sum() + conics.sum() + opacities.sum()) * 0.0
    out = torch.zeros(height, width, colors.shape[-1], dtype=colors.dtype, device=colors.device) + zero
    t_final = torch.ones(height, width, 1, dtype=colors.dtype, device=colors.device) + zero
    return out, t_final, 0
