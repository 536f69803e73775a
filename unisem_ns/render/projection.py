"""Pure-PyTorch EWA projection of 3D Gaussians and SH colour evaluation.

These follow gsplat 1.4's CUDA kernels (``fully_fused_projection_fwd.cu``, ``utils.cuh``,
``spherical_harmonics.cuh``) rule for rule, so that the CPU backend culls, sizes and colours
Gaussians exactly as the CUDA backend does. Everything here is differentiable through autograd.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices from (unnormalised) quaternions.

    Args:
        quats: [..., 4] in (w, x, y, z) order.

    Returns:
        [..., 3, 3] rotation matrices.
    """
    w, x, y, z = torch.unbind(torch.nn.functional.normalize(quats, dim=-1), dim=-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return rot.reshape(quats.shape[:-1] + (3, 3))


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """3D covariances ``R S S^T R^T``.

    Args:
        quats: [N, 4] (w, x, y, z), any norm.
        scales: [N, 3] post-activation (positive) scales.

    Returns:
        [N, 3, 3] symmetric covariances.
    """
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def project_gaussians(
    means: Tensor,
    covars: Optional[Tensor],
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
    quats: Optional[Tensor] = None,
    scales: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Pinhole EWA projection with gsplat's culling and 3-sigma radius rules.

    Only Gaussians in front of at least one camera (near < z < far) are projected; the others get
    radius 0 and zeros, as gsplat leaves them.

    Args:
        means: [N, 3] world-space centres.
        covars: [N, 3, 3] world-space covariances, or None to build them from ``quats`` and ``scales``.
        viewmats: [C, 4, 4] world-to-camera (OpenCV: x right, y down, z forward).
        Ks: [C, 3, 3] intrinsics.
        width, height: image size in pixels.
        eps2d: isotropic blur added to the 2D covariance (gsplat's low-pass filter).
        near_plane, far_plane: depth range; Gaussians outside get radius 0.
        radius_clip: Gaussians with a radius at or below this (pixels) are culled.
        calc_compensations: also return the antialiasing opacity compensation.
        quats: [N, 4] (w, x, y, z) rotations, when ``covars`` is None.
        scales: [N, 3] positive scales, when ``covars`` is None.

    Returns:
        radii: [C, N] int32 pixel radius, 0 where culled.
        means2d: [C, N, 2] projected centres (pixels).
        depths: [C, N] camera-space z.
        conics: [C, N, 3] upper triangle (a, b, c) of the inverse blurred 2D covariance.
        compensations: [C, N] or None.
    """
    c, n = viewmats.shape[0], means.shape[0]
    rot = viewmats[:, :3, :3]  # [C, 3, 3]
    trans = viewmats[:, None, :3, 3]  # [C, 1, 3]
    means_c = means[None] @ rot.transpose(1, 2) + trans  # [C, N, 3], one large matmul
    z_all = means_c[..., 2]
    with torch.no_grad():
        front = ((z_all >= near_plane) & (z_all <= far_plane)).any(0).nonzero().squeeze(1)
    k = front.numel()
    mc = means_c.index_select(1, front)  # [C, K, 3]
    # Half of the world-to-pixel covariance map: cov2d = (J R_v M)(J R_v M)^T with M = R_q S.
    if covars is None:
        if quats is None or scales is None:
            raise ValueError("project_gaussians needs covars or quats and scales")
        m_world = quat_to_rotmat(quats.index_select(0, front)) * scales.index_select(0, front)[:, None, :]
    else:
        m_world = None
        cov_world = covars.index_select(0, front)

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    x, y, z = torch.unbind(mc, dim=-1)  # [C, K]
    # gsplat clamps the Jacobian's x/z, y/z to 1.3x the frustum so that off-screen Gaussians
    # do not blow up in size.
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    rz = 1.0 / z
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
    zeros = torch.zeros_like(z)
    jac = torch.stack(
        [fx * rz, zeros, -fx * tx * rz * rz, zeros, fy * rz, -fy * ty * rz * rz], dim=-1
    ).reshape(z.shape + (2, 3))  # [C, K, 2, 3]
    t = jac @ rot[:, None]  # [C, K, 2, 3]
    if m_world is not None:
        tm = t @ m_world[None]  # [C, K, 2, 3]
        cov2d = tm @ tm.transpose(-1, -2)
    else:
        cov2d = t @ cov_world[None] @ t.transpose(-1, -2)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)

    a, b, cc = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det_orig = a * cc - b * b
    a = a + eps2d
    cc = cc + eps2d
    det = a * cc - b * b
    comp = torch.sqrt(torch.clamp(det_orig / det, min=0.0)) if calc_compensations else None
    valid = (z >= near_plane) & (z <= far_plane) & (det > 0)
    safe_det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([cc / safe_det, -b / safe_det, a / safe_det], dim=-1)

    with torch.no_grad():
        half_tr = 0.5 * (a + cc)
        v1 = half_tr + torch.sqrt(torch.clamp(half_tr * half_tr - det, min=0.01))
        radius = torch.ceil(3.0 * torch.sqrt(torch.clamp(v1, min=0.0)))
        mx, my = means2d[..., 0], means2d[..., 1]
        valid = (
            valid
            & (radius > radius_clip)
            & (mx + radius > 0)
            & (mx - radius < width)
            & (my + radius > 0)
            & (my - radius < height)
        )
        radii = torch.zeros(c, n, dtype=torch.int32, device=means.device)
        radii[:, front] = torch.where(valid, radius, torch.zeros_like(radius)).to(torch.int32)

    def scatter(sub: Tensor) -> Tensor:
        if k == n:
            return sub
        full = sub.new_zeros((c, n) + tuple(sub.shape[2:]))
        return full.index_copy(1, front, sub)

    depths = z_all  # depth is defined (and cheap) for every Gaussian
    return (
        radii,
        scatter(means2d),
        depths,
        scatter(conics),
        scatter(comp) if comp is not None else None,
    )


# Real SH basis constants (same values as gsplat / the 3DGS reference).
_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)
_C4 = (
    2.5033429417967046, -1.7701307697799304, 0.9461746957575601, -0.6690465435572892,
    0.10578554691520431, -0.6690465435572892, 0.47308734787878004, -1.7701307697799304,
    0.6258357354491761,
)


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real spherical-harmonic basis up to ``degree`` (<= 4).

    Args:
        degree: highest band used.
        dirs: [..., 3] directions (any norm; normalised here).

    Returns:
        [..., (degree + 1) ** 2] basis values.
    """
    if not 0 <= degree <= 4:
        raise ValueError(f"sh_degree must be in 0..4, got {degree}")
    x, y, z = torch.unbind(torch.nn.functional.normalize(dirs, dim=-1), dim=-1)
    out = [torch.full_like(x, _C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            _C2[0] * xy, _C2[1] * yz, _C2[2] * (2 * zz - xx - yy), _C2[3] * xz, _C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            _C3[0] * y * (3 * xx - yy), _C3[1] * xy * z, _C3[2] * y * (4 * zz - xx - yy),
            _C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _C3[4] * x * (4 * zz - xx - yy),
            _C3[5] * z * (xx - yy), _C3[6] * x * (xx - 3 * yy),
        ]
    if degree >= 4:
        out += [
            _C4[0] * xy * (xx - yy), _C4[1] * yz * (3 * xx - yy), _C4[2] * xy * (7 * zz - 1),
            _C4[3] * yz * (7 * zz - 3), _C4[4] * (zz * (35 * zz - 30) + 3),
            _C4[5] * xz * (7 * zz - 3), _C4[6] * (xx - yy) * (7 * zz - 1),
            _C4[7] * xz * (xx - 3 * yy), _C4[8] * (xx * (xx - 3 * yy) - yy * (3 * xx - yy)),
        ]
    return torch.stack(out, dim=-1)


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Evaluate SH colours.

    Args:
        degree: bands to use; only the first ``(degree + 1) ** 2`` coefficients are read.
        dirs: [..., 3] view directions (Gaussian centre minus camera centre).
        coeffs: [..., K, 3] SH coefficients, K >= (degree + 1) ** 2.

    Returns:
        [..., 3] colours, before gsplat's +0.5 offset and clamp.
    """
    k = (degree + 1) ** 2
    if coeffs.shape[-2] < k:
        raise ValueError(f"sh_degree={degree} needs {k} coefficients, got {coeffs.shape[-2]}")
    basis = sh_basis(degree, dirs)  # [..., k]
    return (basis[..., None] * coeffs[..., :k, :]).sum(dim=-2)


def opacity_extent(conics: Tensor, opacities: Tensor) -> Tuple[Tensor, Tensor]:
    """Half-size in pixels of the box outside which a Gaussian's alpha is below 1/255.

    ``op * exp(-sigma) >= 1/255`` iff ``sigma <= ln(255 op)``; the ellipse ``0.5 d^T Q d <= t`` has
    bounding half-widths ``sqrt(2 t Sigma_xx)``, ``sqrt(2 t Sigma_yy)`` with ``Sigma = Q^-1``.

    Args:
        conics: [..., 3] (a, b, c) of the inverse 2D covariance.
        opacities: [...] effective opacities.

    Returns:
        (ext_x, ext_y): [...] half-widths; zero where the Gaussian can never pass 1/255.
    """
    a, b, c = torch.unbind(conics, dim=-1)
    det = (a * c - b * b).clamp_min(1e-30)
    t = torch.log(torch.clamp(opacities * 255.0, min=1.0))
    ext_x = torch.sqrt(2.0 * t * c / det)
    ext_y = torch.sqrt(2.0 * t * a / det)
    return ext_x, ext_y


def tile_bounds(means2d: Tensor, radii: Tensor, width: int, height: int, tile_size: int = 16) -> Tuple[Tensor, ...]:
    """Pixel box of the tiles gsplat assigns each Gaussian (``isect_tiles.cu``).

    Args:
        means2d: [..., 2] projected centres.
        radii: [...] integer radii.
        width, height: image size.
        tile_size: tile edge in pixels.

    Returns:
        (x0, x1, y0, y1): [...] float pixel bounds, inclusive-exclusive, multiples of ``tile_size``.
    """
    tile_w = -(-width // tile_size)
    tile_h = -(-height // tile_size)
    r = radii.to(means2d.dtype) / tile_size
    tx = means2d[..., 0] / tile_size
    ty = means2d[..., 1] / tile_size
    x0 = torch.floor(tx - r).clamp(0, tile_w) * tile_size
    x1 = torch.ceil(tx + r).clamp(0, tile_w) * tile_size
    y0 = torch.floor(ty - r).clamp(0, tile_h) * tile_size
    y1 = torch.ceil(ty + r).clamp(0, tile_h) * tile_size
    return x0, x1, y0, y1


ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
TRANSMITTANCE_MIN = 1e-4
LOG_TRANSMITTANCE_MIN = math.log(TRANSMITTANCE_MIN)
