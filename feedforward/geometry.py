"""Camera conventions of the feed-forward path.

The canonical frame is view 1's camera frame in OpenCV axes (x right, y down, z forward). Scene files store
OpenGL camera-to-world matrices (Nerfstudio); ``relative_viewmats`` turns them into world-to-camera matrices of
the canonical frame, which is all the renderer needs. Nothing here is given to the network.
"""

from __future__ import annotations

import torch
from torch import Tensor

_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def opengl_to_opencv(c2w: Tensor) -> Tensor:
    """[..., 4, 4] OpenGL camera-to-world -> OpenCV camera-to-world (flip camera y and z)."""
    return c2w @ _GL_TO_CV.to(c2w)


def relative_viewmats(c2w_gl: Tensor, ref: int = 0) -> Tensor:
    """World-to-camera [N, 4, 4] (OpenCV) of every view, in the frame of view ``ref``'s camera.

    viewmat_k = inv(c2w_k) @ c2w_ref, so the reference view's viewmat is the identity.
    """
    c2w = opengl_to_opencv(c2w_gl.double())
    return (torch.linalg.inv(c2w) @ c2w[ref]).to(c2w_gl.dtype)


def unproject_depth(depth: Tensor, K: Tensor, viewmat: Tensor) -> Tensor:
    """Pixel-centre points [..., H, W, 3] in the canonical frame from z-depth [..., H, W], intrinsics [..., 3, 3]
    and world(canonical)-to-camera [..., 4, 4]."""
    h, w = depth.shape[-2:]
    v, u = torch.meshgrid(torch.arange(h, dtype=depth.dtype, device=depth.device) + 0.5,
                          torch.arange(w, dtype=depth.dtype, device=depth.device) + 0.5, indexing="ij")
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    cam = torch.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], dim=-1)
    c2w = torch.linalg.inv(viewmat)
    return torch.einsum("...ij,...hwj->...hwi", c2w[..., :3, :3], cam) + c2w[..., None, None, :3, 3]


def project_points(pts: Tensor, K: Tensor, viewmat: Tensor):
    """Project canonical points [M, 3] into a view: returns (u, v, z) pixel coordinates (continuous) and depth."""
    cam = pts @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2]
    zc = z.clamp_min(1e-6)
    u = K[0, 0] * cam[:, 0] / zc + K[0, 2]
    v = K[1, 1] * cam[:, 1] / zc + K[1, 2]
    return u, v, z
