"""Synthetic data for UniSem: a deterministic procedural indoor scene with exact ground truth.

Importing this package needs only numpy (no torch / nerfstudio); Pillow is used lazily when
writing files and ``tyro`` only by the ``unisem-make-scene`` CLI (``unisem_ns.data.make_scene``).
"""

from unisem_ns.data.default_scene import default_scene_dir
from unisem_ns.data.synthetic_scene import (
    CLASS_NAMES,
    Room,
    build_room,
    camera_intrinsics,
    generate_scene,
    look_at,
    make_cameras,
    read_ply,
    render_view,
)

__all__ = [
    "CLASS_NAMES",
    "Room",
    "build_room",
    "camera_intrinsics",
    "default_scene_dir",
    "generate_scene",
    "look_at",
    "make_cameras",
    "read_ply",
    "render_view",
]
