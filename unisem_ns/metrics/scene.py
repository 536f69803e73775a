"""The evaluation protocol of a scene's held-out views: one definition for ``ns-eval`` and ``unisem-query``.

A method's evaluation renders every held-out view and hands :class:`SceneEvaluator` what it predicts there; the
evaluator pools the views and reports:

* **semantic** (class maps given): ``miou``, ``macc``, ``miou_micro``, ``pixel_acc`` from one confusion matrix
  over all views, GT void (``ignore_index``) dropped (:class:`~unisem_ns.metrics.segmentation.ConfusionMatrix`);
  and ``miou_view_mean`` / ``macc_view_mean``, the mean of the per-view figures (what averaging per-image
  metrics gives; a class absent from a view does not count there, so it weighs small classes differently).
* **instances** (instance maps given): class-agnostic ``pq_scene``, ``sq_scene``, ``rq_scene``: every view's
  pixels pooled, GT void dropped, ids must agree across views (Contrastive Lift's PQ^scene).
* **panoptic** (both, plus the thing classes): category-aware ``panoptic_pq``, ``panoptic_sq``,
  ``panoptic_rq`` and ``panoptic_pq_things`` / ``panoptic_pq_stuff`` with the Panoptic Lifting protocol
  (:mod:`unisem_ns.metrics.panoptic`).

Pooled figures are the protocol's; the view means are reported beside them, never instead.
"""

from __future__ import annotations

import math
from typing import Any, Collection, Dict, List, Optional

import numpy as np
import torch

from .panoptic import PanopticAccumulator
from .segmentation import ConfusionMatrix

__all__ = ["SceneEvaluator"]


class SceneEvaluator:
    """Accumulate held-out views, then :meth:`compute` the scene's figures (see the module docstring).

    Args:
        num_classes: C, class ids 0..C-1 of the semantic maps (0 = void by default); None when the scene has no
            semantic ground truth (semantic and panoptic figures are then not reported).
        ignore_index: GT class id of void pixels.
        instance_void_id: GT instance id of void pixels (class-agnostic PQ).
        things: class ids that have instances; with it, category-aware panoptic PQ is reported (every other class
            is stuff: one segment per class). None: no panoptic figures.
    """

    def __init__(
        self,
        num_classes: Optional[int] = None,
        ignore_index: int = 0,
        instance_void_id: int = 0,
        things: Optional[Collection[int]] = None,
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = ConfusionMatrix(num_classes, ignore_index) if num_classes else None
        self.view_semantic: List[Dict[str, float]] = []
        self.instances = PanopticAccumulator(void_id=instance_void_id, void="drop")
        self.panoptic = (
            PanopticAccumulator(ignore_index=ignore_index, things=things, protocol="panoptic_lifting")
            if things is not None and num_classes
            else None
        )
        self.views = 0

    def update(
        self,
        pred_classes: Optional[Any] = None,
        gt_classes: Optional[Any] = None,
        pred_instances: Optional[Any] = None,
        gt_instances: Optional[Any] = None,
        panoptic_classes: Optional[Any] = None,
        panoptic_instances: Optional[Any] = None,
    ) -> Dict[str, float]:
        """Add (part of) one view. Maps are [H, W] integer tensors/arrays of one shape; pass what the method
        predicts and the scene has. ``panoptic_classes`` / ``panoptic_instances`` are the (class, instance) maps
        the panoptic figures score when they are not ``pred_classes`` / ``pred_instances`` (a panoptic model's
        composed maps: stuff instance ids zeroed, thing pixels given their object's class); a model may add a
        view's semantic and panoptic maps in two calls. Returns this view's own semantic figures (``miou``,
        ``macc``; empty when not scored), which per-image logs may show."""
        self.views += 1
        own: Dict[str, float] = {}
        if self.confusion is not None and pred_classes is not None and gt_classes is not None:
            view = ConfusionMatrix(self.confusion.num_classes, self.ignore_index)
            view.update(pred_classes, gt_classes)
            self.confusion.matrix += view.matrix
            m = view.compute()
            own = {"miou": m["miou"], "macc": m["macc"]}
            self.view_semantic.append(own)
        if pred_instances is not None and gt_instances is not None:
            self.instances.update(pred_instances, gt_instances)
        pan_classes = panoptic_classes if panoptic_classes is not None else pred_classes
        pan_instances = panoptic_instances if panoptic_instances is not None else pred_instances
        if self.panoptic is not None and all(m is not None for m in (pan_classes, pan_instances, gt_classes, gt_instances)):
            self.panoptic.update(pan_instances, gt_instances, pan_classes, gt_classes)
        return own

    def compute(self) -> Dict[str, float]:
        """The scene's figures so far (keys as in the module docstring; only those the views allowed)."""
        out: Dict[str, float] = {}
        if self.view_semantic:
            m = self.confusion.compute()
            out.update({k: m[k] for k in ("miou", "macc", "miou_micro", "pixel_acc")})
            for k in ("miou", "macc"):
                vals = [v[k] for v in self.view_semantic if not math.isnan(v[k])]
                out[f"{k}_view_mean"] = float(np.mean(vals)) if vals else float("nan")
        if self.instances.pairs:
            pq = self.instances.compute()
            out.update({"pq_scene": pq["pq"], "sq_scene": pq["sq"], "rq_scene": pq["rq"]})
        if self.panoptic is not None and self.panoptic.pairs:
            pq = self.panoptic.compute()
            out.update({"panoptic_pq": pq["pq"], "panoptic_sq": pq["sq"], "panoptic_rq": pq["rq"],
                        "panoptic_pq_things": pq["pq_things"], "panoptic_pq_stuff": pq["pq_stuff"]})
        return out
