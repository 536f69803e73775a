"""Scene-level panoptic quality (PQ, SQ, RQ) as Panoptic Lifting / Contrastive Lift report it.

Scene level: all frames of a scene are treated as one big image (their pixels are pooled), so a segment is the
set of pixels carrying one id in *every* frame, and predicted instance ids must agree across views to score -
nothing is matched per frame. Pooling only needs pixel counts per (gt segment, predicted segment) pair, so
:class:`PanopticAccumulator` adds frames one at a time in O(#segment pairs) memory.

Segments
    * class-agnostic (no semantic maps): a segment is an instance id; every segment has the same category.
      Ground-truth pixels with ``void_id`` (default 0) are void. Predicted pixels with ``pred_void_id`` (default
      None: every predicted id is a segment) are unassigned.
    * category-aware (``gt_semantics`` and ``pred_semantics`` given): a segment is a (category, instance) pair
      and matches only a segment of the same category. Pixels whose semantic label is ``ignore_index`` are void
      (ground truth) or unassigned (prediction). When ``things`` is given, every other category is *stuff*: its
      instance ids are dropped (one segment per stuff category), as in panopticapi / torchmetrics.

Matching and counting (COCO panopticapi ``pq_compute`` convention, without crowd regions)
    * IoU(g, p) = |g ∩ p| / (|g| + |p| - |g ∩ p| - |p ∩ void|): predicted pixels on ground-truth void are left
      out of the union. A pair matches when IoU > 0.5 (unique by construction).
    * TP: matched pairs; FN: unmatched ground-truth segments; FP: unmatched predicted segments, except those
      with more than half of their area on ground-truth void (``|p ∩ void| / |p| > 0.5``), which are ignored.
    * ``void="drop"`` instead removes ground-truth-void pixels before anything is counted (what Panoptic
      Lifting's ``calculate_panoptic_quality_folders`` does with ``valid_mask``): a predicted segment is then
      only its non-void part and is an FP whenever it has one. (Panoptic Lifting also drops categories covering
      < 0.5 % of the pixels; we do not.)

Scores, per category c with TP+FP+FN > 0:
    ``SQ_c = sum IoU / TP`` (0 when TP = 0), ``RQ_c = TP / (TP + FP/2 + FN/2)``, ``PQ_c = SQ_c * RQ_c``.
    Reported PQ/SQ/RQ are the means over those categories (so PQ = SQ * RQ exactly in class-agnostic mode, and
    per category otherwise). ``*_things`` / ``*_stuff`` average over the thing / stuff categories only.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Collection, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["PanopticAccumulator", "panoptic_quality"]

Segment = Tuple[int, int]  # (category, instance); None stands for void / unassigned pixels


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _segments(cat: np.ndarray, inst: np.ndarray, void: np.ndarray) -> Tuple[np.ndarray, List[Optional[Segment]]]:
    """Per-pixel segment index into the returned list of (category, instance) pairs (None for void pixels)."""
    cats, cat_idx = np.unique(cat, return_inverse=True)
    insts, inst_idx = np.unique(inst, return_inverse=True)
    code = np.where(void.reshape(-1), -1, cat_idx.reshape(-1).astype(np.int64) * len(insts) + inst_idx.reshape(-1))
    uniq, inverse = np.unique(code, return_inverse=True)
    segs: List[Optional[Segment]] = [
        None if k < 0 else (int(cats[k // len(insts)]), int(insts[k % len(insts)])) for k in uniq.tolist()
    ]
    return inverse.reshape(-1), segs


class PanopticAccumulator:
    """Accumulate frames of one scene, then :meth:`compute` scene-level PQ (see the module docstring).

    Args:
        void_id: class-agnostic mode: ground-truth instance id marking void pixels (None: no void).
        pred_void_id: class-agnostic mode: predicted instance id marking unassigned pixels (None: none).
        ignore_index: category-aware mode: semantic label marking void (gt) / unassigned (pred) pixels.
        things: category-aware mode: thing category ids; all others are stuff (instance ids dropped). None:
            every category keeps its instance ids and no things/stuff split is reported.
        void: "coco" (default) or "drop" (see the module docstring).
        iou_threshold: matching threshold (> 0.5 required for unique matches; default 0.5, strict ``>``).
    """

    def __init__(
        self,
        void_id: Optional[int] = 0,
        pred_void_id: Optional[int] = None,
        ignore_index: Optional[int] = None,
        things: Optional[Collection[int]] = None,
        void: Literal["coco", "drop"] = "coco",
        iou_threshold: float = 0.5,
    ) -> None:
        if void not in ("coco", "drop"):
            raise ValueError(f"void must be 'coco' or 'drop', got {void!r}")
        if iou_threshold < 0.5:
            raise ValueError("iou_threshold must be >= 0.5 so that each segment matches at most once")
        self.void_id = void_id
        self.pred_void_id = pred_void_id
        self.ignore_index = ignore_index
        self.things = None if things is None else {int(t) for t in things}
        self.void = void
        self.iou_threshold = float(iou_threshold)
        self.category_aware: Optional[bool] = None
        self.pairs: Dict[Tuple[Optional[Segment], Optional[Segment]], int] = defaultdict(int)

    def reset(self) -> None:
        self.pairs.clear()
        self.category_aware = None

    def update(
        self,
        pred_instances: Any,
        gt_instances: Any,
        pred_semantics: Any = None,
        gt_semantics: Any = None,
    ) -> None:
        """Add one frame: [H, W] integer maps (torch or numpy); semantics both given or both omitted."""
        if (pred_semantics is None) != (gt_semantics is None):
            raise ValueError("give both pred_semantics and gt_semantics, or neither")
        aware = gt_semantics is not None
        if self.category_aware is None:
            self.category_aware = aware
        elif self.category_aware != aware:
            raise ValueError("every frame must come with semantics, or none")
        pi = _np(pred_instances).astype(np.int64).reshape(-1)
        gi = _np(gt_instances).astype(np.int64).reshape(-1)
        if pi.shape != gi.shape:
            raise ValueError(f"pred_instances {np.shape(pred_instances)} and gt_instances "
                             f"{np.shape(gt_instances)} differ in shape")
        if aware:
            ps = _np(pred_semantics).astype(np.int64).reshape(-1)
            gs = _np(gt_semantics).astype(np.int64).reshape(-1)
            if ps.shape != pi.shape or gs.shape != gi.shape:
                raise ValueError("semantic maps must have the shape of the instance maps")
            ign = self.ignore_index
            g_void = gs == ign if ign is not None else np.zeros_like(gi, dtype=bool)
            p_void = ps == ign if ign is not None else np.zeros_like(pi, dtype=bool)
            if self.things is not None:
                things = np.asarray(sorted(self.things), dtype=np.int64)
                gi = np.where(np.isin(gs, things), gi, 0)
                pi = np.where(np.isin(ps, things), pi, 0)
        else:
            gs = np.zeros_like(gi)
            ps = np.zeros_like(pi)
            g_void = gi == self.void_id if self.void_id is not None else np.zeros_like(gi, dtype=bool)
            p_void = pi == self.pred_void_id if self.pred_void_id is not None else np.zeros_like(pi, dtype=bool)
        if self.void == "drop":
            keep = ~g_void
            gs, gi, g_void, ps, pi, p_void = gs[keep], gi[keep], g_void[keep], ps[keep], pi[keep], p_void[keep]
        if gi.size == 0:
            return
        g_idx, g_segs = _segments(gs, gi, g_void)
        p_idx, p_segs = _segments(ps, pi, p_void)
        code, counts = np.unique(g_idx * len(p_segs) + p_idx, return_counts=True)
        for c, n in zip(code.tolist(), counts.tolist()):
            self.pairs[(g_segs[c // len(p_segs)], p_segs[c % len(p_segs)])] += n

    def compute(self, per_category: bool = False) -> Dict[str, Any]:
        """PQ/SQ/RQ over everything added (NaN when there is no segment at all).

        Returns:
            ``pq``, ``sq``, ``rq`` (means over categories), ``tp``, ``fp``, ``fn`` (totals, as floats),
            ``num_categories``; with ``things`` in category-aware mode also ``pq_things``, ``sq_things``,
            ``rq_things``, ``pq_stuff``, ``sq_stuff``, ``rq_stuff`` (NaN when the group is empty); with
            ``per_category=True`` also ``per_category``: {category: {"pq", "sq", "rq", "tp", "fp", "fn"}}.
        """
        gt_area: Dict[Segment, int] = defaultdict(int)
        pred_area: Dict[Segment, int] = defaultdict(int)
        pred_on_void: Dict[Segment, int] = defaultdict(int)
        for (g, p), n in self.pairs.items():
            if g is not None:
                gt_area[g] += n
            if p is not None:
                pred_area[p] += n
                if g is None:
                    pred_on_void[p] += n

        tp: Dict[int, int] = defaultdict(int)
        fp: Dict[int, int] = defaultdict(int)
        fn: Dict[int, int] = defaultdict(int)
        iou_sum: Dict[int, float] = defaultdict(float)
        matched_g, matched_p = set(), set()
        for (g, p), inter in self.pairs.items():
            if g is None or p is None or g[0] != p[0]:
                continue
            union = gt_area[g] + pred_area[p] - inter - pred_on_void[p]
            iou = inter / union
            if iou > self.iou_threshold:
                tp[g[0]] += 1
                iou_sum[g[0]] += iou
                matched_g.add(g)
                matched_p.add(p)
        for g in gt_area:
            if g not in matched_g:
                fn[g[0]] += 1
        for p, area in pred_area.items():
            if p not in matched_p and pred_on_void[p] / area <= 0.5:
                fp[p[0]] += 1

        cats = sorted(set(tp) | set(fp) | set(fn))
        per: Dict[int, Dict[str, float]] = {}
        for c in cats:
            denom = tp[c] + 0.5 * fp[c] + 0.5 * fn[c]
            sq = iou_sum[c] / tp[c] if tp[c] else 0.0
            rq = tp[c] / denom
            per[c] = {"pq": sq * rq, "sq": sq, "rq": rq, "tp": float(tp[c]), "fp": float(fp[c]), "fn": float(fn[c])}

        def mean(key: str, subset: List[int]) -> float:
            return float(np.mean([per[c][key] for c in subset])) if subset else float("nan")

        out: Dict[str, Any] = {k: mean(k, cats) for k in ("pq", "sq", "rq")}
        out.update(
            tp=float(sum(tp.values())),
            fp=float(sum(fp.values())),
            fn=float(sum(fn.values())),
            num_categories=float(len(cats)),
        )
        if self.category_aware and self.things is not None:
            th = [c for c in cats if c in self.things]
            st = [c for c in cats if c not in self.things]
            for k in ("pq", "sq", "rq"):
                out[f"{k}_things"] = mean(k, th)
                out[f"{k}_stuff"] = mean(k, st)
        if per_category:
            out["per_category"] = per
        return out


def panoptic_quality(
    pred_instances: Sequence[Any],
    gt_instances: Sequence[Any],
    pred_semantics: Optional[Sequence[Any]] = None,
    gt_semantics: Optional[Sequence[Any]] = None,
    *,
    void_id: Optional[int] = 0,
    pred_void_id: Optional[int] = None,
    ignore_index: Optional[int] = None,
    things: Optional[Collection[int]] = None,
    void: Literal["coco", "drop"] = "coco",
    per_category: bool = False,
) -> Dict[str, Any]:
    """Scene-level PQ of lists of per-frame [H, W] maps (a single [H, W] map is one frame).

    Args:
        pred_instances / gt_instances: per-frame instance-id maps; ids must be consistent across frames.
        pred_semantics / gt_semantics: per-frame category maps (category-aware PQ), or None (class-agnostic).
        void_id, pred_void_id, ignore_index, things, void: see :class:`PanopticAccumulator`.
        per_category: include per-category results.

    Returns:
        dict of floats, see :meth:`PanopticAccumulator.compute`.
    """

    def frames(x: Any) -> List[Any]:
        if x is None:
            return []
        if isinstance(x, (np.ndarray, torch.Tensor)):
            return [x] if x.ndim == 2 else list(x)
        return list(x)

    pi, gi, ps, gs = frames(pred_instances), frames(gt_instances), frames(pred_semantics), frames(gt_semantics)
    if len(pi) != len(gi):
        raise ValueError(f"{len(pi)} predicted frames but {len(gi)} ground-truth frames")
    if (pred_semantics is None) != (gt_semantics is None):
        raise ValueError("give both pred_semantics and gt_semantics, or neither")
    if gt_semantics is not None and not (len(ps) == len(gs) == len(gi)):
        raise ValueError("semantic maps must come one per frame")
    acc = PanopticAccumulator(
        void_id=void_id, pred_void_id=pred_void_id, ignore_index=ignore_index, things=things, void=void
    )
    for k in range(len(gi)):
        if gt_semantics is None:
            acc.update(pi[k], gi[k])
        else:
            acc.update(pi[k], gi[k], ps[k], gs[k])
    return acc.compute(per_category=per_category)
