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

Two protocols (``protocol=``) decide what happens next.

``"coco"`` (default; COCO panopticapi ``pq_compute`` convention, without crowd regions)
    * IoU(g, p) = |g ∩ p| / (|g| + |p| - |g ∩ p| - |p ∩ void|): predicted pixels on ground-truth void are left
      out of the union. A pair matches when IoU > 0.5 (unique by construction).
    * TP: matched pairs; FN: unmatched ground-truth segments; FP: unmatched predicted segments, except those
      with more than half of their area on ground-truth void (``|p ∩ void| / |p| > 0.5``), which are ignored.
    * ``void="drop"`` instead removes ground-truth-void pixels before anything is counted (what Panoptic
      Lifting's ``calculate_panoptic_quality_folders`` does with ``valid_mask``): a predicted segment is then
      only its non-void part and is an FP whenever it has one.
    * Categories with TP+FP+FN > 0 enter the means.

``"panoptic_lifting"`` (category-aware only; ``util/panoptic_quality.py`` of Panoptic Lifting, which Contrastive
Lift reuses unchanged, called on the pooled test frames by ``calculate_panoptic_quality_folders``)
    * Ground-truth ``ignore_index`` pixels are dropped first (``void`` defaults to ``"drop"`` here, as the
      reference's ``valid_mask``); ``void="coco"`` keeps them as ground-truth void instead.
    * Rare categories: a category whose pooled pixel count is below ``min_category_fraction`` (default 0.005)
      of all pooled pixels in the prediction *or* in the ground truth is removed from the category set, and the
      reference then voids that category's pixels in *both* maps (not only in the map where it is rare). The
      fraction's denominator is every pooled pixel (void ones included) left after the drop.
    * void now exists on both sides: ground-truth void (``ignore_index`` when kept, rare categories) and
      predicted void (``ignore_index``, rare categories). IoU(g, p) = |g ∩ p| / (|g ∪ p| - |p ∩ gt void| -
      |g ∩ pred void|); match when IoU > 0.5.
    * FN: unmatched ground-truth segments, except those with more than half of their pixels predicted void;
      FP: unmatched predicted segments, except those with more than half of their pixels on ground-truth void.
    * The means run over every category that appears (outside void) in either map after the rare categories
      are voided - also one whose segments were all ignored (TP+FP+FN = 0, scored 0), as the reference does.
    * Not reproduced: the reference treats predicted category 0 (its GT-void label) as an ordinary stuff
      category; here predicted ``ignore_index`` pixels are void. For bit-exact numbers drop the ground-truth
      void pixels yourself (maps may be any shape, e.g. [1, N]) and pass ``ignore_index=None``.

Scores, per category c:
    ``SQ_c = sum IoU / TP`` (0 when TP = 0), ``RQ_c = TP / (TP + FP/2 + FN/2)`` (0 when that is 0),
    ``PQ_c = SQ_c * RQ_c``. Reported PQ/SQ/RQ are the means over the categories (so PQ = SQ * RQ exactly in
    class-agnostic mode, and per category otherwise). ``*_things`` / ``*_stuff`` average over the thing / stuff
    categories only.
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
        void: "coco" or "drop" (see the module docstring); None (default): "coco" under the coco protocol,
            "drop" under the panoptic_lifting protocol.
        iou_threshold: matching threshold (> 0.5 required for unique matches; default 0.5, strict ``>``).
        protocol: "coco" (default) or "panoptic_lifting" (category-aware only; see the module docstring).
        min_category_fraction: panoptic_lifting only: categories below this fraction of the pooled pixels, in
            the prediction or the ground truth, become void in both maps (None: 0.005; 0 turns the rule off).
    """

    def __init__(
        self,
        void_id: Optional[int] = 0,
        pred_void_id: Optional[int] = None,
        ignore_index: Optional[int] = None,
        things: Optional[Collection[int]] = None,
        void: Optional[Literal["coco", "drop"]] = None,
        iou_threshold: float = 0.5,
        protocol: Literal["coco", "panoptic_lifting"] = "coco",
        min_category_fraction: Optional[float] = None,
    ) -> None:
        if protocol not in ("coco", "panoptic_lifting"):
            raise ValueError(f"protocol must be 'coco' or 'panoptic_lifting', got {protocol!r}")
        if void is None:
            void = "drop" if protocol == "panoptic_lifting" else "coco"
        if void not in ("coco", "drop"):
            raise ValueError(f"void must be 'coco' or 'drop', got {void!r}")
        if min_category_fraction is not None and protocol != "panoptic_lifting":
            raise ValueError("min_category_fraction only applies to protocol='panoptic_lifting'")
        if min_category_fraction is None:
            min_category_fraction = 0.005
        if not 0.0 <= min_category_fraction <= 1.0:
            raise ValueError(f"min_category_fraction must be in [0, 1], got {min_category_fraction}")
        if iou_threshold < 0.5:
            raise ValueError("iou_threshold must be >= 0.5 so that each segment matches at most once")
        self.void_id = void_id
        self.pred_void_id = pred_void_id
        self.ignore_index = ignore_index
        self.things = None if things is None else {int(t) for t in things}
        self.void = void
        self.iou_threshold = float(iou_threshold)
        self.protocol = protocol
        self.min_category_fraction = float(min_category_fraction)
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
        if not aware and self.protocol == "panoptic_lifting":
            raise ValueError("protocol='panoptic_lifting' needs pred_semantics and gt_semantics")
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
            ``rq_things``, ``pq_stuff``, ``sq_stuff``, ``rq_stuff`` (NaN when the group is empty); under the
            panoptic_lifting protocol also ``num_rare_categories``; with ``per_category=True`` also
            ``per_category``: {category: {"pq", "sq", "rq", "tp", "fp", "fn"}} (and, under panoptic_lifting,
            ``rare_categories``: the sorted list of categories turned into void).
        """
        lifting = self.protocol == "panoptic_lifting"
        pairs: Dict[Tuple[Optional[Segment], Optional[Segment]], int] = self.pairs
        rare: List[int] = []
        if lifting:
            pairs, rare = self._void_rare_categories()

        gt_area: Dict[Segment, int] = defaultdict(int)
        pred_area: Dict[Segment, int] = defaultdict(int)
        pred_on_void: Dict[Segment, int] = defaultdict(int)  # |p ∩ gt void|
        gt_on_void: Dict[Segment, int] = defaultdict(int)  # |g ∩ pred void|
        for (g, p), n in pairs.items():
            if g is not None:
                gt_area[g] += n
                if p is None:
                    gt_on_void[g] += n
            if p is not None:
                pred_area[p] += n
                if g is None:
                    pred_on_void[p] += n
        if not lifting:  # coco: predicted-void pixels stay in the union, and such gt segments are FNs
            gt_on_void.clear()

        tp: Dict[int, int] = defaultdict(int)
        fp: Dict[int, int] = defaultdict(int)
        fn: Dict[int, int] = defaultdict(int)
        iou_sum: Dict[int, float] = defaultdict(float)
        matched_g, matched_p = set(), set()
        for (g, p), inter in pairs.items():
            if g is None or p is None or g[0] != p[0]:
                continue
            union = gt_area[g] + pred_area[p] - inter - pred_on_void[p] - gt_on_void[g]
            iou = inter / union
            if iou > self.iou_threshold:
                tp[g[0]] += 1
                iou_sum[g[0]] += iou
                matched_g.add(g)
                matched_p.add(p)
        for g, area in gt_area.items():
            if g not in matched_g and gt_on_void[g] / area <= 0.5:
                fn[g[0]] += 1
        for p, area in pred_area.items():
            if p not in matched_p and pred_on_void[p] / area <= 0.5:
                fp[p[0]] += 1

        if lifting:  # the reference averages over every category present, even one with nothing counted
            cats = sorted({g[0] for g in gt_area} | {p[0] for p in pred_area})
        else:
            cats = sorted(set(tp) | set(fp) | set(fn))
        per: Dict[int, Dict[str, float]] = {}
        for c in cats:
            denom = tp[c] + 0.5 * fp[c] + 0.5 * fn[c]
            sq = iou_sum[c] / tp[c] if tp[c] else 0.0
            rq = tp[c] / denom if denom else 0.0
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
        if lifting:
            out["num_rare_categories"] = float(len(rare))
        if per_category:
            out["per_category"] = per
            if lifting:
                out["rare_categories"] = rare
        return out

    def _void_rare_categories(self) -> Tuple[Dict[Tuple[Optional[Segment], Optional[Segment]], int], List[int]]:
        """Pair counts with rare categories' segments replaced by void (None) on both sides, and those categories.

        Rare: pooled pixel count < ``min_category_fraction`` * all pooled pixels, in the prediction or in the
        ground truth. Works on the pooled pair counts because the rule needs whole-scene category areas.
        """
        total = sum(self.pairs.values())
        gt_cat: Dict[int, int] = defaultdict(int)
        pred_cat: Dict[int, int] = defaultdict(int)
        for (g, p), n in self.pairs.items():
            if g is not None:
                gt_cat[g[0]] += n
            if p is not None:
                pred_cat[p[0]] += n
        f = self.min_category_fraction
        rare = {c for area in (gt_cat, pred_cat) for c, n in area.items() if n / total < f}
        if not rare:
            return self.pairs, []

        def keep(seg: Optional[Segment]) -> Optional[Segment]:
            return None if seg is None or seg[0] in rare else seg

        pairs: Dict[Tuple[Optional[Segment], Optional[Segment]], int] = defaultdict(int)
        for (g, p), n in self.pairs.items():
            pairs[(keep(g), keep(p))] += n
        return pairs, sorted(rare)


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
    void: Optional[Literal["coco", "drop"]] = None,
    per_category: bool = False,
    protocol: Literal["coco", "panoptic_lifting"] = "coco",
    min_category_fraction: Optional[float] = None,
) -> Dict[str, Any]:
    """Scene-level PQ of lists of per-frame [H, W] maps (a single [H, W] map is one frame).

    Args:
        pred_instances / gt_instances: per-frame instance-id maps; ids must be consistent across frames.
        pred_semantics / gt_semantics: per-frame category maps (category-aware PQ), or None (class-agnostic).
        void_id, pred_void_id, ignore_index, things, void, protocol, min_category_fraction: see
            :class:`PanopticAccumulator`.
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
        void_id=void_id,
        pred_void_id=pred_void_id,
        ignore_index=ignore_index,
        things=things,
        void=void,
        protocol=protocol,
        min_category_fraction=min_category_fraction,
    )
    for k in range(len(gi)):
        if gt_semantics is None:
            acc.update(pi[k], gi[k])
        else:
            acc.update(pi[k], gi[k], ps[k], gs[k])
    return acc.compute(per_category=per_category)
