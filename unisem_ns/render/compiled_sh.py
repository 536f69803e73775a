"""Compiled spherical-harmonic colours for CPU tensors (numba), forward and hand-written backward.

Computes what :func:`unisem_ns.render.rasterization.sh_colors` computes (gsplat's ``SH + 0.5``, clamped at
0, for directions from each camera centre to each Gaussian) without concatenating the DC and rest
coefficients: a splat model stores them as two parameters, and the concatenation, the band slice and
their backward (a zero-filled [C, N, K, 3] gradient, then a copy into each parameter's gradient) cost
several times the SH arithmetic itself once a scene has a few hundred thousand Gaussians. Here one
pass per Gaussian reads both parameters and the backward writes their gradients directly.

Degrees 0-3 (what splat models train with); the kernels read the inputs' dtype and compute in float64.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .compiled import _LAUNCH_LOCK, NUMBA_AVAILABLE, _jit, _prange, _workers
from .projection import _C0, _C1, _C2, _C3

if NUMBA_AVAILABLE:
    import numba

MAX_COMPILED_DEGREE = 3
_A0, _A1, _A2, _A3 = _C0, _C1, np.array(_C2), np.array(_C3)
_CHUNK = 1024  # Gaussians per parallel work item


@_jit(parallel=False)
def _basis(x, y, z, degree, b):  # pragma: no cover - compiled
    """The (degree + 1)^2 real SH basis values at the unit direction (x, y, z), into ``b``."""
    b[0] = _A0
    if degree >= 1:
        b[1] = -_A1 * y
        b[2] = _A1 * z
        b[3] = -_A1 * x
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        b[4] = _A2[0] * x * y
        b[5] = _A2[1] * y * z
        b[6] = _A2[2] * (2.0 * zz - xx - yy)
        b[7] = _A2[3] * x * z
        b[8] = _A2[4] * (xx - yy)
        if degree >= 3:
            b[9] = _A3[0] * y * (3.0 * xx - yy)
            b[10] = _A3[1] * x * y * z
            b[11] = _A3[2] * y * (4.0 * zz - xx - yy)
            b[12] = _A3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy)
            b[13] = _A3[4] * x * (4.0 * zz - xx - yy)
            b[14] = _A3[5] * z * (xx - yy)
            b[15] = _A3[6] * x * (xx - 3.0 * yy)


@_jit(parallel=False)
def _basis_vjp(x, y, z, degree, v_b):  # pragma: no cover - compiled
    """sum_k v_b[k] * d b_k / d(x, y, z), treating x, y, z as free (the normalisation is applied after)."""
    gx = 0.0
    gy = 0.0
    gz = 0.0
    if degree >= 1:
        gy -= _A1 * v_b[1]
        gz += _A1 * v_b[2]
        gx -= _A1 * v_b[3]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        gx += _A2[0] * y * v_b[4]
        gy += _A2[0] * x * v_b[4]
        gy += _A2[1] * z * v_b[5]
        gz += _A2[1] * y * v_b[5]
        gx -= 2.0 * _A2[2] * x * v_b[6]
        gy -= 2.0 * _A2[2] * y * v_b[6]
        gz += 4.0 * _A2[2] * z * v_b[6]
        gx += _A2[3] * z * v_b[7]
        gz += _A2[3] * x * v_b[7]
        gx += 2.0 * _A2[4] * x * v_b[8]
        gy -= 2.0 * _A2[4] * y * v_b[8]
        if degree >= 3:
            gx += _A3[0] * 6.0 * x * y * v_b[9]
            gy += _A3[0] * 3.0 * (xx - yy) * v_b[9]
            gx += _A3[1] * y * z * v_b[10]
            gy += _A3[1] * x * z * v_b[10]
            gz += _A3[1] * x * y * v_b[10]
            gx -= _A3[2] * 2.0 * x * y * v_b[11]
            gy += _A3[2] * (4.0 * zz - xx - 3.0 * yy) * v_b[11]
            gz += _A3[2] * 8.0 * y * z * v_b[11]
            gx -= _A3[3] * 6.0 * x * z * v_b[12]
            gy -= _A3[3] * 6.0 * y * z * v_b[12]
            gz += _A3[3] * (6.0 * zz - 3.0 * xx - 3.0 * yy) * v_b[12]
            gx += _A3[4] * (4.0 * zz - 3.0 * xx - yy) * v_b[13]
            gy -= _A3[4] * 2.0 * x * y * v_b[13]
            gz += _A3[4] * 8.0 * x * z * v_b[13]
            gx += _A3[5] * 2.0 * x * z * v_b[14]
            gy -= _A3[5] * 2.0 * y * z * v_b[14]
            gz += _A3[5] * (xx - yy) * v_b[14]
            gx += _A3[6] * 3.0 * (xx - yy) * v_b[15]
            gy -= _A3[6] * 6.0 * x * y * v_b[15]
    return gx, gy, gz


@_jit(parallel=False)
def _unit(dx, dy, dz):  # pragma: no cover - compiled
    # F.normalize's rule: divide by max(|d|, 1e-12)
    r = max(np.sqrt(dx * dx + dy * dy + dz * dz), 1e-12)
    return dx / r, dy / r, dz / r, r


@_jit(parallel=False)
def _direction_basis(means, campos, g, c, degree, b):  # pragma: no cover - compiled
    """Basis values of Gaussian g seen from camera c, into ``b``; returns the unit direction and |d|."""
    x, y, z, r = _unit(means[g, 0] - campos[c, 0], means[g, 1] - campos[c, 1], means[g, 2] - campos[c, 2])
    _basis(x, y, z, degree, b)
    return x, y, z, r


@_jit(parallel=False)
def _sh_sum(b, dc, rest, g, j, k):  # pragma: no cover - compiled
    """Channel j of Gaussian g's SH value before the +0.5 offset and the clamp."""
    acc = b[0] * dc[g, j]
    for i in range(1, k):
        acc += b[i] * rest[g, i - 1, j]
    return acc


@_jit(parallel=True)
def _sh_fwd(means, dc, rest, campos, degree, out):  # pragma: no cover - compiled
    n = means.shape[0]
    k = (degree + 1) * (degree + 1)
    for chunk in _prange((n + _CHUNK - 1) // _CHUNK):
        b = np.empty(16)  # scratch per chunk: an allocation per Gaussian would cost more than the SH
        for g in range(chunk * _CHUNK, min(n, (chunk + 1) * _CHUNK)):
            for c in range(campos.shape[0]):
                _direction_basis(means, campos, g, c, degree, b)
                for j in range(3):
                    out[c, g, j] = max(_sh_sum(b, dc, rest, g, j, k) + 0.5, 0.0)


@_jit(parallel=True)
def _sh_bwd(means, dc, rest, campos, degree, v_out, v_means, v_dc, v_rest):  # pragma: no cover - compiled
    n = means.shape[0]
    k = (degree + 1) * (degree + 1)
    for chunk in _prange((n + _CHUNK - 1) // _CHUNK):
        b = np.empty(16)
        v_b = np.empty(16)
        v_col = np.empty(3)
        for g in range(chunk * _CHUNK, min(n, (chunk + 1) * _CHUNK)):
            # the outputs come uninitialised: one pass over each Gaussian's rows instead of a zero fill first
            for j in range(3):
                v_means[g, j] = 0.0
                v_dc[g, j] = 0.0
                for i in range(rest.shape[1]):
                    v_rest[g, i, j] = 0.0
            for c in range(campos.shape[0]):
                x, y, z, r = _direction_basis(means, campos, g, c, degree, b)
                for j in range(3):
                    # clamp_min passes the gradient where its input is >= the bound
                    v_col[j] = v_out[c, g, j] if _sh_sum(b, dc, rest, g, j, k) + 0.5 >= 0.0 else 0.0
                for j in range(3):
                    v_dc[g, j] += b[0] * v_col[j]
                    for i in range(1, k):
                        v_rest[g, i - 1, j] += b[i] * v_col[j]
                if degree == 0:
                    continue
                v_b[0] = 0.0  # the constant band has no direction derivative
                for i in range(1, k):
                    v_b[i] = rest[g, i - 1, 0] * v_col[0] + rest[g, i - 1, 1] * v_col[1] + rest[g, i - 1, 2] * v_col[2]
                gx, gy, gz = _basis_vjp(x, y, z, degree, v_b)
                # through the normalisation d / |d|
                dot = gx * x + gy * y + gz * z
                v_means[g, 0] += (gx - dot * x) / r
                v_means[g, 1] += (gy - dot * y) / r
                v_means[g, 2] += (gz - dot * z) / r


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _SHColors(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, sh_dc, sh_rest, campos, degree):
        arrays = (_np(means), _np(sh_dc), _np(sh_rest), _np(campos).astype(np.float64))
        out = np.empty((campos.shape[0], means.shape[0], 3), dtype=arrays[1].dtype)
        with _LAUNCH_LOCK:
            numba.set_num_threads(_workers())
            _sh_fwd(*arrays, degree, out)
        ctx.arrays = arrays
        ctx.degree = degree
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, v_out):
        means, dc, rest, campos = ctx.arrays
        v_means = np.empty(means.shape, means.dtype)
        v_dc = np.empty(dc.shape, dc.dtype)
        v_rest = np.empty(rest.shape, rest.dtype)
        with _LAUNCH_LOCK:
            numba.set_num_threads(_workers())
            _sh_bwd(means, dc, rest, campos, ctx.degree, _np(v_out), v_means, v_dc, v_rest)
        return torch.from_numpy(v_means), torch.from_numpy(v_dc), torch.from_numpy(v_rest), None, None


def sh_colors_compiled(means: Tensor, sh_dc: Tensor, sh_rest: Tensor, campos: Tensor, sh_degree: int) -> Tensor:
    """View-dependent RGB, ``max(SH(dir) + 0.5, 0)``, from separate DC and higher-band coefficients.

    Args:
        means: [N, 3] Gaussian centres.
        sh_dc: [N, 3] band-0 coefficients.
        sh_rest: [N, K - 1, 3] higher bands, K >= (sh_degree + 1) ** 2 (one dtype for all three).
        campos: [C, 3] camera centres (no gradient).
        sh_degree: bands to use, 0..3.

    Returns:
        [C, N, 3] colours in the coefficients' dtype.
    """
    if not 0 <= sh_degree <= MAX_COMPILED_DEGREE:
        raise ValueError(f"compiled SH covers degrees 0..{MAX_COMPILED_DEGREE}, got {sh_degree}")
    if sh_rest.shape[1] + 1 < (sh_degree + 1) ** 2:
        raise ValueError(f"sh_degree={sh_degree} needs {(sh_degree + 1) ** 2} coefficients, got {sh_rest.shape[1] + 1}")
    dtype = sh_dc.dtype
    return _SHColors.apply(means.to(dtype), sh_dc, sh_rest.to(dtype), campos.detach(), int(sh_degree))
