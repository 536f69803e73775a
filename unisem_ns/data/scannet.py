"""ScanNet scenes -> scene folders in our layout (``docs/DATA.md``).

Two source layouts:

**SensReader export** (``ScanNet/SensReader/python/reader.py``, plus the ``*_2d-label-filt.zip`` /
``*_2d-instance-filt.zip`` label images), one scene::

    <scene>/color/<i>.jpg                     colour, 1296x968
    <scene>/depth/<i>.png                     uint16 depth in millimetres, 640x480
    <scene>/pose/<i>.txt                      4x4 camera-to-world, OpenCV camera axes; lost tracking = -inf/nan
    <scene>/intrinsic/intrinsic_color.txt     4x4 (3x3 used) of the colour camera at the colour size
    <scene>/intrinsic/intrinsic_depth.txt     (not used, see below)
    <scene>/label-filt/<i>.png                optional: ScanNet label ids (``id`` column of the tsv), colour size
    <scene>/instance-filt/<i>.png             optional: instance ids (0 = none), consistent across the scene
    (``<scene>/<scene>_2d-label-filt/label-filt/`` and ``..._2d-instance-filt/instance-filt/`` are found too)

  plus ``scannetv2-labels.combined.tsv`` (columns ``id``, ``raw_category``, ``nyu40id``, ``nyu40class``, ...),
  passed as ``label_map`` or found in ``<scene>``, ``<scene>/..`` or ``<scene>/../..``.

**LSM / Uni3R preprocessed test set** (``scannet_test``; NVlabs/LSM ``data_process/data.md`` and
HorizonRobotics/Uni3R ``uni3r/datasets/testdata.py``)::

    <root>/scannetv2-labels.combined.tsv
    <root>/selected_seqs_test.json            {"<scene>": ["<view>", ...]} (Uni3R reads it at the root; LSM's
                                              doc shows it per scene: both are looked up); absent -> all views
    <root>/<scene>/images/<view>.jpg          colour
    <root>/<scene>/images/<view>.npz          camera_pose (4x4 c2w, OpenCV), camera_intrinsics (3x3)
    <root>/<scene>/depths/<view>.png          uint16 millimetres
    <root>/<scene>/labels/<view>.png          raw ScanNet label ids (mapped with the tsv, LSM's ``map_func``)

  Its test views are those whose position in the sorted view list satisfies ``i % 8 in (1, 4)``
  (``llff_hold = 8``, ``test_ids = [1, 4]``, Uni3R's defaults); :func:`iter_scannet_scenes` and
  :func:`load_lsm_view` read it directly for a feed-forward corpus loader, :func:`convert_scannet` converts
  one scene (``layout="auto"`` detects it) and :func:`convert_scannet_lsm_corpus` the whole set into a corpus
  folder with ``index.json``.

Choices (SensReader layout):

- **Size**: colour (1296x968) and depth (640x480) differ. ``resize_to="depth"`` (default) resizes colour and
  labels to the depth size, ``"color"`` resizes depth (nearest) to the colour size; ``image_downscale``
  divides further. The intrinsics are always the *colour* camera's, scaled to the output size
  (``fx * W / 1296``, ``cx * W / 1296``, ...), as Semantic-NeRF does ("we use color camera intrinsics and
  resize depth to match"): RGB and labels are colour-camera images, and ScanNet's depth is registered to
  the colour camera. Colour is resized with Lanczos and written as JPEG (quality 95); labels and depth with
  nearest neighbour. Unchanged files are linked.
- **Poses** are OpenCV camera-to-world; we write ``c2w @ diag(1, -1, -1, 1)`` (OpenGL), world kept. Frames whose
  pose has -inf/nan are skipped with a warning (``invalid_poses="error"`` raises instead).
- **Frames / split**: frames are chosen by their position among ``color/*.jpg`` (numeric order) with
  ``frame_step`` / ``max_frames`` / ``split`` (see ``convert_common.select_frames``) *before* invalid poses
  are dropped, so ``frame_step=10`` keeps source frames 0, 10, 20, ... Output images are
  ``images/frame_<i:05d>.jpg``.
- **Labels** (``label_set``): ``"scannet20"`` — the 20 benchmark classes by nyu40 id (wall 1, floor 2,
  cabinet 3, bed 4, chair 5, sofa 6, table 7, door 8, window 9, bookshelf 10, picture 11, counter 12,
  desk 14, curtain 16, refrigerator 24, shower curtain 28, toilet 33, sink 34, bathtub 36,
  otherfurniture 39) renumbered 1..20, everything else void (0); ``"lsm8"`` — LSM/Uni3R's
  {wall, floor, ceiling, chair, table, sofa, bed, other} by ``nyu40class`` name, anything else (also ids
  missing from the tsv) -> other, 0 -> void; ``"nyu40"`` — the nyu40 ids, names from the NYU40 list.
  Instances take the majority class of their pixels; void instances become 0, the rest are renumbered 1..N.
- A seed point cloud ``sparse_pc.ply`` is back-projected from the train frames' depth.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterator, List, Literal, Optional, Sequence, Tuple

import numpy as np

from unisem_ns.data.convert_common import (
    ConversionPlan,
    FrameOut,
    LabelScan,
    Placer,
    apply_lut,
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
    save_rgb,
    scale_intrinsics,
    select_frames,
    warn,
    write_gt_labels_meta,
    write_transforms,
)
from unisem_ns.data.scene_io import InputError
from unisem_ns.utils.atomic import atomic_write_json

__all__ = [
    "ScanNetConfig",
    "LABEL_SETS",
    "NYU40_NAMES",
    "SCANNET20_NYU40_IDS",
    "SCANNET20_NAMES",
    "LSM8_NAMES",
    "LABEL_MAP_NAME",
    "read_label_map",
    "label_set_lut",
    "convert_scannet",
    "LsmTestScene",
    "iter_scannet_scenes",
    "load_lsm_view",
    "convert_scannet_lsm_test",
    "convert_scannet_lsm_corpus",
]

VERSION = 1
LABEL_MAP_NAME = "scannetv2-labels.combined.tsv"

NYU40_NAMES: Tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)
"""NYU40 class names, index + 1 = nyu40 id."""
SCANNET20_NYU40_IDS: Tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
SCANNET20_NAMES: Tuple[str, ...] = tuple(NYU40_NAMES[i - 1] for i in SCANNET20_NYU40_IDS)
LSM8_NAMES: Tuple[str, ...] = ("wall", "floor", "ceiling", "chair", "table", "sofa", "bed", "other")
LABEL_SETS = ("scannet20", "lsm8", "nyu40")


@dataclass
class ScanNetConfig:
    """Options of :func:`convert_scannet` (every field is part of the cache key)."""

    label_map: Optional[Path] = None
    """scannetv2-labels.combined.tsv (default: found in the scene folder or up to two folders above)."""
    label_set: Optional[Literal["scannet20", "lsm8", "nyu40"]] = None
    """Label set of gt/semantic: scannet20 | lsm8 | nyu40 (default: scannet20; lsm8 for the LSM test layout)."""
    labels: bool = True
    """Convert label-filt/ and instance-filt/ (labels/ in the LSM layout) into gt/ when present."""
    frame_step: int = 10
    """Keep every k-th frame (ScanNet is 30 fps video; with split 'semantic-nerf': its step)."""
    max_frames: Optional[int] = None
    """Keep at most this many frames, spread evenly over the sequence (None: all selected)."""
    split: Literal["interval", "semantic-nerf", "none"] = "interval"
    """'interval': every test_interval-th kept frame is test; 'semantic-nerf': train 0,k,2k,... test +k//2."""
    test_interval: int = 8
    """With split 'interval': kept frame number j is a test frame when j % test_interval == 0."""
    resize_to: Literal["depth", "color"] = "depth"
    """Output size: the depth size (colour and labels resized) or the colour size (depth resized)."""
    image_downscale: int = 1
    """Further downscale factor of the output size."""
    invalid_poses: Literal["skip", "error"] = "skip"
    """Frames whose pose holds -inf/nan (lost tracking): skip them with a warning, or fail."""
    seed_points: int = 50000
    """Points in sparse_pc.ply back-projected from the train frames' depth (0: no point cloud)."""
    link_mode: Literal["symlink", "hardlink", "copy"] = "symlink"
    """How unchanged source files reach the scene folder."""
    layout: Literal["auto", "sensreader", "lsm-test"] = "auto"
    """Source layout: SensReader export (color/ depth/ pose/ intrinsic/) or the LSM/Uni3R test scene."""
    lsm_llff_hold: int = 8
    """LSM test layout: test views are positions i with i % lsm_llff_hold in lsm_test_ids."""
    lsm_test_ids: Tuple[int, ...] = (1, 4)
    """LSM test layout: see lsm_llff_hold (Uni3R's defaults: 8 and (1, 4))."""


# --------------------------------------------------------------------------------------------
# Label map
# --------------------------------------------------------------------------------------------


def read_label_map(path: Path) -> Dict[int, Tuple[int, str]]:
    """``scannetv2-labels.combined.tsv`` as ``{label id: (nyu40 id, nyu40 class name)}``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: ScanNet label map not found; pass label_map=PATH to {LABEL_MAP_NAME} (ScanNet's repo)")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t")
            cols = set(reader.fieldnames or [])
            missing = [c for c in ("id", "nyu40id", "nyu40class") if c not in cols]
            if missing:
                raise InputError(
                    f"{path}: label map lacks column(s) {', '.join(missing)}; use ScanNet's {LABEL_MAP_NAME} "
                    "(tab-separated, columns id, raw_category, ..., nyu40id, nyu40class)"
                )
            out: Dict[int, Tuple[int, str]] = {}
            for n, row in enumerate(reader, 2):
                try:
                    lid = int(row["id"])
                    nid = int(row["nyu40id"]) if (row["nyu40id"] or "").strip() else 0
                except (TypeError, ValueError):
                    raise InputError(f"{path}: line {n} has a non-integer id or nyu40id; fix the label map") from None
                out[lid] = (nid, (row["nyu40class"] or "").strip().lower())
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: unreadable label map ({e}); restore {LABEL_MAP_NAME}") from None
    if not out:
        raise InputError(f"{path}: label map has no rows; restore {LABEL_MAP_NAME}")
    return out


def label_set_lut(mapping: Dict[int, Tuple[int, str]], label_set: str) -> Tuple[np.ndarray, List[str], int]:
    """A lookup table ScanNet label id -> class id of ``label_set``.

    Returns:
        ``(lut int64 [max_id + 1], class names with "void" at 0, id for labels missing from the table)``.
    """
    if label_set not in LABEL_SETS:
        raise InputError(f"unknown label_set {label_set!r}; use one of {', '.join(LABEL_SETS)}")
    top = max(mapping) if mapping else 0
    lut = np.zeros(top + 1, dtype=np.int64)
    if label_set == "lsm8":
        names = ["void", *LSM8_NAMES]
        other = names.index("other")
        for lid, (_, cls) in mapping.items():
            lut[lid] = names.index(cls) if cls in LSM8_NAMES else other
        lut[0] = 0
        return lut, names, other
    if label_set == "scannet20":
        names = ["void", *SCANNET20_NAMES]
        to20 = {nid: k + 1 for k, nid in enumerate(SCANNET20_NYU40_IDS)}
        for lid, (nid, _) in mapping.items():
            lut[lid] = to20.get(nid, 0)
    else:
        names = ["void", *NYU40_NAMES]
        for lid, (nid, _) in mapping.items():
            lut[lid] = nid if 1 <= nid <= 40 else 0
    lut[0] = 0
    return lut, names, 0


def _find_label_map(src: Path, given: Optional[Path]) -> Tuple[Optional[Path], Path]:
    """``(found path or None, the path to name in an error)``."""
    if given is not None:
        return (Path(given) if Path(given).is_file() else None), Path(given)
    cands = [src / LABEL_MAP_NAME, src.parent / LABEL_MAP_NAME, src.parent.parent / LABEL_MAP_NAME]
    for c in cands:
        if c.is_file():
            return c, c
    return None, cands[1]


def _require_label_map(src: Path, given: Optional[Path], label_dir: Path) -> Path:
    path, named = _find_label_map(src, given)
    if path is None:
        raise InputError(
            f"{named}: ScanNet label map not found (needed for {label_dir}); pass label_map=PATH to "
            f"{LABEL_MAP_NAME}, or labels=False to convert without ground truth"
        )
    return path


def _read_matrix(path: Path, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found; re-export the scene with ScanNet's SensReader")
    try:
        vals = np.array([float(v) for v in path.read_text().split()], dtype=np.float64)
    except (OSError, UnicodeDecodeError, ValueError):
        raise InputError(f"{path}: {what} is not a whitespace-separated matrix of numbers; re-export it") from None
    if vals.size == 16:
        return vals.reshape(4, 4)
    if vals.size == 9:
        return vals.reshape(3, 3)
    raise InputError(f"{path}: {what} has {vals.size} numbers, expected a 4x4 (or 3x3) matrix; re-export it")


def _K_dict(M: np.ndarray, width: int, height: int) -> Dict[str, float]:
    return {"fl_x": float(M[0, 0]), "fl_y": float(M[1, 1]), "cx": float(M[0, 2]), "cy": float(M[1, 2]),
            "w": int(width), "h": int(height)}


def _numbered(folder: Path, exts: Sequence[str]) -> Dict[int, Path]:
    out: Dict[int, Path] = {}
    for p in folder.iterdir() if folder.is_dir() else []:
        if p.suffix.lower() in exts:
            i = numeric_stem(p)
            if i is not None:
                out[i] = p
    return out


def _first_dir(*cands: Path) -> Optional[Path]:
    for c in cands:
        if c.is_dir():
            return c
    return None


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


def detect_layout(src: Path) -> str:
    src = Path(src)
    if (src / "color").is_dir():
        return "sensreader"
    if (src / "images").is_dir() and any((src / "images").glob("*.npz")):
        return "lsm-test"
    raise InputError(
        f"{src / 'color'}: not found; a ScanNet scene needs color/ depth/ pose/ intrinsic/ (SensReader export) "
        "or images/<view>.jpg + .npz (LSM/Uni3R test layout)"
    )


def convert_scannet(src: Path, dst: Optional[Path] = None, cfg: Optional[ScanNetConfig] = None, force: bool = False) -> Path:
    """Convert one ScanNet scene (SensReader export or LSM/Uni3R test scene) into a scene folder (cached).

    Args:
        src: the scene folder.
        dst: the scene folder to write; default ``<src>/unisem``.
        cfg: options.
        force: rebuild even when the cached conversion is current.

    Returns:
        The scene folder.
    """
    src = Path(src)
    cfg = cfg or ScanNetConfig()
    if not src.is_dir():
        raise InputError(f"{src}: no such ScanNet scene folder; pass the folder holding color/ depth/ pose/ intrinsic/")
    dst = Path(dst) if dst is not None else default_cache_dir(src)
    layout = cfg.layout if cfg.layout != "auto" else detect_layout(src)
    if layout == "lsm-test":
        return convert_scannet_lsm_test(src, dst, cfg, force=force)
    return run_cached("scannet", VERSION, src, dst, cfg, lambda: _plan_sensreader(src, dst, cfg), force=force)


def _plan_sensreader(src: Path, dst: Path, cfg: ScanNetConfig) -> ConversionPlan:
    color_dir, depth_dir, pose_dir = src / "color", src / "depth", src / "pose"
    if not color_dir.is_dir():
        raise InputError(f"{color_dir}: not found; export the scene with ScanNet's SensReader (color/ depth/ pose/ intrinsic/)")
    colors = _numbered(color_dir, (".jpg", ".jpeg", ".png"))
    if not colors:
        raise InputError(f"{color_dir}: no <i>.jpg images; export the scene with ScanNet's SensReader")
    if not pose_dir.is_dir():
        raise InputError(f"{pose_dir}: not found; a ScanNet scene needs pose/<i>.txt (SensReader --export_poses)")
    if cfg.image_downscale < 1:
        raise InputError(f"image_downscale must be >= 1 (got {cfg.image_downscale})")
    ids = sorted(colors)
    picked = select_frames(ids, cfg.frame_step, cfg.max_frames, cfg.split, cfg.test_interval)

    Kc_path = src / "intrinsic" / "intrinsic_color.txt"
    Kc = _read_matrix(Kc_path, "colour intrinsics")
    has_depth = depth_dir.is_dir()
    if not has_depth:
        warn(f"{depth_dir}: not found; converting without depth")
    label_dir = _first_dir(src / "label-filt", src / f"{src.name}_2d-label-filt" / "label-filt") if cfg.labels else None
    inst_dir = _first_dir(src / "instance-filt", src / f"{src.name}_2d-instance-filt" / "instance-filt") if cfg.labels else None
    if label_dir is None:
        inst_dir = None
    label_map = _require_label_map(src, cfg.label_map, label_dir) if label_dir is not None else None
    label_set = cfg.label_set or "scannet20"

    # Poses (and the files each frame needs), dropping invalid ones.
    frames_in: List[Tuple[int, bool, np.ndarray]] = []
    skipped = []
    for i, is_test in picked:
        pose_path = pose_dir / f"{i}.txt"
        c2w = _read_matrix(pose_path, "camera pose")
        if c2w.shape != (4, 4):
            raise InputError(f"{pose_path}: camera pose must be a 4x4 matrix; re-export the scene")
        if not np.all(np.isfinite(c2w)):
            if cfg.invalid_poses == "error":
                raise InputError(
                    f"{pose_path}: non-finite camera pose (inf/nan: ScanNet's mark for lost tracking); "
                    "set invalid_poses='skip' to drop such frames"
                )
            skipped.append(i)
            continue
        for folder, ext, what in ((depth_dir, ".png", "depth map") if has_depth else (None, None, None),
                                  (label_dir, ".png", "label map") if label_dir else (None, None, None),
                                  (inst_dir, ".png", "instance map") if inst_dir else (None, None, None)):
            if folder is not None and not (folder / f"{i}{ext}").is_file():
                raise InputError(f"{folder / f'{i}{ext}'}: {what} of frame {i} is missing; restore it or re-export the scene")
        frames_in.append((i, is_test, c2w))
    if skipped:
        warn(f"{pose_dir}: skipped {len(skipped)} frame(s) with non-finite poses (e.g. {skipped[0]}.txt)")
    if not frames_in:
        raise InputError(f"{pose_dir}: no selected frame has a finite pose; check the export or the frame options")

    wc, hc = image_size(colors[frames_in[0][0]])
    if has_depth and cfg.resize_to == "depth":
        w0, h0 = image_size(depth_dir / f"{frames_in[0][0]}.png")
    else:
        w0, h0 = wc, hc
    ds = int(cfg.image_downscale)
    w, h = int(round(w0 / ds)), int(round(h0 / ds))
    K = scale_intrinsics(_K_dict(Kc, wc, hc), w, h)

    inputs: List[Path] = [Kc_path] + ([label_map] if label_map else [])
    for i, _, _ in frames_in:
        inputs += [colors[i], pose_dir / f"{i}.txt"]
        inputs += [d / f"{i}.png" for d in (depth_dir if has_depth else None, label_dir, inst_dir) if d is not None]

    def build(tmp: Path) -> None:
        placer = Placer(src, tmp, dst, cfg.link_mode)
        lut = names = None
        default = 0
        inst_map: Dict[int, int] = {}
        inst_cls: Dict[int, int] = {}
        if label_dir is not None:
            lut, names, default = label_set_lut(read_label_map(label_map), label_set)
            if inst_dir is not None:
                scan = LabelScan()
                for i, _, _ in frames_in:
                    sem = apply_lut(read_label(label_dir / f"{i}.png"), lut, default)
                    scan.add(sem, read_label(inst_dir / f"{i}.png"))
                inst_map, inst_cls = scan.instance_remap(void_ids=(0,))
        rng = np.random.default_rng(0)
        n_train = sum(1 for _, t, _ in frames_in if not t)
        per_view = points_budget(cfg.seed_points, n_train) if has_depth else 0
        pts, cols = [], []
        frames: List[FrameOut] = []
        for i, is_test, c2w in frames_in:
            stem = f"frame_{i:05d}"
            src_img = colors[i]
            ext = src_img.suffix.lower()
            img_rel = f"images/{stem}{ext}"
            want_points = per_view and not is_test
            rgb = None
            if (wc, hc) == (w, h):
                placer.place(src_img, img_rel)
                if want_points:
                    rgb = read_rgb(src_img)
            else:
                rgb = resize_rgb(read_rgb(src_img), w, h)
                save_rgb(tmp / img_rel, rgb)
            depth_rel = None
            if has_depth:
                dpath = depth_dir / f"{i}.png"
                depth_rel = f"depths/{stem}.png"
                dsize = image_size(dpath)
                if dsize == (w, h):
                    placer.place(dpath, depth_rel)
                    mm = read_label(dpath) if want_points else None
                else:
                    mm = resize_nearest(read_label(dpath), w, h)
                    save_png(tmp / depth_rel, mm.astype(np.uint16))
                if want_points:
                    p, c = backproject_points(mm.astype(np.float64) / 1000.0, rgb, K, c2w, per_view, rng)
                    pts.append(p)
                    cols.append(c)
            if label_dir is not None:
                sem = apply_lut(read_label(label_dir / f"{i}.png"), lut, default)
                save_png(tmp / "gt" / "semantic" / f"{stem}.png", label_png(resize_nearest(sem, w, h)))
                if inst_dir is not None:
                    inst = map_ids(read_label(inst_dir / f"{i}.png"), inst_map)
                    save_png(tmp / "gt" / "instance" / f"{stem}.png", resize_nearest(inst, w, h).astype(np.uint16))
            frames.append(FrameOut(img_rel, opencv_to_opengl(c2w), is_test, dict(K), depth_rel))
        ply = _write_points(tmp, pts, cols)
        if label_dir is not None:
            write_gt_labels_meta(tmp, names, inst_cls if inst_dir is not None else None)
        write_transforms(tmp, frames, ply_file_path=ply, split_lists=cfg.split != "none")

    summary = {"frames": len(frames_in), "skipped_invalid_pose": skipped, "size": [w, h],
               "label_set": label_set if label_dir else None, "label_map": str(label_map) if label_map else None}
    return ConversionPlan(inputs=inputs, build=build, summary=summary)


def _write_points(tmp: Path, pts: List[np.ndarray], cols: List[np.ndarray]) -> Optional[str]:
    if not pts or not sum(len(p) for p in pts):
        return None
    from unisem_ns.data.synthetic_scene import write_ply

    write_ply(tmp / "sparse_pc.ply", np.concatenate(pts), np.concatenate(cols))
    return "sparse_pc.ply"


# --------------------------------------------------------------------------------------------
# LSM / Uni3R preprocessed test set
# --------------------------------------------------------------------------------------------


@dataclass
class LsmTestScene:
    """One scene of the LSM/Uni3R ScanNet test set."""

    name: str
    path: Path
    views: List[str]
    """View names (image stems) in order: ``selected_seqs_test.json`` when it lists the scene, else sorted."""
    label_map: Optional[Path] = None
    test_views: List[str] = field(default_factory=list)
    """Views at positions ``i % llff_hold in test_ids`` (LSM/Uni3R's target views)."""


def _selected_views(scene_dir: Path, split: str = "test") -> Optional[List[str]]:
    for cand in (scene_dir.parent / f"selected_seqs_{split}.json", scene_dir / f"selected_seqs_{split}.json"):
        if cand.is_file():
            try:
                sel = json.loads(cand.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise InputError(f"{cand}: unreadable JSON ({e}); restore the file") from None
            if isinstance(sel, dict) and sel.get(scene_dir.name):
                return sorted(str(v) for v in sel[scene_dir.name])
            if isinstance(sel, list) and cand.parent == scene_dir:
                return sorted(str(v) for v in sel)
    return None


def _lsm_scene(scene_dir: Path, llff_hold: int = 8, test_ids: Sequence[int] = (1, 4)) -> LsmTestScene:
    img_dir = scene_dir / "images"
    if not img_dir.is_dir():
        raise InputError(f"{img_dir}: not found; an LSM/Uni3R test scene keeps images/<view>.jpg and images/<view>.npz")
    views = _selected_views(scene_dir)
    if views is None:
        views = sorted(p.stem for p in img_dir.glob("*.jpg"))
    if not views:
        raise InputError(f"{img_dir}: no <view>.jpg images; point at an LSM/Uni3R test scene folder")
    test = [v for k, v in enumerate(views) if k % llff_hold in set(test_ids)]
    lm, _ = _find_label_map(scene_dir, None)
    return LsmTestScene(scene_dir.name, scene_dir, views, lm, test)


def iter_scannet_scenes(root: Path, llff_hold: int = 8, test_ids: Sequence[int] = (1, 4)) -> Iterator[LsmTestScene]:
    """The scenes of an LSM/Uni3R ``scannet_test`` folder (sub-folders with ``images/``), sorted by name.

    ``scene0696_02`` is skipped, as Uni3R does. Use :func:`load_lsm_view` to read a view.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder; pass the LSM/Uni3R scannet_test folder")
    found = False
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if d.name == "scene0696_02" or not (d / "images").is_dir():
            continue
        found = True
        yield _lsm_scene(d, llff_hold, test_ids)
    if not found:
        raise InputError(f"{root}: no scene folders with images/; pass the LSM/Uni3R scannet_test folder")


def load_lsm_view(scene: LsmTestScene, view: str, label_set: str = "lsm8") -> Dict[str, np.ndarray]:
    """One view of an LSM/Uni3R test scene.

    Returns:
        ``{"image" uint8 [H, W, 3], "depth" float32 metres [H, W] (0 = invalid), "c2w" float64 [4, 4] (OpenCV
        axes), "K" float64 [3, 3], "semantic" int64 [H, W] in ``label_set`` (when labels/ and the tsv exist),
        "valid_pose" bool}``. Depth and labels are resized (nearest) to the image size when they differ.
    """
    img = scene.path / "images" / f"{view}.jpg"
    meta_path = img.with_suffix(".npz")
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: camera file of view {view} not found; restore it (camera_pose, camera_intrinsics)")
    try:
        with np.load(meta_path) as m:
            c2w = np.asarray(m["camera_pose"], dtype=np.float64)
            K = np.asarray(m["camera_intrinsics"], dtype=np.float64)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{meta_path}: unreadable camera file ({type(e).__name__}: {e}); needs camera_pose and camera_intrinsics") from None
    rgb = read_rgb(img)
    h, w = rgb.shape[:2]
    out: Dict[str, np.ndarray] = {"image": rgb, "c2w": c2w, "K": K[:3, :3], "valid_pose": np.array(bool(np.all(np.isfinite(c2w))))}
    dpath = scene.path / "depths" / f"{view}.png"
    if dpath.is_file():
        out["depth"] = resize_nearest(read_label(dpath), w, h).astype(np.float32) / 1000.0
    lpath = scene.path / "labels" / f"{view}.png"
    if lpath.is_file() and scene.label_map is not None:
        lut, _, default = label_set_lut(read_label_map(scene.label_map), label_set)
        out["semantic"] = resize_nearest(apply_lut(read_label(lpath), lut, default), w, h)
    return out


def convert_scannet_lsm_test(src: Path, dst: Optional[Path] = None, cfg: Optional[ScanNetConfig] = None,
                             force: bool = False) -> Path:
    """Convert one LSM/Uni3R test scene (``<root>/<scene>``) into a scene folder (cached).

    Views come from ``selected_seqs_test.json`` (else all images); test views are LSM's
    (``i % lsm_llff_hold in lsm_test_ids``), the others train; ``frame_step`` / ``max_frames`` / ``split`` do
    not apply. Labels use ``label_set`` (default lsm8) with the tsv at the root. Images keep their view names.
    """
    src = Path(src)
    cfg = cfg or ScanNetConfig()
    dst = Path(dst) if dst is not None else default_cache_dir(src)
    return run_cached("scannet-lsm-test", VERSION, src, dst, cfg, lambda: _plan_lsm(src, dst, cfg), force=force)


def _plan_lsm(src: Path, dst: Path, cfg: ScanNetConfig) -> ConversionPlan:
    if not src.is_dir():
        raise InputError(f"{src}: no such LSM/Uni3R test scene folder; pass <scannet_test>/<scene>")
    scene = _lsm_scene(src, cfg.lsm_llff_hold, cfg.lsm_test_ids)
    label_dir = src / "labels" if (cfg.labels and (src / "labels").is_dir()) else None
    label_map = _require_label_map(src, cfg.label_map, label_dir) if label_dir is not None else None
    label_set = cfg.label_set or "lsm8"
    test = set(scene.test_views)
    views = []
    inputs: List[Path] = [label_map] if label_map else []
    skipped = []
    for v in scene.views:
        img = src / "images" / f"{v}.jpg"
        meta_path = img.with_suffix(".npz")
        for p in (img, meta_path):
            if not p.is_file():
                raise InputError(f"{p}: file of view {v} is missing; restore it or drop the view from selected_seqs_test.json")
        try:
            with np.load(meta_path) as m:
                c2w = np.asarray(m["camera_pose"], dtype=np.float64).reshape(4, 4)
                K = np.asarray(m["camera_intrinsics"], dtype=np.float64)[:3, :3]
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"{meta_path}: unreadable camera file ({type(e).__name__}); needs camera_pose and camera_intrinsics") from None
        if not np.all(np.isfinite(c2w)):
            if cfg.invalid_poses == "error":
                raise InputError(f"{meta_path}: non-finite camera_pose (inf/nan); set invalid_poses='skip' to drop the view")
            skipped.append(v)
            continue
        views.append((v, v in test, c2w, K))
        inputs += [img, meta_path]
        for d in ((src / "depths"), label_dir):
            if d is not None and (d / f"{v}.png").is_file():
                inputs.append(d / f"{v}.png")
    if skipped:
        warn(f"{src}: skipped {len(skipped)} view(s) with non-finite camera_pose (e.g. {skipped[0]})")
    if not views:
        raise InputError(f"{src / 'images'}: no view with a finite camera_pose; check the scene")
    has_depth = (src / "depths").is_dir()

    def build(tmp: Path) -> None:
        placer = Placer(src, tmp, dst, cfg.link_mode)
        lut = names = None
        default = 0
        if label_dir is not None:
            lut, names, default = label_set_lut(read_label_map(label_map), label_set)
        rng = np.random.default_rng(0)
        n_train = sum(1 for _, t, _, _ in views if not t)
        per_view = points_budget(cfg.seed_points, n_train) if has_depth else 0
        pts, cols = [], []
        frames: List[FrameOut] = []
        for v, is_test, c2w, K in views:
            img = src / "images" / f"{v}.jpg"
            w, h = image_size(img)
            Kd = _K_dict(K, w, h)
            img_rel = f"images/{v}.jpg"
            placer.place(img, img_rel)
            depth_rel = None
            dpath = src / "depths" / f"{v}.png"
            if has_depth:
                if not dpath.is_file():
                    raise InputError(f"{dpath}: depth map of view {v} is missing; restore it")
                depth_rel = f"depths/{v}.png"
                mm = None
                if image_size(dpath) == (w, h):
                    placer.place(dpath, depth_rel)
                else:
                    mm = resize_nearest(read_label(dpath), w, h)
                    save_png(tmp / depth_rel, mm.astype(np.uint16))
                if per_view and not is_test:
                    mm = read_label(dpath) if mm is None else mm
                    mm = resize_nearest(mm, w, h)
                    p, c = backproject_points(mm / 1000.0, read_rgb(img), Kd, c2w, per_view, rng)
                    pts.append(p)
                    cols.append(c)
            if label_dir is not None:
                lpath = label_dir / f"{v}.png"
                if not lpath.is_file():
                    raise InputError(f"{lpath}: label map of view {v} is missing; restore it or pass labels=False")
                sem = resize_nearest(apply_lut(read_label(lpath), lut, default), w, h)
                save_png(tmp / "gt" / "semantic" / f"{v}.png", label_png(sem))
            frames.append(FrameOut(img_rel, opencv_to_opengl(c2w), is_test, Kd, depth_rel))
        ply = _write_points(tmp, pts, cols)
        if label_dir is not None:
            write_gt_labels_meta(tmp, names, None)
        write_transforms(tmp, frames, ply_file_path=ply)

    summary = {"frames": len(views), "test_views": sorted(test), "skipped_invalid_pose": skipped,
               "label_set": label_set if label_dir else None}
    return ConversionPlan(inputs=inputs, build=build, summary=summary)


def convert_scannet_lsm_corpus(root: Path, dst: Path, cfg: Optional[ScanNetConfig] = None, force: bool = False) -> Path:
    """Convert a whole LSM/Uni3R ``scannet_test`` folder into a corpus (``dst/<scene>/`` + ``dst/index.json``
    with every scene under ``"test"``); each scene is cached on its own."""
    root, dst = Path(root), Path(dst)
    cfg = cfg or ScanNetConfig()
    names = []
    for scene in iter_scannet_scenes(root, cfg.lsm_llff_hold, cfg.lsm_test_ids):
        scfg = cfg if cfg.label_map is not None or scene.label_map is None else replace(cfg, label_map=scene.label_map)
        convert_scannet_lsm_test(scene.path, dst / scene.name, scfg, force=force)
        names.append(scene.name)
    index = {"train": [], "val": [], "test": names}
    path = dst / "index.json"
    try:
        current = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        current = None
    if current != index:
        atomic_write_json(path, index)
    return dst
