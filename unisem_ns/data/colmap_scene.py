"""COLMAP scenes in the Gaussian-Grouping / LERF-Mask layout -> a scene folder in our layout (``DATA.md``).

Source layout (Gaussian Grouping ``scene/dataset_readers.py`` and ``docs/dataset.md``)::

    <scene>/images/<name>.jpg|png                 the images (``images_dir`` picks another folder, e.g. images_2)
    <scene>/sparse/0/{cameras,images,points3D}.bin|txt   COLMAP model (also found: sparse/, colmap/sparse/0)
      or <scene>/transforms.json                   a Nerfstudio scene instead of a COLMAP model
    <scene>/object_mask/<stem>.png                optional: per-view instance ids (stems match the images)
    <scene>/images_train/<stem>.*                 optional (LERF-Mask): which images are train views
    <scene>/test_mask/<idx>/<text query>.png      optional (LERF-Mask): GT masks of text queries per test view

Conversion:

- **Poses** exactly as Nerfstudio's ``colmap_to_json``: ``c2w = inv([R | t])`` with ``R = qvec2rotmat(qvec)``, then
  the y/z columns are negated (OpenCV -> OpenGL) and, unless ``keep_original_world_coordinate``, the world is
  re-axed (rows ``[0, 2, 1]``, new z negated) and that ``applied_transform`` (3x4) is written to
  ``transforms.json`` and applied to the ``points3D`` written as ``sparse_pc.ply``.
- **Intrinsics** from Nerfstudio's ``parse_colmap_camera_params`` (per frame when the model has several
  cameras), rescaled to the actual image size when the image files differ from the COLMAP camera size
  (e.g. ``images_dir="images_2"``), and by ``image_downscale``. COLMAP's pixel centres are at +0.5, as
  Nerfstudio's, so no shift.
- **Images** keep their names (``images/<basename>``; basenames must be unique) and are linked unless resized;
  ``object_mask/<stem>.png`` is linked as it is (nearest-resized when the image is); images without a mask are
  counted in a warning.
- **Split**: Gaussian Grouping's rules, which LERF-Mask uses: with ``images_train/``, train = the images whose
  stem is in it and test = all others (``--train_split``); else, with a ``transforms.json`` source that has
  ``train_filenames``/``test_filenames``, those; else, when ``test_mask/`` sub-folders are named by image stems,
  those stems are test; else ``llffhold``: in name order, every ``llffhold``-th image (index % llffhold == 0)
  is test (Gaussian Grouping's ``eval`` default). ``split`` forces one rule.
- **Query masks**: ``test_mask/<idx>/<query>.png`` belongs to the ``idx``-th test view *in name order* (Gaussian
  Grouping's ``render_lerf_mask.py`` writes its predictions by ``enumerate(scene.getTestCameras())``, and
  ``readColmapSceneInfo`` sorts cameras by image name); a sub-folder named like an image stem belongs to that
  image. Masks are binarised as the LERF-Mask evaluation does (grey > 128), resized (nearest) to the image
  size, written to ``gt/queries/<stem>/<query>.png`` and listed in ``gt/queries.json``
  (``{"<stem>": {"<query>": "gt/queries/<stem>/<query>.png"}}``).

Reading the COLMAP model uses Nerfstudio's ``colmap_parsing_utils`` and ``parse_colmap_camera_params``
(imported when converting, so importing this module needs no nerfstudio).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import numpy as np

from unisem_ns.data.convert_common import (
    ConversionPlan,
    FrameOut,
    Placer,
    default_cache_dir,
    image_size,
    read_label,
    read_rgb,
    resize_nearest,
    resize_rgb,
    run_cached,
    save_png,
    save_rgb,
    scale_intrinsics,
    warn,
    write_transforms,
)
from unisem_ns.data.scene_io import InputError

__all__ = ["ColmapSceneConfig", "convert_colmap_scene", "find_colmap_model", "colmap_c2w", "APPLIED_TRANSFORM"]

VERSION = 1
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
APPLIED_TRANSFORM = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]])
"""What ``colmap_to_json`` applies to the world unless keep_original_world_coordinate (rows [0, 2, 1], z negated)."""


@dataclass
class ColmapSceneConfig:
    """Options of :func:`convert_colmap_scene` (every field is part of the cache key)."""

    images_dir: str = "images"
    """Image folder inside the scene (e.g. images_2 for 3DGS-style downscaled copies; intrinsics follow)."""
    image_downscale: int = 1
    """Downscale images, object masks and query masks by this factor at conversion."""
    keep_original_world_coordinate: bool = False
    """Keep COLMAP's world axes (else re-axed like ns-process-data, recorded as applied_transform)."""
    split: Literal["auto", "images_train", "transforms", "test_mask", "llffhold", "none"] = "auto"
    """Train/test rule (auto: images_train/, then transforms.json lists, then test_mask stems, then llffhold)."""
    llffhold: int = 8
    """With the llffhold rule: image number i (name order) is test when i % llffhold == 0."""
    link_mode: Literal["symlink", "hardlink", "copy"] = "symlink"
    """How unchanged source files reach the scene folder."""


def find_colmap_model(src: Path) -> Optional[Path]:
    """The COLMAP model folder of a scene (``sparse/0``, ``sparse`` or ``colmap/sparse/0``), or None."""
    for cand in (src / "sparse" / "0", src / "sparse", src / "colmap" / "sparse" / "0"):
        if (cand / "cameras.bin").is_file() or (cand / "cameras.txt").is_file():
            return cand
    return None


def colmap_c2w(qvec: np.ndarray, tvec: np.ndarray, keep_original_world_coordinate: bool = False) -> np.ndarray:
    """A COLMAP image pose as an OpenGL camera-to-world, exactly as Nerfstudio's ``colmap_to_json``."""
    from nerfstudio.data.utils.colmap_parsing_utils import qvec2rotmat

    w2c = np.eye(4)
    w2c[:3, :3] = qvec2rotmat(np.asarray(qvec, dtype=np.float64))
    w2c[:3, 3] = np.asarray(tvec, dtype=np.float64)
    c2w = np.linalg.inv(w2c)
    c2w[0:3, 1:3] *= -1
    if not keep_original_world_coordinate:
        c2w = c2w[np.array([0, 2, 1, 3]), :]
        c2w[2, :] *= -1
    return c2w


def _read_model(model: Path) -> Tuple[Dict, Dict, Optional[Dict]]:
    from nerfstudio.data.utils import colmap_parsing_utils as cpu

    def read(name: str, optional: bool = False):
        b, t = model / f"{name}.bin", model / f"{name}.txt"
        path = b if b.is_file() else t
        if not path.is_file():
            if optional:
                return None
            raise InputError(f"{model / (name + '.bin')}: not found (nor {name}.txt); the COLMAP model is incomplete, rerun COLMAP")
        reader = getattr(cpu, f"read_{name}_{'binary' if path.suffix == '.bin' else 'text'}")
        try:
            return reader(str(path))
        except (OSError, struct.error, ValueError, IndexError, KeyError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: unreadable COLMAP file ({type(e).__name__}); re-export the model") from None

    return read("cameras"), read("images"), read("points3D", optional=True)


def _stem_list(folder: Path) -> List[str]:
    return sorted({p.stem for p in folder.iterdir() if p.suffix in _IMAGE_EXTS}) if folder.is_dir() else []


def convert_colmap_scene(src: Path, dst: Optional[Path] = None, cfg: Optional[ColmapSceneConfig] = None,
                         force: bool = False) -> Path:
    """Convert a COLMAP (or transforms.json) scene in the Gaussian-Grouping / LERF-Mask layout (cached).

    Args:
        src: the scene folder.
        dst: the scene folder to write; default ``<src>/unisem``.
        cfg: options.
        force: rebuild even when the cached conversion is current.

    Returns:
        The scene folder.
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else default_cache_dir(src)
    cfg = cfg or ColmapSceneConfig()
    return run_cached("colmap-scene", VERSION, src, dst, cfg, lambda: _plan(src, dst, cfg), force=force)


@dataclass
class _Frame:
    stem: str
    image: Path
    c2w_gl: np.ndarray
    K: Dict[str, Any]
    extra: Dict[str, Any]
    depth: Optional[Path] = None


def _frames_from_colmap(src: Path, model: Path, img_dir: Path, cfg: ColmapSceneConfig):
    from nerfstudio.process_data.colmap_utils import parse_colmap_camera_params

    cams, ims, pts = _read_model(model)
    frames = []
    for im_id, im in sorted(ims.items(), key=lambda kv: kv[1].name):
        path = img_dir / im.name
        if not path.is_file():
            raise InputError(f"{path}: image named by {model} (image {im_id}) is missing; restore it or pass images_dir")
        cam = cams.get(im.camera_id)
        if cam is None:
            raise InputError(f"{model}: image {im.name} uses camera {im.camera_id}, which the model lacks; re-export it")
        try:
            K = parse_colmap_camera_params(cam)
        except (NotImplementedError, ValueError, IndexError) as e:
            raise InputError(f"{model}: camera {cam.id} ({cam.model}) is not supported ({e}); undistort the images (PINHOLE)") from None
        K = {k: (v.value if hasattr(v, "value") else v) for k, v in K.items()}
        size = image_size(path)
        if size != (cam.width, cam.height):
            K = scale_intrinsics(K, *size)
        frames.append(_Frame(Path(im.name).stem, path, colmap_c2w(im.qvec, im.tvec, cfg.keep_original_world_coordinate),
                             K, {"colmap_im_id": int(im_id)}))
    xyz = rgb = None
    if pts:
        xyz = np.array([p.xyz for p in pts.values()], dtype=np.float64).reshape(-1, 3)
        rgb = np.array([p.rgb for p in pts.values()], dtype=np.uint8).reshape(-1, 3)
        if not cfg.keep_original_world_coordinate:
            xyz = xyz @ APPLIED_TRANSFORM[:3, :3].T + APPLIED_TRANSFORM[:3, 3]
    inputs = [p for p in model.iterdir() if p.name.split(".")[0] in ("cameras", "images", "points3D")]
    extra = {} if cfg.keep_original_world_coordinate else {"applied_transform": APPLIED_TRANSFORM.tolist()}
    return frames, (xyz, rgb), inputs, extra, None


_TF_KEYS = ("camera_model", "fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2")


def _frames_from_transforms(src: Path, cfg: ColmapSceneConfig):
    tpath = src / "transforms.json"
    try:
        meta = json.loads(tpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{tpath}: unreadable JSON ({e}); fix or regenerate the file") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise InputError(f"{tpath}: has no 'frames' list; every image needs a frame with file_path and transform_matrix")
    frames = []
    for n, fr in enumerate(meta["frames"]):
        if "file_path" not in fr:
            raise InputError(f"{tpath}: frame {n} has no file_path; name the frame's image")
        path = src / fr["file_path"]
        if not path.suffix and not path.exists():  # Blender-style paths without extension
            path = next((path.with_suffix(e) for e in _IMAGE_EXTS if path.with_suffix(e).exists()), path)
        if not path.is_file():
            raise InputError(f"{path}: image named by {tpath} (frame {n}) is missing; restore it or remove the frame")
        tm = np.asarray(fr.get("transform_matrix", []), dtype=np.float64)
        if tm.shape not in ((4, 4), (3, 4)):
            raise InputError(f"{tpath}: frame {n} ({fr['file_path']}) needs a 4x4 camera-to-world transform_matrix")
        c2w = np.eye(4)
        c2w[: tm.shape[0]] = tm
        K = {k: fr.get(k, meta.get(k)) for k in _TF_KEYS if fr.get(k, meta.get(k)) is not None}
        if not all(k in K for k in ("fl_x", "fl_y", "cx", "cy")):
            raise InputError(f"{tpath}: frame {n} has no intrinsics (fl_x, fl_y, cx, cy); add them at the top level or per frame")
        size = image_size(path)
        if "w" not in K or "h" not in K:
            K["w"], K["h"] = size
        elif size != (int(K["w"]), int(K["h"])):
            K = scale_intrinsics(K, *size)
        depth = src / fr["depth_file_path"] if "depth_file_path" in fr else None
        frames.append(_Frame(path.stem, path, c2w, K, {}, depth))
    ply = None
    if meta.get("ply_file_path") and (src / meta["ply_file_path"]).is_file():
        ply = src / meta["ply_file_path"]
    extra = {k: meta[k] for k in ("applied_transform", "applied_scale") if k in meta}
    lists = None
    if "train_filenames" in meta and ("test_filenames" in meta or "val_filenames" in meta):
        lists = {Path(p).stem for p in meta.get("test_filenames", meta.get("val_filenames", []))}
    return frames, ply, [tpath] + ([ply] if ply else []), extra, lists


def _plan(src: Path, dst: Path, cfg: ColmapSceneConfig) -> ConversionPlan:
    if not src.is_dir():
        raise InputError(f"{src}: no such scene folder; pass the folder holding images/ and sparse/0 (or transforms.json)")
    img_dir = src / cfg.images_dir
    model = find_colmap_model(src)
    if not img_dir.is_dir() and not (model is None and (src / "transforms.json").is_file()):
        raise InputError(f"{img_dir}: image folder not found; put the images in {cfg.images_dir}/ or pass images_dir")
    if cfg.image_downscale < 1:
        raise InputError(f"image_downscale must be >= 1 (got {cfg.image_downscale})")
    points: Any = None
    if model is not None:
        frames, points, inputs, extra, list_test = _frames_from_colmap(src, model, img_dir, cfg)
    elif (src / "transforms.json").is_file():
        frames, points, inputs, extra, list_test = _frames_from_transforms(src, cfg)
    else:
        raise InputError(
            f"{src / 'sparse' / '0'}: no COLMAP model (cameras/images/points3D .bin or .txt) and no "
            f"{src / 'transforms.json'}; run COLMAP (or ns-process-data) on the images first"
        )
    if not frames:
        raise InputError(f"{model or src}: the model registers no images; rerun COLMAP")
    seen: Dict[str, Path] = {}
    for f in frames:
        if f.stem in seen:
            raise InputError(f"{f.image}: has the same name stem as {seen[f.stem]}; give every image a unique name")
        seen[f.stem] = f.image
    frames.sort(key=lambda f: f.stem)
    stems = [f.stem for f in frames]
    inputs = list(inputs) + [f.image for f in frames] + [f.depth for f in frames if f.depth is not None]

    # Split.
    train_dir, qdir = src / "images_train", src / "test_mask"
    q_entries = sorted(p for p in qdir.iterdir() if p.is_dir()) if qdir.is_dir() else []
    stem_named = [p for p in q_entries if p.name in seen]
    rule = cfg.split
    if rule == "auto":
        if train_dir.is_dir():
            rule = "images_train"
        elif list_test is not None:
            rule = "transforms"
        elif q_entries and len(stem_named) == len(q_entries):
            rule = "test_mask"
        else:
            rule = "llffhold"
    if rule == "images_train":
        if not train_dir.is_dir():
            raise InputError(f"{train_dir}: not found; split 'images_train' needs it (or use split 'auto')")
        train_names = set(_stem_list(train_dir))
        test = [s for s in stems if s not in train_names]
    elif rule == "transforms":
        if list_test is None:
            raise InputError(f"{src / 'transforms.json'}: has no train/test_filenames; use another split rule")
        test = [s for s in stems if s in list_test]
    elif rule == "test_mask":
        test = sorted(p.name for p in stem_named)
    elif rule == "llffhold":
        if cfg.llffhold < 2:
            raise InputError(f"llffhold must be >= 2 (got {cfg.llffhold}); Gaussian Grouping uses 8")
        test = [s for k, s in enumerate(stems) if k % cfg.llffhold == 0]
    else:
        test = []
    test_set = set(test)
    if rule != "none" and (not test or len(test) == len(stems)):
        warn(f"{src}: split '{rule}' leaves {len(test)} of {len(stems)} images for test; writing no split lists")
        test_set = set()

    # Query masks: test_mask/<idx or stem>/<query>.png.
    queries: Dict[str, Dict[str, Path]] = {}
    for d in q_entries:
        if d.name in seen:
            stem = d.name
        elif d.name.isdigit():
            idx = int(d.name)
            if idx >= len(test):
                raise InputError(
                    f"{d}: test view index {idx} but the split has {len(test)} test image(s) "
                    f"(rule '{rule}'); check images_train/ or pass split"
                )
            stem = test[idx]
        else:
            raise InputError(f"{d}: names neither a test view index nor an image stem; rename it")
        for m in sorted(d.glob("*.png")):
            queries.setdefault(stem, {})[m.stem] = m
            inputs.append(m)

    mask_dir = src / "object_mask"
    masks = {p.stem: p for p in mask_dir.glob("*.png")} if mask_dir.is_dir() else {}
    inputs += [masks[s] for s in stems if s in masks]
    if masks:
        missing = [s for s in stems if s not in masks]
        if missing:
            warn(f"{mask_dir}: {len(missing)} image(s) have no object mask (e.g. {missing[0]}.png)")
    ds = int(cfg.image_downscale)

    def build(tmp: Path) -> None:
        placer = Placer(src, tmp, dst, cfg.link_mode)
        out_frames: List[FrameOut] = []
        sizes: Dict[str, Tuple[int, int]] = {}
        for f in frames:
            W, H = int(f.K["w"]), int(f.K["h"])
            w, h = int(round(W / ds)), int(round(H / ds))
            K = scale_intrinsics(f.K, w, h) if ds != 1 else dict(f.K)
            sizes[f.stem] = (w, h)
            rel = f"images/{f.image.name}"
            if ds == 1:
                placer.place(f.image, rel)
            else:
                save_rgb(tmp / rel, resize_rgb(read_rgb(f.image), w, h))
            depth_rel = None
            if f.depth is not None:
                depth_rel = f"depths/{f.depth.name}"
                if ds == 1:
                    placer.place(f.depth, depth_rel)
                elif f.depth.suffix == ".png":
                    save_png(tmp / depth_rel, resize_nearest(read_label(f.depth), w, h).astype(np.uint16))
                else:
                    np.save(tmp / depth_rel, resize_nearest(np.load(f.depth), w, h))
            if f.stem in masks:
                mrel = f"object_mask/{f.stem}.png"
                msize = image_size(masks[f.stem])
                if msize == (w, h):
                    placer.place(masks[f.stem], mrel)
                else:
                    ids = resize_nearest(read_label(masks[f.stem]), w, h)
                    save_png(tmp / mrel, ids.astype(np.uint8 if ids.max(initial=0) < 256 else np.uint16))
            out_frames.append(FrameOut(rel, f.c2w_gl, f.stem in test_set, K, depth_rel, dict(f.extra)))
        ply = None
        if isinstance(points, Path):
            placer.place(points, "sparse_pc.ply")
            ply = "sparse_pc.ply"
        elif points is not None and points[0] is not None and len(points[0]):
            from unisem_ns.data.synthetic_scene import write_ply

            write_ply(tmp / "sparse_pc.ply", points[0].astype(np.float32), points[1])
            ply = "sparse_pc.ply"
        if queries:
            from PIL import Image

            entries: Dict[str, Dict[str, str]] = {}
            for stem, qs in sorted(queries.items()):
                w, h = sizes[stem]
                for text, mpath in sorted(qs.items()):
                    try:
                        with Image.open(mpath) as im:
                            grey = np.asarray(im.convert("L"))
                    except OSError as e:
                        raise InputError(f"{mpath}: unreadable mask ({type(e).__name__}); replace the file") from None
                    mask = resize_nearest(grey > 128, w, h)
                    rel = f"gt/queries/{stem}/{text}.png"
                    save_png(tmp / rel, mask.astype(np.uint8) * 255)
                    entries.setdefault(stem, {})[text] = rel
            (tmp / "gt").mkdir(exist_ok=True)
            (tmp / "gt" / "queries.json").write_text(json.dumps(entries, indent=2) + "\n")
        write_transforms(tmp, out_frames, ply_file_path=ply, extra=extra, split_lists=bool(test_set))

    summary = {"frames": len(frames), "split_rule": rule, "test": sorted(test_set),
               "queries": {s: sorted(q) for s, q in queries.items()}, "object_masks": len(masks)}
    return ConversionPlan(inputs=inputs, build=build, summary=summary)
