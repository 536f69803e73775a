"""econSG's per-scene preprocessing (docs/methods/econsg.md, steps 1-10), importable without nerfstudio.

:func:`prepare_econsg` turns a scene's 2D cues into everything the econSG semantic field trains on::

    scene/econsg/d{d}/                      (default ``out``; ``d{D}-noae`` with use_ae=False)
      manifest.json                          cache key (hash of settings + input files), summary, timings
      class_names.json                       the K class names (label k <-> class_names[k])
      labels/<stem>.png                      CRR label map, uint8 (uint16 if K >= 255): 0 = ignore, k + 1 = class k
      raw_labels/<stem>.png                  per-pixel argmax of the raw 2D features, same encoding (for scoring)
      weights/<stem>.npy                     float16 [H, W] per-pixel CE weight (0 where unlabelled)
      latents/<stem>.npy                     float16 [H, W, d] = g(CRR-refined 2D feature), unit rows;
                                             zeros where the pixel has no feature
      points3d.npz                           xyz float32 [N, 3], rgb uint8 [N, 3], latent float32 [N, d]
                                             (zeros where no view saw a feature), label int32 [N] (-1 none),
                                             count int32 [N] (views that saw the point with a feature)
      text_latents.npy                       float32 [K, d] = norm(g(T))
      autoencoder.pt + autoencoder.json      state_dict + dims (absent with use_ae=False)

Per-view files exist for the TRAIN views only (``transforms.json`` ``train_filenames`` when present, else
all frames); only they are used for CRR, 3D fusion and the autoencoder. Coordinates in ``points3d.npz`` are
in the world frame of ``transforms.json`` (not Nerfstudio's re-oriented / re-scaled frame: apply the
dataparser transform and scale before using them as Gaussian means).

Steps: (1) 3D point cloud = depth pixels of the train views back-projected and voxel-downsampled
(``fusion_voxel``; ``points_source="ply"|"both"`` uses / adds ``sparse_pc.ply``); (2) CRR step a' pooling
(multi-view labels); (3) per view CRR a-d, feature-level CRR, fusion of the refined features and the CRR
labels onto the points (OpenScene visibility); (4) autoencoder on the fused point features with the fused
(majority) CRR labels; (5) per-view latents.

Re-running with the same settings and unchanged inputs is a no-op (``manifest.json`` key); anything else
recomputes. Every file is written atomically and ``manifest.json`` last (the old one is removed first), so an
interrupted run recomputes; two runs on the same folder take turns (:func:`~unisem_ns.utils.atomic.folder_lock`).
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from unisem_ns.data.scene_io import InputError, load_depth, read_transforms
from unisem_ns.econsg.autoencoder import (
    AEConfig,
    LatentAutoencoder,
    encode_in_batches,
    load_autoencoder,
    save_autoencoder,
    train_autoencoder,
)
from unisem_ns.econsg.crr import (
    CRRConfig,
    MVView,
    PointLabels3D,
    accumulate_3d_labels,
    confidence,
    crr_view,
    labels_from_png,
    labels_to_png,
    regularize_features,
    reproject_labels,
)
from unisem_ns.geometry.backproject import (
    FusionView,
    VoxelAccumulator,
    backproject_depth,
    fuse_point_features,
    opengl_to_opencv_c2w,
)
from unisem_ns.utils.atomic import (
    atomic_file,
    atomic_save_npy,
    atomic_save_png,
    atomic_write_json,
    folder_lock,
    remove_stale_temps,
)

__all__ = ["EconSGPrepConfig", "EconSGCache", "prepare_econsg", "PREP_VERSION", "default_out"]

PREP_VERSION = 1
"""Bump when the outputs for given settings change (part of the cache key)."""
MANIFEST_FORMAT = "unisem-econsg-prep/1"

DepthProvider = Callable[[str], np.ndarray]


@dataclass
class EconSGPrepConfig:
    """Settings of :func:`prepare_econsg`. [R] marks reconstructions (docs/methods/econsg.md, "Main settings")."""

    crr: CRRConfig = field(default_factory=CRRConfig)
    ae: AEConfig = field(default_factory=AEConfig)
    use_crr: bool = True
    """False (ablation): labels = raw per-pixel argmax, weights = 1 on labelled pixels, features not
    regularised, no multi-view step."""
    use_ae: bool = True
    """False (ablation): latents are the full-D unit features and text_latents = T (no autoencoder)."""
    class_names: Optional[Tuple[str, ...]] = None
    """The label set; default: ``gt/classes.json`` without index 0 "void" (only the names are read)."""
    feature_source: str = "auto"
    """``"language"`` (LangSplat ``language_features/``), ``"dense"`` (``dense_features/<stem>.npy``) or
    ``"auto"`` (language when present, else dense)."""
    level: int = 0
    """LangSplat level used as the per-pixel 2D feature."""
    dense_upsample: str = "bilinear"
    """How ``dense_features`` [h, w, D] are resized to the image: ``"bilinear"`` (then re-normalised) or
    ``"nearest"``."""
    feature_centres: str = "agree"
    """Feature-level CRR: which pixels define the class centres mu_c and which labels vote the mask's class.
    ``"raw"``: both from the raw argmax (released code); ``"crr"``: both from the CRR labels; ``"agree"``
    [R]: the mask's class from the CRR labels, centres only from high-confidence pixels whose raw argmax
    agrees with their CRR label (so a mask relabelled by CRR is not pulled towards its own wrong feature)."""
    feature_assign: str = "mask"
    """Feature-level CRR: ``"mask"`` (econSG: a SAM mask's pixels all get the centre of the mask's majority
    class) or ``"label"`` [R] (each labelled pixel in a mask gets the centre of its own CRR label, so the
    latent targets agree with the CE labels where CRR kept a finer label than the mask's)."""
    points_source: str = "depth"
    """3D points for fusion: ``"depth"`` (back-projected train-view depth, voxel-downsampled; covers what the
    views see densely), ``"ply"`` (``sparse_pc.ply``) or ``"both"``. [R] (econSG fuses onto mesh vertices)."""
    fusion_voxel: float = 0.02
    """Voxel edge (metres) of the back-projected point cloud (econSG voxelises at 0.02 m for the AE)."""
    backproject_stride: int = 1
    """Back-project every ``stride``-th pixel row / column for the point cloud (memory on large images)."""
    occlusion_ratio: float = 0.25
    """Fusion visibility: |depth - z| <= ratio * depth (OpenScene / econSG 0.25)."""
    cut_bound: int = 10
    """Fusion: border (pixels) ignored, as in econSG's 10 px at 640 x 480 ..."""
    cut_bound_ref_width: Optional[int] = 640
    """... scaled by image width / this (None: use ``cut_bound`` pixels as they are). [R]"""
    pixel_center: float = 0.5
    """Pixel centre offset for (back-)projection (Nerfstudio / gsplat: 0.5)."""
    views: Optional[Tuple[str, ...]] = None
    """Override the train views (image stems)."""
    device: str = "cpu"
    """Device of the autoencoder training."""
    cpu_threads: Optional[int] = None
    """torch intra-op threads for the whole run (restored afterwards); None = leave torch's setting. The
    per-view tensors of small scenes are tiny, and on a busy machine 1 thread can be several times faster."""

    def __post_init__(self) -> None:
        if self.feature_source not in ("auto", "language", "dense"):
            raise ValueError(f"feature_source must be 'auto', 'language' or 'dense' (got {self.feature_source!r})")
        if self.dense_upsample not in ("bilinear", "nearest"):
            raise ValueError(f"dense_upsample must be 'bilinear' or 'nearest' (got {self.dense_upsample!r})")
        if self.feature_centres not in ("agree", "crr", "raw"):
            raise ValueError(f"feature_centres must be 'agree', 'crr' or 'raw' (got {self.feature_centres!r})")
        if self.feature_assign not in ("mask", "label"):
            raise ValueError(f"feature_assign must be 'mask' or 'label' (got {self.feature_assign!r})")
        if self.points_source not in ("depth", "ply", "both"):
            raise ValueError(f"points_source must be 'depth', 'ply' or 'both' (got {self.points_source!r})")
        if self.fusion_voxel <= 0 or self.backproject_stride < 1:
            raise ValueError("fusion_voxel must be > 0 and backproject_stride >= 1")

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["crr"] = self.crr.to_json()
        d["ae"] = self.ae.to_json()
        for k in ("class_names", "views"):
            if d[k] is not None:
                d[k] = list(d[k])
        d.pop("device")  # neither changes the result's meaning
        d.pop("cpu_threads")
        return d


@dataclass
class EconSGCache:
    """What :func:`prepare_econsg` wrote (paths and loaders). Labels are returned 0-based, -1 = unlabelled."""

    out: Path
    scene: Path
    key: str
    stems: List[str]
    class_names: List[str]
    latent_dim: int
    use_ae: bool
    summary: Dict[str, Any]
    reused: bool = False

    def labels_path(self, stem: str) -> Path:
        return self.out / "labels" / f"{stem}.png"

    def raw_labels_path(self, stem: str) -> Path:
        return self.out / "raw_labels" / f"{stem}.png"

    def weights_path(self, stem: str) -> Path:
        return self.out / "weights" / f"{stem}.npy"

    def latents_path(self, stem: str) -> Path:
        return self.out / "latents" / f"{stem}.npy"

    @property
    def points_path(self) -> Path:
        return self.out / "points3d.npz"

    @property
    def text_latents_path(self) -> Path:
        return self.out / "text_latents.npy"

    @property
    def autoencoder_path(self) -> Path:
        return self.out / "autoencoder.pt"

    def load_labels(self, stem: str) -> np.ndarray:
        """int64 [H, W] CRR labels, -1 = unlabelled."""
        return labels_from_png(_read_png(self.labels_path(stem)))

    def load_raw_labels(self, stem: str) -> np.ndarray:
        """int64 [H, W] raw argmax labels, -1 = no feature."""
        return labels_from_png(_read_png(self.raw_labels_path(stem)))

    def load_weights(self, stem: str) -> np.ndarray:
        return np.load(self.weights_path(stem)).astype(np.float32)

    def load_latents(self, stem: str, mmap: bool = False) -> np.ndarray:
        """float16 [H, W, d] (as stored)."""
        return np.load(self.latents_path(stem), mmap_mode="r" if mmap else None)

    def crr_label_maps(self) -> Dict[str, np.ndarray]:
        """``{stem: int64 [H, W]}`` CRR labels (-1 = unlabelled) of every train view, for scoring against GT."""
        return {s: self.load_labels(s) for s in self.stems}

    def raw_label_maps(self) -> Dict[str, np.ndarray]:
        """``{stem: int64 [H, W]}`` raw argmax labels (-1 = no feature), the baseline CRR is compared with."""
        return {s: self.load_raw_labels(s) for s in self.stems}

    def load_points(self) -> Dict[str, np.ndarray]:
        with np.load(self.points_path) as z:
            return {k: z[k] for k in z.files}

    def text_latents(self) -> np.ndarray:
        return np.load(self.text_latents_path)

    def load_autoencoder(self, device: str = "cpu") -> LatentAutoencoder:
        if not self.use_ae:
            raise ValueError(f"{self.out}: prepared with use_ae=False, there is no autoencoder")
        return load_autoencoder(self.autoencoder_path, device)


# --------------------------------------------------------------------------------------------
# Scene reading
# --------------------------------------------------------------------------------------------


@dataclass
class _View:
    stem: str
    K: np.ndarray  # [3, 3]
    c2w: torch.Tensor  # [4, 4] OpenCV
    width: int
    height: int
    image: Path
    depth: Optional[Path]


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def default_out(scene: Path, cfg: EconSGPrepConfig, feature_dim: Optional[int] = None) -> Path:
    """``scene/econsg/d{d}`` (``d{D}-noae`` without the autoencoder)."""
    if cfg.use_ae:
        return Path(scene) / "econsg" / f"d{cfg.ae.latent_dim}"
    return Path(scene) / "econsg" / f"d{feature_dim if feature_dim is not None else 'full'}-noae"


def _frames(scene: Path, meta: Dict) -> Dict[str, _View]:
    views: Dict[str, _View] = {}
    tpath = scene / "transforms.json"
    for i, fr in enumerate(meta["frames"]):
        if "file_path" not in fr:
            raise InputError(f"{tpath}: frame {i} has no file_path; name the frame's image")

        def get(k: str, fr=fr, i=i):
            if k in fr:
                return fr[k]
            if k in meta:
                return meta[k]
            if k == "fl_y":
                return get("fl_x")
            if k in ("cx", "cy"):
                return 0.5 * float(get("w" if k == "cx" else "h"))
            raise InputError(f"{tpath}: frame {i} has no {k}; add fl_x, fl_y, cx, cy, w, h at the top level or per frame")

        w, h = int(get("w")), int(get("h"))
        K = np.array([[float(get("fl_x")), 0.0, float(get("cx"))], [0.0, float(get("fl_y")), float(get("cy"))], [0, 0, 1.0]])
        tm = np.asarray(fr.get("transform_matrix", []), dtype=np.float64)
        if tm.shape not in ((4, 4), (3, 4)):
            raise InputError(f"{tpath}: frame {i} ({fr['file_path']}) needs a 4x4 camera-to-world transform_matrix")
        if tm.shape == (3, 4):
            tm = np.concatenate([tm, [[0, 0, 0, 1.0]]], 0)
        stem = Path(fr["file_path"]).stem
        depth = scene / fr["depth_file_path"] if fr.get("depth_file_path") else None
        views[stem] = _View(stem, K, opengl_to_opencv_c2w(tm), w, h, scene / fr["file_path"], depth)
    return views


def _train_stems(meta: Dict, views: Dict[str, _View], cfg: EconSGPrepConfig, scene: Path) -> List[str]:
    if cfg.views is not None:
        stems = [Path(s).stem for s in cfg.views]
    elif meta.get("train_filenames"):
        stems = [Path(s).stem for s in meta["train_filenames"]]
    else:
        stems = list(views)
    missing = [s for s in stems if s not in views]
    if missing:
        raise InputError(f"{scene / 'transforms.json'}: train view {missing[0]!r} has no frame; fix train_filenames or the views list")
    if not stems:
        raise InputError(f"{scene / 'transforms.json'}: no train views")
    return stems


def _class_names(scene: Path, cfg: EconSGPrepConfig) -> List[str]:
    if cfg.class_names is not None:
        names = [str(n) for n in cfg.class_names]
    else:
        path = scene / "gt" / "classes.json"
        if not path.exists():
            raise InputError(
                f"{path}: not found; econSG needs a class vocabulary: pass EconSGPrepConfig(class_names=(...)) "
                "or write the names to gt/classes.json (index 0 = void)"
            )
        try:
            names = [str(n) for n in json.loads(path.read_text())]
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: unreadable JSON ({e}); fix the file or pass class_names") from None
        if names and names[0] == "void":
            names = names[1:]
    if not names:
        raise InputError(f"{scene}: the class vocabulary is empty; pass class_names")
    return names


def _feature_source(scene: Path, cfg: EconSGPrepConfig) -> str:
    lang, dense = scene / "language_features", scene / "dense_features"
    if cfg.feature_source == "auto":
        if lang.is_dir():
            return "language"
        if dense.is_dir():
            return "dense"
        raise InputError(
            f"{lang}: not found (nor {dense.name}/); econSG needs 2D language features: run "
            f"`unisem-preprocess --data {scene} --mode sam-clip ...` (or --mode simulate on synthetic scenes)"
        )
    folder = lang if cfg.feature_source == "language" else dense
    if not folder.is_dir():
        raise InputError(f"{folder}: not found; make it with `unisem-preprocess --data {scene}` or choose feature_source")
    return cfg.feature_source


def _encoder_info(scene: Path, source: str) -> Dict[str, Any]:
    from unisem_ns.cues.layout import read_encoder_json

    if source == "dense":
        path = scene / "dense_features" / "encoder.json"
        if path.exists():
            try:
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise InputError(f"{path}: unreadable JSON ({e}); fix it") from None
        if not (scene / "language_features" / "encoder.json").exists():
            raise InputError(f"{path}: not found; say which text space the dense features are in (kind, model, pretrained, dim)")
    return read_encoder_json(scene)


def _input_files(scene: Path, views: Dict[str, _View], stems: Sequence[str], source: str, cfg: EconSGPrepConfig) -> List[Path]:
    files = [scene / "transforms.json"]
    if cfg.class_names is None:
        files.append(scene / "gt" / "classes.json")
    if source == "language":
        files.append(scene / "language_features" / "encoder.json")
    else:
        files += [scene / "dense_features" / "encoder.json", scene / "language_features" / "encoder.json"]
    if cfg.points_source != "depth":
        files.append(scene / "sparse_pc.ply")
    for s in stems:
        v = views[s]
        files.append(v.image)
        if v.depth is not None:
            files.append(v.depth)
        files.append(scene / "object_mask" / f"{s}.png")
        if source == "language":
            files += [scene / "language_features" / f"{s}_s.npy", scene / "language_features" / f"{s}_f.npy"]
        else:
            files.append(scene / "dense_features" / f"{s}.npy")
    return files


def _file_list(scene: Path, files: Sequence[Path]) -> List[List[Any]]:
    out = []
    for p in files:
        try:
            st = p.stat()
            out.append([str(p.relative_to(scene)) if p.is_relative_to(scene) else str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([str(p), -1, -1])
    return out


def _resize_nearest(arr: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """[h, w] or [h, w, C] -> [H, W](, C) nearest (pixel-centre sampling)."""
    if tuple(arr.shape[:2]) == (H, W):
        return arr
    h, w = arr.shape[:2]
    rows = ((torch.arange(H) + 0.5) * h / H).long().clamp(max=h - 1)
    cols = ((torch.arange(W) + 0.5) * w / W).long().clamp(max=w - 1)
    return arr[rows][:, cols]


class _Scene:
    """Loads one view's inputs on demand (so only one view's features are in memory at a time)."""

    def __init__(self, scene: Path, views: Dict[str, _View], source: str, cfg: EconSGPrepConfig,
                 depth_provider: Optional[DepthProvider], unit_scale: float):
        self.scene, self.views, self.source, self.cfg = scene, views, source, cfg
        self.depth_provider, self.unit_scale = depth_provider, unit_scale

    def features(self, stem: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """Unit features [H, W, D] float32 (zeros where none) and valid [H, W] bool."""
        v = self.views[stem]
        if self.source == "language":
            from unisem_ns.cues.layout import dense_targets, load_language_cue

            seg, feats = load_language_cue(self.scene, stem)
            if not 0 <= self.cfg.level < seg.shape[0]:
                raise InputError(f"{self.scene / 'language_features'}: {stem} has {seg.shape[0]} level(s); level {self.cfg.level} requested")
            idx = _resize_nearest(torch.from_numpy(seg[self.cfg.level].astype(np.int64)), v.height, v.width)
            f, valid = dense_targets(idx[None], torch.from_numpy(feats))
        else:
            path = self.scene / "dense_features" / f"{stem}.npy"
            if not path.exists():
                raise InputError(f"{path}: not found (no dense feature for image {stem!r}); regenerate dense_features/")
            arr = torch.from_numpy(np.load(path).astype(np.float32))
            if arr.ndim != 3:
                raise InputError(f"{path}: expected [h, w, D], got {tuple(arr.shape)}")
            if tuple(arr.shape[:2]) != (v.height, v.width):
                if self.cfg.dense_upsample == "nearest":
                    arr = _resize_nearest(arr, v.height, v.width)
                else:
                    arr = F.interpolate(arr.permute(2, 0, 1)[None], size=(v.height, v.width), mode="bilinear",
                                        align_corners=False)[0].permute(1, 2, 0)
            f = arr
            valid = f.norm(dim=-1) > 1e-6
        f = F.normalize(f.float(), dim=-1) * valid[..., None]
        return f, valid

    def sam(self, stem: str) -> torch.Tensor:
        from unisem_ns.cues.layout import load_object_mask

        v = self.views[stem]
        return _resize_nearest(torch.from_numpy(load_object_mask(self.scene, stem).astype(np.int64)), v.height, v.width)

    def depth(self, stem: str) -> torch.Tensor:
        v = self.views[stem]
        if v.depth is not None:
            d = load_depth(v.depth, self.unit_scale)
        elif self.depth_provider is not None:
            d = np.asarray(self.depth_provider(stem), dtype=np.float32)
        else:
            raise InputError(
                f"{self.scene / 'depths'}: no depth for image {stem!r} (its transforms.json frame has no "
                "depth_file_path); econSG back-projects features with depth: add depths/<stem>.png|npy and "
                "depth_file_path, or pass depth_provider=callable(stem) -> [H, W] metres"
            )
        d = torch.from_numpy(np.nan_to_num(d.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0))
        if d.ndim == 3:
            d = d[..., 0]
        return _resize_nearest(d, v.height, v.width)

    def rgb(self, stem: str) -> torch.Tensor:
        from PIL import Image

        v = self.views[stem]
        try:
            with Image.open(v.image) as im:
                im = im.convert("RGB")
                if im.size != (v.width, v.height):
                    im = im.resize((v.width, v.height), Image.BILINEAR)
                return torch.from_numpy(np.asarray(im).copy())
        except OSError as e:
            raise InputError(f"{v.image}: unreadable image ({e}); replace it") from None


def _read_scene_ply(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise InputError(f"{path}: not found; points_source='ply'/'both' needs the scene's sparse_pc.ply (or use 'depth')")
    try:
        from unisem_ns.data.synthetic_scene import read_ply

        return read_ply(path)
    except (ValueError, KeyError):
        pass
    try:
        from plyfile import PlyData

        v = PlyData.read(str(path))["vertex"]
        xyz = np.stack([v["x"], v["y"], v["z"]], -1).astype(np.float32)
        names = v.data.dtype.names
        rgb = (np.stack([v["red"], v["green"], v["blue"]], -1).astype(np.uint8) if "red" in names
               else np.full((len(xyz), 3), 128, np.uint8))
        return xyz, rgb
    except Exception as e:  # noqa: BLE001 - any parser failure is a bad input file
        raise InputError(f"{path}: unreadable PLY ({type(e).__name__}: {e}); regenerate it or use points_source='depth'") from None


def _rss_mb() -> float:
    """Peak resident memory of this process so far (MiB; 0 where ``resource`` is unavailable)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


def prepare_econsg(
    scene: Union[str, Path],
    out: Optional[Union[str, Path]] = None,
    cfg: Optional[EconSGPrepConfig] = None,
    depth_provider: Optional[DepthProvider] = None,
    progress: bool = True,
    *,
    text_encoder=None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> EconSGCache:
    """Run econSG's preprocessing on a scene (see the module docstring for the outputs).

    Args:
        scene: scene folder (``docs/DATA.md``) with transforms.json, images, depth, ``object_mask/``
            and ``language_features/`` (or ``dense_features/``).
        out: output folder (default ``scene/econsg/d{d}``).
        cfg: settings.
        depth_provider: ``callable(stem) -> [H, W]`` z-depth in metres, used for frames without
            ``depth_file_path`` (it is part of the cache key only by name: pass ``force`` after changing it).
        progress: rich progress bars.
        text_encoder: a :class:`~unisem_ns.language.encoders.TextEncoder` (or spec) to encode the class names;
            default: the one ``encoder.json`` describes. It must be in the features' text space.
        force: recompute even when the manifest matches.
        log: where one-line status messages go.

    Returns:
        :class:`EconSGCache` (``reused`` is True when the manifest matched and nothing was computed).
    """
    cfg = cfg or EconSGPrepConfig()
    threads = torch.get_num_threads()
    if cfg.cpu_threads:
        torch.set_num_threads(int(cfg.cpu_threads))
    try:
        with ExitStack() as hold:  # the cache folder's lock, taken once the folder is known
            return _prepare(Path(scene), out, cfg, depth_provider, progress, text_encoder, force, log, hold)
    finally:
        torch.set_num_threads(threads)


def _prepare(scene: Path, out, cfg: EconSGPrepConfig, depth_provider, progress: bool, text_encoder, force: bool,
             log: Callable[[str], None], hold: ExitStack) -> EconSGCache:
    from unisem_ns.cues.layout import track
    from unisem_ns.language.encoders import make_text_encoder

    t_all = time.perf_counter()
    rss0 = _rss_mb()
    meta = read_transforms(scene)
    views = _frames(scene, meta)
    stems = _train_stems(meta, views, cfg, scene)
    names = _class_names(scene, cfg)
    source = _feature_source(scene, cfg)
    enc_info = _encoder_info(scene, source)
    if not (scene / "object_mask").is_dir() and cfg.use_crr:
        raise InputError(
            f"{scene / 'object_mask'}: not found; CRR needs SAM masks: run `unisem-preprocess --data {scene} ...` "
            "or prepare with use_crr=False"
        )
    encoder = make_text_encoder(text_encoder if text_encoder is not None else enc_info)
    text = F.normalize(encoder.encode(names).float(), dim=-1)  # [K, D]
    K, D = text.shape
    if "dim" in enc_info and int(enc_info["dim"]) != D:
        raise InputError(f"{scene}: the features are {enc_info['dim']}-d but the text encoder gives {D}-d; use the features' encoder")
    out = Path(out) if out is not None else default_out(scene, cfg, D)

    settings = {
        "version": PREP_VERSION,
        "config": cfg.to_json(),
        "feature_source": source,
        "encoder": dict(encoder.to_json()),
        "class_names": names,
        "train_views": stems,
        "depth_provider": None if depth_provider is None else getattr(depth_provider, "__qualname__", repr(depth_provider)),
    }
    inputs = _file_list(scene, _input_files(scene, views, stems, source, cfg))
    key = hashlib.sha256(
        json.dumps({"settings": settings, "inputs": inputs}, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    latent_dim = cfg.ae.latent_dim if cfg.use_ae else D

    cache = EconSGCache(out, scene, key, list(stems), list(names), latent_dim, cfg.use_ae, {})
    # a second run on the same cache waits here for the first, then finds its outputs up to date
    hold.enter_context(folder_lock(out, log))
    manifest_path = out / "manifest.json"
    if not force and manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict) and old.get("key") == key and old.get("complete") and _outputs_exist(cache):
            cache.summary = old.get("summary", {})
            cache.reused = True
            log(f"{out}: econSG preprocessing is up to date (same settings and inputs); nothing to do")
            return cache
        log(f"{out}: settings or inputs changed; recomputing econSG preprocessing for {len(stems)} views")
    out.mkdir(parents=True, exist_ok=True)
    # the outputs are rewritten one by one: no manifest may vouch for them until the new one is written last
    manifest_path.unlink(missing_ok=True)
    for sub in ("", "labels", "raw_labels", "weights", "latents"):
        remove_stale_temps(out / sub)
    data = _Scene(scene, views, source, cfg, depth_provider, float(meta.get("depth_unit_scale_factor", 1e-3)))
    timings: Dict[str, float] = {}
    summary: Dict[str, Any] = {"views": len(stems), "classes": K, "feature_dim": D, "feature_source": source}

    # ---- (1) the 3D point cloud: back-projected depth of the train views, voxel-downsampled ----------
    t0 = time.perf_counter()
    pc = VoxelAccumulator(cfg.fusion_voxel)
    multiview = cfg.use_crr and cfg.crr.multiview
    mv_vox = VoxelAccumulator(cfg.crr.mv_voxel)  # step a' points (all valid depth pixels, mv_voxel)
    if cfg.points_source in ("depth", "both") or multiview:
        for s in track(stems, "econSG: back-projecting depth", progress):
            v = views[s]
            depth = data.depth(s)
            if multiview:
                mv_vox.add(backproject_depth(depth, v.K, v.c2w, pixel_center=cfg.crr.pixel_center)[0])
            if cfg.points_source in ("depth", "both"):
                pts, idx = backproject_depth(depth, v.K, v.c2w, stride=cfg.backproject_stride, pixel_center=cfg.pixel_center)
                pc.add(pts, data.rgb(s).reshape(-1, 3)[idx].double())
    if cfg.points_source in ("ply", "both"):
        xyz_p, rgb_p = _read_scene_ply(scene / "sparse_pc.ply")
        pc.add(torch.from_numpy(xyz_p), torch.from_numpy(rgb_p.astype(np.float64)))
    if len(pc) == 0:
        raise InputError(f"{scene}: no valid depth pixel in any train view; check depths/ and depth_unit_scale_factor")
    points = pc.centroids()
    points_rgb = pc.mean_values().round().clamp(0, 255).to(torch.uint8)
    n_pts = points.shape[0]
    summary["points"] = n_pts
    timings["points"] = time.perf_counter() - t0

    # ---- (2) CRR step a': pool high-confidence features per voxel ------------------------------------
    p3: Optional[PointLabels3D] = None
    if multiview:
        t0 = time.perf_counter()
        mv_views = [
            MVView(lambda s=s: data.features(s)[0], data.depth(s), views[s].K, views[s].c2w)
            for s in stems
        ]
        p3 = accumulate_3d_labels(track(mv_views, "econSG: multi-view labels", progress), text, cfg.crr, voxels=mv_vox)
        summary["mv_voxels"] = int(p3.labels.numel())
        timings["multiview"] = time.perf_counter() - t0

    # ---- (3) per-view CRR, feature-level CRR, fusion onto the points --------------------------------
    t0 = time.perf_counter()
    cut = cfg.cut_bound if not cfg.cut_bound_ref_width else int(round(cfg.cut_bound * views[stems[0]].width / cfg.cut_bound_ref_width))
    summary["fusion_cut_bound_px"] = cut
    # per view, kept small for step (5): labels + centre mask that regularise the features, final labels
    view_state: Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
    final_labels: Dict[str, torch.Tensor] = {}
    stats = {"pixels": 0, "with_feature": 0, "raw_labelled": 0, "crr_labelled": 0, "high_conf": 0,
             "changed": 0, "mv_labelled": 0, "weight_sum": 0.0}

    def refined_features(s: str, feats: torch.Tensor, sam: Optional[torch.Tensor]) -> torch.Tensor:
        labels, centre = view_state[s]
        if not cfg.use_crr:
            return feats
        return regularize_features(feats, sam, labels, centre_mask=centre, assign=cfg.feature_assign)

    def fusion_views() -> Iterator[FusionView]:
        for s in track(stems, "econSG: CRR + fusion", progress):
            v = views[s]
            feats, valid = data.features(s)
            depth = data.depth(s)
            sam = data.sam(s) if cfg.use_crr else None
            if cfg.use_crr:
                mv_lab = mv_conf = None
                if p3 is not None:
                    mv_lab, mv_conf = reproject_labels(p3, depth, v.K, v.c2w, cfg.crr)
                    stats["mv_labelled"] += int((mv_lab >= 0).sum())
                res = crr_view(feats, sam, text, cfg.crr, mv_labels=mv_lab, mv_conf=mv_conf, valid=valid)
                labels, raw, weights = res.labels, res.raw_labels, res.weights
                if cfg.feature_centres == "raw":
                    state = (raw, None)
                elif cfg.feature_centres == "crr":
                    state = (labels, None)
                else:
                    state = (labels, res.high_conf_mask & (raw == labels))
                stats["high_conf"] += int(res.high_conf_mask.sum())
            else:
                _, raw = confidence(feats, text, valid)
                labels = raw
                weights = (raw >= 0).float()
                state = (labels, None)
            view_state[s] = (state[0].to(torch.int16), state[1])
            final_labels[s] = labels.to(torch.int16)
            stats["pixels"] += labels.numel()
            stats["with_feature"] += int(valid.sum())
            stats["raw_labelled"] += int((raw >= 0).sum())
            stats["crr_labelled"] += int((labels >= 0).sum())
            stats["changed"] += int(((labels != raw) & (raw >= 0) & (labels >= 0)).sum())
            stats["weight_sum"] += float(weights.sum())
            atomic_save_png(cache.labels_path(s), labels_to_png(labels, K))
            atomic_save_png(cache.raw_labels_path(s), labels_to_png(raw, K))
            atomic_save_npy(cache.weights_path(s), weights.numpy().astype(np.float16))
            ref = refined_features(s, feats, sam)
            fvalid = (ref.norm(dim=-1) > 1e-8).float()
            onehot = torch.zeros(labels.shape + (K,))
            lab_ok = labels >= 0
            onehot[lab_ok] = F.one_hot(labels[lab_ok].long(), K).float()
            # one fusion pass for [feature | feature-valid | label votes]: the same visibility for all three
            yield FusionView(torch.cat([ref, fvalid[..., None], onehot], -1), (fvalid > 0) | lab_ok, depth, v.K, v.c2w)

    fused, visits = fuse_point_features(points, fusion_views(), cfg.occlusion_ratio, cut, cfg.pixel_center)
    feat_count = fused[:, D] * visits.float()  # views that saw a feature
    point_feat = F.normalize(fused[:, :D], dim=-1) * (feat_count > 0.5)[:, None]
    votes = fused[:, D + 1 :]
    point_label = torch.where(votes.sum(1) > 0, votes.argmax(1), torch.full((n_pts,), -1, dtype=torch.long))
    del fused, votes
    px = max(stats["pixels"], 1)
    summary.update({
        "pixels": stats["pixels"],
        "frac_with_feature": stats["with_feature"] / px,
        "frac_raw_labelled": stats["raw_labelled"] / px,
        "frac_crr_labelled": stats["crr_labelled"] / px,
        "frac_high_confidence": stats["high_conf"] / px,
        "frac_mv_labelled": stats["mv_labelled"] / px,
        "frac_changed_vs_raw": stats["changed"] / max(stats["raw_labelled"], 1),
        "mean_weight_labelled": stats["weight_sum"] / max(stats["crr_labelled"], 1),
        "points_with_feature": int((feat_count > 0.5).sum()),
        "points_labelled": int((point_label >= 0).sum()),
    })
    timings["crr_fusion"] = time.perf_counter() - t0

    # ---- (4) autoencoder ----------------------------------------------------------------------------
    t0 = time.perf_counter()
    has = feat_count > 0.5
    model: Optional[LatentAutoencoder] = None
    if cfg.use_ae:
        if int(has.sum()) < 4:
            raise InputError(f"{scene}: fewer than 4 points received a 2D feature; check the cues, depth and poses")
        ae_cfg = cfg.ae if cfg.ae.device == cfg.device else AEConfig(**{**asdict(cfg.ae), "device": cfg.device})
        model, hist = train_autoencoder(point_feat[has], point_label[has], text, ae_cfg, progress=progress)
        model = model.cpu()
        point_latent = encode_in_batches(model, point_feat)
        with torch.no_grad():
            text_latent = model.encode(text)
        summary["autoencoder"] = {
            "train_points": int(has.sum()), "steps": hist["steps"][0], "best_epoch": hist["best_epoch"][0],
            "seconds": hist["seconds"][0],
            **{k: v[-1] for k, v in hist.items() if k.startswith(("val_", "train_")) and v},
        }
    else:
        point_latent = point_feat
        text_latent = text
    timings["autoencoder"] = time.perf_counter() - t0

    # ---- (5) per-view latents -----------------------------------------------------------------------
    t0 = time.perf_counter()
    latent_bytes = 0
    agree = [0, 0]
    for s in track(stems, "econSG: writing latents", progress):
        feats, _ = data.features(s)
        ref = refined_features(s, feats, data.sam(s) if cfg.use_crr else None)
        H, W = ref.shape[:2]
        if model is not None:
            lat = encode_in_batches(model, ref.reshape(-1, D)).reshape(H, W, -1)
        else:
            lat = ref
        # closed-set check of what the field will be trained towards: argmax <latent, text latent> vs CRR label
        lab = final_labels[s].long()
        has_lat = lat.norm(dim=-1) > 1e-6
        sel = has_lat & (lab >= 0)
        pred = (F.normalize(lat[sel].float(), dim=-1) @ text_latent.T).argmax(-1)
        agree[0] += int((pred == lab[sel]).sum())
        agree[1] += int(sel.sum())
        arr = lat.numpy().astype(np.float16)
        latent_bytes += arr.nbytes
        atomic_save_npy(cache.latents_path(s), arr)
    timings["latents"] = time.perf_counter() - t0
    summary["latent_label_agreement"] = agree[0] / max(agree[1], 1)

    # ---- outputs ------------------------------------------------------------------------------------
    with atomic_file(cache.points_path) as f:
        np.savez(
            f, xyz=points.numpy().astype(np.float32), rgb=points_rgb.numpy(), latent=point_latent.numpy().astype(np.float32),
            label=point_label.numpy().astype(np.int32), count=feat_count.round().numpy().astype(np.int32),
        )
    atomic_save_npy(cache.text_latents_path, text_latent.numpy().astype(np.float32))
    atomic_write_json(out / "class_names.json", names)
    if model is not None:
        save_autoencoder(model, cache.autoencoder_path, extra={"class_names": names, "encoder": dict(encoder.to_json())})
    timings["total"] = time.perf_counter() - t_all
    summary["timings_s"] = timings
    summary["memory"] = {
        "peak_rss_mb": _rss_mb(),
        "peak_rss_growth_mb": max(0.0, _rss_mb() - rss0),
        "fusion_accumulator_mb": n_pts * (D + 1 + K) * 4 / 2**20,
        "latents_on_disk_mb": latent_bytes / 2**20,
        "latent_dim": latent_dim,
    }
    cache.summary = summary
    atomic_write_json(manifest_path, {
        "format": MANIFEST_FORMAT,
        "key": key,
        "complete": True,
        "settings": settings,
        "inputs": inputs,
        "stems": list(stems),
        "class_names": names,
        "latent_dim": latent_dim,
        "use_ae": cfg.use_ae,
        "summary": summary,
    })
    log(
        f"{out}: econSG preprocessing done in {timings['total']:.1f} s: {len(stems)} views, {n_pts} points, "
        f"{summary['frac_crr_labelled']:.1%} pixels labelled by CRR ({summary['frac_raw_labelled']:.1%} raw)"
    )
    return cache


def _outputs_exist(c: EconSGCache) -> bool:
    files = [c.points_path, c.text_latents_path, c.out / "class_names.json"]
    if c.use_ae:
        files += [c.autoencoder_path, c.autoencoder_path.with_suffix(".json")]
    for s in c.stems:
        files += [c.labels_path(s), c.raw_labels_path(s), c.weights_path(s), c.latents_path(s)]
    return all(p.exists() for p in files)
