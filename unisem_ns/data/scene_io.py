"""Reading and checking a scene folder (layout in ``docs/DATA.md``) without nerfstudio.

Every check raises :class:`InputError` with one line that names the offending file and says how to fix
it; the Nerfstudio glue turns that into a clean exit instead of a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

_INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")


class InputError(ValueError):
    """Bad user input (a scene folder, a file in it, a checkpoint). The message is one line per problem."""


def exit_on_input_error(err: InputError, prog: str = "unisem_ns") -> SystemExit:
    """Bad input ends a command with its message, each line as ``<prog>: error: <line>``, not a traceback."""
    return SystemExit("\n".join(f"{prog}: error: {line}" for line in str(err).splitlines()))


@dataclass
class SceneFrame:
    image: Path
    depth: Optional[Path]
    width: int
    height: int


def read_transforms(scene: Path) -> Dict:
    """Load ``scene/transforms.json``, with one-line errors for a missing or malformed file."""
    scene = Path(scene)
    if not scene.exists():
        raise InputError(f"{scene}: no such scene folder; make one with `unisem-make-scene --out {scene}` or pass --data DIR")
    if not scene.is_dir():
        raise InputError(f"{scene}: --data must be a scene folder containing transforms.json, not a file")
    path = scene / "transforms.json"
    if not path.exists():
        hint = "the folder is empty" if not any(scene.iterdir()) else "it has no transforms.json"
        raise InputError(
            f"{path}: not found ({hint}); make a scene with `unisem-make-scene --out {scene}` "
            "or convert your images with `ns-process-data`"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable JSON ({e}); fix or regenerate the file") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise InputError(f"{path}: has no 'frames' list; every image needs a frame with file_path and transform_matrix")
    return meta


def validate_scene(scene: Path, check_images: bool = True) -> List[SceneFrame]:
    """Check a scene's transforms.json, images and depths (see :mod:`unisem_ns.data.validate`, which also checks
    cues and ground truth); raises :class:`InputError` listing every problem, one per line.

    Args:
        scene: the scene folder.
        check_images: decode every image (set False to skip decoding for very large scenes).

    Returns:
        One :class:`SceneFrame` per frame.
    """
    from unisem_ns.data.validate import SceneNeeds, require_valid_scene

    return require_valid_scene(scene, SceneNeeds(check_images=check_images, min_train_views=0)).frames


def load_depth(path: Path, unit_scale: float = 1e-3) -> np.ndarray:
    """A depth map in metres, [H, W] float32: ``.npy`` float metres, or a 16-bit PNG in ``unit_scale`` units."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            return np.load(path).astype(np.float32)
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im, dtype=np.float32) * unit_scale
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable depth map ({e}); regenerate it or drop depth_file_path") from None


def load_gt_maps(scene: Path, stem: str) -> Dict[str, np.ndarray]:
    """Ground-truth label maps of one view, for evaluation only: ``{"semantic", "instance"}`` [H, W] int64
    from ``gt/semantic`` and ``gt/instance`` where present."""
    from PIL import Image

    out: Dict[str, np.ndarray] = {}
    for key in ("semantic", "instance"):
        path = Path(scene) / "gt" / key / f"{stem}.png"
        if path.exists():
            with Image.open(path) as im:
                out[key] = np.asarray(im).astype(np.int64)
    return out


def load_gt_queries(scene: Path) -> Dict[str, Dict[str, np.ndarray]]:
    """``gt/queries.json`` as ``{stem: {query text: bool mask [H, W]}}`` (empty when the file is absent)."""
    from PIL import Image

    path = Path(scene) / "gt" / "queries.json"
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable JSON ({e}); fix it or remove it") from None
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for stem, queries in entries.items():
        out[stem] = {}
        for text, mask_path in queries.items():
            with Image.open(Path(scene) / mask_path) as im:
                out[stem][text] = np.asarray(im) > 0
    return out
