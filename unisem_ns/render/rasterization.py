"""One entry point for splatting: gsplat on CUDA tensors, compiled CPU kernels on CPU, pure PyTorch elsewhere."""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Dict, Literal, Optional, Tuple

import torch
from torch import Tensor

from .compiled import NUMBA_AVAILABLE, composite_camera_compiled
from .compiled_projection import project_gaussians_compiled
from .compiled_sh import MAX_COMPILED_DEGREE, sh_colors_compiled
from .composite import composite_camera
from .dense import composite_dense
from .projection import project_gaussians, spherical_harmonics

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
RasterizeMode = Literal["classic", "antialiased"]
Backend = Literal["auto", "gsplat", "numba", "torch", "dense"]
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


@functools.lru_cache(maxsize=None)
def gsplat_version() -> Optional[Tuple[int, int]]:
    """(major, minor) of the installed gsplat, or None. Reads package metadata only (no CUDA work)."""
    try:
        major, minor = metadata.version("gsplat").split(".")[:2]
        return int(major), int(minor)
    except (metadata.PackageNotFoundError, ValueError):
        return None


def select_backend(device: torch.device, backend: Backend = "auto") -> str:
    """Pick the backend once, from the tensors' device (never by trying gsplat and catching).

    gsplat has no CPU kernels, and on a machine with nvcc but no GPU its first op starts a JIT build
    that fails; so CPU tensors never go to gsplat. ``auto`` sends them to the compiled (numba) tile
    kernels, and tensors on any other device to the sparse PyTorch backend.
    """
    if backend in ("torch", "dense"):
        return backend
    if backend == "numba":
        if device.type != "cpu" or not NUMBA_AVAILABLE:
            raise ValueError(
                f"backend='numba' needs CPU tensors and numba installed (got device {device}); "
                "use backend='auto' or 'torch'."
            )
        return "numba"
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    if backend == "gsplat":
        if not on_cuda:
            raise ValueError(
                f"backend='gsplat' needs CUDA tensors and a visible GPU (got device {device}); "
                "use backend='auto' or 'torch' on CPU."
            )
        return "gsplat"
    if backend != "auto":
        raise ValueError(f"unknown backend {backend!r}; choose 'auto', 'gsplat', 'numba', 'torch' or 'dense'")
    if on_cuda and gsplat_version() is not None:
        return "gsplat"
    return "numba" if device.type == "cpu" and NUMBA_AVAILABLE else "torch"


def sh_colors(means: Tensor, coeffs: Tensor, viewmats: Tensor, sh_degree: int) -> Tensor:
    """View-dependent RGB from SH coefficients, as gsplat evaluates it (``SH + 0.5``, clamped at 0).

    Args:
        means: [N, 3] Gaussian centres.
        coeffs: [N, K, 3] or [C, N, K, 3] SH coefficients.
        viewmats: [C, 4, 4] world-to-camera matrices.
        sh_degree: bands to use.

    Returns:
        [C, N, 3] colours.
    """
    c = viewmats.shape[0]
    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
    dirs = means[None] - campos[:, None]  # [C, N, 3]
    shs = coeffs if coeffs.dim() == 4 else coeffs[None].expand(c, -1, -1, -1)
    return torch.clamp_min(spherical_harmonics(sh_degree, dirs, shs) + 0.5, 0.0)


def sh_colors_split(
    means: Tensor, sh_dc: Tensor, sh_rest: Tensor, viewmats: Tensor, sh_degree: int, backend: Backend = "auto"
) -> Tensor:
    """:func:`sh_colors` for coefficients stored as two tensors, as splat models keep them.

    Args:
        means: [N, 3] Gaussian centres.
        sh_dc: [N, 3] band-0 coefficients.
        sh_rest: [N, K - 1, 3] higher bands.
        viewmats: [C, 4, 4] world-to-camera matrices.
        sh_degree: bands to use.
        backend: as in :func:`rasterization`; the numba backend evaluates degrees <= 3 in one compiled pass
            for fixed cameras, the others concatenate the coefficients and call :func:`sh_colors`.

    Returns:
        [C, N, 3] colours.
    """
    chosen = select_backend(means.device, backend)
    if chosen == "numba" and sh_degree <= MAX_COMPILED_DEGREE and not viewmats.requires_grad:
        campos = torch.linalg.inv(viewmats.detach())[:, :3, 3]
        return sh_colors_compiled(means, sh_dc, sh_rest, campos, sh_degree)
    return sh_colors(means, torch.cat([sh_dc[:, None], sh_rest], dim=1), viewmats, sh_degree)


def rasterization(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: Optional[Tensor] = None,
    render_mode: RenderMode = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: RasterizeMode = "classic",
    channel_chunk: int = 32,
    backend: Backend = "auto",
) -> Tuple[Tensor, Tensor, Dict]:
    """Rasterize 3D Gaussians into C images (the subset of ``gsplat.rasterization`` we use).

    Args:
        means: [N, 3] world-space centres.
        quats: [N, 4] rotations (w, x, y, z), need not be normalised.
        scales: [N, 3] positive scales.
        opacities: [N] opacities in [0, 1].
        colors: [N, D] or [C, N, D] features when ``sh_degree`` is None; [N, K, 3] or [C, N, K, 3]
            SH coefficients otherwise. Any D.
        viewmats: [C, 4, 4] world-to-camera matrices (OpenCV convention).
        Ks: [C, 3, 3] pinhole intrinsics.
        width, height: image size in pixels.
        near_plane, far_plane: valid depth range.
        radius_clip: cull Gaussians whose pixel radius is at or below this.
        eps2d: low-pass blur added to every 2D covariance.
        sh_degree: SH degree to evaluate, or None for plain features.
        packed: forwarded to gsplat; the torch backend always returns the unpacked [C, N] meta.
        tile_size: gsplat tile size (the torch backend reproduces gsplat's tile coverage).
        backgrounds: [C, D] background features (before depth is appended).
        render_mode: "RGB" (features), "D" (accumulated depth), "ED" (expected depth), "RGB+D", "RGB+ED".
        sparse_grad: forwarded to gsplat.
        absgrad: also accumulate ``info["means2d"].absgrad`` (used by gsplat's DefaultStrategy).
        rasterize_mode: "classic" or "antialiased" (opacity times the blur compensation).
        channel_chunk: forwarded to gsplat.
        backend: "auto" (gsplat for CUDA tensors, numba for CPU tensors, else torch), "gsplat", "numba"
            (compiled CPU tile kernels), "torch" (sparse pure-PyTorch, the reference), or "dense" (every
            pixel x every Gaussian; a slow reference for tests and benchmarks).

    Returns:
        render_colors: [C, H, W, X], X = D, 1, or D + 1 (depth last) by render mode.
        render_alphas: [C, H, W, 1].
        info: dict with at least ``radii`` ([C, N] int32 for gsplat 1.4, [C, N, 2] for gsplat >= 1.5),
            ``means2d`` [C, N, 2] (retains grad), ``depths`` [C, N], ``conics`` [C, N, 3],
            ``opacities`` [C, N], ``width``, ``height``, ``n_cameras``, ``tile_size``,
            ``gaussian_ids``/``camera_ids`` (None), ``backend`` and, for numba and torch, ``n_pairs``
            (numba counts the pairs composited before each pixel's early stop, torch every pair that
            passes the alpha test).
    """
    n = means.shape[0]
    c = viewmats.shape[0]
    _check_shapes(means, quats, scales, opacities, colors, viewmats, Ks, n, c, sh_degree, render_mode, backgrounds)
    chosen = select_backend(means.device, backend)
    if chosen == "gsplat":
        from gsplat.rendering import rasterization as gsplat_rasterization

        render, alphas, info = gsplat_rasterization(
            means=means, quats=quats, scales=scales, opacities=opacities, colors=colors, viewmats=viewmats,
            Ks=Ks, width=width, height=height, near_plane=near_plane, far_plane=far_plane,
            radius_clip=radius_clip, eps2d=eps2d, sh_degree=sh_degree, packed=packed, tile_size=tile_size,
            backgrounds=backgrounds, render_mode=render_mode, sparse_grad=sparse_grad, absgrad=absgrad,
            rasterize_mode=rasterize_mode, channel_chunk=channel_chunk,
        )
        info["backend"] = "gsplat"
        return render, alphas, info
    return _rasterize_torch(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
        radius_clip, eps2d, sh_degree, tile_size, backgrounds, render_mode, absgrad, rasterize_mode,
        compositor=chosen,
    )


def _check_shapes(means, quats, scales, opacities, colors, viewmats, Ks, n, c, sh_degree, render_mode, backgrounds):
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise ValueError(f"rasterization: {what}")

    need(means.dim() == 2 and means.shape[1] == 3, f"means must be [N, 3], got {tuple(means.shape)}")
    need(quats.shape == (n, 4), f"quats must be [N, 4] = [{n}, 4], got {tuple(quats.shape)}")
    need(scales.shape == (n, 3), f"scales must be [N, 3] = [{n}, 3], got {tuple(scales.shape)}")
    need(opacities.shape == (n,), f"opacities must be [N] = [{n}], got {tuple(opacities.shape)}")
    need(viewmats.dim() == 3 and viewmats.shape[1:] == (4, 4), f"viewmats must be [C, 4, 4], got {tuple(viewmats.shape)}")
    need(Ks.shape == (c, 3, 3), f"Ks must be [C, 3, 3] = [{c}, 3, 3], got {tuple(Ks.shape)}")
    need(render_mode in RENDER_MODES, f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if sh_degree is None:
        need(
            (colors.dim() == 2 and colors.shape[0] == n) or (colors.dim() == 3 and colors.shape[:2] == (c, n)),
            f"colors must be [N, D] or [C, N, D] without sh_degree, got {tuple(colors.shape)}",
        )
    else:
        need(
            (colors.dim() == 3 and colors.shape[0] == n and colors.shape[2] == 3)
            or (colors.dim() == 4 and colors.shape[:2] == (c, n) and colors.shape[3] == 3),
            f"colors must be [N, K, 3] or [C, N, K, 3] SH coefficients with sh_degree, got {tuple(colors.shape)}",
        )
        need((sh_degree + 1) ** 2 <= colors.shape[-2], f"sh_degree={sh_degree} needs {(sh_degree + 1) ** 2} coefficients")
    if backgrounds is not None:
        d = colors.shape[-1]
        need(backgrounds.shape == (c, d), f"backgrounds must be [C, D] = [{c}, {d}], got {tuple(backgrounds.shape)}")


def _rasterize_torch(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
    radius_clip, eps2d, sh_degree, tile_size, backgrounds, render_mode, absgrad, rasterize_mode, compositor="torch",
):
    c = viewmats.shape[0]
    if compositor == "numba" and not (viewmats.requires_grad or Ks.requires_grad):
        radii, means2d, depths, conics, comp = project_gaussians_compiled(
            means, quats, scales, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane,
            far_plane=far_plane, radius_clip=radius_clip, calc_compensations=rasterize_mode == "antialiased",
        )
    else:  # the reference, and the path that passes gradients to cameras
        radii, means2d, depths, conics, comp = project_gaussians(
            means, None, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
            radius_clip=radius_clip, calc_compensations=rasterize_mode == "antialiased", quats=quats, scales=scales,
        )
    opac = opacities[None].expand(c, -1)
    if comp is not None:
        opac = opac * comp

    if sh_degree is not None:
        feats = sh_colors(means, colors, viewmats, sh_degree)
    else:
        feats = colors if colors.dim() == 3 else colors[None].expand(c, -1, -1)

    bgs = backgrounds
    if render_mode in ("RGB+D", "RGB+ED"):
        feats = torch.cat([feats, depths[..., None]], dim=-1)
        if bgs is not None:
            bgs = torch.cat([bgs, torch.zeros_like(bgs[:, :1])], dim=-1)
    elif render_mode in ("D", "ED"):
        feats = depths[..., None]
        if bgs is not None:
            bgs = torch.zeros_like(bgs[:, :1])

    absgrad_acc = None
    if absgrad and means2d.requires_grad:
        # Filled in by the compositor's backward, like gsplat's ``means2d.absgrad``.
        absgrad_acc = torch.zeros_like(means2d.detach())
        means2d.absgrad = absgrad_acc
    renders, alphas, n_pairs = [], [], 0
    for ci in range(c):
        if compositor == "dense":
            out, t_final = composite_dense(
                means2d[ci], conics[ci], opac[ci], feats[ci], radii[ci], depths[ci], width, height, tile_size
            )
            n_ci = 0
        else:
            composite = composite_camera_compiled if compositor == "numba" else composite_camera
            out, t_final, n_ci = composite(
                means2d[ci], conics[ci], opac[ci], feats[ci], radii[ci], depths[ci], width, height, tile_size,
                absgrad_sink=None if absgrad_acc is None else absgrad_acc[ci],
            )
        if bgs is not None:
            out = out + t_final * bgs[ci]
        renders.append(out)
        alphas.append(1.0 - t_final)
        n_pairs += n_ci
    render = torch.stack(renders, 0)
    alpha = torch.stack(alphas, 0)
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alpha.clamp(min=1e-10)], dim=-1)

    v = gsplat_version()
    info_radii = radii[..., None].expand(-1, -1, 2).contiguous() if v is not None and v >= (1, 5) else radii
    info = {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": info_radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opac,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": c,
        "n_pairs": n_pairs,
        "backend": compositor,
    }
    return render, alpha, info
