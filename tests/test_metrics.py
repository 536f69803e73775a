"""unisem_ns.metrics: every metric against an independent implementation or a hand-worked example.

Independent references used: torchmetrics (segmentation, panoptic, PSNR, SSIM), pytorch_msssim (SSIM),
OpenCV erosion and scipy's chessboard distance transform (boundary IoU), numpy.linalg.lstsq (depth
alignment), brute-force loops and dict-of-pixel-sets reimplementations written here, and hand computations in
the comments.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from unisem_ns.metrics import (
    ConfusionMatrix,
    PanopticAccumulator,
    align_depth,
    boundary_iou,
    box_mean,
    depth_metrics,
    localization_hit,
    mask_boundary,
    mask_iou,
    mode_filter,
    panoptic_quality,
    postprocess_relevancy,
    psnr,
    query_iou,
    semantic_segmentation_metrics,
    ssim,
)
from unisem_ns.metrics import image as image_mod


def test_import_needs_only_torch_and_numpy():
    import subprocess
    import sys

    code = (
        "import sys, unisem_ns.metrics\n"
        "bad = [m for m in ('nerfstudio', 'torchmetrics', 'pytorch_msssim', 'pycocotools', 'cv2', 'scipy')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ============================================================================ semantic segmentation


def test_segmentation_hand_worked_3x3():
    # ignore_index = 0 drops the two gt-0 pixels; the 7 kept (gt, pred) pairs give, rows = gt, cols = pred:
    #   gt 1: pred 1 x2, pred 2 x1        gt 2: pred 2 x3, pred 0 x1
    # class 1: TP 2, FP 0, FN 1 -> IoU 2/3, Acc 2/3;  class 2: TP 3, FP 1, FN 1 -> IoU 3/5, Acc 3/4
    # class 0 (= ignore_index) is excluded from every average although one pixel is predicted as 0.
    # mIoU = (2/3 + 3/5)/2 = 19/30, mAcc = (2/3 + 3/4)/2 = 17/24
    # micro IoU = (2+3) / ((2+0+1) + (3+1+1)) = 5/8, pixel acc = 5/7
    gt = np.array([[0, 1, 1], [2, 2, 1], [0, 2, 2]])
    pred = np.array([[1, 1, 2], [2, 2, 1], [2, 0, 2]])
    m = semantic_segmentation_metrics(pred, gt, num_classes=3, ignore_index=0, per_class=True)
    assert m["miou"] == pytest.approx(19 / 30)
    assert m["macc"] == pytest.approx(17 / 24)
    assert m["miou_micro"] == pytest.approx(5 / 8)
    assert m["pixel_acc"] == pytest.approx(5 / 7)
    assert m["num_classes_present"] == 2
    assert math.isnan(m["iou_per_class"][0])
    assert m["iou_per_class"][1:] == pytest.approx([2 / 3, 3 / 5])
    assert m["acc_per_class"][1:] == pytest.approx([2 / 3, 3 / 4])
    assert all(isinstance(v, float) for k, v in m.items() if not k.endswith("per_class"))


def test_segmentation_prediction_only_class_counts_as_zero():
    # gt [0,0,1,1], pred [0,2,1,1], C=4: class 2 only predicted -> IoU 0 and Acc 0; class 3 absent -> excluded.
    # IoU: c0 1/2, c1 1, c2 0 -> 1/2.  Acc: c0 1/2, c1 1, c2 0 -> 1/2.
    m = semantic_segmentation_metrics(torch.tensor([0, 2, 1, 1]), torch.tensor([0, 0, 1, 1]), num_classes=4)
    assert m["miou"] == pytest.approx(0.5)
    assert m["macc"] == pytest.approx(0.5)
    assert m["num_classes_present"] == 3


def _random_labels(gen, shape, num_classes, skip=()):
    labels = [c for c in range(num_classes) if c not in skip]
    return torch.tensor(labels)[torch.randint(len(labels), shape, generator=gen)]


@pytest.mark.parametrize("ignore_index", [None, 0, 255])
def test_segmentation_matches_torchmetrics(ignore_index):
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    gen = torch.Generator().manual_seed(0)
    c = 7  # class 6 never occurs: it must be excluded from the macro means
    cm = ConfusionMatrix(c, ignore_index)
    tm = {
        (name, avg): cls(num_classes=c, average=avg, ignore_index=ignore_index)
        for name, cls in (("iou", MulticlassJaccardIndex), ("acc", MulticlassAccuracy))
        for avg in ("macro", "micro", "none")
    }
    for _ in range(3):
        gt = _random_labels(gen, (9, 11), 6)
        # torchmetrics' macro accuracy keeps an in-range ignore class when something is predicted as it (a
        # documented difference), so the prediction avoids it here; the per-class check below covers the rest.
        pred = torch.where(torch.rand(9, 11, generator=gen) < 0.6, gt, _random_labels(gen, (9, 11), 6, skip=(0,)))
        if ignore_index is not None:
            gt[torch.rand(9, 11, generator=gen) < 0.2] = ignore_index
        cm.update(pred, gt)
        for metric in tm.values():
            metric.update(pred, gt)
    ours = cm.compute(per_class=True)
    assert ours["miou"] == pytest.approx(float(tm["iou", "macro"].compute()), abs=1e-6)
    assert ours["macc"] == pytest.approx(float(tm["acc", "macro"].compute()), abs=1e-6)
    assert ours["miou_micro"] == pytest.approx(float(tm["iou", "micro"].compute()), abs=1e-6)
    assert ours["pixel_acc"] == pytest.approx(float(tm["acc", "micro"].compute()), abs=1e-6)
    present = [k for k in range(c) if not math.isnan(ours["iou_per_class"][k])]
    assert 6 not in present and (ignore_index != 0 or 0 not in present)
    assert [ours["iou_per_class"][k] for k in present] == pytest.approx(
        tm["iou", "none"].compute()[present].tolist(), abs=1e-6
    )
    assert [ours["acc_per_class"][k] for k in present] == pytest.approx(
        tm["acc", "none"].compute()[present].tolist(), abs=1e-6
    )


def test_segmentation_accumulator_equals_pooled_frames_and_validates():
    gen = torch.Generator().manual_seed(1)
    preds = [_random_labels(gen, (5, 6), 4) for _ in range(3)]
    gts = [_random_labels(gen, (5, 6), 4) for _ in range(3)]
    a = semantic_segmentation_metrics(preds, gts, num_classes=4, ignore_index=0)
    b = semantic_segmentation_metrics(torch.cat(preds), torch.cat(gts), num_classes=4, ignore_index=0)
    c = semantic_segmentation_metrics([p.numpy() for p in preds], [g.numpy() for g in gts], ignore_index=0)
    assert a == b == c
    mean_per_frame = np.mean([semantic_segmentation_metrics(p, g, 4, 0)["miou"] for p, g in zip(preds, gts)])
    assert a["miou"] != pytest.approx(mean_per_frame)  # pooled, not averaged per frame
    with pytest.raises(ValueError, match="pred labels"):
        ConfusionMatrix(3).update(torch.tensor([3]), torch.tensor([0]))
    assert math.isnan(semantic_segmentation_metrics(torch.tensor([1]), torch.tensor([0]), 2, 0)["miou"])


# ============================================================================ binary masks


def test_mask_iou_hand_worked():
    pred = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    gt = np.array([[1, 0, 0], [0, 1, 1]], dtype=bool)
    assert mask_iou(pred, gt) == pytest.approx(2 / 4)  # intersection 2, union 4
    assert mask_iou(torch.zeros(2, 3), torch.zeros(2, 3)) == 1.0
    assert mask_iou(torch.ones(2, 3), torch.zeros(2, 3)) == 0.0


def test_boundary_hand_worked():
    # 10x10 image: diagonal 14.1, 0.02 * 14.1 = 0.28 -> d = max(1, round(0.28)) = 1.
    gt = torch.zeros(10, 10, dtype=torch.bool)
    gt[2:7, 2:7] = True  # 5x5 square: boundary = ring of 25 - 9 = 16 pixels
    assert int(mask_boundary(gt).sum()) == 16
    assert int(mask_boundary(torch.ones(10, 10)).sum()) == 100 - 64  # the image border is a boundary
    pred = torch.roll(gt, 1, dims=1)  # cols 3..7
    # rings share row 2 and row 6 at cols 3..6 (8 px); union 16 + 16 - 8 = 24. Mask IoU: 20 / 30.
    assert boundary_iou(pred, gt) == pytest.approx(8 / 24)
    assert mask_iou(pred, gt) == pytest.approx(20 / 30)


def _blobs(seed, h, w, n=4):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros((h, w), bool)
    for _ in range(n):
        cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1.5, max(2, h / 3)), rng.uniform(1.5, max(2, w / 3))
        m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    return m


def _boundary_cv2(mask, ratio):
    # The reference boundary-iou-api recipe: pad by one background pixel, erode d times with a 3x3 kernel.
    cv2 = pytest.importorskip("cv2")
    h, w = mask.shape
    d = max(1, int(round(ratio * np.sqrt(h**2 + w**2))))
    m = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(m, np.ones((3, 3), np.uint8), iterations=d)[1 : h + 1, 1 : w + 1]
    return mask.astype(np.uint8) - eroded > 0


def _boundary_scipy(mask, ratio):
    ndimage = pytest.importorskip("scipy.ndimage")
    h, w = mask.shape
    d = max(1, int(round(ratio * np.sqrt(h**2 + w**2))))
    dist = ndimage.distance_transform_cdt(np.pad(mask, 1), metric="chessboard")[1:-1, 1:-1]
    return mask & (dist <= d)


@pytest.mark.parametrize("shape,ratio", [((90, 120), 0.02), ((64, 48), 0.05), ((7, 9), 0.02)])
def test_boundary_iou_matches_opencv_and_scipy(shape, ratio):
    for seed in range(3):
        gt, pred = _blobs(seed, *shape), _blobs(seed + 100, *shape)
        pred |= gt & (np.arange(shape[1]) < shape[1] // 2)  # make them overlap
        for ref in (_boundary_cv2, _boundary_scipy):
            np.testing.assert_array_equal(mask_boundary(gt, ratio).numpy(), ref(gt, ratio))
        bg, bp = _boundary_cv2(gt, ratio), _boundary_cv2(pred, ratio)
        expected = (bg & bp).sum() / (bg | bp).sum()
        assert boundary_iou(torch.from_numpy(pred), gt, ratio) == pytest.approx(expected)


# ---------------------------------------------------------------------------- relevancy post-processing


def _box_mean_loops(x, k):
    h, w = x.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            win = x[max(0, i - k // 2) : i + k - k // 2, max(0, j - k // 2) : j + k - k // 2]
            out[i, j] = win.mean()
    return out


def _mode_loops(m, size):
    h, w = m.shape
    r = size // 2
    out = np.zeros_like(m)
    for i in range(h):
        for j in range(w):
            win = m[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].astype(int).ravel()
            out[i, j] = np.argmax(np.bincount(win, minlength=2))  # ties -> 0
    return out


@pytest.mark.parametrize("k", [30, 5, 6])
def test_box_mean_matches_loops_and_2d_pooling(k):
    x = np.random.default_rng(k).random((23, 41))
    ours = box_mean(x, k).numpy()
    np.testing.assert_allclose(ours, _box_mean_loops(x, k), rtol=0, atol=1e-12)
    pooled = torch.nn.functional.avg_pool2d(
        torch.from_numpy(x)[None, None], k, stride=1, padding=k // 2, count_include_pad=False
    )[0, 0, :23, :41]
    np.testing.assert_allclose(ours, pooled.numpy(), rtol=0, atol=1e-12)


def test_mode_filter_matches_loops():
    rng = np.random.default_rng(3)
    for shape, p in (((20, 17), 0.5), ((9, 30), 0.3), ((4, 5), 0.5)):
        m = rng.random(shape) < p
        np.testing.assert_array_equal(mode_filter(m).numpy(), _mode_loops(m, 7).astype(bool))


def _postprocess_reference(r, thr, k=30):
    smoothed = 0.5 * (r + _box_mean_loops(r, k))
    n = (smoothed - smoothed.min()) / (smoothed.max() - smoothed.min()) * 2 - 1
    return _mode_loops(np.clip(n, 0, 1) > thr, 7).astype(bool), smoothed


def test_postprocess_matches_slow_reference():
    rng = np.random.default_rng(5)
    r = rng.random((26, 33)) * 0.3
    r[5:15, 8:20] += 0.6
    for style, thr in (("langsplat", 0.4), ("gsemsplat", 0.5)):
        mask, smoothed = postprocess_relevancy(r, style)
        ref_mask, ref_smoothed = _postprocess_reference(r, thr)
        np.testing.assert_allclose(smoothed.numpy(), ref_smoothed, atol=1e-12)
        np.testing.assert_array_equal(mask.numpy(), ref_mask)
        assert 0 < mask.sum() < mask.numel()


def test_postprocess_hand_worked_spike():
    # 4x4, r = 1 at (0,0), else 0. The image is smaller than the 30x30 window, so every box mean is the
    # global mean 1/16: smoothed(0,0) = (1 + 1/16)/2 = 17/32, elsewhere 1/32. Min-max to [-1,1] and clip:
    # 1 at (0,0), 0 elsewhere -> thresholded mask = {(0,0)}. The 7x7 mode filter sees 1 one out of 16 -> empty.
    r = torch.zeros(4, 4)
    r[0, 0] = 1
    mask, smoothed = postprocess_relevancy(r)
    assert smoothed[0, 0].item() == pytest.approx(17 / 32) and smoothed[3, 3].item() == pytest.approx(1 / 32)
    assert not mask.any()
    assert query_iou(r, r.bool(), "langsplat") == 0.0


def test_query_iou_hand_worked_gradient():
    # 3x12, r[i, j] = j/11. Box mean = global mean = 1/2, smoothed = j/22 + 1/4 (from 1/4 to 3/4), so the
    # normalised map is 2j/11 - 1.
    #   LangSplat: 2j/11 - 1 > 0.4  <=>  j > 7.7  -> columns 8..11.  Mode filter (all 3 rows in every window):
    #     col 7: window cols 4..10 holds 3 ones of 7 -> 0; col 8: 5..11 holds 4 of 7 -> 1; so columns 8..11 stay.
    #     GT = columns 7..11 -> IoU 4/5.
    #   GSemSplat: > 0.5 <=> j > 8.25 -> columns 9..11. Mode filter: col 9: window 6..11 holds 3 of 6 -> tie -> 0;
    #     col 10: 7..11 holds 3 of 5 -> 1; col 11: 8..11, 3 of 4 -> 1  -> columns 10..11.
    #     GT filtered: col 6: 3..9 holds 3 of 7 -> 0, col 7: 4..10 holds 4 of 7 -> 1 -> unchanged 7..11.
    #     IoU 2/5.
    r = torch.arange(12, dtype=torch.float64).div(11).expand(3, 12)
    gt = torch.zeros(3, 12, dtype=torch.bool)
    gt[:, 7:] = True
    mask_l, _ = postprocess_relevancy(r, "langsplat")
    mask_g, _ = postprocess_relevancy(r, "gsemsplat")
    assert mask_l[0].nonzero().flatten().tolist() == [8, 9, 10, 11]
    assert mask_g[0].nonzero().flatten().tolist() == [10, 11]
    assert query_iou(r, gt, "langsplat") == pytest.approx(4 / 5)
    assert query_iou(r, gt, "gsemsplat") == pytest.approx(2 / 5)
    # Thresholds are strict (">"): on a 3x5 gradient r = j/4 every step above is exact in binary and the
    # normalised map is 2 * (j/4) - 1 = -1, -0.5, 0, 0.5, 1; GSemSplat's 0.5 keeps only j = 4, LangSplat's 0.4
    # keeps j = 3, 4 (mode filter disabled with mode_size=1 to see the raw threshold).
    r5 = torch.arange(5, dtype=torch.float64).div(4).expand(3, 5)
    assert postprocess_relevancy(r5, "gsemsplat", mode_size=1)[0][0].tolist() == [False] * 4 + [True]
    assert postprocess_relevancy(r5, "langsplat", mode_size=1)[0][0].tolist() == [False] * 3 + [True] * 2
    # valid mask (GSemSplat): only columns 0..9 count; pred (cols 10, 11) is cut away, gt keeps cols 7..9 -> IoU 0
    valid = torch.zeros(3, 12, dtype=torch.bool)
    valid[:, :10] = True
    assert query_iou(r, gt, "gsemsplat", valid=valid) == 0.0


@pytest.mark.parametrize("style", ["langsplat", "gsemsplat"])
def test_relevancy_equal_to_gt_scores_perfectly(style):
    # A half-plane mask survives the mode filter, so relevancy = GT must give IoU 1 and a localisation hit.
    gt = torch.zeros(48, 64, dtype=torch.bool)
    gt[:, :30] = True
    assert query_iou(gt.double(), gt, style) == 1.0
    # An isolated GT pixel: GSemSplat mode-filters the GT too, so it disappears; LangSplat misses it: 1440/1441.
    speck = gt.clone()
    speck[40, 60] = True
    assert query_iou(gt.double(), speck, style) == (1.0 if style == "gsemsplat" else pytest.approx(1440 / 1441))
    assert localization_hit(gt.double(), gt, style) == 1.0
    assert localization_hit(gt.double(), ~gt, style) == 0.0


def test_localization_langsplat_vs_gsemsplat():
    # A narrow strong spike (2x2 of 1.0 at rows 10-11, cols 80-81) and a broad weaker Gaussian blob (peak 0.6,
    # sigma 10, centre (56, 46)). The 30x30 box mean peaks on the blob (~0.31 vs ~0.005 around the spike), so
    # LangSplat (score = box mean) localises the blob; the smoothed map 0.5 * (r + mean) peaks on the spike
    # (~0.503 vs ~0.457 at the blob centre), so GSemSplat (score = smoothed) localises the spike.
    yy, xx = torch.meshgrid(torch.arange(96.0, dtype=torch.float64), torch.arange(96.0, dtype=torch.float64),
                            indexing="ij")
    r = 0.6 * torch.exp(-((yy - 56) ** 2 + (xx - 46) ** 2) / 200)
    r[10:12, 80:82] = 1.0
    blob = r > 0.3
    blob[10:12, 80:82] = False
    spike = r == 1.0
    assert localization_hit(r, blob, "langsplat") == 1.0
    assert localization_hit(r, spike, "langsplat") == 0.0
    assert localization_hit(r, blob, "langsplat", boxes=[(80, 10, 81, 11)]) == 0.0  # the spike's box
    assert localization_hit(r, blob, "langsplat", boxes=[(80, 10, 81, 11), (60, 66, 30, 46)]) == 1.0
    assert localization_hit(r, blob, "gsemsplat") == 0.0
    assert localization_hit(r, blob, "gsemsplat", score_map="avg") == 1.0
    # GSemSplat's target is the *mode-filtered* GT: a 2x2 spike vanishes under it, so even the spike misses.
    assert localization_hit(r, spike, "gsemsplat") == 0.0
    big_spike = torch.zeros(96, 96, dtype=torch.bool)
    big_spike[7:15, 77:85] = True
    assert localization_hit(r, big_spike, "gsemsplat") == 1.0
    # The GSemSplat valid mask multiplies the score map: hiding the spike moves the maximum to the blob.
    valid = ~big_spike
    assert localization_hit(r, blob, "gsemsplat", valid=valid) == 1.0
    # Brute-force check of the two score maps' maxima.
    avg = _box_mean_loops(r.numpy(), 30)
    assert blob[np.unravel_index(np.argmax(avg), avg.shape)]
    sm = 0.5 * (r.numpy() + avg)
    assert spike[np.unravel_index(np.argmax(sm), sm.shape)]


def test_localization_constant_map_ties_hit():
    gt = torch.zeros(10, 10, dtype=torch.bool)
    gt[9, 9] = True
    assert localization_hit(torch.full((10, 10), 0.3), gt, "langsplat") == 1.0


# ============================================================================ panoptic quality


def test_panoptic_hand_worked_class_agnostic():
    # Two 2x4 frames, gt 0 = void.
    gt = [np.array([[1, 1, 2, 2], [1, 1, 2, 2]]), np.array([[1, 1, 0, 0], [1, 1, 3, 3]])]
    pred = [np.array([[5, 5, 5, 7], [5, 5, 7, 7]]), np.array([[5, 5, 9, 9], [6, 6, 9, 9]])]
    # areas: gt 1: 8, 2: 4, 3: 2; pred 5: 7, 7: 3, 9: 4 (2 of them on void), 6: 2
    # IoU(1,5) = 6 / (8 + 7 - 6) = 2/3; IoU(2,7) = 3 / (4 + 3 - 3) = 3/4;
    # IoU(3,9) = 2 / (2 + 4 - 2 - 2 on void) = 1; pred 6 unmatched (no void) -> FP.
    # TP 3, FP 1, FN 0: SQ = (2/3 + 3/4 + 1)/3 = 29/36, RQ = 3/3.5 = 6/7, PQ = 29/42.
    m = panoptic_quality(pred, gt)
    assert (m["tp"], m["fp"], m["fn"]) == (3.0, 1.0, 0.0)
    assert m["sq"] == pytest.approx(29 / 36)
    assert m["rq"] == pytest.approx(6 / 7)
    assert m["pq"] == pytest.approx(29 / 42)
    assert m["pq"] == pytest.approx(m["sq"] * m["rq"])


def test_panoptic_is_scene_level_not_per_frame():
    # Each frame alone is perfect, but the predicted ids swap between frames: pred 4 is half of gt 1 and half of
    # gt 2 over the scene (IoU 2/(4+4-2) = 1/3), so nothing matches: 2 FN + 2 FP, PQ 0.
    gt = [np.array([[1, 1, 2, 2]]), np.array([[1, 1, 2, 2]])]
    pred = [np.array([[4, 4, 8, 8]]), np.array([[8, 8, 4, 4]])]
    assert panoptic_quality(pred[:1], gt[:1])["pq"] == 1.0
    m = panoptic_quality(pred, gt)
    assert (m["pq"], m["tp"], m["fp"], m["fn"]) == (0.0, 0.0, 2.0, 2.0)


def test_panoptic_void_rules():
    # gt [1,1,1,0,0,0] (0 = void). pred 5 = first 2 px, pred 6 = last 4 px (3 of them on void = 75%).
    # COCO: IoU(1,5) = 2/(3+2-2) = 2/3 matches; pred 6 is mostly void -> ignored. PQ = SQ = 2/3, RQ = 1.
    # drop: void pixels removed first; pred 6 is then 1 px, unmatched -> FP: RQ = 1/1.5, PQ = 4/9.
    gt, pred = np.array([[1, 1, 1, 0, 0, 0]]), np.array([[5, 5, 6, 6, 6, 6]])
    coco = panoptic_quality([pred], [gt])
    assert (coco["pq"], coco["fp"]) == (pytest.approx(2 / 3), 0.0)
    drop = panoptic_quality([pred], [gt], void="drop")
    assert (drop["pq"], drop["fp"]) == (pytest.approx(4 / 9), 1.0)
    # Exactly half on void is still an FP (the rule is "> 50%"): gt [1,1,1,1,0,0], pred [5,5,5,6,6,7].
    # IoU(1,5) = 3/4 matches; pred 6 (1 of 2 px on void, IoU with gt 1 = 1/(4+2-1-1)) -> FP; pred 7 -> ignored.
    half = panoptic_quality([np.array([[5, 5, 5, 6, 6, 7]])], [np.array([[1, 1, 1, 1, 0, 0]])])
    assert (half["tp"], half["fp"], half["fn"]) == (1.0, 1.0, 0.0)
    assert half["pq"] == pytest.approx(0.75 * 1 / 1.5)


def test_panoptic_category_aware_things_and_stuff():
    # sem [1,1,2,2], inst [0,0,1,1]; things = {2}, stuff = {1}. pred sem [1,1,1,2], inst [0,0,0,3].
    # stuff 1: IoU 2/3 -> TP (PQ 2/3); thing 2: IoU(gt (2,1), pred (2,3)) = 1/2, not > 1/2 -> FN + FP (PQ 0).
    m = panoptic_quality(
        [np.array([[0, 0, 0, 3]])], [np.array([[0, 0, 1, 1]])],
        [np.array([[1, 1, 1, 2]])], [np.array([[1, 1, 2, 2]])],
        things={2}, per_category=True,
    )
    assert m["pq"] == pytest.approx(1 / 3) and m["sq"] == pytest.approx(1 / 3) and m["rq"] == pytest.approx(1 / 2)
    assert m["pq_things"] == 0.0 and m["pq_stuff"] == pytest.approx(2 / 3)
    assert m["per_category"][2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0.0, "fp": 1.0, "fn": 1.0}


def test_panoptic_torchmetrics_docstring_example():
    # torchmetrics' documented example: PQ 0.5463, SQ 0.6111, RQ 0.6667 (things {0, 1}, stuffs {6, 7}).
    preds = np.array([[[6, 0], [0, 0], [6, 0], [6, 0]], [[0, 0], [0, 0], [6, 0], [0, 1]],
                      [[0, 0], [0, 0], [6, 0], [0, 1]], [[0, 0], [7, 0], [6, 0], [1, 0]],
                      [[0, 0], [7, 0], [7, 0], [7, 0]]])
    target = np.array([[[6, 0], [0, 1], [6, 0], [0, 1]], [[0, 1], [0, 1], [6, 0], [0, 1]],
                       [[0, 1], [0, 1], [6, 0], [1, 0]], [[0, 1], [7, 0], [1, 0], [1, 0]],
                       [[0, 1], [7, 0], [7, 0], [7, 0]]])
    m = panoptic_quality(preds[None, ..., 1], target[None, ..., 1], preds[None, ..., 0], target[None, ..., 0],
                         things={0, 1})
    assert (round(m["pq"], 4), round(m["sq"], 4), round(m["rq"], 4)) == (0.5463, 0.6111, 0.6667)


def _random_scene(seed, frames=3, h=12, w=16, n_cat=4, things=(1, 2), void_cat=9):
    """Blocky GT (semantic + instance) and a perturbed prediction with ids consistent across frames."""
    rng = np.random.default_rng(seed)
    gs, gi, ps, pi = [], [], [], []
    relabel = rng.permutation(50) + 10
    for _ in range(frames):
        sem = np.zeros((h, w), np.int64)
        inst = np.zeros((h, w), np.int64)
        for _ in range(7):
            y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
            dy, dx = rng.integers(2, 7), rng.integers(2, 8)
            obj = int(rng.integers(1, 12))
            sem[y : y + dy, x : x + dx] = obj % n_cat if obj % 5 else void_cat
            inst[y : y + dy, x : x + dx] = obj
        psem, pinst = sem.copy(), relabel[inst]
        psem[psem == void_cat] = rng.integers(0, n_cat)
        for _ in range(3):  # blocky errors
            y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
            psem[y : y + 3, x : x + 4] = rng.integers(0, n_cat)
            pinst[y : y + 3, x : x + 4] = rng.integers(60, 64)
        gs.append(sem), gi.append(inst), ps.append(psem), pi.append(pinst)
    return pi, gi, ps, gs


def _pq_reference(pi, gi, ps, gs, void_cat, things):
    """Slow COCO-rule PQ from dicts of pixel sets (category-aware, stuff instance ids dropped)."""
    gt_segs, pred_segs, void = defaultdict(set), defaultdict(set), set()
    for f in range(len(gi)):
        for (y, x), g in np.ndenumerate(gi[f]):
            px = (f, y, x)
            gc, pc = int(gs[f][y, x]), int(ps[f][y, x])
            if gc == void_cat:
                void.add(px)
            else:
                gt_segs[(gc, int(g) if gc in things else 0)].add(px)
            pred_segs[(pc, int(pi[f][y, x]) if pc in things else 0)].add(px)
    stats = defaultdict(lambda: [0.0, 0, 0, 0])  # iou_sum, tp, fp, fn
    matched_p = set()
    for gk, gset in gt_segs.items():
        hit = None
        for pk, pset in pred_segs.items():
            if pk[0] != gk[0]:
                continue
            inter = len(gset & pset)
            iou = inter / (len(gset | pset) - len(pset & void))
            if iou > 0.5:
                hit = (pk, iou)
        if hit:
            matched_p.add(hit[0])
            stats[gk[0]][0] += hit[1]
            stats[gk[0]][1] += 1
        else:
            stats[gk[0]][3] += 1
    for pk, pset in pred_segs.items():
        if pk not in matched_p and len(pset & void) / len(pset) <= 0.5:
            stats[pk[0]][2] += 1
    pq, sq, rq = [], [], []
    for iou_sum, tp, fp, fn in stats.values():
        sq.append(iou_sum / tp if tp else 0.0)
        rq.append(tp / (tp + fp / 2 + fn / 2))
        pq.append(sq[-1] * rq[-1])
    return np.mean(pq), np.mean(sq), np.mean(rq)


@pytest.mark.parametrize("seed", range(4))
def test_panoptic_matches_pixel_set_reference_and_torchmetrics(seed):
    from torchmetrics.functional.detection import panoptic_quality as tm_pq

    things, void_cat = {1, 2}, 9
    pi, gi, ps, gs = _random_scene(seed, void_cat=void_cat)
    ours = panoptic_quality(pi, gi, ps, gs, ignore_index=void_cat, things=things)
    ref = _pq_reference(pi, gi, ps, gs, void_cat, things)
    assert (ours["pq"], ours["sq"], ours["rq"]) == pytest.approx(ref, abs=1e-12)
    assert 0 < ours["tp"] and 0 < ours["pq"] < 1
    # torchmetrics matches per sample, so the scene's frames go side by side into one image; its unknown target
    # category (void_cat) is void.
    pred = torch.from_numpy(np.stack([np.concatenate(ps, 1), np.concatenate(pi, 1)], -1))[None]
    target = torch.from_numpy(np.stack([np.concatenate(gs, 1), np.concatenate(gi, 1)], -1))[None]
    tm = tm_pq(pred, target, things=things, stuffs={0, 3}, return_sq_and_rq=True)
    assert (ours["pq"], ours["sq"], ours["rq"]) == pytest.approx(tm.tolist(), abs=1e-6)  # tm: float32 IoUs
    # class-agnostic mode against torchmetrics with a single thing category
    ag = panoptic_quality(pi, gi, void_id=None)
    one = lambda m: np.ones_like(np.concatenate(m, 1))  # noqa: E731
    tm_ag = tm_pq(
        torch.from_numpy(np.stack([one(pi), np.concatenate(pi, 1)], -1))[None],
        torch.from_numpy(np.stack([one(gi), np.concatenate(gi, 1)], -1))[None],
        things={1}, stuffs=set(), return_sq_and_rq=True,
    )
    assert (ag["pq"], ag["sq"], ag["rq"]) == pytest.approx(tm_ag.tolist(), abs=1e-6)
    # frames added one at a time == one call
    acc = PanopticAccumulator(ignore_index=void_cat, things=things)
    for k in range(len(gi)):
        acc.update(torch.from_numpy(pi[k]), gi[k], ps[k], torch.from_numpy(gs[k]))
    assert acc.compute() == ours


# ============================================================================ depth


def test_depth_hand_worked():
    # valid pixels (gt > 0): pred [1, 2, 4], gt [1, 2, 5]. AbsRel = (0 + 0 + 1/5)/3 = 1/15,
    # RMSE = sqrt(1/3); ratios 1, 1, 1.25 -> delta_1.25 = delta_1.03 = 2/3 (strict <).
    pred = torch.tensor([[1.0, 2.0], [4.0, 7.0]])
    gt = torch.tensor([[1.0, 2.0], [5.0, 0.0]])
    m = depth_metrics(pred, gt)
    assert set(m) == {"abs_rel", "rmse", "delta_1.25", "delta_1.03"}
    assert m["abs_rel"] == pytest.approx(1 / 15)
    assert m["rmse"] == pytest.approx(math.sqrt(1 / 3))
    assert m["delta_1.25"] == pytest.approx(2 / 3) and m["delta_1.03"] == pytest.approx(2 / 3)
    assert depth_metrics(pred.numpy()[..., None], gt.numpy()[..., None]) == m
    assert math.isnan(depth_metrics(pred, torch.zeros(2, 2))["rmse"])


def test_depth_median_alignment():
    # gt [1,2,3,4] (median 2.5), pred [1,1,1,10] (median 1) -> scale 2.5, aligned [2.5, 2.5, 2.5, 25].
    gt = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.0, 1.0, 1.0, 10.0])
    aligned, s, t = align_depth(pred, gt, "median")
    assert (s, t) == (2.5, 0.0)
    np.testing.assert_allclose(aligned.numpy(), [2.5, 2.5, 2.5, 25.0])
    m = depth_metrics(pred, gt, align="median")
    assert m["abs_rel"] == pytest.approx(np.mean(np.abs([2.5, 2.5, 2.5, 25.0] - gt) / gt))
    assert m["align_scale"] == 2.5
    assert depth_metrics(3 * gt, gt, align="median")["abs_rel"] == pytest.approx(0.0, abs=1e-12)


def test_depth_lsq_alignment_matches_numpy_lstsq():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 5, size=(20, 25))
    pred = (gt - 0.7) / 1.9 + rng.normal(0, 0.01, gt.shape)
    outliers = rng.random(gt.shape) < 0.08
    pred[outliers] += rng.uniform(0.3, 0.6, outliers.sum())
    gt[rng.random(gt.shape) < 0.05] = 0.0  # missing
    valid = gt > 0
    p, g = pred[valid], gt[valid]
    a = np.stack([p, np.ones_like(p)], 1)
    x0 = np.linalg.lstsq(a, g, rcond=None)[0]
    n_drop = int(np.floor(0.2 * len(p)))
    keep = np.argsort(np.abs(a @ x0 - g), kind="stable")[: len(p) - n_drop]
    s_ref, t_ref = np.linalg.lstsq(a[keep], g[keep], rcond=None)[0]

    aligned, s, t = align_depth(pred, gt, "lsq")
    assert (s, t) == pytest.approx((s_ref, t_ref), rel=1e-9)
    assert (s, t) == pytest.approx((1.9, 0.7), abs=0.05)  # the outliers were trimmed
    assert x0[0] != pytest.approx(s_ref, rel=1e-3)  # and trimming changed the fit
    m = depth_metrics(torch.from_numpy(pred), torch.from_numpy(gt), align="lsq")
    q = s_ref * p + t_ref
    assert m["abs_rel"] == pytest.approx(np.mean(np.abs(q - g) / g), rel=1e-9)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((q - g) ** 2)), rel=1e-9)
    assert m["delta_1.25"] == pytest.approx(np.mean(np.maximum(q / g, g / q) < 1.25))
    assert (m["align_scale"], m["align_shift"]) == pytest.approx((s_ref, t_ref), rel=1e-9)
    np.testing.assert_allclose(aligned.numpy(), s_ref * pred + t_ref, rtol=1e-9)


# ============================================================================ image metrics


def _images(seed, shape=(3, 40, 48)):
    gen = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, *shape[:1], 6, 7, generator=gen), size=shape[1:],
                                           mode="bilinear", align_corners=False)
    gt = base.clamp(0, 1)
    pred = (gt + 0.08 * torch.randn(gt.shape, generator=gen)).clamp(0, 1)
    return pred, gt


def test_psnr_hand_worked_and_torchmetrics():
    from torchmetrics.image import PeakSignalNoiseRatio

    gt = torch.zeros(8, 8, 3)
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0)  # MSE 0.01 -> 10 log10(1/0.01)
    assert psnr(gt, gt) == math.inf
    pred, gt = _images(0)
    expected = float(PeakSignalNoiseRatio(data_range=1.0)(pred, gt))
    assert psnr(pred, gt) == pytest.approx(expected, abs=1e-4)
    assert psnr(pred[0].permute(1, 2, 0).numpy(), gt[0].permute(1, 2, 0).numpy()) == pytest.approx(expected, abs=1e-4)


def test_ssim_matches_pytorch_msssim_and_torchmetrics():
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    for seed in range(2):
        pred, gt = _images(seed)
        ours = ssim(pred, gt)
        assert 0.2 < ours < 0.99
        assert ours == pytest.approx(float(pytorch_msssim.ssim(pred, gt, data_range=1.0)), abs=1e-5)
        # torchmetrics (>= 1.0) reflect-pads and averages the full-size map instead of the valid region
        tm = float(StructuralSimilarityIndexMeasure(data_range=1.0)(pred, gt))
        assert ssim(pred, gt, border="reflect") == pytest.approx(tm, abs=1e-5)
        assert abs(ours - tm) > 1e-3
        assert ssim(pred[0].permute(1, 2, 0), gt[0].permute(1, 2, 0)) == pytest.approx(ours, abs=1e-12)
    assert ssim(gt, gt) == pytest.approx(1.0)


def test_lpips_without_weights_returns_none_and_warns_once(tmp_path, monkeypatch, caplog):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    monkeypatch.setattr(image_mod, "_lpips_warned", False)
    try:
        pred, gt = _images(0)
        with caplog.at_level(logging.WARNING, logger=image_mod.__name__):
            assert image_mod.lpips(pred, gt) is None
            assert image_mod.lpips(pred, gt) is None
            assert "lpips" not in image_mod.image_metrics(pred, gt)
        warnings = [r for r in caplog.records if "LPIPS skipped" in r.getMessage()]
        assert len(warnings) == 1 and image_mod.ALEXNET_WEIGHTS in warnings[0].getMessage()
        assert not any(tmp_path.rglob("*.pth"))  # nothing was downloaded
    finally:
        torch.hub.set_dir(old)


def test_lpips_with_local_weights_matches_torchmetrics():
    if not image_mod.lpips_available():
        pytest.skip(f"{image_mod.ALEXNET_WEIGHTS} is not in the torch hub cache")
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    pred, gt = _images(1)
    expected = float(LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)(pred, gt))
    assert image_mod.lpips(pred, gt) == pytest.approx(expected, abs=1e-5)
