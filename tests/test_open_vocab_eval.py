"""Open-vocabulary query evaluation as GSemSplat's / LangSplat's scripts score it (unisem_ns.metrics.open_vocab).

References used: brute-force loops of the scripts' filters written here (a reflected 30x30 mean as
``cv2.filter2D`` computes it, and their ``smooth`` loop with its window slice), ``cv2.filter2D`` itself when
OpenCV is installed, and hand computations in the comments.

A size used below: under the reference border (BORDER_REFLECT_101) a 16-pixel axis extends periodically with
period 2 * (16 - 1) = 30, so every 30-pixel window covers exactly one period and the 30x30 box mean of a 16x16
map is one constant. The smoothed map 0.5 * (r + const) then min-max normalises to the normalised r itself.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from unisem_ns.language.encoders import TextEncoder
from unisem_ns.language.query_field import relevancy
from unisem_ns.metrics import (
    aggregate_results,
    box_mean,
    evaluate_gsemsplat_scene,
    evaluate_queries,
    load_gsemsplat_scene,
    mode_filter,
    relevancy_maps,
)
from unisem_ns.metrics.open_vocab import ImageResult, QueryResult, load_labelme_annotation, rasterize_polygon


# ---------------------------------------------------------------------------------------------- brute force


def _reflect101(p, n):
    # OpenCV's borderInterpolate for BORDER_REFLECT_101, repeated until inside
    if n == 1:
        return 0
    while p < 0 or p >= n:
        p = -p if p < 0 else 2 * (n - 1) - p
    return p


def _filter2d_loops(x, k):
    """cv2.filter2D(x, -1, ones((k, k)) / k**2): anchor k // 2, reflected border."""
    h, w = x.shape
    a = k // 2
    out = np.zeros((h, w))
    for i in range(h):
        rows = [_reflect101(i + u, h) for u in range(-a, k - a)]
        for j in range(w):
            cols = [_reflect101(j + v, w) for v in range(-a, k - a)]
            out[i, j] = x[np.ix_(rows, cols)].sum() / (k * k)
    return out


def _smooth_loops(mask, scale=3):
    """The scripts' eval/utils.py ``smooth``: slice end min(i + scale + 1, h - 1), argmax of bincount."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for i in range(h):
        for j in range(w):
            sq = mask[max(0, i - scale): min(i + scale + 1, h - 1), max(0, j - scale): min(j + scale + 1, w - 1)]
            out[i, j] = np.argmax(np.bincount(sq.reshape(-1).astype(int), minlength=2)) if sq.size else 0
    return out


# ---------------------------------------------------------------------------------------------- filters


@pytest.mark.parametrize("shape,k", [((23, 41), 30), ((9, 13), 30), ((20, 17), 5), ((12, 15), 6), ((1, 7), 4)])
def test_box_mean_reference_matches_filter2d_loops(shape, k):
    x = np.random.default_rng(k + shape[0]).random(shape)
    ref = box_mean(x, k, border="reference").numpy()
    np.testing.assert_allclose(ref, _filter2d_loops(x, k), rtol=0, atol=1e-12)
    # clip and reference agree where the window stays inside the image, and differ in the border band
    clip = box_mean(x, k, border="clip").numpy()
    a = k // 2
    inner = (slice(a, shape[0] - (k - 1 - a)), slice(a, shape[1] - (k - 1 - a)))
    np.testing.assert_allclose(ref[inner], clip[inner], rtol=0, atol=1e-12)
    assert np.abs(ref - clip).max() > 1e-3


def test_box_mean_reference_matches_cv2():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for shape, k in (((23, 41), 30), ((64, 80), 30), ((7, 5), 30), ((40, 50), 5), ((40, 50), 6)):
        x = rng.random(shape)
        expected = cv2.filter2D(x, -1, np.ones((k, k)) / k**2)  # default border = BORDER_REFLECT_101
        np.testing.assert_allclose(box_mean(x, k, border="reference").numpy(), expected, rtol=0, atol=1e-12)
        x32 = x.astype(np.float32)  # the scripts' dtype: cv2 works in float32 then, ~1e-7 off
        np.testing.assert_allclose(box_mean(x32, k, border="reference").numpy(),
                                   cv2.filter2D(x32, -1, np.ones((k, k)) / k**2), rtol=0, atol=1e-6)


def test_mode_filter_reference_matches_smooth_loop():
    rng = np.random.default_rng(3)
    differ = 0
    for shape, p in (((20, 17), 0.5), ((9, 30), 0.3), ((4, 5), 0.5), ((2, 3), 0.6), ((1, 6), 0.5), ((11, 11), 0.7)):
        m = rng.random(shape) < p
        ref = mode_filter(m, border="reference").numpy()
        np.testing.assert_array_equal(ref, _smooth_loops(m.astype(np.uint8)).astype(bool))
        clip = mode_filter(m, border="clip").numpy()
        h, w = shape
        # interior windows (rows 3..h-5, cols 3..w-5) are the full 7x7 in both rules
        np.testing.assert_array_equal(ref[3:h - 4, 3:w - 4], clip[3:h - 4, 3:w - 4])
        differ += int((ref != clip).sum())
    assert differ > 0


def test_mode_filter_reference_hand_worked_last_row():
    # 8x8, rows 5 and 6 are ones (full width). The reference window of row i is rows max(0, i-3) .. min(i+4, 7)-1.
    #   clip: row 5 sees rows 2..7 (2 of 6 ones) -> 0; row 6 rows 3..7 (2 of 5) -> 0; row 7 rows 4..7 (2 of 4, a
    #     tie) -> 0: the band disappears.
    #   reference: row 5 rows 2..6 (2 of 5) -> 0; row 6 rows 3..6 (2 of 4, tie) -> 0; row 7 rows 4..6 (2 of 3)
    #     -> 1 for every column (the column counts cancel since every row is uniform): the band moves to row 7.
    m = np.zeros((8, 8), dtype=bool)
    m[5:7] = True
    assert not mode_filter(m, border="clip").any()
    ref = mode_filter(m, border="reference")
    assert ref[7].all() and not ref[:7].any()


# ---------------------------------------------------------------------------------------------- one image


def _gradient16():
    # 16x16, r[i, j] = j / 15: the box mean is constant (see the module docstring), so the normalised map is
    # 2j/15 - 1 (less ~1e-9 from the scripts' epsilon).
    return torch.arange(16, dtype=torch.float64).div(15).expand(16, 16).clone()


def _band(cols, h=16, w=16):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[:, cols] = True
    return m


def test_threshold_gt_filter_and_border_hand_worked():
    # LangSplat: 2j/15 - 1 > 0.4 <=> j > 10.5 -> cols 11..15. GSemSplat: > 0.5 <=> j > 11.25 -> cols 12..15.
    # Mode filter of a full-height band (reference window: cols max(0, j-3) .. min(j+4, 15)-1):
    #   band 11..15: col 10 sees 7..13 (3 of 7) -> 0, col 11 sees 8..14 (4 of 7) -> 1, col 15 sees 12..14 -> 1:
    #     unchanged. Clip gives the same.
    #   band 12..15, reference: col 12 sees 9..14 (3 of 6, a tie) -> 0, col 13 sees 10..14 (3 of 5) -> 1
    #     -> cols 13..15.  Clip: col 12 sees 9..15 (4 of 7) -> 1 -> cols 12..15.
    # GT = cols 11..15 plus an isolated pixel (2, 2) that only GSemSplat's GT mode filter removes.
    #   LangSplat IoU = 80 / 81 (the speck is a miss), both borders.
    #   GSemSplat reference: pred 13..15 (48 px) vs filtered GT 11..15 (80 px) -> 0.6;  clip: 64/80 = 0.8.
    r = _gradient16()[None, None]
    gt = _band(slice(11, 16))
    gt[2, 2] = True
    lang = evaluate_queries(r, [gt], "langsplat").queries[0]
    gsem = evaluate_queries(r, [gt], "gsemsplat").queries[0]
    assert lang.iou == pytest.approx(80 / 81) and gsem.iou == pytest.approx(0.6)
    assert evaluate_queries(r, [gt], "langsplat", border="clip").queries[0].iou == pytest.approx(80 / 81)
    assert evaluate_queries(r, [gt], "gsemsplat", border="clip").queries[0].iou == pytest.approx(0.8)
    # the threshold alone: GSemSplat's protocol at LangSplat's 0.4 predicts cols 11..15 -> IoU 1 (speck filtered)
    assert evaluate_queries(r, [gt], "gsemsplat", threshold=0.4).queries[0].iou == pytest.approx(1.0)
    # localisation: the maximum (col 15) is inside the filtered GT / the GT's tight box
    assert lang.hit and gsem.hit and lang.head == gsem.head == 0


def test_head_selection_by_max_smoothed_relevancy():
    # 16x16, two heads. Box means are constants: per axis the 30-window weights are 1 for the first and last
    # pixel and 2 for the others. Head 0: 0.6 on cols 11..15 (weights 2+2+2+2+1 = 9) -> mean 0.6 * 9/30 = 0.18,
    # smoothed max 0.5 * (0.6 + 0.18) = 0.39. Head 1: 0.9 on cols 0..4 (weights 1+2+2+2+2 = 9) -> mean 0.27,
    # smoothed max 0.5 * 1.17 = 0.585. Head 1 is chosen although head 0 matches the GT (cols 11..15) exactly:
    # head 0 predicts 11..15 (IoU 1), head 1 predicts 0..4 (col 4 sees 1..7, 4 of 7 -> kept; IoU 0).
    r = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
    r[0, 0, :, 11:] = 0.6
    r[1, 0, :, :5] = 0.9
    gt = _band(slice(11, 16))
    for protocol in ("gsemsplat", "langsplat"):
        q = evaluate_queries(r, {"mug": gt}, protocol).queries[0]
        assert q.query == "mug" and q.head == 1 and q.iou == 0.0
        assert q.head_ious == pytest.approx((1.0, 0.0))
        assert q.head_scores == pytest.approx((0.39, 0.585))
        # localisation also picks head 1 (GSemSplat: max of smoothed; LangSplat: max of box mean 0.27 > 0.18).
        # GSemSplat: the maximum is on cols 0..4, outside the GT -> miss. LangSplat: the box mean is constant on a
        # 16x16 map, so every pixel ties for the maximum and one of them is in the GT's box -> hit.
        assert q.loc_head == 1 and q.hit is (protocol == "langsplat")
    # swapping the heads swaps the choice
    q = evaluate_queries(r.flip(0), {"mug": gt}, "gsemsplat").queries[0]
    assert q.head == 0 and q.iou == 0.0


def test_empty_gt_skipped_and_not_in_the_mean():
    r = _gradient16()[None].expand(4, 16, 16)[None]  # 1 head, 4 queries, the same map
    band = _band(slice(11, 16))
    speck = torch.zeros(16, 16, dtype=torch.bool)
    speck[5, 5] = True
    gts = {"a": band, "b": None, "c": torch.zeros(16, 16, dtype=torch.bool), "d": speck}
    res = evaluate_queries(r, gts, "gsemsplat")
    assert [q.query for q in res.queries] == ["a", "b", "c", "d"]
    # b (None) and c (empty) are skipped; d's single pixel vanishes under GSemSplat's GT mode filter -> skipped
    assert [q.evaluated for q in res.queries] == [True, False, False, False]
    assert res.num_evaluated == 1 and res.miou == pytest.approx(0.6) and res.localization_accuracy == 1.0
    assert res.queries[1].iou is None and res.queries[1].hit is None
    # LangSplat keeps d (unfiltered GT): pred cols 11..15 vs one pixel -> IoU 0; mean (1 + 0) / 2
    res = evaluate_queries(r, gts, "langsplat")
    assert [q.evaluated for q in res.queries] == [True, False, False, True]
    assert res.miou == pytest.approx(0.5)
    # d's tight box is (5, 5)-(5, 5) but the box-mean maximum is everywhere (constant) -> still a hit (ties)
    assert res.localization_accuracy == 1.0
    # a query list given with a mapping: missing names are skipped
    res = evaluate_queries(r, gts, "gsemsplat", queries=["a", "zzz", "b", "c"])
    assert [q.evaluated for q in res.queries] == [True, False, False, False]
    # nothing evaluated -> NaN means
    assert math.isnan(evaluate_queries(r[:, :1], [None], "gsemsplat").miou)


def test_visibility_mask():
    # gradient example, GSemSplat: pred cols 13..15, filtered GT cols 11..15. valid = cols 0..13:
    # pred & valid = col 13 (16 px), GT & valid = cols 11..13 (48 px) -> IoU 1/3.
    r = _gradient16()[None, None]
    gt = _band(slice(11, 16))
    valid = _band(slice(0, 14))
    q = evaluate_queries(r, [gt], "gsemsplat", valid=valid).queries[0]
    assert q.iou == pytest.approx(1 / 3)
    # the masked smoothed map peaks at col 13, inside GT & valid -> hit
    assert q.hit
    # GT entirely outside the visible region -> skipped (GSemSplat skips empty visible GT)
    q = evaluate_queries(r, [gt], "gsemsplat", valid=_band(slice(0, 8))).queries[0]
    assert not q.evaluated


def _two_blocks(n=80):
    # a strong 10x10 block of 1 (rows/cols 20..29) and a weaker one of 0.5 (rows/cols 60..69), 31 px apart, so
    # no 30x30 window holds both
    r = torch.zeros(n, n, dtype=torch.float64)
    r[20:30, 20:30] = 1.0
    r[60:70, 60:70] = 0.5
    return r


def _square(lo, hi, n=80):
    m = torch.zeros(n, n, dtype=torch.bool)
    m[lo:hi, lo:hi] = True
    return m


def test_localisation_in_mask_vs_in_box():
    # GT = an L: a vertical bar rows 10..39 x cols 10..14 and a horizontal bar rows 35..39 x cols 10..39. Its
    # tight box (10, 10)-(39, 39) holds the strong block, the mask does not.
    #   LangSplat: box-mean maximum = 100/900 on the plateau of windows holding the whole strong block,
    #     rows/cols 15..35 (the weak block gives at most 50/900), all inside the box -> hit.
    #   GSemSplat: smoothed maximum 0.5 * (1 + 100/900) on the strong block itself, outside the mask -> miss.
    r = _two_blocks()
    gt = torch.zeros(80, 80, dtype=torch.bool)
    gt[10:40, 10:15] = True
    gt[35:40, 10:40] = True
    rel = r[None, None]
    assert evaluate_queries(rel, [gt], "langsplat").queries[0].hit is True
    assert evaluate_queries(rel, [gt], "gsemsplat").queries[0].hit is False
    # LangSplat with explicit per-instance boxes: any box holding a maximum counts (corners in any order)
    assert evaluate_queries(rel, [gt], "langsplat", boxes=[[(50, 0, 79, 5)]]).queries[0].hit is False
    assert evaluate_queries(rel, [gt], "langsplat", boxes=[[(50, 0, 79, 5), (36, 36, 14, 14)]]).queries[0].hit is True
    # GSemSplat with a 16x16 square around the strong block as GT: the 7x7 mode filter only rounds its
    # corners, so the whole block (where the maximum is) stays inside -> hit
    assert evaluate_queries(rel, [_square(17, 33)], "gsemsplat").queries[0].hit is True
    # the visibility mask multiplies the score map: hiding the strong block moves GSemSplat's maximum to the weak
    # block (0.5 * (0.5 + 50/900) against at most 0.5 * 100/900 around the hidden block)
    weak = _square(57, 73)
    assert evaluate_queries(rel, [weak], "gsemsplat").queries[0].hit is False
    assert evaluate_queries(rel, [weak], "gsemsplat", valid=~_square(20, 30)).queries[0].hit is True


def test_localisation_border_band_clip_vs_reference():
    # 70x70: a 3x3 block of 1 in the corner (rows/cols 0..2) and a 5x6 block of 1 at rows 33..37, cols 33..38,
    # more than 30 px apart so no window holds both.
    #   clip: at (0, 0) the window is rows/cols 0..14 (225 px) holding 9 -> 9/225 = 36/900; the centre block
    #     gives 30/900 -> the corner wins.
    #   reference (reflect-101): the window of (0, 0) covers rows 15..1, 0..14, i.e. row 0 once and rows 1, 2
    #     twice: 5 x 5 = 25 of the corner block -> 25/900 < 30/900 -> the centre block wins.
    r = torch.zeros(70, 70, dtype=torch.float64)
    r[0:3, 0:3] = 1.0
    r[33:38, 33:39] = 1.0
    corner = torch.zeros(70, 70, dtype=torch.bool)
    corner[0:3, 0:3] = True
    centre = torch.zeros(70, 70, dtype=torch.bool)
    centre[33:38, 33:39] = True
    rel = r[None, None].expand(1, 2, 70, 70)
    boxes = {"corner": [(0, 0, 2, 2)], "centre": [(20, 20, 50, 50)]}  # the centre box holds its whole plateau
    gts = {"corner": corner, "centre": centre}
    ref = evaluate_queries(rel, gts, "langsplat", boxes=boxes)
    clip = evaluate_queries(rel, gts, "langsplat", boxes=boxes, border="clip")
    assert [q.hit for q in ref.queries] == [False, True]
    assert [q.hit for q in clip.queries] == [True, False]
    assert box_mean(r, 30, "clip")[0, 0].item() == pytest.approx(36 / 900)
    assert box_mean(r, 30, "reference")[0, 0].item() == pytest.approx(25 / 900)
    assert box_mean(r, 30, "reference").max().item() == pytest.approx(30 / 900)


def test_aggregate_is_over_pairs_not_images():
    im1 = ImageResult([QueryResult("a", True, 0, 1.0, 0, True), QueryResult("b", True, 0, 0.0, 0, False),
                       QueryResult("c", False)])
    im2 = ImageResult([QueryResult("a", True, 1, 0.6, 1, True)])
    s = aggregate_results([im1, im2])
    # pairs: 1.0, 0.0, 0.6 -> 1.6 / 3 (a mean of image means would be (0.5 + 0.6) / 2 = 0.55)
    assert s.miou == pytest.approx(1.6 / 3) and s.localization_accuracy == pytest.approx(2 / 3)
    assert s.num_evaluated == 3 and s.num_skipped == 1
    assert s.per_query["a"] == pytest.approx({"miou": 0.8, "localization_accuracy": 1.0, "count": 2})
    assert "c" not in s.per_query


def test_bad_inputs():
    r = torch.zeros(1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"\[Heads, Q, H, W\]"):
        evaluate_queries(r[0], [None, None])
    with pytest.raises(ValueError, match="2 queries"):
        evaluate_queries(r, [None, None], queries=["x"])
    with pytest.raises(ValueError, match="protocol"):
        evaluate_queries(r, [None, None], "lerf")
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate_queries(r, [torch.ones(4, 4), None])
    with pytest.raises(ValueError, match="border"):
        box_mean(torch.zeros(4, 4), border="reflect")


# ---------------------------------------------------------------------------------------------- relevancy


def test_relevancy_maps_uses_the_query_field_relevancy():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 5, 7, 6, generator=g)
    pos, neg = torch.randn(3, 6, generator=g), torch.randn(4, 6, generator=g)
    out = relevancy_maps(feats.numpy(), pos, neg, chunk_size=8)  # numpy input, chunks not dividing 35
    assert out.shape == (2, 3, 5, 7)
    expected = relevancy(feats, pos, neg).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, expected)


# ---------------------------------------------------------------------------------------------- released layout

D = 8


class _BasisEncoder(TextEncoder):
    """Phrases -> fixed basis vectors: chair e0, table e1, lamp e2, the canonical negatives e4..e7."""

    name, dim = "basis", D
    WORDS = {"chair": 0, "table": 1, "lamp": 2, "object": 4, "things": 5, "stuff": 6, "texture": 7}

    def _encode(self, texts):
        return torch.eye(D)[[self.WORDS[t] for t in texts]]

    def to_json(self):
        return {"kind": "basis", "model": "basis", "pretrained": None, "dim": D}


def _rect(x1, y1, x2, y2):
    return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]


def _write_scene(root, h=20, w=24):
    # Features: background e3 (cosine 0 with every phrase -> relevancy sigmoid(0) = 0.5 for every query).
    #   head 0: e0 (chair) on cols 0..5, e1 (table) on cols 18..23;  head 1: e1 on cols 14..23.
    # Relevancy of a query is sigmoid(10) ~ 1 where the feature is its phrase, 0.5 elsewhere; those full-height
    # bands survive the min-max + threshold + mode filter unchanged (a band >= 4 wide keeps its edges: its first
    # column sees 4 of 7 band columns), so each head predicts exactly its band.
    feats = np.zeros((2, h, w, D), dtype=np.float32)
    feats[..., 3] = 1
    feats[0, :, 0:6] = np.eye(D)[0]
    feats[0, :, 18:24] = np.eye(D)[1]
    feats[1, :, 14:24] = np.eye(D)[1]
    np.save(root / "restored_feat.npy", feats)
    # frame 1 (the scripts' label format): chair polygon cols 0..7, table cols 14..23 (two instances)
    frame1 = {"info": {"height": h, "width": w, "name": "frame_00001.jpg"}, "objects": [
        {"category": "chair", "segmentation": _rect(0, 0, 7, 19), "bbox": [0, 0, 7, 19]},
        {"category": "table", "segmentation": _rect(14, 0, 18.7, 19), "bbox": [14, 0, 18, 19]},
        {"category": "table", "segmentation": _rect(19, 0, 23, 19), "bbox": [19, 0, 23, 19]},
    ]}
    # frame 2 (plain LabelMe): the chair annotated on cols 16..23, where nothing predicts a chair
    frame2 = {"imageHeight": h, "imageWidth": w, "shapes": [
        {"label": "chair", "points": [[16, 0], [23, 19]], "shape_type": "rectangle"}]}
    (root / "frame_00001.json").write_text(json.dumps(frame1))
    (root / "frame_00002.json").write_text(json.dumps(frame2))
    valid = np.ones((h, w), dtype=bool)
    valid[:, 22:] = False  # frame 1: the last two columns unseen
    np.save(root / "mask_00001.npy", valid)
    np.save(root / "mask_00002.npy", np.ones((h, w), dtype=bool))
    (root / "queries.txt").write_text("chair\ntable\n\nlamp\n")


def test_labelme_annotation_layouts(tmp_path):
    _write_scene(tmp_path)
    (h, w), masks, boxes = load_labelme_annotation(tmp_path / "frame_00001.json")
    assert (h, w) == (20, 24) and sorted(masks) == ["chair", "table"]
    # polygon vertices are inclusive and truncated to integers (18.7 -> 18): table = cols 14..23
    assert masks["chair"].sum() == 20 * 8 and masks["chair"][:, :8].all()
    assert masks["table"][:, 14:].all() and masks["table"].sum() == 20 * 10
    np.testing.assert_array_equal(boxes["table"], [[14, 0, 18, 19], [19, 0, 23, 19]])
    (_, _), masks2, boxes2 = load_labelme_annotation(tmp_path / "frame_00002.json")
    assert masks2["chair"][:, 16:].all() and masks2["chair"].sum() == 20 * 8
    np.testing.assert_array_equal(boxes2["chair"], [[16, 0, 23, 19]])


def test_rasterize_polygon_rectangles_match_cv2():
    m = rasterize_polygon([[2.9, 1.2], [5, 1], [5, 3.99], [2, 3]], (6, 8))
    expected = np.zeros((6, 8), dtype=bool)
    expected[1:4, 2:6] = True
    np.testing.assert_array_equal(m, expected)
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x1, x2 = sorted(rng.integers(-3, 30, 2))
        y1, y2 = sorted(rng.integers(-3, 20, 2))
        pts = _rect(x1, y1, x2, y2)
        ref = np.zeros((17, 27), np.uint8)
        cv2.fillPoly(ref, [np.asarray(pts, dtype=np.int32)], 1)
        np.testing.assert_array_equal(rasterize_polygon(pts, (17, 27)), ref.astype(bool))
        np.testing.assert_array_equal(rasterize_polygon(pts, (17, 27), "cv2"), ref.astype(bool))


def test_released_layout_scored_exactly(tmp_path):
    _write_scene(tmp_path)
    scene = load_gsemsplat_scene(tmp_path)
    assert scene.queries == ["chair", "table", "lamp"] and scene.features.shape == (2, 20, 24, D)
    assert [f.name for f in scene.frames] == ["frame_00001", "frame_00002"]
    res = evaluate_gsemsplat_scene(scene, _BasisEncoder())
    f1, f2 = res.images
    chair, table, lamp = f1.queries
    # frame 1, chair: head 0 is the only head with a chair response (head 1 is a constant 0.5) -> head 0;
    #   pred cols 0..5 vs GT cols 0..7 -> IoU 6/8; the maximum lies on cols 0..5 -> hit.
    assert (chair.head, chair.loc_head, chair.hit) == (0, 0, True) and chair.iou == pytest.approx(0.75)
    # table: head 1's band (10 columns) has a larger box mean than head 0's (6 columns), so a larger smoothed
    #   maximum -> head 1. Visible part (cols 0..21): pred 14..21 vs GT 14..21 -> IoU 1 (head 0: 18..21 vs
    #   14..21 -> 4/8).
    assert (table.head, table.loc_head, table.hit) == (1, 1, True) and table.iou == pytest.approx(1.0)
    assert table.head_ious == pytest.approx((0.5, 1.0))
    assert not lamp.evaluated  # in queries.txt, not annotated
    # frame 2 (same features, as the released script): the chair GT is cols 16..23 -> IoU 0, miss
    assert f2.queries[0].iou == 0.0 and f2.queries[0].hit is False
    assert [q.evaluated for q in f2.queries] == [True, False, False]
    # scene: pairs 0.75, 1.0, 0.0 -> mIoU 1.75 / 3, localisation 2 / 3
    assert res.miou == pytest.approx(1.75 / 3) and res.localization_accuracy == pytest.approx(2 / 3)
    assert res.num_evaluated == 3 and res.num_skipped == 3
    # the same with embeddings instead of an encoder (query -> vector, and negatives [K, D])
    eye = torch.eye(D)
    again = evaluate_gsemsplat_scene(tmp_path, query_embeddings={"chair": eye[0], "table": eye[1], "lamp": eye[2]},
                                     negative_embeddings=eye[4:8])
    assert again.miou == pytest.approx(res.miou) and again.localization_accuracy == res.localization_accuracy
    # LangSplat's protocol on the same scene (GT not mode-filtered; bands are unchanged by it anyway; the
    # visibility mask is still applied to both masks; boxes for localisation): the same IoUs 0.75, 1, 0
    lang = evaluate_gsemsplat_scene(scene, _BasisEncoder(), protocol="langsplat")
    assert lang.miou == pytest.approx(1.75 / 3)


def test_released_layout_errors(tmp_path):
    _write_scene(tmp_path)
    (tmp_path / "restored_feat.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"restored_feat\.npy not found.*\[Heads, H, W, D\]"):
        load_gsemsplat_scene(tmp_path)
    np.save(tmp_path / "restored_feat.npy", np.zeros((20, 24, D), dtype=np.float32))
    with pytest.raises(ValueError, match=r"restored_feat\.npy: expected features \[Heads, H, W, D\].*\(20, 24, 8\)"):
        load_gsemsplat_scene(tmp_path)
    np.save(tmp_path / "restored_feat.npy", np.zeros((2, 20, 25, D), dtype=np.float32))
    with pytest.raises(ValueError, match=r"frame_00001\.json: annotation is 20x24 .* is 20x25"):
        load_gsemsplat_scene(tmp_path)
    _write_scene(tmp_path)
    np.save(tmp_path / "mask_00002.npy", np.ones((24, 20), dtype=bool))
    with pytest.raises(ValueError, match=r"mask_00002\.npy: expected a visibility mask \[H, W\] = \[20, 24\]"):
        load_gsemsplat_scene(tmp_path)
    _write_scene(tmp_path)
    (tmp_path / "mask_00002.npy").unlink()
    with pytest.raises(FileNotFoundError, match="2 frame_.*json annotations but 1 mask_"):
        load_gsemsplat_scene(tmp_path)
    _write_scene(tmp_path)
    (tmp_path / "queries.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"queries\.txt not found"):
        load_gsemsplat_scene(tmp_path)
    assert load_gsemsplat_scene(tmp_path, queries=["chair"]).queries == ["chair"]
    with pytest.raises(FileNotFoundError, match="scene folder"):
        load_gsemsplat_scene(tmp_path / "nope")
    _write_scene(tmp_path)
    with pytest.raises(ValueError, match=r"restored_feat\.npy has 8-d features but the text embeddings are 4-d"):
        evaluate_gsemsplat_scene(tmp_path, query_embeddings=torch.eye(4)[:3], negative_embeddings=torch.eye(4))
    (tmp_path / "frame_00002.json").write_text(json.dumps({"shapes": [{"label": "x"}]}))
    with pytest.raises(ValueError, match=r"frame_00002\.json: malformed annotation"):
        load_gsemsplat_scene(tmp_path)
