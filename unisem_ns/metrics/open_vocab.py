"""Open-vocabulary query evaluation of rendered feature maps, as GSemSplat's and LangSplat's scripts score them.

Both reference evaluations (GSemSplat ``eval/evaluate_iou_loc.py``, LangSplat ``eval/evaluate_iou_loc.py``) give
every text query one relevancy map per feature *head* (GSemSplat: 2, region and context; LangSplat: 3 SAM levels)
and score one head per query, picked without looking at the ground truth. Per query ``k``:

* every head ``i``: ``s_i = 0.5 * (r_i + box_mean_30x30(r_i))``, binary prediction ``pred_i`` = 7x7 mode filter of
  ``minmax(s_i) > t`` (:func:`~unisem_ns.metrics.masks.postprocess_relevancy`; t = 0.5 GSemSplat, 0.4 LangSplat);
* the IoU head is the one whose ``s_i`` has the largest maximum (the first one on a tie), over the whole image;
* **gsemsplat**: the ground truth is mode-filtered too, and prediction and ground truth are multiplied by the
  visibility mask ``valid``; a query whose filtered, visible ground truth is empty is skipped (no IoU, no
  localisation). Localisation: the head whose ``s_i * valid`` has the largest maximum; a hit when one of the
  pixels attaining that maximum lies in the filtered, visible ground truth;
* **langsplat**: the raw ground-truth mask is compared (no visibility mask in the script; ``valid``, when
  given, is applied to both masks anyway). Localisation uses the box mean alone: the head whose
  ``box_mean(r_i)`` has the largest maximum, a hit when one of its maximum pixels lies in one of the query's
  ground-truth boxes (inclusive; the tight box of the mask when no boxes are given). LangSplat's script has
  no skip rule (each annotated label has a polygon); here a query without ground truth is skipped for both.

The filters use ``border="reference"`` by default (reflected box filter and the scripts' mode-filter window,
see :mod:`unisem_ns.metrics.masks`) and the scripts' ``1e-9`` in the min-max denominator; everything is computed
in float64 where the scripts use float32, so exact ties at the maximum or at the threshold may resolve differently.

Scene level (:func:`aggregate_results`): mIoU = mean IoU over every evaluated (image, query) pair, localisation
accuracy = hits / evaluated pairs.

:func:`load_gsemsplat_scene` reads GSemSplat's released evaluation folder (``restored_feat.npy``, ``frame_*.json``,
``mask_*.npy``, ``queries.txt``) and :func:`evaluate_gsemsplat_scene` scores it with a text encoder or given
text embeddings; relevancy comes from :func:`unisem_ns.language.query_field.relevancy`.

Imports torch and numpy only; PIL (polygon rasterisation), cv2 (optional rasteriser) and the language package
are imported when first needed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ._tensor import as_tensor as _as_tensor
from .masks import (
    REFERENCE_NORM_EPS,
    Border,
    _as_mask,
    _iou,
    box_mean,
    localization_hit,
    mode_filter,
    postprocess_relevancy,
)

if TYPE_CHECKING:  # pragma: no cover
    from unisem_ns.language.encoders import TextEncoder

ArrayLike = Union[Tensor, np.ndarray]
Protocol = Literal["gsemsplat", "langsplat"]

__all__ = [
    "PROTOCOLS",
    "QueryResult",
    "ImageResult",
    "SceneResult",
    "evaluate_queries",
    "aggregate_results",
    "relevancy_maps",
    "rasterize_polygon",
    "load_labelme_annotation",
    "FrameAnnotation",
    "GSemSplatScene",
    "load_gsemsplat_scene",
    "evaluate_gsemsplat_scene",
]

PROTOCOLS = ("gsemsplat", "langsplat")
#: Box-filter size of both scripts.
AVG_KERNEL = 30


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class QueryResult:
    """One (image, query) pair.

    ``head``: the head whose IoU counts; ``loc_head``: the head used for localisation (they can differ);
    ``head_ious``: the IoU of every head, ``head_scores``: the maximum of every head's smoothed map (what picks
    ``head``). Skipped queries (no ground truth) have ``evaluated=False`` and None/empty fields.
    """

    query: str
    evaluated: bool
    head: Optional[int] = None
    iou: Optional[float] = None
    loc_head: Optional[int] = None
    hit: Optional[bool] = None
    head_ious: Tuple[float, ...] = ()
    head_scores: Tuple[float, ...] = ()


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


@dataclass
class ImageResult:
    """All queries of one image; means are over the evaluated ones (NaN when none was)."""

    queries: List[QueryResult]
    name: Optional[str] = None

    @property
    def evaluated(self) -> List[QueryResult]:
        return [q for q in self.queries if q.evaluated]

    @property
    def num_evaluated(self) -> int:
        return len(self.evaluated)

    @property
    def miou(self) -> float:
        return _mean([q.iou for q in self.evaluated])

    @property
    def localization_accuracy(self) -> float:
        return _mean([float(q.hit) for q in self.evaluated])


@dataclass
class SceneResult:
    """Scene totals over every evaluated (image, query) pair.

    ``per_query`` maps a query to ``{"miou", "localization_accuracy", "count"}`` over the images where it was
    evaluated.
    """

    images: List[ImageResult]
    miou: float
    localization_accuracy: float
    num_evaluated: int
    num_skipped: int
    per_query: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return {"miou": self.miou, "localization_accuracy": self.localization_accuracy,
                "num_evaluated": self.num_evaluated, "num_skipped": self.num_skipped, "per_query": self.per_query}


def aggregate_results(images: Iterable[ImageResult]) -> SceneResult:
    """Scene mIoU (mean over evaluated pairs) and localisation accuracy (hits / evaluated pairs)."""
    images = list(images)
    done = [q for im in images for q in im.evaluated]
    per_query: Dict[str, Dict[str, float]] = {}
    for name in dict.fromkeys(q.query for q in done):
        mine = [q for q in done if q.query == name]
        per_query[name] = {"miou": _mean([q.iou for q in mine]),
                           "localization_accuracy": _mean([float(q.hit) for q in mine]), "count": len(mine)}
    return SceneResult(
        images=images,
        miou=_mean([q.iou for q in done]),
        localization_accuracy=_mean([float(q.hit) for q in done]),
        num_evaluated=len(done),
        num_skipped=sum(len(im.queries) for im in images) - len(done),
        per_query=per_query,
    )


# ---------------------------------------------------------------------------------------------------- one image


def _per_query(values: Any, queries: List[str], what: str) -> List[Any]:
    """A per-query list from a mapping (looked up by query; missing -> None) or a sequence (by position)."""
    n = len(queries)
    if values is None:
        return [None] * n
    if isinstance(values, Mapping):
        return [values.get(q) for q in queries]
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{what}: expected one entry per query ({n}), got {len(values)}")
    return values


def _first_argmax(values: Sequence[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def evaluate_queries(
    relevancy: ArrayLike,
    gt_masks: Union[Mapping[str, Optional[ArrayLike]], Sequence[Optional[ArrayLike]]],
    protocol: Protocol = "gsemsplat",
    valid: Optional[ArrayLike] = None,
    boxes: Union[Mapping[str, Any], Sequence[Any], None] = None,
    queries: Optional[Sequence[str]] = None,
    threshold: Optional[float] = None,
    border: Border = "reference",
    norm_eps: float = REFERENCE_NORM_EPS,
    name: Optional[str] = None,
) -> ImageResult:
    """Score one image's text queries, choosing one head per query as the protocol's script does.

    Args:
        relevancy: [Heads, Q, H, W] relevancy maps (e.g. from :func:`relevancy_maps`), query axis in the order
            of ``queries``.
        gt_masks: per query an [H, W] binary mask (union of the query's instances) or None; a mapping is looked
            up by query name (absent = None), a sequence by position. None or empty -> the query is skipped.
        protocol: "gsemsplat" or "langsplat" (see the module docstring).
        valid: optional [H, W] visibility mask (GSemSplat's ``mask_*.npy``); None = every pixel visible.
        boxes: LangSplat localisation boxes per query, each [N, 4] ``(x1, y1, x2, y2)`` inclusive pixels, same
            container rules as ``gt_masks``; None (or a None entry) = the tight box of the query's mask.
            Ignored by "gsemsplat", which localises in the mask.
        queries: query names, length Q; default: the mapping's keys in order, else ``"0", "1", ...``.
        threshold: overrides the protocol's threshold (0.5 / 0.4).
        border: filter border rule, "reference" (as the scripts) or "clip".
        norm_eps: epsilon of the min-max normalisation (the scripts: 1e-9).
        name: an image name stored in the result.

    Returns:
        :class:`ImageResult` with one :class:`QueryResult` per query.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    rel = _as_tensor(relevancy).to("cpu", torch.float64)
    if rel.ndim != 4:
        raise ValueError(f"relevancy must be [Heads, Q, H, W], got shape {tuple(rel.shape)}")
    n_head, n_query, h, w = rel.shape
    if queries is None:
        queries = list(gt_masks.keys()) if isinstance(gt_masks, Mapping) else [str(k) for k in range(n_query)]
    queries = [str(q) for q in queries]
    if len(queries) != n_query:
        raise ValueError(f"relevancy has {n_query} queries but {len(queries)} query names were given")
    gts = _per_query(gt_masks, queries, "gt_masks")
    box_list = _per_query(boxes, queries, "boxes")
    v = None
    if valid is not None:
        v = _as_mask(valid, "valid")
        if v.shape != (h, w):
            raise ValueError(f"valid {tuple(v.shape)} and relevancy maps {(h, w)} differ in shape")

    records: List[QueryResult] = []
    for k, query in enumerate(queries):
        gt = None if gts[k] is None else _as_mask(gts[k], f"gt_masks[{query!r}]")
        if gt is not None and gt.shape != (h, w):
            raise ValueError(f"gt_masks[{query!r}] {tuple(gt.shape)} and relevancy maps {(h, w)} differ in shape")
        if gt is None or not bool(gt.any()):
            records.append(QueryResult(query, False))
            continue
        # The ground truth each head is compared with: GSemSplat filters it and keeps the visible part.
        target = mode_filter(gt, border=border) if protocol == "gsemsplat" else gt
        if v is not None:
            target = target & v
        if not bool(target.any()):
            records.append(QueryResult(query, False))
            continue

        ious, scores, loc_scores = [], [], []
        for i in range(n_head):
            r = rel[i, k]
            pred, smoothed = postprocess_relevancy(r, protocol, threshold, border=border, norm_eps=norm_eps)
            if v is not None:
                pred = pred & v
            ious.append(_iou(pred, target))
            scores.append(float(smoothed.max()))  # head choice: unmasked smoothed maximum (both scripts)
            loc = smoothed if protocol == "gsemsplat" else box_mean(r, AVG_KERNEL, border)
            loc_scores.append(float((loc * v if v is not None else loc).max()))
        head, loc_head = _first_argmax(scores), _first_argmax(loc_scores)
        hit = localization_hit(rel[loc_head, k], gt, protocol, boxes=box_list[k], valid=v, border=border) == 1.0
        records.append(QueryResult(query, True, head, ious[head], loc_head, hit, tuple(ious), tuple(scores)))
    return ImageResult(records, name)


# ---------------------------------------------------------------------------------------------------- relevancy


def relevancy_maps(
    features: Union[ArrayLike, Any],
    positives: Tensor,
    negatives: Optional[Tensor] = None,
    *,
    encoder: Optional["TextEncoder"] = None,
    temperature: Optional[float] = None,
    chunk_size: int = 1 << 16,
) -> Tensor:
    """LERF relevancy [Heads, Q, H, W] (float32) of decoded features for Q positive phrase embeddings.

    Args:
        features: [Heads, H, W, D] (or [H, W, D], one head) features in the text space; numpy arrays, also
            memory-mapped ones, are read chunk by chunk.
        positives: [Q, D] query embeddings.
        negatives: [K, D] negative embeddings; default: the canonical negatives encoded with ``encoder``.
        encoder: a :class:`~unisem_ns.language.encoders.TextEncoder` for the default negatives.
        temperature: softmax temperature (default 10, :data:`~unisem_ns.language.query_field.RELEVANCY_TEMPERATURE`).
        chunk_size: pixels per relevancy call.

    Note: :func:`unisem_ns.language.query_field.relevancy` normalises features exactly; GSemSplat divides them
    by ``norm + 1e-6``, a relative difference of about ``1e-6 / norm`` in every similarity.
    """
    from unisem_ns.language.query_field import CANONICAL_NEGATIVES, RELEVANCY_TEMPERATURE, relevancy

    if features.ndim == 3:
        features = features[None]
    if features.ndim != 4:
        raise ValueError(f"features must be [Heads, H, W, D], got shape {tuple(features.shape)}")
    n_head, h, w, d = (int(s) for s in features.shape)
    if positives.ndim == 1:
        positives = positives[None]
    if negatives is None:
        if encoder is None:
            raise ValueError("relevancy_maps: pass negatives [K, D] or the encoder that encodes the canonical negatives")
        negatives = encoder.encode(list(CANONICAL_NEGATIVES))  # once, not once per chunk
    temp = RELEVANCY_TEMPERATURE if temperature is None else float(temperature)
    out = torch.empty(n_head, positives.shape[0], h * w, dtype=torch.float32)
    for i in range(n_head):
        head = features[i].reshape(h * w, d)
        for j in range(0, h * w, chunk_size):
            chunk = head[j:j + chunk_size]
            # copy numpy chunks: memory-mapped files are read-only and torch wants writable memory
            chunk = chunk if isinstance(chunk, Tensor) else torch.from_numpy(np.array(chunk, dtype=np.float32))
            out[i, :, j:j + chunk_size] = relevancy(chunk.float(), positives, negatives, temp).T.cpu()
    return out.reshape(n_head, -1, h, w)


# ---------------------------------------------------------------------------------------------------- annotations


def rasterize_polygon(points: Any, shape: Tuple[int, int], rasterizer: Literal["pil", "cv2"] = "pil") -> np.ndarray:
    """[H, W] bool mask of one polygon ``[[x, y], ...]`` (pixel coordinates), interior and outline.

    Coordinates are truncated to integers first, as the scripts' ``np.asarray(points, dtype=np.int32)``.
    ``rasterizer="cv2"`` calls ``cv2.fillPoly`` like the scripts (needs OpenCV); the default PIL rasteriser agrees
    with it on axis-aligned rectangles and may differ by a pixel along slanted edges.
    """
    h, w = int(shape[0]), int(shape[1])
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise ValueError(f"a polygon must be a non-empty list of [x, y] points, got shape {pts.shape}")
    pts = pts.astype(np.int32)
    if rasterizer == "cv2":
        import cv2

        mask = np.zeros((h, w), dtype=np.uint8)
        cv2.fillPoly(mask, [pts], 1)
        return mask.astype(bool)
    if rasterizer != "pil":
        raise ValueError(f"rasterizer must be 'pil' or 'cv2', got {rasterizer!r}")
    from PIL import Image, ImageDraw

    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    xy = [(int(x), int(y)) for x, y in pts]
    if len(xy) == 1:
        draw.point(xy, fill=1)
    elif len(xy) == 2:
        draw.line(xy, fill=1)
    else:
        draw.polygon(xy, fill=1, outline=1)
    return np.asarray(img, dtype=np.uint8).astype(bool)


def _polygons(seg: Any) -> List[Any]:
    """One polygon ``[[x, y], ...]`` or a list of them -> a list of polygons."""
    try:
        arr = np.asarray(seg, dtype=np.float64)
    except ValueError:  # ragged nesting: several polygons of different lengths
        return list(seg)
    return list(arr) if arr.ndim == 3 else [seg]


def load_labelme_annotation(
    path: Union[str, Path], rasterizer: Literal["pil", "cv2"] = "pil"
) -> Tuple[Tuple[int, int], Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """Ground truth of one annotated frame: ``((H, W), masks, boxes)``.

    Two layouts are read: the one of LangSplat's / GSemSplat's released labels (``info.height``, ``info.width``,
    ``objects[*].category / segmentation / bbox``) and plain LabelMe (``imageHeight``, ``imageWidth``,
    ``shapes[*].label / points / shape_type`` polygon or rectangle). Instances sharing a label are merged:
    ``masks[label]`` is the [H, W] bool union, ``boxes[label]`` the [N, 4] float ``(x1, y1, x2, y2)`` boxes, one per
    instance (the instance's ``bbox`` when present, else its points' extent).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    try:
        if "objects" in data:
            h, w = int(data["info"]["height"]), int(data["info"]["width"])
            items = [(o["category"], _polygons(o["segmentation"]), o.get("bbox")) for o in data["objects"]]
        elif "shapes" in data:
            h, w = int(data["imageHeight"]), int(data["imageWidth"])
            items = []
            for s in data["shapes"]:
                kind, pts = s.get("shape_type") or "polygon", s["points"]
                if kind == "rectangle":
                    (x1, y1), (x2, y2) = pts[:2]
                    pts = [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]
                elif kind != "polygon":
                    raise ValueError(f"shape_type {kind!r} (only polygon and rectangle are read)")
                items.append((s["label"], [pts], None))
        else:
            raise ValueError("expected an 'objects' list (LangSplat/GSemSplat labels) or a 'shapes' list (LabelMe)")
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: malformed annotation, missing or wrong field {e}") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None

    masks: Dict[str, np.ndarray] = {}
    boxes: Dict[str, List[np.ndarray]] = {}
    for label, polys, bbox in items:
        m = np.zeros((h, w), dtype=bool)
        for poly in polys:
            try:
                m |= rasterize_polygon(poly, (h, w), rasterizer)
            except ValueError as e:
                raise ValueError(f"{path}: label {label!r}: {e}") from None
        if bbox is not None:
            b = np.asarray(bbox, dtype=np.float64).reshape(-1, 4)
        else:
            p = np.concatenate([np.asarray(poly, dtype=np.float64).reshape(-1, 2) for poly in polys])
            b = np.array([[p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()]])
        masks[label] = masks[label] | m if label in masks else m
        boxes.setdefault(label, []).append(b)
    return (h, w), masks, {k: np.concatenate(v) for k, v in boxes.items()}


# ---------------------------------------------------------------------------------------------------- GSemSplat layout


FEATURES_FILE = "restored_feat.npy"
QUERIES_FILE = "queries.txt"


@dataclass
class FrameAnnotation:
    """One evaluated frame: ``masks`` label -> [H, W] bool, ``boxes`` label -> [N, 4], ``valid`` [H, W] bool."""

    name: str
    masks: Dict[str, np.ndarray]
    boxes: Dict[str, np.ndarray]
    valid: np.ndarray


@dataclass
class GSemSplatScene:
    """A scene folder of GSemSplat's evaluation: ``features`` [Heads, H, W, D] (memory-mapped), its frames and
    queries. As in the released script, the one feature file is scored against every frame's annotation."""

    root: Path
    features: np.ndarray
    frames: List[FrameAnnotation]
    queries: List[str]

    @property
    def feature_path(self) -> Path:
        return self.root / FEATURES_FILE


def load_gsemsplat_scene(
    scene_dir: Union[str, Path],
    queries: Optional[Sequence[str]] = None,
    rasterizer: Literal["pil", "cv2"] = "pil",
) -> GSemSplatScene:
    """Read one scene of GSemSplat's released evaluation layout.

    The folder holds ``restored_feat.npy`` [Heads, H, W, D] (GSemSplat: [2, H, W, 512], the decoded features of
    its two heads), ``frame_*.json`` annotations (see :func:`load_labelme_annotation`), one ``mask_*.npy`` [H, W]
    visible-region mask per annotation (paired in sorted order, as the script does) and ``queries.txt``, one
    query per line (blank lines ignored; not read when ``queries`` is given).

    Raises:
        FileNotFoundError: the folder or one of the files is missing.
        ValueError: a file does not have the expected shape or content.
    """
    root = Path(scene_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"scene folder {root} not found")
    feat_path = root / FEATURES_FILE
    if not feat_path.is_file():
        raise FileNotFoundError(f"{feat_path} not found: expected the decoded features [Heads, H, W, D] "
                                "(GSemSplat: [2, H, W, 512]) of the scene")
    try:
        feats = np.load(feat_path, mmap_mode="r")
    except Exception as e:  # a truncated or pickled file
        raise ValueError(f"{feat_path}: cannot be read as a numpy array ({e})") from None
    if feats.ndim != 4 or feats.shape[0] < 1:
        raise ValueError(f"{feat_path}: expected features [Heads, H, W, D] (GSemSplat: [2, H, W, 512]), "
                         f"got shape {tuple(feats.shape)}")
    _, h, w, _ = feats.shape

    if queries is None:
        qpath = root / QUERIES_FILE
        if not qpath.is_file():
            raise FileNotFoundError(f"{qpath} not found: expected one text query per line (or pass queries=)")
        queries = [line.strip() for line in qpath.read_text().splitlines()]
    queries = [q for q in (str(q).strip() for q in queries) if q]
    if not queries:
        raise ValueError(f"{root / QUERIES_FILE}: no queries (one text query per line expected)")

    json_paths = sorted(root.glob("frame_*.json"))
    mask_paths = sorted(root.glob("mask_*.npy"))
    if not json_paths:
        raise FileNotFoundError(f"no frame_*.json annotation in {root}")
    if len(mask_paths) != len(json_paths):
        raise FileNotFoundError(f"{root}: {len(json_paths)} frame_*.json annotations but {len(mask_paths)} "
                                "mask_*.npy visibility masks; expected one [H, W] mask per annotation")
    frames = []
    for jp, mp in zip(json_paths, mask_paths):
        (fh, fw), masks, boxes = load_labelme_annotation(jp, rasterizer)
        if (fh, fw) != (h, w):
            raise ValueError(f"{jp}: annotation is {fh}x{fw} (height x width) but {feat_path} is {h}x{w}")
        valid = np.load(mp)
        if valid.shape != (h, w):
            raise ValueError(f"{mp}: expected a visibility mask [H, W] = [{h}, {w}], got shape {tuple(valid.shape)}")
        frames.append(FrameAnnotation(jp.stem, masks, boxes, valid.astype(bool)))
    return GSemSplatScene(root, feats, frames, queries)


def evaluate_gsemsplat_scene(
    scene: Union[GSemSplatScene, str, Path],
    encoder: Optional["TextEncoder"] = None,
    *,
    query_embeddings: Union[Mapping[str, Tensor], Tensor, None] = None,
    negative_embeddings: Optional[Tensor] = None,
    protocol: Protocol = "gsemsplat",
    threshold: Optional[float] = None,
    border: Border = "reference",
    chunk_size: int = 1 << 16,
) -> SceneResult:
    """Score a GSemSplat evaluation scene (a folder or a loaded :class:`GSemSplatScene`).

    Text comes from ``encoder`` (queries and the canonical negatives) or from ``query_embeddings`` ([Q, D] in
    the order of ``scene.queries``, or query -> [D]) and ``negative_embeddings`` [K, D] (default: the encoder's
    canonical negatives). Every query is evaluated on every frame where it is annotated (elsewhere skipped),
    with the frame's visibility mask and, for LangSplat, its boxes.
    """
    if not isinstance(scene, GSemSplatScene):
        scene = load_gsemsplat_scene(scene)
    if query_embeddings is None:
        if encoder is None:
            raise ValueError("evaluate_gsemsplat_scene: pass a text encoder or query_embeddings")
        pos = encoder.encode(scene.queries)
    elif isinstance(query_embeddings, Mapping):
        missing = [q for q in scene.queries if q not in query_embeddings]
        if missing:
            raise ValueError(f"query_embeddings has no embedding for {missing}")
        pos = torch.stack([_as_tensor(query_embeddings[q]).reshape(-1) for q in scene.queries])
    else:
        pos = _as_tensor(query_embeddings)
        if pos.ndim != 2 or pos.shape[0] != len(scene.queries):
            raise ValueError(f"query_embeddings must be [Q, D] with Q = {len(scene.queries)} queries, "
                             f"got shape {tuple(pos.shape)}")
    d = scene.features.shape[-1]
    if pos.shape[-1] != d:
        raise ValueError(f"{scene.feature_path} has {d}-d features but the text embeddings are {pos.shape[-1]}-d")
    if negative_embeddings is not None and negative_embeddings.shape[-1] != d:
        raise ValueError(f"{scene.feature_path} has {d}-d features but negative_embeddings are "
                         f"{negative_embeddings.shape[-1]}-d")
    rel = relevancy_maps(scene.features, pos.float(), negative_embeddings, encoder=encoder, chunk_size=chunk_size)
    images = [
        evaluate_queries(rel, frame.masks, protocol, valid=frame.valid, boxes=frame.boxes, queries=scene.queries,
                         threshold=threshold, border=border, name=frame.name)
        for frame in scene.frames
    ]
    return aggregate_results(images)
