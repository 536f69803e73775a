"""Splat renderer: gsplat for CUDA tensors, compiled CPU kernels (numba) on CPU, a pure-PyTorch backend with the same signature elsewhere.

Importing this package does no CUDA work and does not import nerfstudio.
"""

from .rasterization import (RENDER_MODES, gsplat_version, rasterization, select_backend, sh_colors,
                            sh_colors_split)

__all__ = ["rasterization", "sh_colors", "sh_colors_split", "select_backend", "gsplat_version", "RENDER_MODES"]
