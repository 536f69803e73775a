"""Compiled tile compositor for CPU tensors (numba): gsplat's rasterize forward and backward, per tile.

The structure is gsplat's CUDA rasterizer mapped onto CPU threads:

1. every visible Gaussian is binned, in depth order, into the tiles its pixel box touches (the box is
   the torch backend's: gsplat's tile coverage intersected with the 1/255 opacity box), giving one
   front-to-back list per tile;
2. the forward kernel walks each pixel of a tile through the tile's list, with gsplat's rules: pixel
   centres at +0.5, ``alpha = min(0.999, opacity * exp(-sigma))``, pairs below 1/255 skipped, stop
   before the Gaussian that would take the transmittance to 1e-4 or below. It keeps, per pixel, the
   final transmittance and where in the list it stopped;
3. the backward kernel walks the same lists back to front from the final transmittance (gsplat's
   ``rasterize_to_pixels_bwd``), so nothing per pair is stored between the passes.

Tiles run in parallel (``prange``). The backward accumulates per-Gaussian gradients into one buffer
per worker, summed at the end, so no two threads write the same memory. Arithmetic is float64 inside
the kernels whatever the tensors' dtype. Kernels are compiled on first use and cached on disk
(numba's ``cache=True``), so later processes start in well under a second.

The sparse PyTorch compositor (:mod:`unisem_ns.render.composite`) stays the reference; the two are
tested against each other and against a brute force, values and gradients.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .composite import _empty, sorted_visible
from .projection import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_MIN

try:  # numba is a declared dependency; the import guard only keeps `auto` working if it is removed.
    import numba
    from numba import njit, prange

    NUMBA_AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only without numba installed
    numba = None
    NUMBA_AVAILABLE = False

# The workqueue layer needs no OpenMP runtime (torch brings its own, and two in one process clash)
# and is fork-safe; a user can still pick another with NUMBA_THREADING_LAYER.
if NUMBA_AVAILABLE and "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

# numba's parallel runtime must not be entered from two Python threads at once (the viewer renders
# from its own thread while the trainer steps); one lock serialises kernel launches.
_LAUNCH_LOCK = threading.Lock()

BIN_SIZE = 8  # [R] pixels per work unit edge (divides gsplat's 16-px tile); 4, 8 and 16 timed within noise
_KERNEL_OPTS = dict(cache=True, nogil=True, error_model="numpy")


def _jit(parallel: bool):
    def wrap(fn):
        if not NUMBA_AVAILABLE:  # pragma: no cover
            return fn
        return njit(parallel=parallel, **_KERNEL_OPTS)(fn)

    return wrap


_prange = prange if NUMBA_AVAILABLE else range


@_jit(parallel=False)
def _bin_tiles(boxes, tile_size, tiles_x, n_tiles):  # pragma: no cover - compiled
    """Per-bin lists of Gaussian indices, each in the input (depth) order. CSR: ptr [B+1], ids [M]."""
    nv = boxes.shape[0]
    x0 = boxes[:, 0]
    x1 = boxes[:, 1]
    y0 = boxes[:, 2]
    y1 = boxes[:, 3]
    ptr = np.zeros(n_tiles + 1, np.int64)
    for g in range(nv):
        if x1[g] <= x0[g] or y1[g] <= y0[g]:
            continue
        tx0 = x0[g] // tile_size
        tx1 = (x1[g] - 1) // tile_size + 1
        ty0 = y0[g] // tile_size
        ty1 = (y1[g] - 1) // tile_size + 1
        for ty in range(ty0, ty1):
            for tx in range(tx0, tx1):
                ptr[ty * tiles_x + tx + 1] += 1
    for t in range(n_tiles):
        ptr[t + 1] += ptr[t]
    fill = ptr[:-1].copy()
    ids = np.empty(ptr[n_tiles], np.int32)
    for g in range(nv):
        if x1[g] <= x0[g] or y1[g] <= y0[g]:
            continue
        tx0 = x0[g] // tile_size
        tx1 = (x1[g] - 1) // tile_size + 1
        ty0 = y0[g] // tile_size
        ty1 = (y1[g] - 1) // tile_size + 1
        for ty in range(ty0, ty1):
            for tx in range(tx0, tx1):
                t = ty * tiles_x + tx
                ids[fill[t]] = g
                fill[t] += 1
    return ptr, ids


@njit(inline="always", fastmath={"reassoc", "contract"}, **_KERNEL_OPTS) if NUMBA_AVAILABLE else (lambda f: f)
def _colour_terms(colors, g, v_out, pix, vc, weight, d):  # pragma: no cover - compiled
    """``vc += weight * v_out[pix]`` and the dot ``colors[g] . v_out[pix]``, the D-wide part of the backward.

    Only these instructions may be reordered (so the loop vectorises); the alpha and transmittance
    arithmetic around them stays exact, identical to the forward kernel's.
    """
    dot = 0.0
    for j in range(d):
        vo = v_out[pix, j]
        dot += colors[g, j] * vo
        vc[j] += weight * vo
    return dot


# Columns of the per-Gaussian parameter rows the kernels read (one row per Gaussian, in its dtype).
_MX, _MY, _HALF_A, _B, _HALF_C, _OP, _SIGMA_MAX = range(7)


@_jit(parallel=True)
def _forward_kernel(
    ptr, ids, boxes, params, colors, centres, limits, width, height, bin_size, bins_x, t_min, out, t_final, stop,
):  # pragma: no cover - compiled
    """Front-to-back compositing; fills out [HW, D], t_final [HW] and stop [HW] (list end per pixel).

    One bin at a time, Gaussians outer and the bin's pixels inner (gsplat's tile loop): each Gaussian's
    parameters are loaded once per bin and only the pixels of its box inside the bin are visited.
    ``sigma``/``alpha`` are computed in the parameters' dtype (as the torch backend does), transmittance
    and sums in float64.
    """
    n_bins = ptr.shape[0] - 1
    d = colors.shape[1]
    alpha_min = limits[0]
    alpha_max = limits[1]
    used_pairs = np.zeros(n_bins, np.int64)
    for t in _prange(n_bins):
        start = ptr[t]
        end = ptr[t + 1]
        if start == end:
            continue
        px_lo = (t % bins_x) * bin_size
        py_lo = (t // bins_x) * bin_size
        px_hi = min(px_lo + bin_size, width)
        py_hi = min(py_lo + bin_size, height)
        bw = px_hi - px_lo
        npx = bw * (py_hi - py_lo)
        trans = np.ones(npx)
        acc = np.zeros((npx, d))
        last = np.full(npx, start, np.int64)
        alive = npx
        count = 0
        for k in range(start, end):
            g = ids[k]
            gx0 = max(boxes[g, 0], px_lo)
            gx1 = min(boxes[g, 1], px_hi)
            gy0 = max(boxes[g, 2], py_lo)
            gy1 = min(boxes[g, 3], py_hi)
            mx = params[g, _MX]
            my = params[g, _MY]
            ha = params[g, _HALF_A]
            b = params[g, _B]
            hc = params[g, _HALF_C]
            op = params[g, _OP]
            sigma_max = params[g, _SIGMA_MAX]
            for py in range(gy0, gy1):
                dy = my - centres[py]
                row = (py - py_lo) * bw - px_lo
                for px in range(gx0, gx1):
                    p = row + px
                    if trans[p] < 0.0:  # this pixel has stopped
                        continue
                    dx = mx - centres[px]
                    sigma = ha * dx * dx + hc * dy * dy + b * dx * dy
                    if sigma < 0.0 or sigma > sigma_max:  # sigma_max: alpha surely below 1/255
                        continue
                    alpha = min(alpha_max, op * np.exp(-sigma))
                    if alpha < alpha_min:
                        continue
                    next_t = trans[p] * (1.0 - alpha)
                    if next_t <= t_min:
                        trans[p] = -trans[p]  # stopped: the sign is the flag, the value is kept
                        alive -= 1
                        continue
                    w = alpha * trans[p]
                    for j in range(d):
                        acc[p, j] += w * colors[g, j]
                    trans[p] = next_t
                    last[p] = k + 1
                    count += 1
            if alive == 0:
                break
        for py in range(py_lo, py_hi):
            for px in range(px_lo, px_hi):
                p = (py - py_lo) * bw + px - px_lo
                pix = py * width + px
                for j in range(d):
                    out[pix, j] = acc[p, j]
                t_final[pix] = abs(trans[p])
                stop[pix] = last[p]
        used_pairs[t] = count
    return used_pairs.sum()


@_jit(parallel=True)
def _backward_kernel(
    ptr, ids, boxes, params, colors, centres, limits, width, height, bin_size, bins_x, t_final, stop, v_out, v_t,
    n_workers,
):  # pragma: no cover - compiled
    """Back-to-front gradients. Returns per-worker sums: geo [W, Nv, 8], v_colors [W, Nv, D] (float64).

    geo columns: d/d mean2d (x, y), d/d conic (a, b, c), d/d opacity, and the sum over pixels of
    |per-pixel d/d mean2d| (x, y), gsplat's absgrad. A Gaussian's sums over a bin's pixels are
    gathered in registers and written once.
    """
    n_bins = ptr.shape[0] - 1
    nv = colors.shape[0]
    d = colors.shape[1]
    alpha_min = limits[0]
    alpha_max = limits[1]
    geo = np.zeros((n_workers, nv, 8))
    v_col = np.zeros((n_workers, nv, d))
    for w_id in _prange(n_workers):
        trans = np.empty(bin_size * bin_size)
        behind = np.empty(bin_size * bin_size)
        stp = np.empty(bin_size * bin_size, np.int64)
        vc = np.empty(d)
        for t in range(w_id, n_bins, n_workers):
            start = ptr[t]
            if start == ptr[t + 1]:
                continue
            px_lo = (t % bins_x) * bin_size
            py_lo = (t // bins_x) * bin_size
            px_hi = min(px_lo + bin_size, width)
            py_hi = min(py_lo + bin_size, height)
            bw = px_hi - px_lo
            k_end = start
            for py in range(py_lo, py_hi):
                for px in range(px_lo, px_hi):
                    p = (py - py_lo) * bw + px - px_lo
                    pix = py * width + px
                    trans[p] = t_final[pix]
                    # everything behind the current pair: later pairs plus the background path
                    behind[p] = v_t[pix] * t_final[pix]
                    stp[p] = stop[pix]
                    k_end = max(k_end, stop[pix])
            for k in range(k_end - 1, start - 1, -1):
                g = ids[k]
                gx0 = max(boxes[g, 0], px_lo)
                gx1 = min(boxes[g, 1], px_hi)
                gy0 = max(boxes[g, 2], py_lo)
                gy1 = min(boxes[g, 3], py_hi)
                mx = params[g, _MX]
                my = params[g, _MY]
                ha = params[g, _HALF_A]
                b = params[g, _B]
                hc = params[g, _HALF_C]
                op = params[g, _OP]
                sigma_max = params[g, _SIGMA_MAX]
                g_mx = 0.0
                g_my = 0.0
                g_a = 0.0
                g_b = 0.0
                g_c = 0.0
                g_op = 0.0
                abs_x = 0.0
                abs_y = 0.0
                hit = False
                for j in range(d):
                    vc[j] = 0.0
                for py in range(gy0, gy1):
                    dy = my - centres[py]
                    row = (py - py_lo) * bw - px_lo
                    for px in range(gx0, gx1):
                        p = row + px
                        if k >= stp[p]:
                            continue
                        dx = mx - centres[px]
                        sigma = ha * dx * dx + hc * dy * dy + b * dx * dy
                        if sigma < 0.0 or sigma > sigma_max:
                            continue
                        vis = np.exp(-sigma)
                        raw = op * vis
                        alpha = min(alpha_max, raw)
                        if alpha < alpha_min:
                            continue
                        hit = True
                        pix = py * width + px
                        inv = 1.0 / (1.0 - alpha)
                        tr = trans[p] * inv  # transmittance in front of this pair
                        trans[p] = tr
                        weight = alpha * tr
                        dot = _colour_terms(colors, g, v_out, pix, vc, weight, d)
                        v_alpha = tr * dot - behind[p] * inv
                        behind[p] += weight * dot
                        if raw < alpha_max:  # the clamp passes no gradient, as in gsplat
                            v_sigma = -alpha * v_alpha
                            gx = v_sigma * (2.0 * ha * dx + b * dy)
                            gy = v_sigma * (b * dx + 2.0 * hc * dy)
                            g_mx += gx
                            g_my += gy
                            g_a += v_sigma * 0.5 * dx * dx
                            g_b += v_sigma * dx * dy
                            g_c += v_sigma * 0.5 * dy * dy
                            g_op += vis * v_alpha
                            abs_x += abs(gx)
                            abs_y += abs(gy)
                if hit:
                    geo[w_id, g, 0] += g_mx
                    geo[w_id, g, 1] += g_my
                    geo[w_id, g, 2] += g_a
                    geo[w_id, g, 3] += g_b
                    geo[w_id, g, 4] += g_c
                    geo[w_id, g, 5] += g_op
                    geo[w_id, g, 6] += abs_x
                    geo[w_id, g, 7] += abs_y
                    for j in range(d):
                        v_col[w_id, g, j] += vc[j]
    return geo, v_col


@dataclass
class TilePlan:
    """One camera's bins: per-bin Gaussian lists and the per-Gaussian pixel boxes the kernels share."""

    ptr: np.ndarray  # [B + 1] int64 CSR offsets per bin
    ids: np.ndarray  # [M] int32 Gaussian indices, depth order within a bin
    boxes: np.ndarray  # [Nv, 4] int64 pixel boxes (x0, x1, y0, y1), inclusive-exclusive
    width: int
    height: int
    bins_x: int
    n_pairs: int = 0


def _workers() -> int:
    """Threads for one launch: torch's setting (OMP_NUM_THREADS), capped by numba's pool size."""
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def _f64(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).contiguous().numpy()


class _CompositeTiles(torch.autograd.Function):
    """Compiled compositing of one camera's depth-sorted visible Gaussians; hand-written backward.

    The kernels run in float64 on float64 copies (one compiled signature for every input dtype);
    outputs and gradients come back in the inputs' dtype.
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, plan: TilePlan, absgrad_sink):
        hw = plan.width * plan.height
        dtype = colors.dtype
        kdtype = torch.float32 if dtype == torch.float32 else torch.float64
        with torch.no_grad():
            op = opacities.detach()
            # log(255 op) + slack: beyond it alpha < 1/255 whatever the rounding, so exp is skipped
            sigma_max = torch.log(op.double().clamp_min(1e-30) * 255.0) + 1e-4
            params = torch.stack(
                [means2d[:, 0], means2d[:, 1], 0.5 * conics[:, 0], conics[:, 1], 0.5 * conics[:, 2], op,
                 sigma_max.to(op.dtype)], 1,
            ).to(kdtype).contiguous().numpy()
        col = _f64(colors)
        np_dtype = params.dtype
        centres = np.arange(max(plan.width, plan.height), dtype=np_dtype) + np_dtype.type(0.5)
        limits = np.array([ALPHA_THRESHOLD, MAX_ALPHA], dtype=np_dtype)
        out = np.zeros((hw, col.shape[1]))
        t_final = np.ones(hw)
        stop = np.zeros(hw, np.int64)
        with _LAUNCH_LOCK:
            numba.set_num_threads(_workers())
            plan.n_pairs = int(
                _forward_kernel(
                    plan.ptr, plan.ids, plan.boxes, params, col, centres, limits, plan.width, plan.height, BIN_SIZE,
                    plan.bins_x, TRANSMITTANCE_MIN, out, t_final, stop,
                )
            )
        ctx.plan = plan
        ctx.arrays = (params, col, centres, limits, t_final, stop)
        ctx.absgrad_sink = absgrad_sink
        ctx.dtype = dtype
        return torch.from_numpy(out).to(dtype), torch.from_numpy(t_final).to(dtype)

    @staticmethod
    def backward(ctx, v_out: Optional[Tensor], v_t_final: Optional[Tensor]):
        plan: TilePlan = ctx.plan
        params, col, centres, limits, t_final, stop = ctx.arrays
        hw = plan.width * plan.height
        vo = np.zeros((hw, col.shape[1])) if v_out is None else _f64(v_out)
        vt = np.zeros(hw) if v_t_final is None else _f64(v_t_final).reshape(hw)
        with _LAUNCH_LOCK:
            workers = _workers()
            numba.set_num_threads(workers)
            geo, v_col = _backward_kernel(
                plan.ptr, plan.ids, plan.boxes, params, col, centres, limits, plan.width, plan.height, BIN_SIZE,
                plan.bins_x, t_final, stop, vo, vt, workers,
            )
        geo_t = torch.from_numpy(geo.sum(0) if workers > 1 else geo[0]).to(ctx.dtype)
        v_colors = torch.from_numpy(v_col.sum(0) if workers > 1 else v_col[0]).to(ctx.dtype)
        if ctx.absgrad_sink is not None:
            sink, index = ctx.absgrad_sink
            sink.index_add_(0, index, geo_t[:, 6:8].to(sink.dtype))
        return geo_t[:, 0:2], geo_t[:, 2:5], geo_t[:, 5], v_colors, None, None


def composite_camera_compiled(
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
    """Composite one camera front to back with the compiled kernels (same contract as ``composite_camera``).

    Args:
        means2d: [N, 2] projected centres.
        conics: [N, 3] inverse 2D covariances.
        opacities: [N] effective opacities.
        colors: [N, D] per-Gaussian features, any D.
        radii: [N] int gsplat radii; 0 marks culled Gaussians.
        depths: [N] camera-space z, the sort key.
        width, height: image size.
        tile_size: gsplat tile size; also the compiled kernels' work unit.
        absgrad_sink: optional [N, 2] tensor the backward adds per-pixel absolute ``means2d`` gradients to.

    Returns:
        colors: [H, W, D] without background; transmittance: [H, W, 1]; number of pairs composited
        (those before each pixel's early stop).
    """
    if means2d.device.type != "cpu":
        raise ValueError(f"the compiled backend runs on CPU tensors only (got {means2d.device})")
    d = colors.shape[-1]
    sorted_set = sorted_visible(means2d, conics, opacities, colors, radii, depths, width, height, tile_size)
    if sorted_set is None:
        return _empty(means2d, conics, opacities, colors, width, height)
    order, m2, cn, op, col, boxes = sorted_set
    boxes = torch.stack(boxes, 1).numpy()
    bins_x = -(-width // BIN_SIZE)
    n_bins = bins_x * -(-height // BIN_SIZE)
    ptr, ids = _bin_tiles(boxes, BIN_SIZE, bins_x, n_bins)
    plan = TilePlan(ptr, ids, boxes, width, height, bins_x)
    sink = None if absgrad_sink is None else (absgrad_sink, order)
    out, t_final = _CompositeTiles.apply(m2, cn, op, col, plan, sink)
    if plan.n_pairs == 0:
        return _empty(means2d, conics, opacities, colors, width, height)
    return out.reshape(height, width, d), t_final.reshape(height, width, 1), plan.n_pairs
