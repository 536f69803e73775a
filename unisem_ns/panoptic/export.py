"""Per-Gaussian panoptic PLY: the instance PLY of :mod:`unisem_ns.unified_lift.export` (``x y z``, ``red green
blue`` = instance colour, ``instance``, ``class`` int32, class names in header comments) plus the semantic
latent as float32 properties ``latent_0 .. latent_{d-1}``. Any reader of the instance PLY reads it too
(:func:`~unisem_ns.unified_lift.export.read_instance_ply` ignores the extra properties)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from unisem_ns.unified_lift.export import InstancePly, instance_colours, read_instance_ply
from unisem_ns.utils.atomic import atomic_file

__all__ = ["export_panoptic_ply", "read_panoptic_ply"]

LATENT_PREFIX = "latent_"


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def export_panoptic_ply(path: Union[str, Path], means, instance_ids, class_ids, latents,
                        class_names: Optional[Sequence[str]] = None) -> Path:
    """Write Gaussian centres ``[N, 3]``, ``instance_ids [N]`` (0 = stuff), ``class_ids [N]`` (-1 = unknown),
    semantic ``latents [N, d]`` and optional class names (index = class id)."""
    path = Path(path)
    xyz = _np(means).astype(np.float32).reshape(-1, 3)
    n = xyz.shape[0]
    inst = _np(instance_ids).astype(np.int64).reshape(-1)
    cls = _np(class_ids).astype(np.int64).reshape(-1)
    lat = _np(latents).astype(np.float32).reshape(n, -1) if n else np.zeros((0, 0), np.float32)
    if inst.size != n or cls.size != n or lat.shape[0] != n:
        raise ValueError(f"{path}: means ({n}), instance_ids ({inst.size}), class_ids ({cls.size}) and latents "
                         f"({lat.shape[0]}) must have the same length")
    rgb = instance_colours(inst)
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
              ("instance", "i4"), ("class", "i4")] + [(f"{LATENT_PREFIX}{i}", "f4") for i in range(lat.shape[1])]
    vertex = np.empty(n, dtype=fields)
    vertex["x"], vertex["y"], vertex["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    vertex["red"], vertex["green"], vertex["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    vertex["instance"], vertex["class"] = inst, cls
    for i in range(lat.shape[1]):
        vertex[f"{LATENT_PREFIX}{i}"] = lat[:, i]
    comments = []
    for k, v in enumerate(class_names or []):
        if "\n" in str(v) or "\r" in str(v):
            raise ValueError(f"{path}: class name {v!r} contains a line break")
        comments.append(f"class_name {k} {v}")
    ply = PlyData([PlyElement.describe(vertex, "vertex")], text=False, comments=comments)
    with atomic_file(path) as f:
        ply.write(f)
    return path


def read_panoptic_ply(path: Union[str, Path]) -> Tuple[InstancePly, np.ndarray]:
    """(the instance part, latents ``[N, d]`` float32) of a file written by :func:`export_panoptic_ply`."""
    base = read_instance_ply(path)
    v = PlyData.read(str(path))["vertex"].data
    names = [p for p in v.dtype.names if p.startswith(LATENT_PREFIX)]
    names.sort(key=lambda p: int(p[len(LATENT_PREFIX):]))
    lat = np.stack([v[p] for p in names], axis=-1).astype(np.float32) if names else np.zeros((len(v), 0), np.float32)
    return base, lat
