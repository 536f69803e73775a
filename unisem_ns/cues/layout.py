"""Reading and writing the 2D cue files of a scene (layout in ``docs/DATA.md``).

Two cue folders, both in the layouts other tools already use, so cues made elsewhere load as they are::

    scene/language_features/<stem>_s.npy   int16/int32 [L, H, W]: per level, the index of the mask covering
                                           each pixel (-1 = none). Indices are rows of ``<stem>_f.npy`` and
                                           are offset across levels (LangSplat: L = 4, levels
                                           default / s / m / l).
    scene/language_features/<stem>_f.npy   float16 [K, D]: one unit embedding per mask.
    scene/language_features/encoder.json   the text space of D: {"kind", "model", "pretrained", "dim"}.
    scene/language_features/manifest.json  (ours) cache manifest of ``unisem-preprocess``.
    scene/object_mask/<stem>.png           uint8/uint16 instance id map, 0 = unassigned; ids need NOT agree
                                           across views (raw SAM), Gaussian Grouping / Unified-Lift layout.
    scene/dense_features/<stem>.npy        float16 [h, w, D]: one unit embedding per pixel of a reduced grid
                                           (LSeg / MaskCLIP style), in the text space of encoder.json;
                                           :func:`read_dense_features` upsamples to the image (bilinear).
    scene/dense_features/encoder.json      the folder's text space (same form as language_features').
    scene/dense_features/manifest.json     (ours) cache manifest of ``unisem-preprocess --dense``.

Every writer writes a temporary file in the destination folder and renames it over the target with
``os.replace``, so an interrupted run never leaves a truncated file under a final name. A missing folder
raises :class:`CueError` (an ``InputError``: one line naming the folder and the command that makes it).

:class:`CueCache` is the resumable, manifest-keyed per-view job runner shared by the simulator and the
SAM + CLIP front end.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

from unisem_ns.data.scene_io import InputError, read_transforms
from unisem_ns.utils.atomic import (  # noqa: F401  (re-exported: the cue writers' API)
    atomic_file,
    atomic_save_npy,
    atomic_save_png,
    atomic_write_bytes,
    atomic_write_json,
    folder_lock,
    remove_stale_temps,
)

__all__ = [
    "LANGUAGE_DIR",
    "OBJECT_MASK_DIR",
    "DENSE_DIR",
    "ENCODER_JSON",
    "MANIFEST_JSON",
    "LANGSPLAT_LEVELS",
    "CueError",
    "CueCache",
    "CueRunReport",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save_npy",
    "atomic_save_png",
    "language_dir",
    "object_mask_dir",
    "language_paths",
    "object_mask_path",
    "save_language_cue",
    "load_language_cue",
    "dense_targets",
    "save_object_mask",
    "load_object_mask",
    "write_encoder_json",
    "read_encoder_json",
    "read_manifest",
    "list_language_stems",
    "list_object_mask_stems",
    "level_names",
    "scene_stems",
    "track",
    "DenseCueCache",
    "dense_dir",
    "dense_path",
    "write_dense_features",
    "read_dense_features",
    "read_dense_encoder_json",
    "list_dense_stems",
    "resize_bilinear",
]

LANGUAGE_DIR = "language_features"
OBJECT_MASK_DIR = "object_mask"
DENSE_DIR = "dense_features"
ENCODER_JSON = "encoder.json"
MANIFEST_JSON = "manifest.json"
MANIFEST_FORMAT = "unisem-cues/1"
LANGSPLAT_LEVELS: Tuple[str, ...] = ("default", "s", "m", "l")
"""LangSplat's level order in ``_s.npy`` when L == 4 (LangSplat trains on levels 1..3 = s, m, l)."""

# What LangSplat's own preprocess.py produces: OpenCLIP ViT-B-16 / laion2b_s34b_b88k, 512-d. Used only to
# describe a LangSplat folder that has no encoder.json (see read_encoder_json).
LANGSPLAT_ENCODER = {"kind": "open_clip", "model": "ViT-B-16", "pretrained": "laion2b_s34b_b88k", "dim": 512}

_T = TypeVar("_T")


class CueError(InputError):
    """A missing or malformed cue file / folder. The message is one line naming it and the fix."""


def _make_hint(scene: Path) -> str:
    return (
        f"make it with `unisem-preprocess --data {scene} --mode sam-clip --sam-checkpoint sam_vit_h_4b8939.pth` "
        f"(real images) or `unisem-preprocess --data {scene} --mode simulate` (synthetic scenes with gt/)"
    )


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def language_dir(scene: Path) -> Path:
    return Path(scene) / LANGUAGE_DIR


def object_mask_dir(scene: Path) -> Path:
    return Path(scene) / OBJECT_MASK_DIR


def language_paths(scene: Path, stem: str) -> Tuple[Path, Path]:
    """``(<stem>_s.npy, <stem>_f.npy)`` in ``scene/language_features``."""
    d = language_dir(scene)
    return d / f"{stem}_s.npy", d / f"{stem}_f.npy"


def object_mask_path(scene: Path, stem: str) -> Path:
    return object_mask_dir(scene) / f"{stem}.png"


def level_names(num_levels: int) -> Tuple[str, ...]:
    """Names of the levels of an ``_s.npy`` with ``num_levels`` levels (LangSplat's for L == 4)."""
    if num_levels == len(LANGSPLAT_LEVELS):
        return LANGSPLAT_LEVELS
    if num_levels == 1:
        return ("default",)
    return tuple(f"level{i}" for i in range(num_levels))


def _require_dir(folder: Path, scene: Path) -> None:
    if not folder.is_dir():
        raise CueError(f"{folder}: not found; {_make_hint(scene)}")


def scene_stems(scene: Path) -> List[str]:
    """Image stems of a scene in ``transforms.json`` frame order (file name without extension)."""
    meta = read_transforms(Path(scene))
    stems = [Path(f["file_path"]).stem for f in meta["frames"] if "file_path" in f]
    dup = sorted(s for s, n in Counter(stems).items() if n > 1)
    if dup:
        raise InputError(
            f"{Path(scene) / 'transforms.json'}: several frames share the image name {dup[0]!r}; cue files are "
            "named by image stem, so give every image a unique file name"
        )
    return stems


# --------------------------------------------------------------------------------------------
# Language features (LangSplat layout)
# --------------------------------------------------------------------------------------------


def save_language_cue(scene: Path, stem: str, seg: np.ndarray, feats: np.ndarray) -> Tuple[Path, Path]:
    """Write ``<stem>_f.npy`` (float16 [K, D]) then ``<stem>_s.npy`` ([L, H, W], int16 if K fits else int32).

    Args:
        seg: [L, H, W] or [H, W] integer mask indices, -1 = none, ``< K``.
        feats: [K, D] embeddings (stored as float16).
    """
    seg = np.asarray(seg)
    if seg.ndim == 2:
        seg = seg[None]
    feats = np.asarray(feats)
    if seg.ndim != 3 or feats.ndim != 2:
        raise ValueError(f"seg must be [L, H, W] and feats [K, D]; got {seg.shape} and {feats.shape}")
    k = feats.shape[0]
    if seg.size and (seg.max() >= k or seg.min() < -1):
        raise ValueError(f"seg indices must lie in [-1, {k - 1}]; got [{seg.min()}, {seg.max()}]")
    dtype = np.int16 if k <= np.iinfo(np.int16).max else np.int32
    s_path, f_path = language_paths(scene, stem)
    atomic_save_npy(f_path, feats.astype(np.float16))
    atomic_save_npy(s_path, seg.astype(dtype))
    return s_path, f_path


def load_language_cue(scene: Path, stem: str, mmap: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Load one view's language cue.

    Returns:
        ``(seg, feats)``: seg [L, H, W] integer (as stored, int16/int32/int64; a stored [H, W] map is
        returned as L = 1), feats [K, D] float32 (as stored dtype when ``mmap``).
    """
    scene = Path(scene)
    _require_dir(language_dir(scene), scene)
    s_path, f_path = language_paths(scene, stem)
    for p in (s_path, f_path):
        if not p.exists():
            raise CueError(f"{p}: not found (no language cue for image {stem!r}); {_make_hint(scene)}")
    seg, feats = (_load_npy(p, mmap) for p in (s_path, f_path))
    if seg.ndim == 2:
        seg = seg[None]
    if seg.ndim != 3 or not np.issubdtype(seg.dtype, np.integer):
        raise CueError(f"{s_path}: expected an integer [L, H, W] array, got {seg.dtype} {seg.shape}; regenerate it")
    if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.floating):
        raise CueError(f"{f_path}: expected a float [K, D] array, got {feats.dtype} {feats.shape}; regenerate it")
    if not mmap:
        feats = feats.astype(np.float32, copy=False)
        if seg.size and int(seg.max()) >= feats.shape[0]:
            raise CueError(
                f"{s_path}: mask index {int(seg.max())} but {f_path.name} has only {feats.shape[0]} rows; regenerate both"
            )
    return seg, feats


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise CueError(f"{path}: unreadable cue file ({reason}); delete it and rerun unisem-preprocess") from None


def dense_targets(seg, feats, level: int = 0):
    """Per-pixel targets ``feats[seg[level]]`` of one level.

    Works on numpy arrays or torch tensors (returns the same kind).

    Args:
        seg: [L, H, W] (or [H, W]) mask indices, -1 = none.
        feats: [K, D] embeddings.
        level: which level.

    Returns:
        ``(target [H, W, D] float32, valid [H, W] bool)``; invalid pixels hold zeros.
    """
    if seg.ndim == 2:
        seg = seg[None]
    if not 0 <= level < seg.shape[0]:
        raise ValueError(f"level {level} out of range: the cue has {seg.shape[0]} level(s)")
    idx = seg[level]
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(seg, torch.Tensor):
        idx = idx.long()
        valid = idx >= 0
        feats = torch.as_tensor(feats, device=idx.device).float()
        if feats.shape[0] == 0:
            return feats.new_zeros((*idx.shape, feats.shape[1])), valid
        target = feats[idx.clamp(min=0)] * valid[..., None]
        return target, valid
    idx = np.asarray(idx).astype(np.int64)
    valid = idx >= 0
    feats = np.asarray(feats, dtype=np.float32)
    if feats.shape[0] == 0:
        return np.zeros((*idx.shape, feats.shape[1]), np.float32), valid
    target = feats[np.maximum(idx, 0)]
    target[~valid] = 0.0
    return target, valid


def list_language_stems(scene: Path) -> List[str]:
    """Stems with both ``_s.npy`` and ``_f.npy`` present (sorted)."""
    d = language_dir(scene)
    _require_dir(d, Path(scene))
    return sorted(p.name[: -len("_s.npy")] for p in d.glob("*_s.npy") if (d / (p.name[: -len("_s.npy")] + "_f.npy")).exists())


# --------------------------------------------------------------------------------------------
# Object masks (Gaussian Grouping / Unified-Lift layout)
# --------------------------------------------------------------------------------------------


def save_object_mask(scene: Path, stem: str, ids: np.ndarray) -> Path:
    """Write an instance id map (0 = unassigned) as uint8 PNG when ids < 256, else uint16."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or (ids.size and (ids.min() < 0 or ids.max() > 65535)):
        raise ValueError(f"object mask must be [H, W] with ids in [0, 65535]; got shape {ids.shape}")
    dtype = np.uint8 if (ids.size == 0 or ids.max() < 256) else np.uint16
    path = object_mask_path(scene, stem)
    atomic_save_png(path, ids.astype(dtype))
    return path


def load_object_mask(scene: Path, stem: str) -> np.ndarray:
    """Load ``object_mask/<stem>.png`` as an int32 [H, W] id map (0 = unassigned)."""
    from PIL import Image, UnidentifiedImageError

    scene = Path(scene)
    _require_dir(object_mask_dir(scene), scene)
    path = object_mask_path(scene, stem)
    if not path.exists():
        raise CueError(f"{path}: not found (no instance mask for image {stem!r}); {_make_hint(scene)}")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise CueError(f"{path}: unreadable instance mask ({e}); delete it and rerun unisem-preprocess") from None
    if arr.ndim == 3:  # an RGB(A) id map: Gaussian Grouping stores single-channel, but be lenient
        arr = arr[..., 0]
    return arr.astype(np.int32)


def list_object_mask_stems(scene: Path) -> List[str]:
    d = object_mask_dir(scene)
    _require_dir(d, Path(scene))
    return sorted(p.stem for p in d.glob("*.png"))


# --------------------------------------------------------------------------------------------
# Dense features (LSeg / MaskCLIP style per-pixel embeddings)
# --------------------------------------------------------------------------------------------


def dense_dir(scene: Path) -> Path:
    return Path(scene) / DENSE_DIR


def dense_path(scene: Path, stem: str) -> Path:
    return dense_dir(scene) / f"{stem}.npy"


def _dense_hint(scene: Path) -> str:
    return (
        f"make it with `unisem-preprocess --data {scene} --mode simulate --dense` (synthetic scenes with gt/) or "
        f"`unisem-preprocess --data {scene} --mode sam-clip --dense-only --clip-checkpoint CKPT` (real images)"
    )


def write_dense_features(scene: Path, stem: str, feats: np.ndarray) -> Path:
    """Write ``dense_features/<stem>.npy``: ``feats`` [h, w, D] L2-normalised per pixel, stored as float16.

    The grid may be coarser than the image (the simulator stores half resolution, MaskCLIP one cell per
    patch); :func:`read_dense_features` upsamples it. Written atomically (temporary file + rename).
    """
    arr = np.asarray(feats, dtype=np.float32)
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"dense features must be [h, w, D] with h, w, D >= 1; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"dense features for {stem!r} hold NaN/inf values")
    arr = arr / np.maximum(np.linalg.norm(arr, axis=-1, keepdims=True), 1e-12)
    path = dense_path(scene, stem)
    atomic_save_npy(path, arr.astype(np.float16))
    return path


def _dense_encoder_path(scene: Path) -> Path:
    """``dense_features/encoder.json`` if present, else ``language_features/encoder.json`` (the shared text space)."""
    own = dense_dir(scene) / ENCODER_JSON
    return own if own.exists() else language_dir(scene) / ENCODER_JSON


def read_dense_encoder_json(scene: Path) -> Dict[str, Any]:
    """The text space of ``scene/dense_features``: its own ``encoder.json``, else ``language_features``' one."""
    scene = Path(scene)
    path = _dense_encoder_path(scene)
    if not path.exists():
        raise CueError(
            f"{dense_dir(scene) / ENCODER_JSON}: not found (nor {language_dir(scene) / ENCODER_JSON}); say which text "
            'space the dense features are in by writing {"kind": ..., "model": ..., "pretrained": ..., "dim": D} '
            "there (or rerun unisem-preprocess --dense)"
        )
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CueError(f"{path}: unreadable JSON ({e}); rerun unisem-preprocess --dense or fix the file") from None
    if not isinstance(info, dict) or "dim" not in info:
        raise CueError(f'{path}: needs at least {{"kind", "model", "dim"}}; rerun unisem-preprocess --dense or fix the file')
    return info


def resize_bilinear(arr: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``arr`` [h, w, C] to ``size`` = (H, W), pixel centres aligned (the same sampling as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``); float32, any number of channels."""
    arr = np.asarray(arr, dtype=np.float32)
    H, W = int(size[0]), int(size[1])

    def taps(n_in: int, n_out: int):
        src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    h, w = arr.shape[:2]
    if h != H:
        i0, i1, t = taps(h, H)
        arr = arr[i0] * (1.0 - t)[:, None, None] + arr[i1] * t[:, None, None]
    if w != W:
        i0, i1, t = taps(w, W)
        arr = arr[:, i0] * (1.0 - t)[None, :, None] + arr[:, i1] * t[None, :, None]
    return arr


def read_dense_features(scene: Path, stem: str, size: Optional[Tuple[int, int]] = None,
                        dim: Optional[int] = None) -> np.ndarray:
    """Load ``dense_features/<stem>.npy`` as float32 [H, W, D] unit rows.

    Args:
        size: ``(H, W)`` of the image: the stored grid is upsampled bilinearly to it (then re-normalised);
            None returns the stored grid [h, w, D].
        dim: the expected D (default: the folder's encoder.json, see :func:`read_dense_encoder_json`).

    Raises :class:`CueError` (one line naming the file and the fix) for a missing / unreadable file, a
    non-float or non-[h, w, D] array, a D that differs from encoder.json, or a grid whose aspect ratio is
    not the image's.
    """
    scene = Path(scene)
    folder = dense_dir(scene)
    if not folder.is_dir():
        raise CueError(f"{folder}: not found; {_dense_hint(scene)}")
    path = dense_path(scene, stem)
    if not path.exists():
        raise CueError(f"{path}: not found (no dense features for image {stem!r}); {_dense_hint(scene)}")
    arr = _load_npy(path, mmap=False)
    if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.floating) or min(arr.shape) < 1:
        raise CueError(f"{path}: expected a float [h, w, D] array, got {arr.dtype} {arr.shape}; regenerate it "
                       "(delete it and rerun unisem-preprocess --dense)")
    want = int(read_dense_encoder_json(scene)["dim"]) if dim is None else int(dim)
    if arr.shape[2] != want:
        where = _dense_encoder_path(scene) if dim is None else "the model"
        raise CueError(f"{path}: features are {arr.shape[2]}-d but {where} says {want}-d; recompute the dense "
                       "features with the scene's encoder (delete the file, rerun unisem-preprocess --dense)")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise CueError(f"{path}: holds NaN/inf values; delete it and rerun unisem-preprocess --dense")
    if size is not None:
        H, W = int(size[0]), int(size[1])
        h, w = arr.shape[:2]
        if 2 * abs(h * W - w * H) > W + H:  # more than rounding each side to whole cells
            raise CueError(f"{path}: grid is {w}x{h} but the image is {W}x{H} (another aspect ratio); recompute the "
                           "dense features for this image (rerun unisem-preprocess --dense)")
        if (h, w) != (H, W):
            arr = resize_bilinear(arr, (H, W))
    return arr / np.maximum(np.linalg.norm(arr, axis=-1, keepdims=True), 1e-12)


def list_dense_stems(scene: Path) -> List[str]:
    d = dense_dir(scene)
    if not d.is_dir():
        raise CueError(f"{d}: not found; {_dense_hint(Path(scene))}")
    return sorted(p.stem for p in d.glob("*.npy"))


# --------------------------------------------------------------------------------------------
# encoder.json / manifest.json
# --------------------------------------------------------------------------------------------


def write_encoder_json(scene: Path, info: Dict[str, Any]) -> Path:
    path = language_dir(scene) / ENCODER_JSON
    atomic_write_json(path, dict(info))
    return path


def read_encoder_json(scene: Path, infer: bool = True) -> Dict[str, Any]:
    """The text space of ``scene/language_features``: ``{"kind", "model", "pretrained", "dim"}``.

    LangSplat's own preprocessing writes no encoder.json; with ``infer`` such a folder whose features are
    512-d is described as LangSplat's encoder (OpenCLIP ViT-B-16 / laion2b_s34b_b88k) with
    ``"inferred": true``. Anything else without encoder.json raises :class:`CueError`.
    """
    scene = Path(scene)
    d = language_dir(scene)
    _require_dir(d, scene)
    path = d / ENCODER_JSON
    if path.exists():
        try:
            info = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CueError(f"{path}: unreadable JSON ({e}); rerun unisem-preprocess or fix the file") from None
        if not isinstance(info, dict) or "dim" not in info:
            raise CueError(f'{path}: needs at least {{"kind", "model", "dim"}}; rerun unisem-preprocess or fix the file')
        return info
    if infer:
        feats = sorted(d.glob("*_f.npy"))
        if feats:
            try:
                dim = int(np.load(feats[0], mmap_mode="r").shape[-1])
            except (OSError, ValueError):
                dim = -1
            if dim == LANGSPLAT_ENCODER["dim"]:
                return dict(LANGSPLAT_ENCODER, inferred=True)
    raise CueError(
        f'{path}: not found; say which text space the features are in by writing {{"kind": "open_clip", '
        f'"model": "ViT-B-16", "pretrained": "laion2b_s34b_b88k", "dim": 512}} (or rerun unisem-preprocess)'
    )


def read_manifest(scene: Path, folder: str = LANGUAGE_DIR) -> Optional[Dict[str, Any]]:
    """The cache manifest of ``unisem-preprocess`` in ``scene/<folder>`` (None if missing or unreadable);
    ``folder=DENSE_DIR`` reads the dense features' one."""
    return _read_json_dict(Path(scene) / folder / MANIFEST_JSON)


def _read_json_dict(path: Path) -> Optional[Dict[str, Any]]:
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return m if isinstance(m, dict) else None


def settings_key(settings: Dict[str, Any], stems: Sequence[str]) -> str:
    """sha256 of the canonical JSON of (settings, sorted image stems)."""
    blob = json.dumps({"settings": settings, "images": sorted(stems)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Progress + resumable per-view jobs
# --------------------------------------------------------------------------------------------


def track(items: Sequence[_T], description: str, enabled: bool = True) -> Iterator[_T]:
    """A rich progress bar over ``items`` (plain iteration when disabled or rich is missing)."""
    if enabled and items:
        try:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        except ImportError:  # pragma: no cover
            yield from items
            return
        with Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), transient=False,
        ) as prog:
            task = prog.add_task(description, total=len(items))
            for it in items:
                yield it
                prog.advance(task)
        return
    yield from items


@dataclass
class CueRunReport:
    """What a cue job did."""

    scene: Path
    language_dir: Path
    object_mask_dir: Path
    stems: List[str]
    computed: List[str] = field(default_factory=list)
    reused: List[str] = field(default_factory=list)
    status: str = ""  # "fresh" | "resumed" | "settings changed" | "up to date" | "manifest unreadable"
    kind: str = "cues"  # "cues" (language_features + object_mask) | "dense" (dense_features)
    dense: Optional["CueRunReport"] = None
    """The dense-features job run after this one (``unisem-preprocess --dense``), if any."""

    def summary(self) -> str:
        counts = f"{len(self.stems)} views ({len(self.computed)} computed, {len(self.reused)} reused)"
        if self.kind == "dense":
            text = f"{counts}: dense features in {self.language_dir.resolve()}"
        else:
            text = (f"{counts}: language features in {self.language_dir.resolve()}, "
                    f"instance masks in {self.object_mask_dir.resolve()}")
        if self.dense is not None:
            text += f"; dense features for {self.dense.summary()}"
        return text


class CueCache:
    """Resumable per-view cue job keyed by a manifest (``language_features/manifest.json``).

    The key is a hash of the sorted image stems and all settings (mode, corruption / SAM values, encoder
    json, seed, generator version). A view is reused only when the manifest's key matches, the view is in
    the manifest's ``done`` list, and its three files (``_s.npy``, ``_f.npy``, ``object_mask/<stem>.png``)
    exist. Any other existing files (another tool's, other settings') are overwritten. The manifest is
    rewritten atomically after every view, so an interrupt at any point leaves a state a rerun completes.
    Inside ``with`` the scene's cue folder is locked (:func:`folder_lock`): a second run on the same scene waits,
    then finds the views the first one wrote.

    Usage::

        with CueCache(scene, stems, settings, encoder_info) as cache:
            for stem in track(cache.begin(), ...):
                ... write the view's files ...
                cache.mark_done(stem)
            report = cache.finish()
    """

    def __init__(
        self,
        scene: Path,
        stems: Sequence[str],
        settings: Dict[str, Any],
        encoder_info: Dict[str, Any],
        log: Callable[[str], None] = print,
    ):
        self.scene = Path(scene)
        self.stems = list(stems)
        self.settings = dict(settings)
        self.encoder_info = dict(encoder_info)
        self.log = log
        self.key = settings_key(self.settings, self.stems)
        self.done: List[str] = []
        self.report = CueRunReport(self.scene, language_dir(self.scene), object_mask_dir(self.scene), sorted(self.stems))
        self._lock: Optional[ExitStack] = None

    # -- what the job writes (DenseCueCache overrides these) --

    def folders(self) -> Tuple[Path, ...]:
        """The folders the job writes; the first one is locked and holds encoder.json + manifest.json."""
        return language_dir(self.scene), object_mask_dir(self.scene)

    def manifest_path(self) -> Path:
        return self.folders()[0] / MANIFEST_JSON

    def _write_encoder(self) -> None:
        write_encoder_json(self.scene, self.encoder_info)

    def __enter__(self) -> "CueCache":
        self._lock = ExitStack()
        self._lock.enter_context(folder_lock(self.folders()[0], self.log))
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def view_files(self, stem: str) -> Tuple[Path, Path, Path]:
        s, f = language_paths(self.scene, stem)
        return s, f, object_mask_path(self.scene, stem)

    def _manifest(self, complete: bool) -> Dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "tool": "unisem-preprocess",
            "key": self.key,
            "complete": complete,
            "settings": self.settings,
            "images": sorted(self.stems),
            "done": sorted(self.done),
        }

    def _write_manifest(self, complete: bool = False) -> None:
        atomic_write_json(self.manifest_path(), self._manifest(complete))

    def begin(self) -> List[str]:
        """Decide what to (re)compute, say why, write encoder.json + manifest; returns stems to compute."""
        if self._lock is None:
            raise RuntimeError("CueCache.begin() outside `with CueCache(...) as cache:` (the cue folder is not locked)")
        folders = self.folders()
        ld, mpath = folders[0], self.manifest_path()
        for d in folders:
            d.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(d)
        old = _read_json_dict(mpath)
        n = len(self.stems)
        prev_done: set = set()
        if old is None:
            if mpath.exists():
                self.report.status = "manifest unreadable"
                self.log(f"{mpath}: unreadable; recomputing all {n} views")
            else:
                self.report.status = "fresh"
                existing = [s for s in self.stems if any(p.exists() for p in self.view_files(s))]
                if existing:
                    self.log(
                        f"{ld}: {len(existing)} views have cue files without a manifest (another tool's or an old run's); "
                        f"recomputing all {n} views and overwriting them"
                    )
        elif old.get("key") != self.key:
            self.report.status = "settings changed"
            changed = _diff_keys(old.get("settings", {}), self.settings)
            if sorted(old.get("images", [])) != sorted(self.stems):
                changed.append("image list")
            self.log(
                f"{mpath}: settings differ from the cached cues ({', '.join(changed) or 'key'}); "
                f"recomputing all {n} views"
            )
        else:
            prev_done = set(old.get("done", []))
        todo = []
        for s in self.stems:
            if s in prev_done and all(p.exists() for p in self.view_files(s)):
                self.done.append(s)
                self.report.reused.append(s)
            else:
                todo.append(s)
        if old is not None and old.get("key") == self.key:
            if not todo:
                self.report.status = "up to date"
                self.log(f"{ld}: cues for all {n} views are up to date (same settings); nothing to do")
            else:
                self.report.status = "resumed"
                self.log(f"{ld}: resuming: {len(self.done)} of {n} views already done, computing {len(todo)}")
        self._write_encoder()
        self._write_manifest(complete=not todo)
        return todo

    def mark_done(self, stem: str) -> None:
        self.done.append(stem)
        self.report.computed.append(stem)
        self._write_manifest(complete=False)

    def finish(self) -> CueRunReport:
        self._write_manifest(complete=set(self.done) >= set(self.stems))
        return self.report


def _diff_keys(old: Any, new: Any, prefix: str = "") -> List[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: List[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += _diff_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "settings"]


class DenseCueCache(CueCache):
    """:class:`CueCache` for ``dense_features/``: one ``<stem>.npy`` per view; the folder is locked, and
    ``encoder.json`` + ``manifest.json`` (key = settings + image list, ``done`` views) are kept inside it."""

    def __init__(self, scene: Path, stems: Sequence[str], settings: Dict[str, Any], encoder_info: Dict[str, Any],
                 log: Callable[[str], None] = print):
        super().__init__(scene, stems, settings, encoder_info, log=log)
        self.report = CueRunReport(self.scene, dense_dir(self.scene), dense_dir(self.scene), sorted(self.stems),
                                   kind="dense")

    def folders(self) -> Tuple[Path, ...]:
        return (dense_dir(self.scene),)

    def _write_encoder(self) -> None:
        atomic_write_json(dense_dir(self.scene) / ENCODER_JSON, dict(self.encoder_info))

    def view_files(self, stem: str) -> Tuple[Path, ...]:  # type: ignore[override]
        return (dense_path(self.scene, stem),)
