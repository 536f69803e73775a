"""Per-Gaussian instance export: a binary PLY point cloud with instance and class ids.

Vertex properties: ``x y z`` (float32), ``red green blue`` (uint8), ``instance`` (int32), ``class`` (int32,
``-1`` = unknown). Class names, when given, go into header comments ``class_name <id> <name>`` so any PLY viewer
still opens the file. Written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from unisem_ns.utils.atomic import atomic_file

__all__ = ["InstancePly", "instance_colours", "export_instance_ply", "read_instance_ply"]

ArrayLike = Union[np.ndarray, torch.Tensor]
#: colour of instance -1 (unassigned / noise)
NOISE_COLOUR = (128, 128, 128)
_CLASS_COMMENT = "class_name"


@dataclass
class InstancePly:
    """Contents of an instance PLY: ``means [N, 3]`` float32, ``colours [N, 3]`` uint8, ``instance_ids [N]`` and
    ``class_ids [N]`` int32, ``class_names`` {class id: name}."""

    means: np.ndarray
    colours: np.ndarray
    instance_ids: np.ndarray
    class_ids: np.ndarray
    class_names: Dict[int, str]


def _np(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def instance_colours(instance_ids: ArrayLike) -> np.ndarray:
    """``[N, 3]`` uint8 fixed palette colour per instance id ``[N]`` (the viewer's label palette; -1 grey)."""
    from unisem_ns.language.query_field import palette

    ids = _np(instance_ids).astype(np.int64).reshape(-1)
    out = np.tile(np.asarray(NOISE_COLOUR, dtype=np.uint8), (ids.size, 1))
    ok = ids >= 0
    if ok.any():
        pal = (palette(int(ids[ok].max()) + 1).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        out[ok] = pal[ids[ok]]
    return out


def export_instance_ply(
    path: Union[str, Path],
    means: ArrayLike,
    instance_ids: ArrayLike,
    class_ids: Optional[ArrayLike] = None,
    colours: Optional[ArrayLike] = None,
    class_names: Optional[Union[Sequence[str], Dict[int, str]]] = None,
) -> Path:
    """Write Gaussian centres ``[N, 3]`` with ``instance_ids [N]``, optional ``class_ids [N]`` (else -1),
    optional ``colours [N, 3]`` uint8 (else the instance palette) and optional class names (a list indexed by
    class id, or a dict). Returns the path."""
    path = Path(path)
    xyz = _np(means).astype(np.float32).reshape(-1, 3)
    n = xyz.shape[0]
    inst = _np(instance_ids).astype(np.int64).reshape(-1)
    cls = np.full(n, -1, dtype=np.int64) if class_ids is None else _np(class_ids).astype(np.int64).reshape(-1)
    rgb = instance_colours(inst) if colours is None else _np(colours).reshape(-1, 3)
    if inst.size != n or cls.size != n or rgb.shape[0] != n:
        raise ValueError(f"{path}: means ({n}), instance_ids ({inst.size}), class_ids ({cls.size}) and "
                         f"colours ({rgb.shape[0]}) must have the same length")
    if colours is not None and rgb.dtype != np.uint8:
        raise ValueError(f"{path}: colours must be uint8 in [0, 255], got {rgb.dtype}")
    for name, v in (("instance_ids", inst), ("class_ids", cls)):
        if v.size and (v.min() < np.iinfo(np.int32).min or v.max() > np.iinfo(np.int32).max):
            raise ValueError(f"{path}: {name} do not fit in int32")

    vertex = np.empty(n, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"),
                                ("blue", "u1"), ("instance", "i4"), ("class", "i4")])
    vertex["x"], vertex["y"], vertex["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    vertex["red"], vertex["green"], vertex["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    vertex["instance"], vertex["class"] = inst, cls

    names = dict(enumerate(class_names)) if isinstance(class_names, (list, tuple)) else dict(class_names or {})
    comments = []
    for k, v in sorted(names.items()):
        v = str(v)
        if "\n" in v or "\r" in v:
            raise ValueError(f"{path}: class name {v!r} contains a line break")
        comments.append(f"{_CLASS_COMMENT} {int(k)} {v}")
    ply = PlyData([PlyElement.describe(vertex, "vertex")], text=False, comments=comments)
    with atomic_file(path) as f:
        ply.write(f)
    return path


def read_instance_ply(path: Union[str, Path]) -> InstancePly:
    """Read a file written by :func:`export_instance_ply`."""
    ply = PlyData.read(str(path))
    v = ply["vertex"].data
    names: Dict[int, str] = {}
    for c in ply.comments:
        parts = c.split(" ", 2)
        if len(parts) >= 2 and parts[0] == _CLASS_COMMENT:
            names[int(parts[1])] = parts[2] if len(parts) == 3 else ""
    return InstancePly(
        means=np.stack([v["x"], v["y"], v["z"]], axis=-1).astype(np.float32),
        colours=np.stack([v["red"], v["green"], v["blue"]], axis=-1).astype(np.uint8),
        instance_ids=np.asarray(v["instance"], dtype=np.int32),
        class_ids=np.asarray(v["class"], dtype=np.int32),
        class_names=names,
    )
