"""Cue simulator: what a CLIP + SAM front end would produce, made from a synthetic scene's exact ``gt/``.

This is a SIMULATOR, not a segmenter. It never looks at the images: it takes the ground-truth instance
and class maps (``gt/instance``, ``gt/instances.json``, ``gt/classes.json``) and writes the same files the
real front end (:mod:`unisem_ns.cues.sam_clip`) writes, in the same layouts
(``language_features/<stem>_s.npy`` + ``_f.npy`` + ``encoder.json``, ``object_mask/<stem>.png``), after
corrupting them the way real 2D cues are wrong. Methods can then be benchmarked against exact GT with a
known, controlled amount of cue noise.

Per view (``rng`` seeded by ``(seed, crc32(stem))``, so every view is reproducible on its own):

1. one mask per GT instance visible in the view (void excluded), class = the instance's class;
2. under-segmentation: in random order, each not-yet-merged mask is, with prob. ``merge_prob``, merged
   with a random adjacent (4-neighbour) not-yet-merged mask; the union takes the larger one's class;
3. over-segmentation: each mask is, with prob. ``split_prob``, cut in two along a random straight line
   (random direction, cut at a random 30-70 % quantile of the pixels along it); both parts keep the class;
4. confusion: each mask's class is, with prob. ``confusion_prob``, replaced by its most text-similar
   other class ("similar" = highest cosine between the encoder's class-name embeddings, void excluded);
5. dropped regions: each mask is, with prob. ``drop_prob``, dropped (its pixels become -1 / id 0);
6. feature noise: embedding = text embedding of the (possibly confused) class name + Gaussian noise whose
   expected norm is ``feature_noise`` (per-component std ``feature_noise / sqrt(D)``), re-normalised;
7. boundary jitter: each mask is dilated or eroded by ``r ~ U{-j..j}`` pixels (3x3 cross kernel, |r|
   iterations), then masks are painted large -> small (so small masks stay on top); pixels nobody covers
   become -1, so boundaries neither align with GT edges nor with each other;
8. masks with fewer than ``min_area`` painted pixels are removed (SAM misses tiny regions);
9. ``object_mask`` = level-0 masks with ids ``1..K`` permuted randomly per view (``random_ids``), as raw SAM
   gives: the same GT instance gets unrelated ids in different views.

Dense mode (:func:`simulate_dense_features`, ``unisem-preprocess --mode simulate --dense``) writes
``dense_features/<stem>.npy`` instead: a per-pixel map that behaves like LSeg / MaskCLIP output rather than
per-mask SAM + CLIP (:class:`DenseCorruption`, view generator seeded by ``(seed, crc32(stem), 1)``):

1. regions = GT instances (or GT classes without ``gt/instance``), each with its majority GT class; with
   prob. ``region_confusion_prob`` a region takes its most text-similar other class (void never changes);
2. the per-class one-hot image is blurred with a Gaussian of std ``blur_sigma`` image pixels (so features
   change smoothly across object boundaries) and area-downsampled to the stored grid (``scale`` x the
   image, default 0.5); the per-pixel feature is the blurred class weights times the class text embeddings
   (void pixels get the embedding of the class-0 name);
3. low-frequency semantic noise: Gaussian weights over the class embeddings drawn on a coarse grid with
   cells of ``noise_cell`` image pixels and upsampled bilinearly, scaled so its expected norm at the grid
   nodes is ``lowfreq_noise`` (it mixes other classes into whole parts of objects, like a dense head's
   spatially correlated mistakes);
4. per-pixel isotropic noise of expected norm ``pixel_noise`` (per-component std ``pixel_noise / sqrt(D)``),
   then every pixel is L2-normalised and written as float16.

Levels: ``levels=1`` writes only level 0 (the corrupted instance masks above). ``levels=4`` writes
LangSplat's order (default, s, m, l): default = level 0; s = every level-0 mask cut once more along a
random line (parts with independent noise); m = level 0 again (copied rows); l = groups of adjacent
level-0 masks (each mask joins one random neighbour with prob. 0.5, union-find), each group taking its
largest member's embedding. Rows of ``_f.npy`` are offset across levels.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from unisem_ns.cues.layout import (
    CueCache,
    CueError,
    CueRunReport,
    DenseCueCache,
    dense_dir,
    language_dir,
    load_language_cue,
    read_encoder_json,
    save_language_cue,
    resize_bilinear,
    save_object_mask,
    scene_stems,
    track,
    write_dense_features,
)

__all__ = [
    "SIMULATOR_VERSION",
    "CueCorruption",
    "SceneLabels",
    "load_scene_labels",
    "similar_classes",
    "simulate_view",
    "simulate_cues",
    "run_simulation",
    "raw_cue_predictions",
    "encode_texts",
    "DENSE_SIMULATOR_VERSION",
    "DenseCorruption",
    "simulate_dense_view",
    "simulate_dense_features",
    "run_dense_simulation",
    "dense_simulation_settings",
]

SIMULATOR_VERSION = 1
"""Bump when the simulator's output for given settings changes (part of the cache key)."""
DENSE_SIMULATOR_VERSION = 1
"""The same for the dense mode (:func:`simulate_dense_features`)."""


@dataclass(frozen=True)
class CueCorruption:
    """How the simulated cues deviate from ground truth (see the module docstring for the exact recipe).

    Presets (``CueCorruption.preset(name)``):

    ========================  ======  =========  =======
    field                     none    default    heavy
    ========================  ======  =========  =======
    feature_noise              0.0     0.5        1.0
    boundary_jitter (px)       0       2          3
    confusion_prob             0.0     0.15       0.30
    drop_prob                  0.0     0.10       0.20
    split_prob                 0.0     0.15       0.30
    merge_prob                 0.0     0.10       0.20
    min_area (px)              1       4          8
    random_ids                 True    True       True
    levels                     1       1          1
    ========================  ======  =========  =======
    """

    feature_noise: float = 0.0
    """Expected norm of the Gaussian noise added to each (unit) mask embedding before re-normalising
    (per-component std = feature_noise / sqrt(D), so the value means the same for any D; 0.5 gives a
    cosine of ~0.89 to the clean embedding, 1.0 ~0.71)."""
    boundary_jitter: int = 0
    """Max pixels a mask is dilated (+) or eroded (-) by, drawn uniformly in [-j, j] per mask."""
    confusion_prob: float = 0.0
    """Per mask and view: probability its embedding is that of the most text-similar other class."""
    drop_prob: float = 0.0
    """Per mask and view: probability the mask is missing (pixels -1 in _s.npy, 0 in object_mask)."""
    split_prob: float = 0.0
    """Per mask and view: probability it is over-segmented into two parts along a random line."""
    merge_prob: float = 0.0
    """Per mask and view: probability it is under-segmented, merged with a random adjacent mask."""
    min_area: int = 1
    """Masks with fewer painted pixels than this are removed."""
    random_ids: bool = True
    """Permute object_mask ids randomly per view (raw SAM); False numbers masks 1..K in paint order."""
    levels: int = 1
    """Levels in _s.npy: 1 (instance masks) or 4 (LangSplat order default, s, m, l)."""

    def __post_init__(self) -> None:
        for name in ("confusion_prob", "drop_prob", "split_prob", "merge_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"CueCorruption.{name} must be in [0, 1] (got {v})")
        if self.feature_noise < 0 or self.boundary_jitter < 0:
            raise ValueError("CueCorruption.feature_noise and boundary_jitter must be >= 0")
        if self.min_area < 1:
            raise ValueError(f"CueCorruption.min_area must be >= 1 (got {self.min_area})")
        if self.levels not in (1, 4):
            raise ValueError(f"CueCorruption.levels must be 1 or 4 (got {self.levels})")

    PRESETS = ("none", "default", "heavy")  # class attribute (no annotation), not a field

    @classmethod
    def preset(cls, name: str) -> "CueCorruption":
        """``"none"`` (exact GT), ``"default"`` (the benchmark's default) or ``"heavy"``."""
        if name == "none":
            return cls()
        if name == "default":
            return cls(feature_noise=0.5, boundary_jitter=2, confusion_prob=0.15, drop_prob=0.10,
                       split_prob=0.15, merge_prob=0.10, min_area=4)
        if name == "heavy":
            return cls(feature_noise=1.0, boundary_jitter=3, confusion_prob=0.30, drop_prob=0.20,
                       split_prob=0.30, merge_prob=0.20, min_area=8)
        raise ValueError(f"unknown corruption preset {name!r}; choose one of {', '.join(cls.PRESETS)}")

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    def with_(self, **kw) -> "CueCorruption":
        return replace(self, **kw)


@dataclass(frozen=True)
class DenseCorruption:
    """How simulated dense (LSeg / MaskCLIP-style) features deviate from GT (recipe: module docstring).

    Presets (``DenseCorruption.preset(name)``); the per-pixel noise is always below the per-mask cue's
    ``feature_noise`` (0.5 / 1.0), since a dense head averages over many patches:

    ========================  ======  =========  =======
    field                     none    default    heavy
    ========================  ======  =========  =======
    blur_sigma (px)            0.0     2.0        4.0
    lowfreq_noise              0.0     0.6        1.2
    noise_cell (px)            16      16         24
    pixel_noise                0.0     0.15       0.3
    region_confusion_prob      0.0     0.05       0.20
    ========================  ======  =========  =======
    """

    blur_sigma: float = 0.0
    """Std (image pixels) of the Gaussian blur of the per-class image: width of the smooth band at edges."""
    lowfreq_noise: float = 0.0
    """Expected norm (at the coarse grid nodes) of the low-frequency noise mixed in from the class embeddings."""
    noise_cell: int = 16
    """Cell size (image pixels) of the coarse grid the low-frequency noise is drawn on."""
    pixel_noise: float = 0.0
    """Expected norm of the per-pixel isotropic Gaussian noise (per-component std pixel_noise / sqrt(D))."""
    region_confusion_prob: float = 0.0
    """Per region (GT instance) and view: probability it takes its most text-similar other class."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.region_confusion_prob <= 1.0:
            raise ValueError(f"DenseCorruption.region_confusion_prob must be in [0, 1] (got {self.region_confusion_prob})")
        for name in ("blur_sigma", "lowfreq_noise", "pixel_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"DenseCorruption.{name} must be >= 0 (got {getattr(self, name)})")
        if self.noise_cell < 1:
            raise ValueError(f"DenseCorruption.noise_cell must be >= 1 (got {self.noise_cell})")

    PRESETS = ("none", "default", "heavy")  # class attribute (no annotation), not a field

    @classmethod
    def preset(cls, name: str) -> "DenseCorruption":
        """``"none"`` (GT class embeddings), ``"default"`` or ``"heavy"``."""
        if name == "none":
            return cls()
        if name == "default":
            return cls(blur_sigma=2.0, lowfreq_noise=0.6, noise_cell=16, pixel_noise=0.15, region_confusion_prob=0.05)
        if name == "heavy":
            return cls(blur_sigma=4.0, lowfreq_noise=1.2, noise_cell=24, pixel_noise=0.3, region_confusion_prob=0.20)
        raise ValueError(f"unknown dense corruption preset {name!r}; choose one of {', '.join(cls.PRESETS)}")

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    def with_(self, **kw) -> "DenseCorruption":
        return replace(self, **kw)


# --------------------------------------------------------------------------------------------
# Scene labels and text embeddings
# --------------------------------------------------------------------------------------------


@dataclass
class SceneLabels:
    scene: Path
    class_names: List[str]
    instance_class: Dict[int, int]  # instance id -> class id (from gt/instances.json)


def load_scene_labels(scene: Path) -> SceneLabels:
    scene = Path(scene)
    gt = scene / "gt"
    cpath = gt / "classes.json"
    if not cpath.exists():
        raise CueError(
            f"{cpath}: not found; --mode simulate needs a scene with ground truth (make one with "
            f"`unisem-make-scene --out {scene}`); for real images use `unisem-preprocess --data {scene} --mode sam-clip`"
        )
    try:
        names = json.loads(cpath.read_text())
        inst = json.loads((gt / "instances.json").read_text()) if (gt / "instances.json").exists() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise CueError(f"{gt}: unreadable classes.json / instances.json ({e}); regenerate the scene") from None
    index = {n: i for i, n in enumerate(names)}
    inst_cls = {}
    for k, v in inst.items():
        if v not in index:
            raise CueError(f"{gt / 'instances.json'}: instance {k} has class {v!r}, which is not in classes.json")
        inst_cls[int(k)] = index[v]
    return SceneLabels(scene, list(names), inst_cls)


def encode_texts(encoder, names: Sequence[str]) -> np.ndarray:
    """``encoder.encode(names)`` as unit-row float32 numpy [N, D]."""
    t = encoder.encode(list(names))
    try:
        import torch

        if isinstance(t, torch.Tensor):
            t = t.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    t = np.asarray(t, dtype=np.float32)
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)


def similar_classes(text: np.ndarray, void: int | None = 0) -> np.ndarray:
    """For each class, the most text-similar other class (never ``void``; void maps to itself)."""
    sim = text @ text.T
    np.fill_diagonal(sim, -np.inf)
    if void is not None and 0 <= void < len(text):
        sim[:, void] = -np.inf
    out = np.argmax(sim, axis=1)
    if void is not None and 0 <= void < len(text):
        out[void] = void
    if len(text) <= 2:  # no other non-void class
        out[:] = np.arange(len(text))
    return out


# --------------------------------------------------------------------------------------------
# One view
# --------------------------------------------------------------------------------------------

_KERNEL = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)


def _view_rng(seed: int, stem: str, stream: int = 0) -> np.random.Generator:
    """The view's generator; ``stream`` > 0 gives an independent one (the dense mode uses stream 1)."""
    key = [int(seed) & 0xFFFFFFFF, zlib.crc32(stem.encode())]
    return np.random.default_rng(key if stream == 0 else key + [int(stream)])


def _adjacency(lab: np.ndarray, n: int) -> List[set]:
    """4-neighbour adjacency of the labels 0..n-1 in ``lab`` (-1 ignored)."""
    adj: List[set] = [set() for _ in range(n)]
    for a, b in ((lab[:, :-1], lab[:, 1:]), (lab[:-1, :], lab[1:, :])):
        sel = (a != b) & (a >= 0) & (b >= 0)
        if sel.any():
            pairs = np.unique(np.stack([a[sel], b[sel]], 1), axis=0)
            for i, j in pairs:
                adj[int(i)].add(int(j))
                adj[int(j)].add(int(i))
    return adj


def _split(mask: np.ndarray, rng: np.random.Generator, min_area: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    ys, xs = np.nonzero(mask)
    theta = rng.uniform(0.0, np.pi)
    q = rng.uniform(0.3, 0.7)
    if len(ys) < 2 * min_area or len(ys) < 2:
        return None
    t = xs * np.cos(theta) + ys * np.sin(theta)
    side = t > np.quantile(t, q)
    if side.sum() < min_area or (~side).sum() < min_area:
        return None
    a = np.zeros_like(mask)
    a[ys[side], xs[side]] = True
    return a, mask & ~a


def _noisy(vec: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    if noise <= 0:
        return vec.astype(np.float32)
    v = vec + rng.standard_normal(vec.shape[0]) * (noise / np.sqrt(vec.shape[0]))
    return (v / max(np.linalg.norm(v), 1e-12)).astype(np.float32)


def _paint(masks: List[np.ndarray], shape, jitter: int, rng: np.random.Generator, min_area: int) -> Tuple[np.ndarray, List[int]]:
    """Paint masks large -> small after per-mask dilation/erosion; returns (lab, kept mask indices in new order)."""
    import cv2

    lab = np.full(shape, -1, np.int64)
    order = sorted(range(len(masks)), key=lambda i: (-int(masks[i].sum()), i))
    for i in order:
        m = masks[i]
        if jitter > 0:
            r = int(rng.integers(-jitter, jitter + 1))
            if r > 0:
                m = cv2.dilate(m.astype(np.uint8), _KERNEL, iterations=r).astype(bool)
            elif r < 0:
                m = cv2.erode(m.astype(np.uint8), _KERNEL, iterations=-r, borderType=cv2.BORDER_REPLICATE).astype(bool)
        lab[m] = i
    counts = np.bincount(lab[lab >= 0], minlength=len(masks)) if len(masks) else np.zeros(0, np.int64)
    kept = [i for i in order if counts[i] >= min_area]
    remap = np.full(len(masks) + 1, -1, np.int64)
    for new, old in enumerate(kept):
        remap[old] = new
    lab = remap[lab]  # -1 -> remap[-1] == -1 (last entry)
    return lab, kept


def simulate_view(
    instance: np.ndarray,
    instance_class: Dict[int, int],
    text: np.ndarray,
    similar: np.ndarray,
    corruption: CueCorruption,
    rng: np.random.Generator,
    semantic: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Simulate one view's cues from its GT instance map.

    Args:
        instance: [H, W] GT instance ids (0 = void).
        instance_class: instance id -> class id (instances missing here take the majority ``semantic``
            class of their pixels).
        text: [C, D] unit class-name embeddings (row = class id).
        similar: [C] most similar other class per class (confusion target).
        corruption: the corruption settings.
        rng: the view's random generator.
        semantic: optional [H, W] GT class map (fallback for ``instance_class``).

    Returns:
        ``(seg [L, H, W] int, feats [K, D] float32, object_ids [H, W] int, mask_class [K] int)`` where
        ``mask_class`` is the class whose text embedding each row was made from (after confusion).
    """
    c = corruption
    H, W = instance.shape
    masks: List[np.ndarray] = []
    cls: List[int] = []
    for iid in np.unique(instance):
        if iid == 0:
            continue
        m = instance == iid
        k = instance_class.get(int(iid))
        if k is None:
            if semantic is None:
                continue
            k = int(np.bincount(semantic[m].astype(np.int64)).argmax())
        if k == 0:
            continue
        masks.append(m)
        cls.append(int(k))

    # 2. under-segmentation
    if c.merge_prob > 0 and len(masks) > 1:
        lab0 = np.full((H, W), -1, np.int64)
        for i, m in enumerate(masks):
            lab0[m] = i
        adj = _adjacency(lab0, len(masks))
        used = np.zeros(len(masks), bool)
        new_masks, new_cls = [], []
        for i in rng.permutation(len(masks)):
            if used[i]:
                continue
            if rng.random() < c.merge_prob:
                nb = sorted(j for j in adj[i] if not used[j])
                if nb:
                    j = nb[int(rng.integers(len(nb)))]
                    used[i] = used[j] = True
                    big = i if masks[i].sum() >= masks[j].sum() else j
                    new_masks.append(masks[i] | masks[j])
                    new_cls.append(cls[big])
                    continue
        for i in range(len(masks)):
            if not used[i]:
                new_masks.append(masks[i])
                new_cls.append(cls[i])
        masks, cls = new_masks, new_cls

    # 3. over-segmentation
    if c.split_prob > 0:
        new_masks, new_cls = [], []
        for m, k in zip(masks, cls):
            parts = _split(m, rng, c.min_area) if rng.random() < c.split_prob else None
            for p in parts if parts is not None else (m,):
                new_masks.append(p)
                new_cls.append(k)
        masks, cls = new_masks, new_cls

    # 4-6. confusion, drop, noise
    emb_cls: List[int] = []
    keep: List[int] = []
    for i, k in enumerate(cls):
        confused = rng.random() < c.confusion_prob
        dropped = rng.random() < c.drop_prob
        emb_cls.append(int(similar[k]) if confused else k)
        if not dropped:
            keep.append(i)
    masks = [masks[i] for i in keep]
    emb_cls = [emb_cls[i] for i in keep]
    emb = [_noisy(text[k], c.feature_noise, rng) for k in emb_cls]

    # 7-8. boundary jitter, paint, min area
    lab, kept = _paint(masks, (H, W), c.boundary_jitter, rng, c.min_area)
    D = text.shape[1]
    feats0 = np.stack([emb[i] for i in kept]).astype(np.float32) if kept else np.zeros((0, D), np.float32)
    mask_cls = np.asarray([emb_cls[i] for i in kept], np.int64)
    K = len(kept)

    # 9. object ids
    ids = (rng.permutation(K) + 1) if c.random_ids else (np.arange(K) + 1)
    obj = np.where(lab >= 0, np.concatenate([ids, [0]])[lab], 0).astype(np.int64)

    if c.levels == 1:
        return lab[None], feats0, obj, mask_cls

    # LangSplat-style 4 levels: default, s (parts), m (= default), l (groups)
    parts_lab = np.full((H, W), -1, np.int64)
    parts_feats, parts_cls = [], []
    for i in range(K):
        m = lab == i
        split = _split(m, rng, c.min_area)
        for p in split if split is not None else (m,):
            parts_lab[p] = len(parts_feats)
            parts_feats.append(_noisy(text[mask_cls[i]], c.feature_noise, rng))
            parts_cls.append(mask_cls[i])
    parent = list(range(K))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    adj = _adjacency(lab, K)
    for i in range(K):
        nb = sorted(adj[i])
        if nb and rng.random() < 0.5:
            j = nb[int(rng.integers(len(nb)))]
            parent[find(i)] = find(j)
    areas = np.bincount(lab[lab >= 0], minlength=K)
    roots = sorted({find(i) for i in range(K)})
    group_of = {r: g for g, r in enumerate(roots)}
    best: Dict[int, int] = {}
    for i in range(K):
        g = group_of[find(i)]
        if g not in best or areas[i] > areas[best[g]]:
            best[g] = i
    gmap = np.array([group_of[find(i)] for i in range(K)] + [-1], np.int64)
    group_lab = gmap[lab]
    group_feats = [feats0[best[g]] for g in range(len(roots))]
    group_cls = [mask_cls[best[g]] for g in range(len(roots))]

    P, G = len(parts_feats), len(roots)
    seg = np.stack([
        lab,
        np.where(parts_lab >= 0, parts_lab + K, -1),
        np.where(lab >= 0, lab + K + P, -1),
        np.where(group_lab >= 0, group_lab + 2 * K + P, -1),
    ])
    blocks = [feats0, np.asarray(parts_feats, np.float32).reshape(P, D), feats0, np.asarray(group_feats, np.float32).reshape(G, D)]
    feats = np.concatenate(blocks).astype(np.float32)
    all_cls = np.concatenate([mask_cls, np.asarray(parts_cls, np.int64), mask_cls, np.asarray(group_cls, np.int64)])
    return seg, feats, obj, all_cls


def _channels(fn, arr: np.ndarray, chunk: int = 4) -> np.ndarray:
    """Apply an OpenCV image function to [H, W, C] ``arr`` a few channels at a time (cv2's channel limits)."""
    outs = []
    for i in range(0, arr.shape[2], chunk):
        o = fn(np.ascontiguousarray(arr[..., i:i + chunk]))
        outs.append(o.reshape(*o.shape[:2], -1))
    return np.concatenate(outs, axis=2)


def dense_grid_size(height: int, width: int, scale: float) -> Tuple[int, int]:
    """The stored grid (h, w) for an image of (height, width) at ``scale``."""
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def simulate_dense_view(
    semantic: np.ndarray,
    text: np.ndarray,
    similar: np.ndarray,
    corruption: DenseCorruption,
    rng: np.random.Generator,
    instance: Optional[np.ndarray] = None,
    scale: float = 0.5,
) -> np.ndarray:
    """Simulate one view's dense features from its GT class map (recipe: module docstring).

    Args:
        semantic: [H, W] GT class ids (0 = void; void pixels get ``text[0]``).
        text: [C, D] unit class-name embeddings (row = class id).
        similar: [C] most similar other class per class (region confusion target).
        corruption: the dense corruption settings.
        rng: the view's random generator.
        instance: optional [H, W] GT instance ids: the regions of region confusion (default: the classes).
        scale: stored grid = ``round(scale * H) x round(scale * W)``.

    Returns:
        float32 [h, w, D] unit features.
    """
    import cv2

    c = corruption
    semantic = np.asarray(semantic).astype(np.int64)
    H, W = semantic.shape
    C, D = text.shape
    if semantic.size and (semantic.min() < 0 or semantic.max() >= C):
        raise ValueError(f"semantic ids must lie in [0, {C - 1}]; got [{semantic.min()}, {semantic.max()}]")
    # 1. regions and region-level confusion
    cls = semantic.copy()
    regions = np.asarray(instance).astype(np.int64) if instance is not None else semantic
    if c.region_confusion_prob > 0:
        for rid in np.unique(regions):
            m = regions == rid
            k = int(np.bincount(semantic[m], minlength=C).argmax())
            if rng.random() < c.region_confusion_prob:
                cls[m & (semantic == k)] = int(similar[k])
    # 2. blurred class weights on the stored grid
    onehot = np.zeros((H, W, C), np.float32)
    onehot[np.arange(H)[:, None], np.arange(W)[None, :], cls] = 1.0
    if c.blur_sigma > 0:
        onehot = _channels(lambda a: cv2.GaussianBlur(a, (0, 0), sigmaX=c.blur_sigma, sigmaY=c.blur_sigma,
                                                      borderType=cv2.BORDER_REFLECT), onehot)
    h, w = dense_grid_size(H, W, scale)
    if (h, w) != (H, W):
        onehot = _channels(lambda a: cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA), onehot)
    feats = onehot @ text.astype(np.float32)
    # 3. low-frequency noise in the span of the class embeddings
    if c.lowfreq_noise > 0:
        gh, gw = int(np.ceil(H / c.noise_cell)) + 1, int(np.ceil(W / c.noise_cell)) + 1
        coarse = rng.standard_normal((gh, gw, C)).astype(np.float32) @ text.astype(np.float32)
        coarse *= c.lowfreq_noise / max(float(np.sqrt(np.mean(np.sum(coarse ** 2, axis=-1)))), 1e-12)
        feats = feats + resize_bilinear(coarse, (h, w))
    # 4. per-pixel noise, normalise
    if c.pixel_noise > 0:
        feats = feats + rng.standard_normal(feats.shape).astype(np.float32) * (c.pixel_noise / np.sqrt(D))
    return (feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Whole scene
# --------------------------------------------------------------------------------------------


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.exists():
        raise CueError(
            f"{path}: not found; --mode simulate needs gt/instance maps for every image (a scene made by "
            "`unisem-make-scene`); for real images use --mode sam-clip"
        )
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int64)


def simulation_settings(encoder, corruption: CueCorruption, seed: int) -> Dict[str, Any]:
    """The settings a simulated cue set is keyed by (manifest)."""
    return {
        "mode": "simulate",
        "generator": f"unisem_ns.cues.simulator/{SIMULATOR_VERSION}",
        "corruption": corruption.to_json(),
        "encoder": dict(encoder.to_json()),
        "seed": int(seed),
    }


def _simulate_one(scene: Path, stem: str, labels: SceneLabels, text, similar, corruption, seed) -> None:
    gt = Path(scene) / "gt"
    inst = _read_png(gt / "instance" / f"{stem}.png")
    sem_path = gt / "semantic" / f"{stem}.png"
    sem = _read_png(sem_path) if sem_path.exists() else None
    rng = _view_rng(seed, stem)
    seg, feats, obj, _ = simulate_view(inst, labels.instance_class, text, similar, corruption, rng, semantic=sem)
    save_object_mask(scene, stem, obj)
    save_language_cue(scene, stem, seg, feats)


def run_simulation(
    scene: Path,
    encoder,
    corruption: CueCorruption,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> CueRunReport:
    """Like :func:`simulate_cues` but returns a :class:`CueRunReport` (what was computed / reused)."""
    scene = Path(scene)
    stems = scene_stems(scene)
    labels = load_scene_labels(scene)
    text = encode_texts(encoder, labels.class_names)
    void = 0 if labels.class_names and labels.class_names[0] == "void" else None
    similar = similar_classes(text, void=void)
    with CueCache(scene, stems, simulation_settings(encoder, corruption, seed), encoder.to_json(), log=log) as cache:
        todo = cache.begin()
        for stem in track(todo, f"Simulating cues ({len(todo)} views)", enabled=progress):
            _simulate_one(scene, stem, labels, text, similar, corruption, seed)
            cache.mark_done(stem)
        return cache.finish()


def simulate_cues(
    scene: Path,
    encoder,
    corruption: CueCorruption,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Write simulated CLIP + SAM cues for every image of a synthetic scene (resumable, atomic).

    Args:
        scene: a scene folder with ``transforms.json`` and ``gt/`` (``unisem-make-scene``).
        encoder: a :class:`unisem_ns.language.encoders.TextEncoder` (class names are encoded with it and
            its ``to_json()`` goes to ``encoder.json``).
        corruption: see :class:`CueCorruption` (``CueCorruption.preset("default")`` is the benchmark's).
        seed: view ``stem`` uses the generator seeded by ``(seed, crc32(stem))``.
        progress: rich progress bar.
        log: where one-line status messages go.

    Returns:
        ``scene/language_features`` (``object_mask/`` is written next to it).
    """
    run_simulation(scene, encoder, corruption, seed=seed, progress=progress, log=log)
    return language_dir(scene)


def raw_cue_predictions(
    scene: Path,
    stems: Sequence[str],
    encoder,
    label_names: Sequence[str],
    level: int = 0,
) -> Dict[str, np.ndarray]:
    """The "raw cues" baseline: per pixel, the label whose text embedding is most cosine-similar to the
    pixel's cue embedding (level ``level`` of ``language_features``).

    ``label_names`` are encoded with ``encoder`` (which must be in the cue's text space: encoder.json's dim,
    kind and model must match; "pretrained" is not compared, a tag and a checkpoint path can be the same). If ``label_names[0] == "void"`` it is never predicted by argmax:
    it only marks pixels without a mask (prediction 0). Returns ``{stem: int32 [H, W] label ids}``.
    """
    scene = Path(scene)
    info = read_encoder_json(scene)
    mine = dict(encoder.to_json())
    if int(info.get("dim", -1)) != int(mine.get("dim", -2)) or any(
        info.get(k) is not None and mine.get(k) is not None and info.get(k) != mine.get(k) for k in ("kind", "model")
    ):
        raise CueError(
            f"{language_dir(scene) / 'encoder.json'}: the cues are in {info.get('kind')}:{info.get('model')} "
            f"({info.get('dim')}-d) but the labels were encoded with {mine.get('kind')}:{mine.get('model')} "
            f"({mine.get('dim')}-d); use the same text encoder"
        )
    text = encode_texts(encoder, label_names)
    skip_void = len(label_names) > 1 and label_names[0] == "void"
    out: Dict[str, np.ndarray] = {}
    for stem in stems:
        seg, feats = load_language_cue(scene, stem)
        f = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        sims = f @ text.T
        if skip_void:
            sims[:, 0] = -np.inf
        mask_label = np.argmax(sims, axis=1).astype(np.int32) if len(f) else np.zeros(0, np.int32)
        idx = seg[level].astype(np.int64)
        pred = np.concatenate([mask_label, np.zeros(1, np.int32)])[idx]  # -1 -> last entry = 0
        out[stem] = pred.astype(np.int32)
    return out


# --------------------------------------------------------------------------------------------
# Dense mode, whole scene
# --------------------------------------------------------------------------------------------


def dense_simulation_settings(encoder, corruption: DenseCorruption, seed: int, scale: float) -> Dict[str, Any]:
    """The settings a simulated dense feature set is keyed by (``dense_features/manifest.json``)."""
    return {
        "mode": "simulate-dense",
        "generator": f"unisem_ns.cues.simulator.dense/{DENSE_SIMULATOR_VERSION}",
        "corruption": corruption.to_json(),
        "encoder": dict(encoder.to_json()),
        "seed": int(seed),
        "scale": float(scale),
    }


def run_dense_simulation(
    scene: Path,
    encoder,
    corruption: DenseCorruption,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    scale: float = 0.5,
) -> CueRunReport:
    """Like :func:`simulate_dense_features` but returns a :class:`CueRunReport` (what was computed / reused)."""
    if not 0.0 < float(scale) <= 1.0:
        raise CueError(f"--dense-scale {scale}: must be in (0, 1] (the stored grid is scale x the image)")
    scene = Path(scene)
    stems = scene_stems(scene)
    labels = load_scene_labels(scene)
    text = encode_texts(encoder, labels.class_names)
    void = 0 if labels.class_names and labels.class_names[0] == "void" else None
    similar = similar_classes(text, void=void)
    gt = scene / "gt"
    settings = dense_simulation_settings(encoder, corruption, seed, scale)
    with DenseCueCache(scene, stems, settings, encoder.to_json(), log=log) as cache:
        todo = cache.begin()
        for stem in track(todo, f"Simulating dense features ({len(todo)} views)", enabled=progress):
            sem = _read_png(gt / "semantic" / f"{stem}.png")
            ipath = gt / "instance" / f"{stem}.png"
            inst = _read_png(ipath) if ipath.exists() else None
            feats = simulate_dense_view(sem, text, similar, corruption, _view_rng(seed, stem, stream=1),
                                        instance=inst, scale=scale)
            write_dense_features(scene, stem, feats)
            cache.mark_done(stem)
        return cache.finish()


def simulate_dense_features(
    scene: Path,
    encoder,
    corruption: DenseCorruption,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    scale: float = 0.5,
) -> Path:
    """Write simulated LSeg / MaskCLIP-style dense features for every image of a synthetic scene.

    Made from ``gt/semantic`` (+ ``gt/instance`` for region confusion) and the encoder's class-name
    embeddings, corrupted by ``corruption``; written to ``dense_features/<stem>.npy`` (float16
    [round(scale H), round(scale W), D]) with ``dense_features/encoder.json`` and a resumable manifest (the
    folder is locked while writing). View ``stem`` uses the generator seeded by ``(seed, crc32(stem), 1)``.

    Returns:
        ``scene/dense_features``.
    """
    run_dense_simulation(scene, encoder, corruption, seed=seed, progress=progress, log=log, scale=scale)
    return dense_dir(scene)
