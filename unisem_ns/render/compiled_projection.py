"""Compiled EWA projection for CPU tensors (numba), forward and hand-written backward.

Computes exactly what :func:`unisem_ns.render.projection.project_gaussians` computes (gsplat's
``fully_fused_projection`` rules: Jacobian clamped to 1.3x the frustum, ``eps2d`` blur, 3-sigma radius,
near/far and on-screen culling, optional antialiasing compensation) in one pass per Gaussian and camera,
and its vector-Jacobian product by hand (gsplat's ``fully_fused_projection_bwd``), so autograd sees one
node instead of a few hundred small tensor ops. Arithmetic is float64 inside the kernels.

It covers the case the trainers use: quaternions and scales (no explicit covariances) and fixed
cameras. With ``viewmats`` or ``Ks`` that require grad, :mod:`rasterization` keeps the PyTorch projection.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .compiled import _LAUNCH_LOCK, NUMBA_AVAILABLE, _f64, _jit, _prange, _workers

if NUMBA_AVAILABLE:
    import numba


@_jit(parallel=False)
def _rotmat(w, x, y, z):  # pragma: no cover - compiled
    return (
        1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y),
        2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x),
        2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y),
    )


@_jit(parallel=True)
def _project_fwd(
    means, quats, scales, viewmats, ks, width, height, eps2d, near, far, radius_clip, front,
    radii, means2d, depths, conics, comps,
):  # pragma: no cover - compiled
    """Fills radii [C, N], means2d [C, N, 2], depths [C, N], conics [C, N, 3], comps [C, N]."""
    c_count = viewmats.shape[0]
    n = means.shape[0]
    for g in _prange(n):
        for ci in range(c_count):
            rv = viewmats[ci]
            z = rv[2, 0] * means[g, 0] + rv[2, 1] * means[g, 1] + rv[2, 2] * means[g, 2] + rv[2, 3]
            depths[ci, g] = z
        if not front[g]:
            continue
        qn = np.sqrt(quats[g, 0] ** 2 + quats[g, 1] ** 2 + quats[g, 2] ** 2 + quats[g, 3] ** 2)
        qn = max(qn, 1e-12)
        r00, r01, r02, r10, r11, r12, r20, r21, r22 = _rotmat(
            quats[g, 0] / qn, quats[g, 1] / qn, quats[g, 2] / qn, quats[g, 3] / qn
        )
        s0 = scales[g, 0]
        s1 = scales[g, 1]
        s2 = scales[g, 2]
        # M = R_q S, columns scaled
        m00, m01, m02 = r00 * s0, r01 * s1, r02 * s2
        m10, m11, m12 = r10 * s0, r11 * s1, r12 * s2
        m20, m21, m22 = r20 * s0, r21 * s1, r22 * s2
        for ci in range(c_count):
            rv = viewmats[ci]
            x = rv[0, 0] * means[g, 0] + rv[0, 1] * means[g, 1] + rv[0, 2] * means[g, 2] + rv[0, 3]
            y = rv[1, 0] * means[g, 0] + rv[1, 1] * means[g, 1] + rv[1, 2] * means[g, 2] + rv[1, 3]
            z = depths[ci, g]
            fx = ks[ci, 0, 0]
            fy = ks[ci, 1, 1]
            cx = ks[ci, 0, 2]
            cy = ks[ci, 1, 2]
            tan_x = 0.5 * width / fx
            tan_y = 0.5 * height / fy
            lim_xp = (width - cx) / fx + 0.3 * tan_x
            lim_xn = cx / fx + 0.3 * tan_x
            lim_yp = (height - cy) / fy + 0.3 * tan_y
            lim_yn = cy / fy + 0.3 * tan_y
            rz = 1.0 / z
            u = min(lim_xp, max(-lim_xn, x * rz))
            v = min(lim_yp, max(-lim_yn, y * rz))
            j00 = fx * rz
            j02 = -fx * u * rz
            j11 = fy * rz
            j12 = -fy * v * rz
            # T = J R_v (2 x 3)
            t00 = j00 * rv[0, 0] + j02 * rv[2, 0]
            t01 = j00 * rv[0, 1] + j02 * rv[2, 1]
            t02 = j00 * rv[0, 2] + j02 * rv[2, 2]
            t10 = j11 * rv[1, 0] + j12 * rv[2, 0]
            t11 = j11 * rv[1, 1] + j12 * rv[2, 1]
            t12 = j11 * rv[1, 2] + j12 * rv[2, 2]
            # TM = T M (2 x 3)
            a0 = t00 * m00 + t01 * m10 + t02 * m20
            a1 = t00 * m01 + t01 * m11 + t02 * m21
            a2 = t00 * m02 + t01 * m12 + t02 * m22
            b0 = t10 * m00 + t11 * m10 + t12 * m20
            b1 = t10 * m01 + t11 * m11 + t12 * m21
            b2 = t10 * m02 + t11 * m12 + t12 * m22
            c00 = a0 * a0 + a1 * a1 + a2 * a2
            c01 = a0 * b0 + a1 * b1 + a2 * b2
            c11 = b0 * b0 + b1 * b1 + b2 * b2
            mx = fx * x * rz + cx
            my = fy * y * rz + cy
            means2d[ci, g, 0] = mx
            means2d[ci, g, 1] = my
            det_orig = c00 * c11 - c01 * c01
            a = c00 + eps2d
            cc = c11 + eps2d
            det = a * cc - c01 * c01
            comps[ci, g] = np.sqrt(max(det_orig / det, 0.0))
            valid = z >= near and z <= far and det > 0.0
            sdet = det if valid else 1.0
            conics[ci, g, 0] = cc / sdet
            conics[ci, g, 1] = -c01 / sdet
            conics[ci, g, 2] = a / sdet
            half_tr = 0.5 * (a + cc)
            v1 = half_tr + np.sqrt(max(half_tr * half_tr - det, 0.01))
            radius = np.ceil(3.0 * np.sqrt(max(v1, 0.0)))
            valid = (
                valid and radius > radius_clip and mx + radius > 0 and mx - radius < width
                and my + radius > 0 and my - radius < height
            )
            radii[ci, g] = np.int32(radius) if valid else 0


@_jit(parallel=True)
def _project_bwd(
    means, quats, scales, viewmats, ks, width, height, eps2d, near, far, front, v_means2d, v_depths, v_conics,
    v_comps, v_means, v_quats, v_scales,
):  # pragma: no cover - compiled
    """Accumulates d/d means [N, 3], d/d quats [N, 4], d/d scales [N, 3] over the cameras."""
    c_count = viewmats.shape[0]
    n = means.shape[0]
    for g in _prange(n):
        # depth is z for every Gaussian, projected or not
        for ci in range(c_count):
            vz = v_depths[ci, g]
            v_means[g, 0] += viewmats[ci, 2, 0] * vz
            v_means[g, 1] += viewmats[ci, 2, 1] * vz
            v_means[g, 2] += viewmats[ci, 2, 2] * vz
        if not front[g]:
            continue
        qn = np.sqrt(quats[g, 0] ** 2 + quats[g, 1] ** 2 + quats[g, 2] ** 2 + quats[g, 3] ** 2)
        qn = max(qn, 1e-12)
        qw = quats[g, 0] / qn
        qx = quats[g, 1] / qn
        qy = quats[g, 2] / qn
        qz = quats[g, 3] / qn
        r00, r01, r02, r10, r11, r12, r20, r21, r22 = _rotmat(qw, qx, qy, qz)
        s0 = scales[g, 0]
        s1 = scales[g, 1]
        s2 = scales[g, 2]
        m00, m01, m02 = r00 * s0, r01 * s1, r02 * s2
        m10, m11, m12 = r10 * s0, r11 * s1, r12 * s2
        m20, m21, m22 = r20 * s0, r21 * s1, r22 * s2
        # gradient w.r.t. M summed over cameras
        vm00 = vm01 = vm02 = vm10 = vm11 = vm12 = vm20 = vm21 = vm22 = 0.0
        for ci in range(c_count):
            rv = viewmats[ci]
            x = rv[0, 0] * means[g, 0] + rv[0, 1] * means[g, 1] + rv[0, 2] * means[g, 2] + rv[0, 3]
            y = rv[1, 0] * means[g, 0] + rv[1, 1] * means[g, 1] + rv[1, 2] * means[g, 2] + rv[1, 3]
            z = rv[2, 0] * means[g, 0] + rv[2, 1] * means[g, 1] + rv[2, 2] * means[g, 2] + rv[2, 3]
            fx = ks[ci, 0, 0]
            fy = ks[ci, 1, 1]
            cx = ks[ci, 0, 2]
            cy = ks[ci, 1, 2]
            tan_x = 0.5 * width / fx
            tan_y = 0.5 * height / fy
            lim_xp = (width - cx) / fx + 0.3 * tan_x
            lim_xn = cx / fx + 0.3 * tan_x
            lim_yp = (height - cy) / fy + 0.3 * tan_y
            lim_yn = cy / fy + 0.3 * tan_y
            rz = 1.0 / z
            xr = x * rz
            yr = y * rz
            u = min(lim_xp, max(-lim_xn, xr))
            v = min(lim_yp, max(-lim_yn, yr))
            j00 = fx * rz
            j02 = -fx * u * rz
            j11 = fy * rz
            j12 = -fy * v * rz
            t00 = j00 * rv[0, 0] + j02 * rv[2, 0]
            t01 = j00 * rv[0, 1] + j02 * rv[2, 1]
            t02 = j00 * rv[0, 2] + j02 * rv[2, 2]
            t10 = j11 * rv[1, 0] + j12 * rv[2, 0]
            t11 = j11 * rv[1, 1] + j12 * rv[2, 1]
            t12 = j11 * rv[1, 2] + j12 * rv[2, 2]
            a0 = t00 * m00 + t01 * m10 + t02 * m20
            a1 = t00 * m01 + t01 * m11 + t02 * m21
            a2 = t00 * m02 + t01 * m12 + t02 * m22
            b0 = t10 * m00 + t11 * m10 + t12 * m20
            b1 = t10 * m01 + t11 * m11 + t12 * m21
            b2 = t10 * m02 + t11 * m12 + t12 * m22
            c00 = a0 * a0 + a1 * a1 + a2 * a2
            c01 = a0 * b0 + a1 * b1 + a2 * b2
            c11 = b0 * b0 + b1 * b1 + b2 * b2
            det_orig = c00 * c11 - c01 * c01
            a = c00 + eps2d
            cc = c11 + eps2d
            det = a * cc - c01 * c01
            valid = z >= near and z <= far and det > 0.0

            # conic -> blurred covariance (a, b = c01, cc)
            vca = v_conics[ci, g, 0]
            vcb = v_conics[ci, g, 1]
            vcc = v_conics[ci, g, 2]
            if valid:
                q00 = cc / det
                q01 = -c01 / det
                q11 = a / det
                # dL/dSigma = -Q G Q with G = [[vca, vcb/2], [vcb/2, vcc]]
                g01 = 0.5 * vcb
                p00 = q00 * vca + q01 * g01
                p01 = q00 * g01 + q01 * vcc
                p10 = q01 * vca + q11 * g01
                p11 = q01 * g01 + q11 * vcc
                v_a = -(p00 * q00 + p01 * q01)
                v_b = -2.0 * (p00 * q01 + p01 * q11)
                v_cc = -(p10 * q01 + p11 * q11)
            else:  # conic = (cc, -b, a) with the unit determinant torch uses for invalid ones
                v_a = vcc
                v_b = -vcb
                v_cc = vca
            # antialiasing compensation sqrt(det_orig / det)
            ratio = det_orig / det
            vcomp = v_comps[ci, g]
            if vcomp != 0.0 and ratio > 0.0:
                d_ratio = vcomp * 0.5 / np.sqrt(ratio)
                inv_det2 = 1.0 / (det * det)
                v_a += d_ratio * (c11 * det - det_orig * cc) * inv_det2
                v_cc += d_ratio * (c00 * det - det_orig * a) * inv_det2
                v_b += d_ratio * (-2.0 * c01 * det + 2.0 * c01 * det_orig) * inv_det2
            # cov = TM TM^T
            va0 = 2.0 * v_a * a0 + v_b * b0
            va1 = 2.0 * v_a * a1 + v_b * b1
            va2 = 2.0 * v_a * a2 + v_b * b2
            vb0 = 2.0 * v_cc * b0 + v_b * a0
            vb1 = 2.0 * v_cc * b1 + v_b * a1
            vb2 = 2.0 * v_cc * b2 + v_b * a2
            # TM = T M: dM += T^T dTM, dT = dTM M^T
            vm00 += t00 * va0 + t10 * vb0
            vm01 += t00 * va1 + t10 * vb1
            vm02 += t00 * va2 + t10 * vb2
            vm10 += t01 * va0 + t11 * vb0
            vm11 += t01 * va1 + t11 * vb1
            vm12 += t01 * va2 + t11 * vb2
            vm20 += t02 * va0 + t12 * vb0
            vm21 += t02 * va1 + t12 * vb1
            vm22 += t02 * va2 + t12 * vb2
            vt00 = va0 * m00 + va1 * m01 + va2 * m02
            vt01 = va0 * m10 + va1 * m11 + va2 * m12
            vt02 = va0 * m20 + va1 * m21 + va2 * m22
            vt10 = vb0 * m00 + vb1 * m01 + vb2 * m02
            vt11 = vb0 * m10 + vb1 * m11 + vb2 * m12
            vt12 = vb0 * m20 + vb1 * m21 + vb2 * m22
            # T = J R_v: dJ = dT R_v^T (only J's non-zero entries matter)
            vj00 = vt00 * rv[0, 0] + vt01 * rv[0, 1] + vt02 * rv[0, 2]
            vj02 = vt00 * rv[2, 0] + vt01 * rv[2, 1] + vt02 * rv[2, 2]
            vj11 = vt10 * rv[1, 0] + vt11 * rv[1, 1] + vt12 * rv[1, 2]
            vj12 = vt10 * rv[2, 0] + vt11 * rv[2, 1] + vt12 * rv[2, 2]
            rz2 = rz * rz
            # J00 = fx / z, J11 = fy / z
            vx = 0.0
            vy = 0.0
            vz = -(vj00 * fx + vj11 * fy) * rz2
            # J02 = -fx u / z with u = clamp(x / z): through x and z when not clamped, z only when clamped
            if xr == u:
                vx += -vj02 * fx * rz2
                vz += vj02 * 2.0 * fx * x * rz2 * rz
            else:
                vz += vj02 * fx * u * rz2
            if yr == v:
                vy += -vj12 * fy * rz2
                vz += vj12 * 2.0 * fy * y * rz2 * rz
            else:
                vz += vj12 * fy * v * rz2
            # means2d = (fx x / z + cx, fy y / z + cy)
            vmx = v_means2d[ci, g, 0]
            vmy = v_means2d[ci, g, 1]
            vx += vmx * fx * rz
            vy += vmy * fy * rz
            vz += -(vmx * fx * x + vmy * fy * y) * rz2
            # camera -> world: d means = R_v^T d(x, y, z)
            v_means[g, 0] += rv[0, 0] * vx + rv[1, 0] * vy + rv[2, 0] * vz
            v_means[g, 1] += rv[0, 1] * vx + rv[1, 1] * vy + rv[2, 1] * vz
            v_means[g, 2] += rv[0, 2] * vx + rv[1, 2] * vy + rv[2, 2] * vz
        # M = R_q diag(s)
        v_scales[g, 0] = vm00 * r00 + vm10 * r10 + vm20 * r20
        v_scales[g, 1] = vm01 * r01 + vm11 * r11 + vm21 * r21
        v_scales[g, 2] = vm02 * r02 + vm12 * r12 + vm22 * r22
        w00, w01, w02 = vm00 * s0, vm01 * s1, vm02 * s2
        w10, w11, w12 = vm10 * s0, vm11 * s1, vm12 * s2
        w20, w21, w22 = vm20 * s0, vm21 * s1, vm22 * s2
        gw = 2.0 * (-qz * w01 + qy * w02 + qz * w10 - qx * w12 - qy * w20 + qx * w21)
        gx = 2.0 * (qy * w01 + qz * w02 + qy * w10 - 2.0 * qx * w11 - qw * w12 + qz * w20 + qw * w21 - 2.0 * qx * w22)
        gy = 2.0 * (-2.0 * qy * w00 + qx * w01 + qw * w02 + qx * w10 + qz * w12 - qw * w20 + qz * w21 - 2.0 * qy * w22)
        gz = 2.0 * (-2.0 * qz * w00 - qw * w01 + qx * w02 + qw * w10 - 2.0 * qz * w11 + qy * w12 + qx * w20 + qy * w21)
        # through the normalisation q / |q|
        dot = gw * qw + gx * qx + gy * qy + gz * qz
        v_quats[g, 0] = (gw - dot * qw) / qn
        v_quats[g, 1] = (gx - dot * qx) / qn
        v_quats[g, 2] = (gy - dot * qy) / qn
        v_quats[g, 3] = (gz - dot * qz) / qn


class _ProjectGaussians(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, viewmats, ks, width, height, eps2d, near, far, radius_clip):
        c, n = viewmats.shape[0], means.shape[0]
        arrays = (_f64(means), _f64(quats), _f64(scales), _f64(viewmats), _f64(ks))
        m, _q, _s, vm, _k = arrays
        z = np.einsum("cj,nj->cn", vm[:, 2, :3], m) + vm[:, 2, 3][:, None]
        front = ((z >= near) & (z <= far)).any(0)
        radii = np.zeros((c, n), np.int32)
        means2d = np.zeros((c, n, 2))
        depths = np.zeros((c, n))
        conics = np.zeros((c, n, 3))
        comps = np.zeros((c, n))
        with _LAUNCH_LOCK:
            numba.set_num_threads(_workers())
            _project_fwd(*arrays, width, height, eps2d, near, far, radius_clip, front, radii, means2d, depths, conics, comps)
        ctx.arrays = arrays
        ctx.front = front
        ctx.consts = (width, height, eps2d, near, far)
        ctx.dtype = means.dtype
        dt = means.dtype
        radii_t = torch.from_numpy(radii)
        ctx.mark_non_differentiable(radii_t)
        return (radii_t, torch.from_numpy(means2d).to(dt), torch.from_numpy(depths).to(dt),
                torch.from_numpy(conics).to(dt), torch.from_numpy(comps).to(dt))

    @staticmethod
    def backward(ctx, _v_radii, v_means2d, v_depths, v_conics, v_comps):
        c, n = ctx.arrays[3].shape[0], ctx.arrays[0].shape[0]

        def arr(t, shape):
            return np.zeros(shape) if t is None else _f64(t)

        v_means = np.zeros((n, 3))
        v_quats = np.zeros((n, 4))
        v_scales = np.zeros((n, 3))
        with _LAUNCH_LOCK:
            numba.set_num_threads(_workers())
            _project_bwd(
                *ctx.arrays, *ctx.consts, ctx.front, arr(v_means2d, (c, n, 2)), arr(v_depths, (c, n)),
                arr(v_conics, (c, n, 3)), arr(v_comps, (c, n)), v_means, v_quats, v_scales,
            )
        dt = ctx.dtype
        return (torch.from_numpy(v_means).to(dt), torch.from_numpy(v_quats).to(dt), torch.from_numpy(v_scales).to(dt),
                None, None, None, None, None, None, None, None)


def project_gaussians_compiled(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Same outputs as ``project_gaussians(means, None, viewmats, Ks, ..., quats=quats, scales=scales)``.

    Args:
        means: [N, 3] world-space centres; quats: [N, 4] (w, x, y, z); scales: [N, 3].
        viewmats: [C, 4, 4] world-to-camera (no grad); Ks: [C, 3, 3] (no grad).

    Returns:
        radii [C, N] int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3], compensations [C, N] or None.
    """
    radii, means2d, depths, conics, comps = _ProjectGaussians.apply(
        means, quats, scales, viewmats, Ks, int(width), int(height), float(eps2d), float(near_plane),
        float(far_plane), float(radius_clip),
    )
    return radii, means2d, depths, conics, comps if calc_compensations else None
