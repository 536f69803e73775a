"""The scene evaluation protocol (unisem_ns.metrics.scene): pooled figures, view means beside them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unisem_ns.metrics.panoptic import panoptic_quality
from unisem_ns.metrics.scene import SceneEvaluator


def test_pooled_and_view_mean_miou_differ_as_worked_by_hand():
    # View A: 4 pixels of class 1, all right. View B: 3 pixels of class 2 and 1 of class 1; the class-1 pixel is
    # called 2. Pooled: class 1 TP 4, FN 1 -> IoU 4/5; class 2 TP 3, FP 1 -> IoU 3/4; mIoU = (0.8 + 0.75) / 2.
    # Per view: A = 1.0 (class 1 only); B: class 1 IoU 0, class 2 IoU 3/4 -> 0.375; mean = 0.6875.
    ev = SceneEvaluator(num_classes=3)
    a = ev.update(np.array([[1, 1], [1, 1]]), np.array([[1, 1], [1, 1]]))
    b = ev.update(np.array([[2, 2], [2, 2]]), np.array([[2, 2], [2, 1]]))
    assert a["miou"] == 1.0 and b["miou"] == pytest.approx(0.375)
    out = ev.compute()
    assert out["miou"] == pytest.approx(0.775)
    assert out["miou_view_mean"] == pytest.approx(0.6875)
    assert out["pixel_acc"] == pytest.approx(7 / 8)
    assert "pq_scene" not in out and "panoptic_pq" not in out


def test_void_pixels_are_not_scored():
    ev = SceneEvaluator(num_classes=3)
    ev.update(np.array([[2, 1]]), np.array([[0, 1]]))  # the pixel called 2 is GT void
    assert ev.compute()["miou"] == 1.0


def test_instances_pool_views_so_ids_must_agree_across_them():
    gt = [np.array([[1, 1, 2, 2]]), np.array([[1, 1, 2, 2]])]
    same = [np.array([[5, 5, 7, 7]]), np.array([[5, 5, 7, 7]])]
    swapped = [np.array([[5, 5, 7, 7]]), np.array([[7, 7, 5, 5]])]
    for pred, want in ((same, 1.0), (swapped, 0.0)):
        ev = SceneEvaluator()
        for p, g in zip(pred, gt):
            ev.update(pred_instances=p, gt_instances=g)
        assert ev.compute()["pq_scene"] == pytest.approx(want)


def test_panoptic_figures_are_the_panoptic_lifting_protocol():
    rng = np.random.default_rng(0)
    views = []
    for _ in range(3):
        gs = rng.integers(0, 4, (6, 8))
        gi = rng.integers(0, 3, (6, 8))
        ps = np.where(rng.random((6, 8)) < 0.8, gs, rng.integers(1, 4, (6, 8)))
        pi = np.where(rng.random((6, 8)) < 0.8, gi, rng.integers(0, 3, (6, 8)))
        views.append((ps, gs, pi, gi))
    ev = SceneEvaluator(num_classes=4, things={2, 3})
    for ps, gs, pi, gi in views:
        ev.update(ps, gs, pi, gi)
    want = panoptic_quality([v[2] for v in views], [v[3] for v in views], [v[0] for v in views],
                            [v[1] for v in views], ignore_index=0, things={2, 3}, protocol="panoptic_lifting")
    out = ev.compute()
    assert out["panoptic_pq"] == pytest.approx(want["pq"]) and out["panoptic_rq"] == pytest.approx(want["rq"])
    assert 0.0 < out["panoptic_pq"] < 1.0


def test_nothing_to_score_reports_nothing():
    ev = SceneEvaluator(num_classes=3)
    ev.update()
    assert ev.compute() == {} and ev.views == 1
    ev.update(np.array([[1]]), np.array([[0]]))  # only void
    assert math.isnan(ev.compute()["miou"])


def test_panoptic_maps_may_come_apart_from_the_semantic_ones():
    """A panoptic model adds its semantic argmax and its composed (class, instance) maps in two calls: mIoU
    scores the first, panoptic PQ the second, PQ^scene the instance ids."""
    gs, gi = np.array([[1, 1, 2, 2]]), np.array([[0, 0, 4, 4]])  # class 1 = stuff, class 2 = a thing
    ev = SceneEvaluator(num_classes=3, things={2})
    ev.update(np.array([[1, 1, 1, 2]]), gs)  # semantic argmax: one thing pixel wrong
    ev.update(gt_classes=gs, pred_instances=np.array([[3, 3, 9, 9]]), gt_instances=gi,
              panoptic_classes=np.array([[1, 1, 2, 2]]), panoptic_instances=np.array([[0, 0, 9, 9]]))
    out = ev.compute()
    assert out["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert out["panoptic_pq"] == 1.0 and out["panoptic_pq_things"] == 1.0 and out["panoptic_pq_stuff"] == 1.0
    assert out["pq_scene"] == 1.0  # GT void (instance 0) dropped: the thing segment matches exactly
