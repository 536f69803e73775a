"""Shared machinery of the real-dataset converters (``replica``, ``scannet``, ``colmap_scene``).

Every converter turns a dataset in its own layout into ONE scene folder in our layout
(``docs/DATA.md``): ``transforms.json`` (OpenGL camera-to-world), ``images/``, ``depths/`` (uint16 PNG,
millimetres: Nerfstudio multiplies ``.npy`` depths by ``depth_unit_scale_factor`` too, so we always write PNG),
``sparse_pc.ply``, ``gt/`` and ``object_mask/``, with ``train_filenames`` / ``val_filenames`` / ``test_filenames``.

Caching (:func:`run_cached`): a converter first *plans* (lists the source frames, reads the poses, checks the
inputs) and names the source files it will read. The cache key is the converter name and version, the
converter settings and ``(path, size, mtime)`` of those files; it is stored in ``<dst>/unisem_convert.json``.
A folder whose key matches is reused untouched. Otherwise the scene is built in a temporary sibling folder
(``.<name>.tmp-*``) and renamed into place, so an interrupted conversion never leaves a folder that looks
complete, and concurrent first uses are safe (the first rename wins).

Images are symlinked (relative link when the scene lies inside the source folder, absolute otherwise),
hard-linked or copied (``link_mode``); any file that has to change (resize, relabel) is written anew.
Bad input raises :class:`~unisem_ns.data.scene_io.InputError` with one line naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from unisem_ns.data.scene_io import InputError
from unisem_ns.utils.atomic import publish_dir

__all__ = [
    "MANIFEST_NAME",
    "LINK_MODES",
    "ConversionPlan",
    "FrameOut",
    "LabelScan",
    "default_cache_dir",
    "run_cached",
    "is_conversion_current",
    "opencv_to_opengl",
    "select_frames",
    "read_rgb",
    "read_label",
    "image_size",
    "resize_nearest",
    "resize_rgb",
    "Placer",
    "save_png",
    "save_rgb",
    "scale_intrinsics",
    "backproject_points",
    "write_transforms",
    "write_gt_labels_meta",
    "numeric_stem",
    "apply_lut",
    "map_ids",
    "label_png",
    "points_budget",
    "warn",
]

MANIFEST_NAME = "unisem_convert.json"
MANIFEST_FORMAT = "unisem-convert/1"
LINK_MODES = ("symlink", "hardlink", "copy")
_STALE_TMP_S = 6 * 3600

_log = logging.getLogger("unisem_ns.data.convert")


def warn(msg: str) -> None:
    """One-line warning on the converters' logger (printed to stderr when logging is not configured)."""
    _log.warning(msg)


# --------------------------------------------------------------------------------------------
# Cache + atomic folder build
# --------------------------------------------------------------------------------------------


def default_cache_dir(src: Path) -> Path:
    """Where a converted scene goes by default: ``<src>/unisem``."""
    return Path(src) / "unisem"


@dataclass
class ConversionPlan:
    """What a converter will do: the source files it reads (the cache key) and how to build the scene."""

    inputs: List[Path]
    build: Callable[[Path], None]
    """Writes the complete scene into the given empty folder (transforms.json included)."""
    summary: Dict[str, Any] = field(default_factory=dict)
    """Stored in the manifest for people reading it (frame counts, label set, ...)."""


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj


def _fingerprint(files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted({str(Path(f)) for f in files}):
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


def _cache_key(kind: str, version: int, src: Path, settings: Any, inputs: Sequence[Path]) -> str:
    blob = json.dumps(
        {"kind": kind, "version": version, "source": str(Path(src).resolve()), "settings": _jsonable(settings)},
        sort_keys=True,
    )
    return hashlib.sha256((blob + _fingerprint(inputs)).encode()).hexdigest()


def _read_manifest(dst: Path) -> Optional[Dict[str, Any]]:
    try:
        m = json.loads((Path(dst) / MANIFEST_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return m if isinstance(m, dict) and m.get("format") == MANIFEST_FORMAT else None


def is_conversion_current(dst: Path, key: str) -> bool:
    m = _read_manifest(dst)
    return m is not None and m.get("key") == key and (Path(dst) / "transforms.json").is_file()


def _sweep_stale(parent: Path, prefix: str) -> None:
    now = time.time()
    for p in parent.glob(prefix + "*"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def run_cached(
    kind: str,
    version: int,
    src: Path,
    dst: Path,
    settings: Any,
    plan: Callable[[], ConversionPlan],
    force: bool = False,
) -> Path:
    """Build ``dst`` from ``src`` unless an up-to-date conversion is already there.

    Args:
        kind: converter name (``"replica"``, ...), part of the cache key.
        version: converter output version; bump it when the output changes.
        src: the source dataset folder.
        dst: the scene folder to produce.
        settings: the converter settings (a dataclass or JSON-able), part of the cache key.
        plan: reads and checks the source and returns a :class:`ConversionPlan` (raises ``InputError``).
        force: rebuild even when the cache is current.

    Returns:
        ``dst``, a complete scene folder.
    """
    src, dst = Path(src), Path(dst)
    p = plan()
    key = _cache_key(kind, version, src, settings, p.inputs)
    if not force and is_conversion_current(dst, key):
        return dst
    if dst.exists() and not dst.is_dir():
        raise InputError(f"{dst}: the conversion cache path is a file; pass another cache_dir or remove the file")
    if dst.is_dir() and _read_manifest(dst) is None and any(dst.iterdir()):
        raise InputError(
            f"{dst}: folder exists and is not a unisem conversion (no {MANIFEST_NAME}); "
            "pass another cache_dir or remove the folder"
        )
    parent = dst.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp_prefix = f".{dst.name}.tmp-"
        _sweep_stale(parent, tmp_prefix)
        tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=parent))
    except OSError as e:
        raise InputError(
            f"{parent}: cannot write the converted scene here ({e.strerror or e}); pass a writable cache_dir"
        ) from None
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _log.info("converting %s (%s) into %s (one-time)", src, kind, dst)
        p.build(tmp)
        if not (tmp / "transforms.json").is_file():  # pragma: no cover - a converter bug
            raise RuntimeError(f"{kind} converter wrote no transforms.json")
        manifest = {
            "format": MANIFEST_FORMAT,
            "converter": kind,
            "version": version,
            "source": str(src.resolve()),
            "settings": _jsonable(settings),
            "key": key,
            "summary": _jsonable(p.summary),
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        return publish_dir(tmp, dst, lambda d: is_conversion_current(d, key))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Frames, splits, poses
# --------------------------------------------------------------------------------------------


def opencv_to_opengl(c2w: np.ndarray) -> np.ndarray:
    """Camera-to-world with OpenCV camera axes (x right, y down, z forward) -> OpenGL axes (x right, y up,
    z backward), the convention of ``transforms.json``: negate the y and z columns (as ``colmap_to_json``)."""
    out = np.array(c2w, dtype=np.float64).reshape(4, 4).copy()
    out[0:3, 1:3] *= -1
    return out


def numeric_stem(path: Path, prefix: str = "") -> Optional[int]:
    """The integer in ``<prefix><int>.<ext>`` (None if the name has another form)."""
    s = Path(path).stem
    if prefix:
        if not s.startswith(prefix):
            return None
        s = s[len(prefix):]
    return int(s) if s.isdigit() else None


def select_frames(
    ids: Sequence[int],
    frame_step: int = 1,
    max_frames: Optional[int] = None,
    split: str = "interval",
    test_interval: int = 8,
) -> List[Tuple[int, bool]]:
    """Pick frames and split them into train / test.

    Args:
        ids: source frame ids in sequence order.
        frame_step: keep every ``frame_step``-th frame (position 0, k, 2k, ... in ``ids``).
        max_frames: cap on the number of frames kept, spread evenly over the kept ones (None: no cap).
        split: ``"interval"``: among the kept frames, position ``% test_interval == 0`` is test (Nerfstudio's
            and the synthetic scenes' rule); ``"semantic-nerf"``: Semantic-NeRF's interleaved split, train =
            positions ``0, k, 2k, ...`` and test = train + ``k // 2`` with ``k = frame_step`` (>= 2), the
            frames in between unused; ``"none"``: all train (the dataparser then falls back to every 8th).
        test_interval: see ``split="interval"`` (>= 2).

    Returns:
        ``[(id, is_test), ...]`` in sequence order.
    """
    ids = list(ids)
    if frame_step < 1:
        raise InputError(f"frame_step must be >= 1 (got {frame_step}); pass e.g. --frame-step 1")
    if split == "semantic-nerf":
        if frame_step < 2:
            raise InputError("split 'semantic-nerf' needs frame_step >= 2 (Semantic-NeRF uses 5): pass --frame-step 5")
        train_pos = list(range(0, len(ids), frame_step))
        picked = sorted([(p, False) for p in train_pos] + [(p + frame_step // 2, True) for p in train_pos
                                                           if p + frame_step // 2 < len(ids)])
    elif split in ("interval", "none"):
        if split == "interval" and test_interval < 2:
            raise InputError(f"test_interval must be >= 2 (got {test_interval}); pass e.g. --test-interval 8")
        kept = list(range(0, len(ids), frame_step))
        picked = [(p, split == "interval" and k % test_interval == 0) for k, p in enumerate(kept)]
    else:
        raise InputError(f"unknown split {split!r}; use 'interval', 'semantic-nerf' or 'none'")
    if max_frames is not None and max_frames > 0 and len(picked) > max_frames:
        sel = np.unique(np.round(np.linspace(0, len(picked) - 1, max_frames)).astype(int))
        picked = [picked[i] for i in sel]
    return [(ids[p], t) for p, t in picked]


# --------------------------------------------------------------------------------------------
# Image I/O
# --------------------------------------------------------------------------------------------


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: not found; restore the file or drop its frame")
    try:
        im = Image.open(path)
        im.load()
        return im
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: unreadable image ({type(e).__name__}); replace the file or drop its frame") from None


def image_size(path: Path) -> Tuple[int, int]:
    """``(width, height)`` from the image header."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: not found; restore the file or drop its frame")
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise InputError(f"{path}: unreadable image ({type(e).__name__}); replace the file or drop its frame") from None


def read_rgb(path: Path) -> np.ndarray:
    """uint8 [H, W, 3]."""
    im = _open(path)
    return np.asarray(im.convert("RGB"))


def read_label(path: Path) -> np.ndarray:
    """An integer id map (8- or 16-bit PNG, palette indices kept) as int64 [H, W]."""
    im = _open(path)
    if im.mode in ("RGB", "RGBA", "LA"):
        arr = np.asarray(im)[..., 0]
    else:
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise InputError(f"{path}: expected a single-channel id map, got shape {arr.shape}; export it as an 8/16-bit PNG")
    return arr.astype(np.int64)


def resize_nearest(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of [H, W, ...] (sample at pixel centres), any dtype."""
    h, w = arr.shape[:2]
    if (w, h) == (width, height):
        return arr
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return arr[rows][:, cols]


def resize_rgb(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if arr.shape[1] == width and arr.shape[0] == height:
        return arr
    return np.asarray(Image.fromarray(arr).resize((width, height), Image.Resampling.LANCZOS))


def save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path, format="PNG")


def save_rgb(path: Path, arr: np.ndarray) -> None:
    """PNG or JPEG (quality 95) by the file extension."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(np.ascontiguousarray(arr)).save(path, format="JPEG", quality=95)
    else:
        Image.fromarray(np.ascontiguousarray(arr)).save(path, format="PNG")


class Placer:
    """Puts source files into a scene being built in ``tmp`` that will be renamed to ``dst``.

    ``mode``: ``"symlink"`` (relative link when ``dst`` lies inside ``src_root``, so moving the whole dataset
    keeps the links valid; absolute otherwise), ``"hardlink"`` or ``"copy"``; a failing link falls back to a copy.
    """

    def __init__(self, src_root: Path, tmp: Path, dst: Path, mode: str = "symlink") -> None:
        if mode not in LINK_MODES:
            raise InputError(f"unknown link_mode {mode!r}; use one of {', '.join(LINK_MODES)}")
        self.tmp, self.dst, self.mode = Path(tmp), Path(dst).absolute(), mode
        root = Path(src_root).resolve()
        final = self.dst.parent.resolve() / self.dst.name
        self.relative = final == root or root in final.parents

    def place(self, src: Path, rel_out: str) -> None:
        src = Path(src)
        if not src.exists():
            raise InputError(f"{src}: not found; restore the file or drop its frame")
        out = self.tmp / rel_out
        out.parent.mkdir(parents=True, exist_ok=True)
        if self.mode == "symlink":
            target = src.resolve()
            if self.relative:
                final_dir = self.dst.parent.resolve() / self.dst.name / Path(rel_out).parent
                link = os.path.relpath(target, final_dir)
            else:
                link = str(target)
            try:
                os.symlink(link, out)
                return
            except OSError:
                pass
        elif self.mode == "hardlink":
            try:
                os.link(src, out)
                return
            except OSError:
                pass
        shutil.copy2(src, out)


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


def scale_intrinsics(K: Dict[str, float], width: int, height: int) -> Dict[str, float]:
    """Intrinsics ``{fl_x, fl_y, cx, cy, w, h}`` rescaled to a ``width x height`` image (pixel-corner convention:
    ``cx' = cx * sx``, exact for Nerfstudio / gsplat, whose pixel centres lie at +0.5)."""
    sx, sy = width / float(K["w"]), height / float(K["h"])
    out = dict(K)
    out.update(fl_x=K["fl_x"] * sx, fl_y=K["fl_y"] * sy, cx=K["cx"] * sx, cy=K["cy"] * sy, w=int(width), h=int(height))
    return out


def backproject_points(
    depth_m: np.ndarray, rgb: np.ndarray, K: Dict[str, float], c2w_cv: np.ndarray, n: int, rng: np.random.Generator
) -> Tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` random pixels with valid depth lifted to world points (OpenCV camera, z-depth).

    Returns ``(xyz float32 [M, 3], rgb uint8 [M, 3])``.
    """
    valid = np.flatnonzero((depth_m > 0) & np.isfinite(depth_m))
    if valid.size == 0 or n <= 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    sel = rng.choice(valid, size=min(n, valid.size), replace=False)
    h, w = depth_m.shape
    v, u = np.divmod(sel, w)
    z = depth_m.reshape(-1)[sel].astype(np.float64)
    x = (u + 0.5 - K["cx"]) / K["fl_x"] * z
    y = (v + 0.5 - K["cy"]) / K["fl_y"] * z
    cam = np.stack([x, y, z], 1)
    world = cam @ c2w_cv[:3, :3].T + c2w_cv[:3, 3]
    return world.astype(np.float32), rgb.reshape(-1, 3)[sel].astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


class LabelScan:
    """First pass over the label maps: which classes occur and each instance's majority class."""

    def __init__(self) -> None:
        self.classes: set = set()
        self._pairs: Dict[Tuple[int, int], int] = {}

    def add(self, sem: np.ndarray, inst: Optional[np.ndarray] = None) -> None:
        self.classes.update(int(c) for c in np.unique(sem))
        if inst is None:
            return
        if inst.shape != sem.shape:
            inst = resize_nearest(inst, sem.shape[1], sem.shape[0])
        key = inst.astype(np.int64) * (1 << 24) + sem.astype(np.int64)
        u, c = np.unique(key, return_counts=True)
        for k, n in zip(u.tolist(), c.tolist()):
            pair = (k >> 24, k & ((1 << 24) - 1))
            self._pairs[pair] = self._pairs.get(pair, 0) + n

    def instance_classes(self) -> Dict[int, int]:
        """``{raw instance id: majority class id}`` (ties: the smaller class id)."""
        best: Dict[int, Tuple[int, int]] = {}
        for (i, c), n in self._pairs.items():
            cur = best.get(i)
            if cur is None or n > cur[0] or (n == cur[0] and c < cur[1]):
                best[i] = (n, c)
        return {i: c for i, (n, c) in best.items()}

    def instance_remap(self, void_ids: Sequence[int] = ()) -> Tuple[Dict[int, int], Dict[int, int]]:
        """Compact instance ids: raw ids whose majority class is void (0), and ``void_ids``, go to 0; the rest
        to 1..N in raw-id order.

        Returns ``(raw -> new id, new id -> class id)``.
        """
        cls = self.instance_classes()
        keep = sorted(i for i, c in cls.items() if c != 0 and i not in set(void_ids))
        remap = {i: k + 1 for k, i in enumerate(keep)}
        return remap, {remap[i]: cls[i] for i in keep}


def apply_lut(arr: np.ndarray, lut: np.ndarray, default: int = 0) -> np.ndarray:
    """``lut[arr]`` with ids outside the table mapped to ``default``."""
    arr = np.asarray(arr, dtype=np.int64)
    out = np.full(arr.shape, default, dtype=lut.dtype)
    ok = (arr >= 0) & (arr < lut.shape[0])
    out[ok] = lut[arr[ok]]
    return out


def map_ids(arr: np.ndarray, mapping: Dict[int, int], default: int = 0) -> np.ndarray:
    """Map ids through a dict (missing ids -> ``default``)."""
    if not mapping:
        return np.full(arr.shape, default, dtype=np.int64)
    lut = np.full(max(max(mapping), int(arr.max(initial=0))) + 1, default, dtype=np.int64)
    for k, v in mapping.items():
        if k >= 0:
            lut[k] = v
    return apply_lut(arr, lut, default)


def label_png(arr: np.ndarray) -> np.ndarray:
    """uint8 when every id fits, else uint16."""
    arr = np.asarray(arr)
    if arr.size and arr.max() > 65535:
        raise ValueError(f"label id {int(arr.max())} does not fit a 16-bit PNG")
    return arr.astype(np.uint8 if (arr.size == 0 or arr.max() < 256) else np.uint16)


def write_gt_labels_meta(scene: Path, class_names: Sequence[str], instance_classes: Optional[Dict[int, int]]) -> None:
    """``gt/classes.json`` (index = class id, 0 = "void") and ``gt/instances.json`` ({id: class name})."""
    gt = Path(scene) / "gt"
    gt.mkdir(parents=True, exist_ok=True)
    (gt / "classes.json").write_text(json.dumps(list(class_names), indent=2) + "\n")
    if instance_classes is not None:
        inst = {str(i): class_names[c] for i, c in sorted(instance_classes.items())}
        (gt / "instances.json").write_text(json.dumps(inst, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# transforms.json
# --------------------------------------------------------------------------------------------


@dataclass
class FrameOut:
    """One converted frame as it goes into transforms.json."""

    file_path: str
    c2w_gl: np.ndarray
    is_test: bool
    intrinsics: Dict[str, Any]
    depth_file_path: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


_K_KEYS = ("camera_model", "fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2")


def write_transforms(
    scene: Path,
    frames: Sequence[FrameOut],
    *,
    ply_file_path: Optional[str] = None,
    extra: Optional[Dict[str, Any]] = None,
    split_lists: bool = True,
) -> None:
    """Write ``transforms.json`` (last, so its presence marks a complete build).

    Intrinsics shared by every frame go to the top level, others per frame. Frames are sorted by file name
    (Nerfstudio sorts them that way too). With ``split_lists``, ``train_filenames`` / ``val_filenames`` /
    ``test_filenames`` (val = test) are written from ``FrameOut.is_test``.
    """
    frames = sorted(frames, key=lambda f: f.file_path)
    if not frames:
        raise InputError(f"{scene}: no frames to convert; check the source folder and frame selection options")
    meta: Dict[str, Any] = {}
    shared = {}
    for k in _K_KEYS:
        vals = [f.intrinsics.get(k) for f in frames]
        if vals[0] is not None and all(v == vals[0] for v in vals):
            shared[k] = vals[0]
    shared.setdefault("camera_model", "OPENCV")
    meta.update(shared)
    if any(f.depth_file_path is not None for f in frames):
        meta["depth_unit_scale_factor"] = 0.001  # what the depth PNGs hold (Nerfstudio reads its own option)
    if ply_file_path:
        meta["ply_file_path"] = ply_file_path
    if extra:
        meta.update(extra)
    out_frames = []
    for f in frames:
        d: Dict[str, Any] = {"file_path": f.file_path}
        for k, v in f.intrinsics.items():
            if k in _K_KEYS and k not in shared:
                d[k] = v
        if f.depth_file_path is not None:
            d["depth_file_path"] = f.depth_file_path
        d["transform_matrix"] = [[float(v) for v in row] for row in np.asarray(f.c2w_gl, dtype=np.float64)[:4]]
        d.update(f.extra)
        out_frames.append(d)
    if split_lists:
        test = [f.file_path for f in frames if f.is_test]
        train = [f.file_path for f in frames if not f.is_test]
        if test and train:
            meta["train_filenames"] = train
            meta["val_filenames"] = list(test)
            meta["test_filenames"] = test
        elif not train:
            raise InputError(f"{scene}: every selected frame is a test frame; change the split options")
        else:
            warn(f"{scene}: no selected frame is a test frame; writing no split lists (the parser takes every 8th)")
    meta["frames"] = out_frames
    (Path(scene) / "transforms.json").write_text(json.dumps(meta, indent=2) + "\n")


def points_budget(total: int, n_frames: int) -> int:
    return 0 if total <= 0 or n_frames <= 0 else int(math.ceil(total / n_frames))
