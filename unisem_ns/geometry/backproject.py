"""Depth back-projection, point projection with an occlusion test, OpenScene-style multi-view feature fusion
and voxel pooling.

Conventions (every function here):

* ``c2w`` / ``w2c`` are [4, 4] (a [3, 4] is accepted) camera-to-world / world-to-camera matrices in the
  **OpenCV** camera convention: x right, y down, z forward (the camera looks along +z). Nerfstudio's
  ``transforms.json`` stores OpenGL camera-to-world matrices (y up, z backward): convert them with
  :func:`opengl_to_opencv_c2w` first.
* ``K`` is the [3, 3] pinhole matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
* ``depth`` is camera **z-depth** in metres [H, W] (not the ray length); 0 (or anything <= 0 / non-finite)
  marks an invalid pixel. :func:`unisem_ns.data.scene_io.load_depth` returns exactly this.
* Pixel ``(u, v)`` (column, row) covers ``[u, u + 1) x [v, v + 1)``; its centre is at ``u + pixel_center``
  with ``pixel_center = 0.5`` by default (Nerfstudio / gsplat; the synthetic scenes ray-cast through pixel
  centres at +0.5). OpenScene's ``PointCloudToImageMapper`` rounds projections to the nearest integer, i.e.
  puts centres at integers: pass ``pixel_center=0`` for that. With the default, back-projecting a pixel and
  projecting the point again returns the same pixel.
* A flat pixel index is ``v * W + u``.

Everything is PyTorch (CPU or CUDA, follows the inputs' device); numpy inputs are accepted and converted.
No nerfstudio import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FusionView",
    "VoxelAccumulator",
    "opengl_to_opencv_c2w",
    "invert_pose",
    "as_pose",
    "backproject_depth",
    "project_points",
    "visible_points",
    "fuse_point_features",
    "voxel_keys",
    "voxel_downsample",
]

ArrayLike = Union[Tensor, np.ndarray]

# Voxel coordinates are packed into one int64: 21 bits per axis, offset so negatives fit.
_KEY_BITS = 21
_KEY_OFFSET = 1 << (_KEY_BITS - 1)
_KEY_MASK = (1 << _KEY_BITS) - 1


def _t(x: ArrayLike, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype=dtype, device=device if device is not None else x.device)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def as_pose(m: ArrayLike, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """A [4, 4] pose from a [4, 4] or [3, 4] matrix (the last row is set to ``[0, 0, 0, 1]``)."""
    m = _t(m, dtype, device)
    if m.shape == (3, 4):
        m = torch.cat([m, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=dtype, device=m.device)], 0)
    if m.shape != (4, 4):
        raise ValueError(f"expected a [4, 4] or [3, 4] pose, got {tuple(m.shape)}")
    return m


def opengl_to_opencv_c2w(c2w: ArrayLike) -> Tensor:
    """Convert camera-to-world matrices from OpenGL (x right, y up, z back) to OpenCV (x right, y down,
    z forward) camera axes by flipping the camera's y and z axes (the world frame is unchanged).

    Args:
        c2w: [..., 4, 4] (or [..., 3, 4]) OpenGL camera-to-world, e.g. ``transforms.json``'s
            ``transform_matrix``.

    Returns:
        [..., 4, 4] (or [..., 3, 4]) float64 OpenCV camera-to-world (a new tensor).
    """
    c2w = _t(c2w, torch.float64).clone()
    c2w[..., :3, 1:3] = -c2w[..., :3, 1:3]
    return c2w


def invert_pose(c2w: ArrayLike) -> Tensor:
    """World-to-camera [4, 4] float64 from a rigid camera-to-world [4, 4] / [3, 4]."""
    c2w = as_pose(c2w)
    R, t = c2w[:3, :3], c2w[:3, 3]
    w2c = torch.eye(4, dtype=c2w.dtype, device=c2w.device)
    w2c[:3, :3] = R.T
    w2c[:3, 3] = -R.T @ t
    return w2c


def backproject_depth(
    depth: ArrayLike,
    K: ArrayLike,
    c2w: ArrayLike,
    mask: Optional[ArrayLike] = None,
    stride: int = 1,
    pixel_center: float = 0.5,
) -> Tuple[Tensor, Tensor]:
    """World points of the valid pixels of a z-depth map.

    Args:
        depth: [H, W] z-depth (metres); pixels with depth <= 0 or non-finite are skipped.
        K: [3, 3] intrinsics.
        c2w: [4, 4] OpenCV camera-to-world.
        mask: optional [H, W] bool; only pixels where it is True are back-projected.
        stride: keep every ``stride``-th row and column (1 = every pixel).
        pixel_center: where a pixel's centre lies inside it (see the module docstring).

    Returns:
        ``(points [M, 3] float32, index [M] long)``: the world points and their flat pixel indices
        ``v * W + u`` (row-major order).
    """
    depth = _t(depth, torch.float32)
    H, W = depth.shape
    dev = depth.device
    valid = torch.isfinite(depth) & (depth > 0)
    if mask is not None:
        valid &= _t(mask, torch.bool, dev)
    if stride > 1:
        keep = torch.zeros_like(valid)
        keep[::stride, ::stride] = True
        valid &= keep
    index = torch.nonzero(valid.reshape(-1), as_tuple=False).squeeze(1)
    v = torch.div(index, W, rounding_mode="floor").double()
    u = (index % W).double()
    z = depth.reshape(-1)[index].double()
    K = _t(K, torch.float64, dev)
    x = (u + pixel_center - K[0, 2] - K[0, 1] * (v + pixel_center - K[1, 2]) / K[1, 1]) / K[0, 0] * z
    y = (v + pixel_center - K[1, 2]) / K[1, 1] * z
    cam = torch.stack([x, y, z], dim=-1)
    c2w = as_pose(c2w, device=dev)
    pts = cam @ c2w[:3, :3].T + c2w[:3, 3]
    return pts.float(), index


def project_points(
    points: ArrayLike,
    K: ArrayLike,
    w2c: ArrayLike,
    width: int,
    height: int,
    cut_bound: int = 0,
    pixel_center: float = 0.5,
    near: float = 1e-6,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Project world points to pixels, rounding to the pixel that contains them (OpenScene's
    ``PointCloudToImageMapper``: pinhole, round-to-pixel, a ``cut_bound`` px border is outside).

    Args:
        points: [N, 3] world points.
        K: [3, 3] intrinsics.
        w2c: [4, 4] OpenCV world-to-camera.
        width, height: image size W, H.
        cut_bound: pixels closer than this to the image border count as outside.
        pixel_center: see the module docstring (0 reproduces OpenScene's ``np.round``).
        near: points with z <= near (behind or at the camera) are outside.

    Returns:
        ``(uv [N, 2] long (u = column, v = row), z [N] float32 camera depth, in_image [N] bool)``.
        ``uv`` of points outside the image is clamped into it, so it can always be used as an index.
    """
    pts = _t(points, torch.float64)
    dev = pts.device
    w2c = as_pose(w2c, device=dev)
    K = _t(K, torch.float64, dev)
    cam = pts @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    zs = torch.where(z > near, z, torch.ones_like(z))
    pix = cam @ K.T
    u = pix[:, 0] / zs
    v = pix[:, 1] / zs
    # round half up (floor(x + 0.5)) instead of banker's rounding, so ties do not depend on parity
    ui = torch.floor(u - pixel_center + 0.5)
    vi = torch.floor(v - pixel_center + 0.5)
    inside = (
        (z > near) & torch.isfinite(ui) & torch.isfinite(vi)
        & (ui >= cut_bound) & (vi >= cut_bound) & (ui < width - cut_bound) & (vi < height - cut_bound)
    )
    ui = torch.nan_to_num(ui, 0.0).clamp(0, width - 1).long()
    vi = torch.nan_to_num(vi, 0.0).clamp(0, height - 1).long()
    return torch.stack([ui, vi], dim=-1), z.float(), inside


def visible_points(
    points: ArrayLike,
    K: ArrayLike,
    w2c: ArrayLike,
    depth: ArrayLike,
    width: Optional[int] = None,
    height: Optional[int] = None,
    occlusion_ratio: float = 0.25,
    cut_bound: int = 10,
    pixel_center: float = 0.5,
) -> Tuple[Tensor, Tensor]:
    """Which points a view sees: inside the image (minus ``cut_bound``) and not occluded, i.e.
    ``|depth[v, u] - z| <= occlusion_ratio * depth[v, u]`` with ``depth[v, u] > 0`` (OpenScene's test).

    Args:
        points: [N, 3] world points.
        K: [3, 3] intrinsics.
        w2c: [4, 4] OpenCV world-to-camera.
        depth: [H, W] the view's z-depth (0 = invalid: nothing is visible there).
        width, height: image size (default: the depth map's).
        occlusion_ratio: relative depth tolerance (OpenScene / econSG: 0.25).
        cut_bound: border in pixels (OpenScene / econSG: 10 px at 640x480).
        pixel_center: see the module docstring.

    Returns:
        ``(visible [N] bool, uv [N, 2] long)``.
    """
    depth = _t(depth, torch.float32)
    H, W = depth.shape
    width = W if width is None else int(width)
    height = H if height is None else int(height)
    if (width, height) != (W, H):
        raise ValueError(f"depth is {W}x{H} but the view is {width}x{height}")
    pts = _t(points, torch.float32, depth.device)
    uv, z, inside = project_points(pts, K, w2c, width, height, cut_bound, pixel_center)
    d = depth[uv[:, 1], uv[:, 0]]
    ok = torch.isfinite(d) & (d > 0) & ((d - z).abs() <= occlusion_ratio * d)
    return inside & ok, uv


class FusionView(NamedTuple):
    """One view for :func:`fuse_point_features` (a plain 5-tuple in this order works too).

    features: [H, W, D] feature map or [H * W, D] per-pixel rows (row-major).
    valid: [H, W] bool, pixels whose feature may be used (None = all).
    depth: [H, W] z-depth (metres, 0 = invalid).
    K: [3, 3] intrinsics.
    c2w: [4, 4] OpenCV camera-to-world.
    """

    features: ArrayLike
    valid: Optional[ArrayLike]
    depth: ArrayLike
    K: ArrayLike
    c2w: ArrayLike


def fuse_point_features(
    points: ArrayLike,
    views: Iterable[Union[FusionView, Tuple]],
    occlusion_ratio: float = 0.25,
    cut_bound: int = 10,
    pixel_center: float = 0.5,
    dtype: torch.dtype = torch.float32,
) -> Tuple[Tensor, Tensor]:
    """OpenScene-style multi-view fusion: every point takes the mean of the features at the pixels it
    projects to in the views that see it (:func:`visible_points`).

    Views are consumed one at a time (pass a generator to keep only one feature map in memory); only the
    [N, D] sum and [N] visit count are held.

    Args:
        points: [N, 3] world points.
        views: iterable of :class:`FusionView` ``(features, valid, depth, K, c2w)``.
        occlusion_ratio, cut_bound, pixel_center: see :func:`visible_points`.
        dtype: accumulation dtype.

    Returns:
        ``(fused [N, D], counts [N] long)``: the mean feature over the views that see each point (zeros and
        count 0 for a point no view sees with a valid feature).
    """
    pts = _t(points, torch.float32)
    n = pts.shape[0]
    total: Optional[Tensor] = None
    counts = torch.zeros(n, dtype=torch.long, device=pts.device)
    for view in views:
        feats, valid, depth, K, c2w = view
        depth = _t(depth, torch.float32, pts.device)
        H, W = depth.shape
        feats = _t(feats, dtype, pts.device).reshape(H * W, -1)
        if total is None:
            total = torch.zeros(n, feats.shape[1], dtype=dtype, device=pts.device)
        vis, uv = visible_points(pts, K, invert_pose(c2w), depth, W, H, occlusion_ratio, cut_bound, pixel_center)
        flat = uv[:, 1] * W + uv[:, 0]
        if valid is not None:
            vis &= _t(valid, torch.bool, pts.device).reshape(-1)[flat]
        sel = torch.nonzero(vis, as_tuple=False).squeeze(1)
        total.index_add_(0, sel, feats[flat[sel]])
        counts[sel] += 1
    if total is None:
        raise ValueError("fuse_point_features needs at least one view")
    fused = total / counts.clamp(min=1).unsqueeze(1).to(dtype)
    return fused, counts


def voxel_keys(points: ArrayLike, voxel: float) -> Tensor:
    """One int64 key per point for the voxel ``floor(p / voxel)`` it falls in ([N, 3] -> [N]).

    Raises ValueError when a coordinate is beyond +-2^20 voxels (e.g. a 0.02 m voxel: +-20 km).
    """
    if voxel <= 0:
        raise ValueError(f"voxel size must be > 0 (got {voxel})")
    ijk = torch.floor(_t(points, torch.float64) / voxel).long()
    if ijk.numel() and (ijk.min() < -_KEY_OFFSET or ijk.max() >= _KEY_OFFSET):
        raise ValueError(f"points span more than 2^{_KEY_BITS} voxels of size {voxel}; use a larger voxel")
    ijk = ijk + _KEY_OFFSET
    return (ijk[:, 0] << (2 * _KEY_BITS)) | (ijk[:, 1] << _KEY_BITS) | ijk[:, 2]


def voxel_downsample(points: ArrayLike, voxel: float, reduce: str = "mean") -> Tuple[Tensor, Tensor]:
    """Pool points per voxel.

    Args:
        points: [N, 3].
        voxel: voxel edge length (same unit as the points).
        reduce: the representative of a voxel: ``"mean"`` of its points, ``"first"`` point (input order) or
            the voxel ``"center"``.

    Returns:
        ``(reps [U, 3] float32, inverse [N] long)``: voxels in ascending key order, ``reps[inverse]`` is each
        point's representative (so per-point values pool with ``index_add_(0, inverse, values)``).
    """
    pts = _t(points, torch.float32)
    keys = voxel_keys(pts, voxel)
    uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    u = uniq.shape[0]
    if reduce == "mean":
        s = torch.zeros(u, 3, dtype=torch.float64, device=pts.device).index_add_(0, inverse, pts.double())
        c = torch.bincount(inverse, minlength=u).clamp(min=1).double()
        reps = (s / c[:, None]).float()
    elif reduce == "first":
        order = torch.arange(pts.shape[0], device=pts.device)
        first = torch.full((u,), pts.shape[0], dtype=torch.long, device=pts.device).scatter_reduce_(
            0, inverse, order, reduce="amin"
        )
        reps = pts[first]
    elif reduce == "center":
        ijk = torch.stack([(uniq >> (2 * _KEY_BITS)) & _KEY_MASK, (uniq >> _KEY_BITS) & _KEY_MASK, uniq & _KEY_MASK], -1)
        reps = ((ijk - _KEY_OFFSET).double() + 0.5).mul(voxel).float()
    else:
        raise ValueError(f"reduce must be 'mean', 'first' or 'center' (got {reduce!r})")
    return reps, inverse


@dataclass
class VoxelAccumulator:
    """Streaming per-voxel sums: add points (and per-point values) view by view, without keeping them.

    After any number of :meth:`add` calls: ``keys [U]`` (ascending), ``count [U]``, :meth:`centroids` [U, 3]
    and :meth:`mean_values` [U, C]; :meth:`lookup` maps points to voxel rows (-1 = voxel not present).
    """

    voxel: float
    keys: Optional[Tensor] = None
    count: Optional[Tensor] = None
    sum_xyz: Optional[Tensor] = None
    sum_values: Optional[Tensor] = None

    def add(self, points: ArrayLike, values: Optional[ArrayLike] = None) -> None:
        """Add ``points [M, 3]`` with optional ``values [M, C]`` (C fixed across calls)."""
        pts = _t(points, torch.float64)
        k = voxel_keys(pts, self.voxel)
        vals = None if values is None else _t(values, torch.float64, pts.device).reshape(pts.shape[0], -1)
        if self.keys is None:
            self.keys = torch.zeros(0, dtype=torch.long, device=pts.device)
            self.count = torch.zeros(0, dtype=torch.long, device=pts.device)
            self.sum_xyz = torch.zeros(0, 3, dtype=torch.float64, device=pts.device)
            if vals is not None:
                self.sum_values = torch.zeros(0, vals.shape[1], dtype=torch.float64, device=pts.device)
        if (vals is None) != (self.sum_values is None):
            raise ValueError("pass values on every add() call or on none")
        old = self.keys.shape[0]
        uniq, inv = torch.unique(torch.cat([self.keys, k]), sorted=True, return_inverse=True)
        u = uniq.shape[0]
        inv_old, inv_new = inv[:old], inv[old:]

        def merge(prev: Tensor, new: Tensor) -> Tensor:
            out = torch.zeros((u,) + tuple(prev.shape[1:]), dtype=prev.dtype, device=prev.device)
            out.index_add_(0, inv_old, prev)
            return out.index_add_(0, inv_new, new)

        self.count = merge(self.count, torch.ones_like(k))
        self.sum_xyz = merge(self.sum_xyz, pts)
        if vals is not None:
            self.sum_values = merge(self.sum_values, vals)
        self.keys = uniq

    def __len__(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[0])

    def centroids(self) -> Tensor:
        """[U, 3] float32 mean of the points in each voxel."""
        if self.keys is None:
            return torch.zeros(0, 3)
        return (self.sum_xyz / self.count.clamp(min=1)[:, None].double()).float()

    def mean_values(self) -> Tensor:
        """[U, C] float32 mean value per voxel."""
        if self.sum_values is None:
            raise ValueError("no values were added")
        return (self.sum_values / self.count.clamp(min=1)[:, None].double()).float()

    def lookup(self, points: ArrayLike) -> Tensor:
        """Row of each point's voxel, [M] long, -1 where the voxel holds nothing."""
        pts = _t(points, torch.float64)
        if self.keys is None or self.keys.numel() == 0:
            return torch.full((pts.shape[0],), -1, dtype=torch.long, device=pts.device)
        k = voxel_keys(pts, self.voxel)
        pos = torch.searchsorted(self.keys, k).clamp(max=self.keys.shape[0] - 1)
        return torch.where(self.keys[pos] == k, pos, torch.full_like(pos, -1))
