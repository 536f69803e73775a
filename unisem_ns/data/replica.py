"""Replica sequences in the Semantic-NeRF layout -> a scene folder in our layout (``docs/DATA.md``).

Source layout (Semantic-NeRF's rendered Replica, ``SSR/datasets/replica/replica_datasets.py``)::

    <seq>/traj_w_c.txt                          one line per frame: 16 floats, the 4x4 camera-to-world, row-major
    <seq>/rgb/rgb_<i>.png                       RGB, 640x480
    <seq>/depth/depth_<i>.png                   optional: uint16 z-depth in 1/1000 m ("depth is in mm uint")
    <seq>/semantic_class/semantic_class_<i>.png optional: class id per pixel, 0 = void
    <seq>/semantic_instance/semantic_instance_<i>.png  optional: instance id per pixel (uint16)

Conventions, as checked against Semantic-NeRF's code:

- **Camera axes are OpenCV** (x right, y down, z forward): its Replica config sets ``convention: "opencv"`` and
  ``get_rays_camera`` builds OpenCV directions ``((u - cx)/fx, (v - cy)/fy, 1)`` that the ``traj_w_c.txt``
  matrices rotate into the world. We write ``c2w @ diag(1, -1, -1, 1)`` (OpenGL axes); the world frame is kept.
- **Intrinsics**: a pinhole with ``hfov = 90`` deg and square pixels, ``fx = fy = W / 2 / tan(hfov / 2)`` (320 at
  640x480). Semantic-NeRF writes ``cx = (W - 1) / 2`` in the integer-pixel-centre convention; Nerfstudio and
  gsplat put pixel centres at +0.5, so the same rays need ``cx = W / 2, cy = H / 2`` (320, 240), which we write
  (``principal_point`` overrides, in our convention). ``image_downscale = 2`` gives 320x240 with fx = 160.
- **Depth** is planar z-depth, ``depth_scale`` units per metre (1000). Written as uint16 millimetre PNGs
  (linked unchanged when no resize or rescale is needed); resizing is nearest-neighbour.
- **Classes**: the frames hold class ids without names. Names come from ``class_names`` (a JSON list, index =
  id; Replica's ``info_semantic.json`` with ``"classes": [{"id", "name"}]``; a JSON ``{"id": "name"}`` dict; or
  a text file with one name per line) or, when not given, from an ``info_semantic.json`` found in ``<seq>``,
  ``<seq>/..`` or ``<seq>/../habitat``; otherwise ids are named ``class_<id>``. Id 0 is always "void".
  With a name file, ids it does not name are mapped to void (0) with one warning. ``compact_classes`` (default)
  renumbers the ids that occur in the converted frames to 1..K in id order (Semantic-NeRF's remap too), so
  ``gt/classes.json`` lists only classes present in the sequence; otherwise ids are kept as they are.
- **Instances**: each raw instance id gets the majority class of its pixels over the converted frames; ids
  whose class is void become 0, the others are renumbered 1..N (raw-id order); ``gt/instances.json`` maps
  them to class names.
- **Frames / split**: see :func:`unisem_ns.data.convert_common.select_frames` (``frame_step``, ``max_frames``,
  ``split`` = "interval" with ``test_interval`` or Semantic-NeRF's interleaved "semantic-nerf" split).
  Output images are ``images/frame_<i:05d>.png`` with ``i`` the Replica frame index.
- A seed point cloud ``sparse_pc.ply`` is back-projected from the train frames' depth (``seed_points``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import numpy as np

from unisem_ns.data.convert_common import (
    ConversionPlan,
    FrameOut,
    LabelScan,
    Placer,
    backproject_points,
    default_cache_dir,
    image_size,
    label_png,
    map_ids,
    numeric_stem,
    opencv_to_opengl,
    points_budget,
    read_label,
    read_rgb,
    resize_nearest,
    resize_rgb,
    run_cached,
    save_png,
    scale_intrinsics,
    select_frames,
    warn,
    write_gt_labels_meta,
    write_transforms,
)
from unisem_ns.data.scene_io import InputError

__all__ = ["ReplicaConfig", "convert_replica", "read_class_names", "replica_intrinsics", "read_traj"]

VERSION = 1


@dataclass
class ReplicaConfig:
    """Options of :func:`convert_replica` (every field is part of the cache key)."""

    frame_step: int = 1
    """Keep every k-th frame (with split 'semantic-nerf': Semantic-NeRF's step, 5 in the paper)."""
    max_frames: Optional[int] = None
    """Keep at most this many frames, spread evenly over the sequence (None: all selected)."""
    split: Literal["interval", "semantic-nerf", "none"] = "interval"
    """'interval': every test_interval-th kept frame is test; 'semantic-nerf': train 0,k,2k,... test +k//2."""
    test_interval: int = 8
    """With split 'interval': kept frame number j is a test frame when j % test_interval == 0."""
    image_downscale: int = 1
    """Downscale images, depth and labels by this factor at conversion (2: 640x480 -> 320x240)."""
    hfov_deg: float = 90.0
    """Horizontal field of view of the Replica renders (Semantic-NeRF: 90)."""
    principal_point: Optional[Tuple[float, float]] = None
    """(cx, cy) at the source resolution, pixel centres at +0.5 (default: the image centre W/2, H/2)."""
    depth_scale: float = 1000.0
    """Depth PNG units per metre (Semantic-NeRF: 1000, millimetres)."""
    class_names: Optional[Path] = None
    """Class-name file (JSON list, Replica info_semantic.json, {id: name} JSON or one name per line)."""
    compact_classes: bool = True
    """Renumber the class ids present in the converted frames to 1..K (else keep the raw ids)."""
    labels: bool = True
    """Convert semantic_class/ and semantic_instance/ into gt/ when present."""
    seed_points: int = 50000
    """Points in sparse_pc.ply back-projected from the train frames' depth (0: no point cloud)."""
    link_mode: Literal["symlink", "hardlink", "copy"] = "symlink"
    """How unchanged source images reach the scene folder."""


def replica_intrinsics(width: int, height: int, hfov_deg: float = 90.0,
                       principal_point: Optional[Tuple[float, float]] = None) -> Dict[str, float]:
    """Pinhole intrinsics of a Replica render (square pixels), pixel centres at +0.5."""
    fx = round(width / 2.0 / math.tan(math.radians(hfov_deg) / 2.0), 9)  # exact W/2 at 90 deg
    cx, cy = principal_point if principal_point is not None else (width / 2.0, height / 2.0)
    return {"fl_x": fx, "fl_y": fx, "cx": float(cx), "cy": float(cy), "w": int(width), "h": int(height)}


def read_traj(path: Path) -> np.ndarray:
    """``traj_w_c.txt`` as [N, 4, 4] camera-to-world matrices (OpenCV camera axes)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{path}: not found; a Semantic-NeRF Replica sequence needs traj_w_c.txt "
            "(one line per frame: the 16 numbers of the 4x4 camera-to-world matrix)"
        )
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable ({e}); restore the file") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            vals = [float(v) for v in line.replace(",", " ").split()]
        except ValueError:
            raise InputError(f"{path}: line {n} is not 16 numbers; fix or restore the trajectory file") from None
        if len(vals) != 16:
            raise InputError(f"{path}: line {n} has {len(vals)} numbers, expected 16 (a row-major 4x4 matrix)")
        if not all(math.isfinite(v) for v in vals):
            raise InputError(f"{path}: line {n} holds a non-finite pose (nan/inf); fix the trajectory file")
        rows.append(vals)
    if not rows:
        raise InputError(f"{path}: no poses; restore the trajectory file")
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4, 4)


def read_class_names(path: Path) -> Dict[int, str]:
    """``{class id: name}`` from a class-name file (see the module docstring for the accepted forms)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: class-name file not found; pass an existing file or leave class_names unset")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable ({e}); fix the class-name file") from None
    if path.suffix.lower() == ".txt":
        return {i: ln.strip() for i, ln in enumerate(text.splitlines()) if ln.strip()}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: unreadable JSON ({e}); fix the class-name file") from None
    try:
        if isinstance(obj, list):
            return {i: str(n) for i, n in enumerate(obj)}
        if isinstance(obj, dict) and isinstance(obj.get("classes"), list):
            return {int(c["id"]): str(c["name"]) for c in obj["classes"]}
        if isinstance(obj, dict):
            return {int(k): str(v) for k, v in obj.items()}
    except (KeyError, TypeError, ValueError):
        pass
    raise InputError(
        f'{path}: expected a JSON list of names, {{"classes": [{{"id", "name"}}]}} or {{"<id>": "<name>"}}; fix the file'
    )


def _find_class_file(src: Path) -> Optional[Path]:
    for cand in (src / "info_semantic.json", src.parent / "info_semantic.json", src.parent / "habitat" / "info_semantic.json"):
        if cand.is_file():
            return cand
    return None


def _frames_in(folder: Path, prefix: str) -> Dict[int, Path]:
    out = {}
    for p in folder.glob(f"{prefix}*.png"):
        i = numeric_stem(p, prefix)
        if i is not None:
            out[i] = p
    return out


def convert_replica(src: Path, dst: Optional[Path] = None, cfg: Optional[ReplicaConfig] = None, force: bool = False) -> Path:
    """Convert a Semantic-NeRF Replica sequence into a scene folder (cached; see ``convert_common``).

    Args:
        src: the sequence folder (``traj_w_c.txt``, ``rgb/``, ...).
        dst: the scene folder to write; default ``<src>/unisem``.
        cfg: options.
        force: rebuild even when the cached conversion is current.

    Returns:
        The scene folder.
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else default_cache_dir(src)
    cfg = cfg or ReplicaConfig()
    return run_cached("replica", VERSION, src, dst, cfg, lambda: _plan(src, dst, cfg), force=force)


def _plan(src: Path, dst: Path, cfg: ReplicaConfig) -> ConversionPlan:
    if not src.is_dir():
        raise InputError(f"{src}: no such Replica sequence folder; pass the folder holding traj_w_c.txt and rgb/")
    traj_path = src / "traj_w_c.txt"
    poses = read_traj(traj_path)
    rgb_dir = src / "rgb"
    if not rgb_dir.is_dir():
        raise InputError(f"{rgb_dir}: not found; a Semantic-NeRF Replica sequence keeps its images in rgb/rgb_<i>.png")
    rgbs = _frames_in(rgb_dir, "rgb_")
    if not rgbs:
        raise InputError(f"{rgb_dir}: no rgb_<i>.png images; point --data at a Semantic-NeRF Replica sequence")
    ids = sorted(rgbs)
    if ids[-1] >= len(poses):
        raise InputError(
            f"{traj_path}: has {len(poses)} poses but {rgbs[ids[-1]]} is frame {ids[-1]}; "
            "restore the full trajectory or remove the extra images"
        )
    if cfg.image_downscale < 1:
        raise InputError(f"image_downscale must be >= 1 (got {cfg.image_downscale})")
    if cfg.depth_scale <= 0:
        raise InputError(f"depth_scale must be > 0 (got {cfg.depth_scale}); Semantic-NeRF's Replica depth uses 1000")
    picked = select_frames(ids, cfg.frame_step, cfg.max_frames, cfg.split, cfg.test_interval)

    depth_dir, sem_dir, inst_dir = src / "depth", src / "semantic_class", src / "semantic_instance"
    depths = _frames_in(depth_dir, "depth_") if depth_dir.is_dir() else {}
    sems = _frames_in(sem_dir, "semantic_class_") if (cfg.labels and sem_dir.is_dir()) else {}
    insts = _frames_in(inst_dir, "semantic_instance_") if (cfg.labels and inst_dir.is_dir()) else {}
    if not depths and depth_dir.is_dir():
        warn(f"{depth_dir}: no depth_<i>.png files; converting without depth")
    for name, table, folder, prefix in (("depth", depths, depth_dir, "depth_"), ("semantic", sems, sem_dir, "semantic_class_"),
                                        ("instance", insts, inst_dir, "semantic_instance_")):
        if table:
            for i, _ in picked:
                if i not in table:
                    raise InputError(f"{folder / f'{prefix}{i}.png'}: {name} map of frame {i} is missing; restore it")

    class_file = Path(cfg.class_names) if cfg.class_names is not None else (_find_class_file(src) if sems else None)
    names_by_id = read_class_names(class_file) if class_file is not None else None

    w0, h0 = image_size(rgbs[picked[0][0]])
    ds = int(cfg.image_downscale)
    w, h = int(round(w0 / ds)), int(round(h0 / ds))
    K = scale_intrinsics(replica_intrinsics(w0, h0, cfg.hfov_deg, cfg.principal_point), w, h)

    inputs: List[Path] = [traj_path] + ([class_file] if class_file else [])
    for i, _ in picked:
        inputs.append(rgbs[i])
        for table in (depths, sems, insts):
            if table:
                inputs.append(table[i])

    def build(tmp: Path) -> None:
        placer = Placer(src, tmp, dst, cfg.link_mode)
        # Pass 1: which classes occur, instance -> majority class.
        sem_map: Dict[int, int] = {}
        class_names: List[str] = []
        inst_map: Dict[int, int] = {}
        inst_cls: Dict[int, int] = {}
        if sems:
            scan = LabelScan()
            for i, _ in picked:
                scan.add(read_label(sems[i]), read_label(insts[i]) if insts else None)
            present = sorted(c for c in scan.classes if c != 0)
            if names_by_id is not None:
                unknown = [c for c in present if c not in names_by_id]
                if unknown:
                    warn(f"{class_file}: names no class for ids {unknown[:10]}; their pixels become void (0)")
                present = [c for c in present if c in names_by_id]
            names = names_by_id or {}
            if cfg.compact_classes:
                sem_map = {c: k + 1 for k, c in enumerate(present)}
                class_names = ["void"] + [names.get(c, f"class_{c}") for c in present]
            else:
                top = max(present + [k for k in names if k > 0], default=0)
                sem_map = {c: c for c in present}
                class_names = ["void"] + [names.get(c, f"class_{c}") for c in range(1, top + 1)]
            if insts:
                raw_cls = scan.instance_classes()
                keep = sorted(r for r, c in raw_cls.items() if sem_map.get(c, 0) != 0)
                inst_map = {r: k + 1 for k, r in enumerate(keep)}
                inst_cls = {inst_map[r]: sem_map[raw_cls[r]] for r in keep}

        rng = np.random.default_rng(0)
        n_train = sum(1 for _, t in picked if not t)
        per_view = points_budget(cfg.seed_points, n_train) if depths else 0
        pts, cols = [], []
        frames: List[FrameOut] = []
        for i, is_test in picked:
            stem = f"frame_{i:05d}"
            c2w_cv = poses[i]
            need_rgb = ds != 1 or (per_view and not is_test)
            rgb = resize_rgb(read_rgb(rgbs[i]), w, h) if need_rgb else None
            img_rel = f"images/{stem}.png"
            if ds == 1:
                placer.place(rgbs[i], img_rel)
            else:
                save_png(tmp / img_rel, rgb)
            depth_rel = None
            if depths:
                depth_rel = f"depths/{stem}.png"
                need_depth = ds != 1 or cfg.depth_scale != 1000.0 or (per_view and not is_test)
                if need_depth:
                    raw = read_label(depths[i]).astype(np.float64)
                    metres = resize_nearest(raw / cfg.depth_scale, w, h)
                if ds == 1 and cfg.depth_scale == 1000.0:
                    placer.place(depths[i], depth_rel)
                else:
                    save_png(tmp / depth_rel, np.clip(np.rint(metres * 1000.0), 0, 65535).astype(np.uint16))
                if per_view and not is_test:
                    p, c = backproject_points(metres, rgb, K, c2w_cv, per_view, rng)
                    pts.append(p)
                    cols.append(c)
            if sems:
                sem = resize_nearest(map_ids(read_label(sems[i]), sem_map), w, h)
                save_png(tmp / "gt" / "semantic" / f"{stem}.png", label_png(sem))
                if insts:
                    inst = resize_nearest(map_ids(read_label(insts[i]), inst_map), w, h)
                    save_png(tmp / "gt" / "instance" / f"{stem}.png", inst.astype(np.uint16))
            frames.append(FrameOut(img_rel, opencv_to_opengl(c2w_cv), is_test, dict(K), depth_rel))

        ply = None
        if pts and sum(len(p) for p in pts):
            from unisem_ns.data.synthetic_scene import write_ply

            write_ply(tmp / "sparse_pc.ply", np.concatenate(pts), np.concatenate(cols))
            ply = "sparse_pc.ply"
        if sems:
            write_gt_labels_meta(tmp, class_names, inst_cls if insts else None)
        write_transforms(tmp, frames, ply_file_path=ply, split_lists=cfg.split != "none")

    summary = {"frames": len(picked), "test_frames": sum(t for _, t in picked), "size": [w, h],
               "depth": bool(depths), "semantic": bool(sems), "instance": bool(insts),
               "class_names_file": str(class_file) if class_file else None}
    return ConversionPlan(inputs=inputs, build=build, summary=summary)
