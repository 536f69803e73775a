"""Scene-level PQ under the Panoptic Lifting protocol (``protocol="panoptic_lifting"``), hand-worked cases.

Every expected number is worked out in the comment above it. Frames are tiny 1 x N maps; "f1" / "f2" are the
frames, "(c, i)" a segment of category c and instance i, "|x|" a pixel count. Unless a test says otherwise,
``min_category_fraction`` keeps its default 0.005, which with a few dozen pixels voids nothing (one pixel is
already more than 0.5 % of the scene).
"""

from collections import defaultdict

import numpy as np
import pytest
import torch

from unisem_ns.metrics import PanopticAccumulator, panoptic_quality

PL = "panoptic_lifting"


def a(*rows):
    """Frames as [1, N] int arrays."""
    return [np.array([r]) for r in rows]


def scores(m):
    return m["pq"], m["sq"], m["rq"]


# ---------------------------------------------------------------------------------------------- rule 1: pooling


def test_pooling_frames_consistent_vs_swapped_ids():
    # One thing category (1); gt ids [1,1,2,2] in every frame. Predicted ids [4,4,8,8], except in the last
    # frame where they are swapped ([8,8,4,4]).
    # 4 frames: |gt 1| = |pred 4| = 8, |gt 1 ∩ pred 4| = 6 -> IoU 6/(8+8-6) = 0.6 > 0.5 for both pairs:
    #   TP 2, SQ 0.6, RQ 1, PQ 0.6.
    # 3 frames: overlap 4 of 6 -> IoU 4/(6+6-4) = 0.5, not > 0.5: TP 0, FP 2, FN 2, PQ 0.
    gt_i, ok, swapped = [1, 1, 2, 2], [4, 4, 8, 8], [8, 8, 4, 4]
    sem = [1, 1, 1, 1]
    for n, expected in ((4, (0.6, 0.6, 1.0)), (3, (0.0, 0.0, 0.0))):
        m = panoptic_quality(a(*[ok] * (n - 1), swapped), a(*[gt_i] * n), a(*[sem] * n), a(*[sem] * n),
                             things={1}, protocol=PL)
        assert scores(m) == pytest.approx(expected, abs=1e-12)
        assert (m["tp"], m["fp"], m["fn"]) == ((2.0, 0.0, 0.0) if n == 4 else (0.0, 2.0, 2.0))
    # every frame alone is perfect
    assert panoptic_quality(a(swapped), a(gt_i), a(sem), a(sem), things={1}, protocol=PL)["pq"] == 1.0


def test_perfect_and_permuted_instance_ids():
    # things {1}, stuff {2}. gt f1 sem [1,1,2,2,1,1] inst [3,3,0,0,4,4]; f2 the same sem, inst [4,4,0,0,3,3].
    # Segments (1,3), (1,4), (2,0), 4 px each.
    gs = a([1, 1, 2, 2, 1, 1], [1, 1, 2, 2, 1, 1])
    gi = a([3, 3, 0, 0, 4, 4], [4, 4, 0, 0, 3, 3])
    kw = dict(things={1}, protocol=PL, per_category=True)
    assert scores(panoptic_quality(gi, gi, gs, gs, **kw)) == (1.0, 1.0, 1.0)
    # Consistent relabelling 3 -> 9, 4 -> 8 in both frames (stuff ids are irrelevant: they are zeroed): 1.0.
    consistent = a([9, 9, 5, 5, 8, 8], [8, 8, 6, 6, 9, 9])
    assert scores(panoptic_quality(consistent, gi, gs, gs, **kw)) == (1.0, 1.0, 1.0)
    # Relabelling that differs between frames (f2 gets 3 -> 8, 4 -> 9): pred 9 = gt 3 in f1 + gt 4 in f2, so
    # IoU(gt 3, pred 9) = 2/(4+4-2) = 1/3 for every pair: category 1 has TP 0, FP 2, FN 2 (PQ 0); the stuff
    # category 2 is still perfect (PQ 1). Mean PQ = SQ = RQ = 1/2.
    inconsistent = a([9, 9, 0, 0, 8, 8], [9, 9, 0, 0, 8, 8])
    m = panoptic_quality(inconsistent, gi, gs, gs, **kw)
    assert scores(m) == (0.5, 0.5, 0.5)
    assert m["per_category"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0.0, "fp": 2.0, "fn": 2.0}
    assert m["per_category"][2]["pq"] == 1.0


# ----------------------------------------------------------------------------------- rule 2: stuff instance ids


def test_stuff_instance_ids_are_zeroed():
    # gt f1 = f2: sem [1,1,1,1,2,2], inst [3,3,5,5,7,7]; pred sem the same, inst [9,9,9,9,4,4].
    # things {2}: stuff 1 is one segment (8 px) on both sides -> IoU 1; thing (2,7) vs (2,4) -> IoU 1. PQ 1.
    # things {1, 2}: gt (1,3), (1,5) have 4 px each, pred (1,9) 8 px -> IoU 4/8 = 0.5, no match: category 1
    #   has FN 2, FP 1 (PQ 0); category 2 PQ 1. Mean PQ = SQ = RQ = 1/2.
    gs = ps = a([1, 1, 1, 1, 2, 2], [1, 1, 1, 1, 2, 2])
    gi = a([3, 3, 5, 5, 7, 7], [3, 3, 5, 5, 7, 7])
    pi = a([9, 9, 9, 9, 4, 4], [9, 9, 9, 9, 4, 4])
    m = panoptic_quality(pi, gi, ps, gs, things={2}, protocol=PL)
    assert scores(m) == (1.0, 1.0, 1.0)
    assert (m["pq_things"], m["pq_stuff"], m["tp"]) == (1.0, 1.0, 2.0)
    m = panoptic_quality(pi, gi, ps, gs, things={1, 2}, protocol=PL)
    assert scores(m) == (0.5, 0.5, 0.5)
    assert (m["tp"], m["fp"], m["fn"]) == (1.0, 1.0, 2.0)


# ------------------------------------------------------------------------------------ rule 3: rare categories


def test_rare_predicted_category_is_void_in_both_maps():
    # 20 px; min_category_fraction 0.1 -> rare below 2 px. All stuff (inst 0), things None.
    # gt   f1 [2,2,2,2,2,2,3,3,3,3], f2 [2]*10: |2| = 16, |3| = 4.
    # pred f1 [2,2,2,2,2,2,2,2,2,3], f2 [2]*10: |2| = 19, |3| = 1 -> 3 is rare in the prediction.
    # Reference: 3 leaves the category set, so its pixels become void in BOTH maps (gt void = the 4 px of gt 3,
    #   pred void = 1 px). Category 2: inter 16, union 16+19-16 - |p ∩ gt void| 3 - |g ∩ pred void| 0 = 16 ->
    #   IoU 1. Only category 2 is left: PQ = SQ = RQ = 1.
    # Rule off (fraction 0): 2: IoU 16/19 (TP); 3: IoU 1/4 -> FN + FP (PQ 0). Mean PQ 8/19, SQ 8/19, RQ 1/2.
    #   (Voiding 3 in the prediction only would also give 8/19: gt 3 stays a segment and becomes an FN.)
    gs, ps = a([2] * 6 + [3] * 4, [2] * 10), a([2] * 9 + [3], [2] * 10)
    zeros = a([0] * 10, [0] * 10)
    m = panoptic_quality(zeros, zeros, ps, gs, protocol=PL, min_category_fraction=0.1, per_category=True)
    assert scores(m) == (1.0, 1.0, 1.0)
    assert (m["rare_categories"], m["num_rare_categories"], m["num_categories"]) == ([3], 1.0, 1.0)
    off = panoptic_quality(zeros, zeros, ps, gs, protocol=PL, min_category_fraction=0.0)
    assert scores(off) == pytest.approx((8 / 19, 8 / 19, 0.5), abs=1e-12)


def test_rare_gt_category_is_void_in_both_maps():
    # Mirror image. gt f1 [2]*9 + [3], f2 [2]*10: |2| = 19, |3| = 1 (rare in the gt at fraction 0.1).
    # pred f1 [2]*6 + [3]*4, f2 [2]*10: |2| = 16, |3| = 4.
    # Both maps: 3 -> void. Category 2: inter 16, union 19+16-16 - 0 - |g ∩ pred void| 3 = 16 -> IoU 1. PQ 1.
    # Rule off: 2: IoU 16/19; 3: IoU 1/4 -> FN + FP. Mean PQ 8/19.
    gs, ps = a([2] * 9 + [3], [2] * 10), a([2] * 6 + [3] * 4, [2] * 10)
    zeros = a([0] * 10, [0] * 10)
    m = panoptic_quality(zeros, zeros, ps, gs, protocol=PL, min_category_fraction=0.1, per_category=True)
    assert scores(m) == (1.0, 1.0, 1.0) and m["rare_categories"] == [3]
    off = panoptic_quality(zeros, zeros, ps, gs, protocol=PL, min_category_fraction=0.0)
    assert off["pq"] == pytest.approx(8 / 19, abs=1e-12)


def test_rare_rule_default_fraction_is_strict_half_percent():
    # Two 10x20 frames = 400 px, default fraction 0.005 -> rare below 2 px (strict <).
    # gt: category 2 everywhere except category 3 on 2 px (exactly 0.5 %: kept) and category 4 on 1 px (rare).
    # pred = gt, except that the category-4 pixel is predicted as 2.
    # 4 -> void in the gt. Category 2: |g| 397, |p| 398, inter 397, union 398 - |p ∩ gt void| 1 = 397 -> IoU 1;
    #   category 3: IoU 1. Categories {2, 3}: PQ 1.
    # Rule off: 2: IoU 397/398; 3: 1; 4: FN (PQ 0) -> PQ (397/398 + 1)/3.
    gs = [np.full((10, 20), 2), np.full((10, 20), 2)]
    gs[0][0, :2] = 3
    gs[1][5, 5] = 4
    ps = [g.copy() for g in gs]
    ps[1][5, 5] = 2
    zeros = [np.zeros((10, 20), int)] * 2
    m = panoptic_quality(zeros, zeros, ps, gs, protocol=PL, per_category=True)
    assert scores(m) == (1.0, 1.0, 1.0)
    assert (m["rare_categories"], sorted(m["per_category"])) == ([4], [2, 3])
    off = panoptic_quality(zeros, zeros, ps, gs, protocol=PL, min_category_fraction=0.0)
    assert off["pq"] == pytest.approx((397 / 398 + 1) / 3, abs=1e-12)


# ------------------------------------------------------------------------------ rule 4: both voids off the union


def test_both_voids_subtracted_from_union():
    # ignore_index 0 (void), things {1}; void="coco" keeps gt-void pixels as void.
    # gt   sem f1 [1,1,1,1] f2 [1,1,0,0], inst f1 [5,5,5,5] f2 [5,5,0,0] -> (1,5): 6 px, gt void 2 px.
    # pred sem f1 [0,0,1,1] f2 [1,1,1,1], inst f1 [0,0,7,7] f2 [7,7,7,7] -> (1,7): 6 px, 2 of them on gt void;
    #   2 px of (1,5) are predicted void. inter = 4.
    # panoptic_lifting: union = 6+6-4 - 2 - 2 = 4 -> IoU 1, PQ 1.
    # coco: union = 6+6-4 - 2 = 6 -> IoU 2/3, PQ = SQ = 2/3 (RQ 1).
    # Default void="drop" under panoptic_lifting: the 2 gt-void px go; (1,7) is 4 px, union 6+4-4 - 0 - 2 = 4
    #   -> IoU 1 too (coco with drop: 6+4-4 = 6 -> 2/3).
    gs, gi = a([1, 1, 1, 1], [1, 1, 0, 0]), a([5, 5, 5, 5], [5, 5, 0, 0])
    ps, pi = a([0, 0, 1, 1], [1, 1, 1, 1]), a([0, 0, 7, 7], [7, 7, 7, 7])
    kw = dict(ignore_index=0, things={1})
    assert scores(panoptic_quality(pi, gi, ps, gs, protocol=PL, void="coco", **kw)) == (1.0, 1.0, 1.0)
    assert scores(panoptic_quality(pi, gi, ps, gs, protocol=PL, **kw)) == (1.0, 1.0, 1.0)
    coco = panoptic_quality(pi, gi, ps, gs, **kw)
    assert scores(coco) == pytest.approx((2 / 3, 2 / 3, 1.0), abs=1e-12)
    assert panoptic_quality(pi, gi, ps, gs, void="drop", **kw)["pq"] == pytest.approx(2 / 3, abs=1e-12)


# ------------------------------------------------------------------------------------- rule 5: FN / FP ignoring


def test_gt_segment_mostly_predicted_void_is_not_a_miss():
    # ignore_index 0, things {1}. gt sem all 1, inst f1 [5]*4, f2 [6]*4.
    # pred f1 sem [1]*4 inst [7]*4; f2 sem [0,0,0,1] inst [0,0,0,7] -> (1,7) 5 px.
    # IoU(5,7) = 4/(4+5-4) = 4/5 (no void touches them) -> TP. IoU(6,7) = 1/(4+5-1-0-3) = 1/5.
    # gt 6 is 3/4 predicted void -> not an FN under panoptic_lifting: TP 1, FN 0, SQ 0.8, RQ 1, PQ 0.8.
    # coco counts it: FN 1, SQ 0.8, RQ 1/1.5, PQ 8/15.
    gs, gi = a([1] * 4, [1] * 4), a([5] * 4, [6] * 4)
    ps, pi = a([1] * 4, [0, 0, 0, 1]), a([7] * 4, [0, 0, 0, 7])
    kw = dict(ignore_index=0, things={1})
    m = panoptic_quality(pi, gi, ps, gs, protocol=PL, **kw)
    assert (m["tp"], m["fp"], m["fn"]) == (1.0, 0.0, 0.0)
    assert scores(m) == pytest.approx((0.8, 0.8, 1.0), abs=1e-12)
    coco = panoptic_quality(pi, gi, ps, gs, **kw)
    assert (coco["fn"], coco["pq"]) == (1.0, pytest.approx(8 / 15, abs=1e-12))
    # Exactly half predicted void is still a miss (rule is "> 50 %"): f2 pred sem [0,0,1,1] inst [0,0,7,7].
    # (1,7) is 6 px: IoU(5,7) = 4/6; IoU(6,7) = 2/(4+6-2-0-2) = 1/3. TP 1 (SQ 2/3), FN 1 (RQ 2/3), PQ 4/9.
    half = panoptic_quality(pi[:1] + a([0, 0, 7, 7]), gi, ps[:1] + a([0, 0, 1, 1]), gs, protocol=PL, **kw)
    assert (half["tp"], half["fp"], half["fn"]) == (1.0, 0.0, 1.0)
    assert scores(half) == pytest.approx((4 / 9, 2 / 3, 2 / 3), abs=1e-12)


def test_pred_segment_mostly_on_gt_void_is_not_a_false_positive():
    # things {1}; 20 px, min_category_fraction 0.25 -> rare below 5 px. Default void="drop" (nothing to drop).
    # gt   f1 sem [1]*10 inst [5]*10; f2 sem [2]*6 + [3]*4, inst 0. |3| = 4 -> rare -> gt void.
    # pred f1 sem [1]*10 inst [7]*10; f2 sem [2]*5 + [1]*5, inst [0]*5 + [9]*5.
    # Category 1: (1,5)~(1,7) IoU 1. (1,9) is 5 px, 4 of them on gt void (80 %) -> not an FP. PQ_1 = 1.
    # Category 2: |g| 6, |p| 5, inter 5, no void on either -> IoU 5/6, PQ_2 = 5/6.
    # Mean PQ = SQ = (1 + 5/6)/2 = 11/12, RQ 1. (Were (1,9) an FP: PQ_1 = 2/3.)
    gs = a([1] * 10, [2] * 6 + [3] * 4)
    gi = a([5] * 10, [0] * 10)
    ps = a([1] * 10, [2] * 5 + [1] * 5)
    pi = a([7] * 10, [0] * 5 + [9] * 5)
    m = panoptic_quality(pi, gi, ps, gs, things={1}, protocol=PL, min_category_fraction=0.25, per_category=True)
    assert m["rare_categories"] == [3]
    assert (m["tp"], m["fp"], m["fn"]) == (2.0, 0.0, 0.0)
    assert scores(m) == pytest.approx((11 / 12, 11 / 12, 1.0), abs=1e-12)
    assert (m["pq_things"], m["pq_stuff"]) == pytest.approx((1.0, 5 / 6), abs=1e-12)


# ------------------------------------------------------------------------------------ rule 6: per-category mean


def test_per_category_mean_and_things_stuff():
    # things {1}; stuff {2, 3}. No void anywhere, so coco gives the same numbers.
    # gt   f1 sem [1,1,1,2,2,2] inst [5,5,5,0,0,0]; f2 sem [1,1,3,3,3,3] inst [6,6,0,0,0,0]
    # pred f1 sem [1,1,1,2,2,3] inst [7,7,7,0,0,0]; f2 sem [1,3,3,3,3,3] inst [7,0,0,0,0,0]
    # gt (1,5) 3, (1,6) 2, (2,0) 3, (3,0) 4 px; pred (1,7) 4, (2,0) 2, (3,0) 6 px.
    # 1: IoU(5,7) = 3/(3+4-3) = 3/4 TP; (1,6) vs (1,7): 1/(2+4-1) = 1/5 -> FN. SQ 3/4, RQ 2/3, PQ 1/2.
    # 2: IoU 2/(3+2-2) = 2/3 TP -> SQ = PQ = 2/3, RQ 1.
    # 3: IoU 4/(4+6-4) = 2/3 TP -> SQ = PQ = 2/3, RQ 1.
    # Means: PQ 11/18, SQ 25/36, RQ 8/9 (PQ != SQ * RQ); things PQ 1/2, stuff PQ 2/3.
    gs, gi = a([1, 1, 1, 2, 2, 2], [1, 1, 3, 3, 3, 3]), a([5, 5, 5, 0, 0, 0], [6, 6, 0, 0, 0, 0])
    ps, pi = a([1, 1, 1, 2, 2, 3], [1, 3, 3, 3, 3, 3]), a([7, 7, 7, 0, 0, 0], [7, 0, 0, 0, 0, 0])
    m = panoptic_quality(pi, gi, ps, gs, things={1}, protocol=PL, per_category=True)
    assert scores(m) == pytest.approx((11 / 18, 25 / 36, 8 / 9), abs=1e-12)
    assert (m["pq_things"], m["pq_stuff"], m["sq_things"], m["rq_things"]) == pytest.approx(
        (1 / 2, 2 / 3, 3 / 4, 2 / 3), abs=1e-12)
    assert m["per_category"][1] == pytest.approx({"pq": 0.5, "sq": 0.75, "rq": 2 / 3, "tp": 1, "fp": 0, "fn": 1})
    assert m["num_categories"] == 3.0 and m["num_rare_categories"] == 0.0
    coco = panoptic_quality(pi, gi, ps, gs, things={1}, per_category=True)
    assert scores(coco) == pytest.approx(scores(m), abs=1e-15)


def test_category_with_only_ignored_segments_still_counts():
    # The reference averages over every category present in either map (after rare ones are voided), so a
    # category whose segments were all ignored (TP+FP+FN = 0) enters the mean with 0; coco leaves it out.
    # ignore_index 0, void="coco", things {1}. gt f1 sem [1]*4 inst [5]*4, f2 all void.
    # pred f1 sem [1]*4 inst [7]*4 (IoU 1), f2 sem [2]*4: (2,0) entirely on gt void -> not an FP.
    # panoptic_lifting: categories {1, 2} -> PQ = SQ = RQ = (1 + 0)/2 = 1/2.  coco: {1} -> 1.
    # panoptic_lifting with the default void="drop": f2 is dropped, category 2 vanishes -> 1.
    gs, gi = a([1] * 4, [0] * 4), a([5] * 4, [0] * 4)
    ps, pi = a([1] * 4, [2] * 4), a([7] * 4, [0] * 4)
    kw = dict(ignore_index=0, things={1}, per_category=True)
    m = panoptic_quality(pi, gi, ps, gs, protocol=PL, void="coco", **kw)
    assert scores(m) == (0.5, 0.5, 0.5)
    assert m["per_category"][2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0.0, "fp": 0.0, "fn": 0.0}
    assert (m["num_categories"], m["pq_things"], m["pq_stuff"]) == (2.0, 1.0, 0.0)
    assert scores(panoptic_quality(pi, gi, ps, gs, void="coco", **kw)) == (1.0, 1.0, 1.0)
    assert scores(panoptic_quality(pi, gi, ps, gs, protocol=PL, **kw)) == (1.0, 1.0, 1.0)


# ------------------------------------------------------------------------- cross-check, accumulator, arguments


def _pl_reference(pi, gi, ps, gs, things, void_cat, frac):
    """Slow pixel-set Panoptic Lifting PQ (gt void_cat pixels dropped; predicted void_cat pixels are void)."""
    px = [(int(a_), int(b_), int(c_), int(d_)) for f in range(len(gi)) for a_, b_, c_, d_ in
          zip(ps[f].ravel(), pi[f].ravel(), gs[f].ravel(), gi[f].ravel()) if c_ != void_cat]
    n = len(px)
    count_p, count_g = defaultdict(int), defaultdict(int)
    for p_c, _, g_c, _ in px:
        if p_c != void_cat:
            count_p[p_c] += 1
        count_g[g_c] += 1
    rare = {c for cnt in (count_p, count_g) for c, k in cnt.items() if k / n < frac}
    gseg, pseg, gvoid, pvoid = defaultdict(set), defaultdict(set), set(), set()
    for k, (p_c, p_i, g_c, g_i) in enumerate(px):
        if g_c in rare:
            gvoid.add(k)
        else:
            gseg[(g_c, g_i if g_c in things else 0)].add(k)
        if p_c == void_cat or p_c in rare:
            pvoid.add(k)
        else:
            pseg[(p_c, p_i if p_c in things else 0)].add(k)
    st = {c: [0.0, 0, 0, 0] for c in {s[0] for s in gseg} | {s[0] for s in pseg}}  # iou, tp, fp, fn
    hit_g, hit_p = set(), set()
    for gk, g in gseg.items():
        for pk, p in pseg.items():
            if gk[0] != pk[0] or not g & p:
                continue
            iou = len(g & p) / (len(g | p) - len(p & gvoid) - len(g & pvoid))
            if iou > 0.5:
                st[gk[0]][0] += iou
                st[gk[0]][1] += 1
                hit_g.add(gk), hit_p.add(pk)
    for gk, g in gseg.items():
        st[gk[0]][3] += gk not in hit_g and len(g & pvoid) / len(g) <= 0.5
    for pk, p in pseg.items():
        st[pk[0]][2] += pk not in hit_p and len(p & gvoid) / len(p) <= 0.5
    pq, sq, rq = [], [], []
    for iou, tp, fp, fn in st.values():
        d = tp + fp / 2 + fn / 2
        pq.append(iou / d if d else 0.0), sq.append(iou / tp if tp else 0.0), rq.append(tp / d if d else 0.0)
    return np.mean(pq), np.mean(sq), np.mean(rq)


@pytest.mark.parametrize("seed", range(3))
def test_matches_pixel_set_reference_and_accumulates(seed):
    rng = np.random.default_rng(seed)
    things, void_cat, frac = {1, 2}, 0, 0.03
    pi, gi, ps, gs = [], [], [], []
    for _ in range(3):
        sem, inst = np.zeros((8, 12), int), np.zeros((8, 12), int)
        for _ in range(8):
            y, x, dy, dx, o = rng.integers(0, 7), rng.integers(0, 11), rng.integers(1, 5), rng.integers(1, 6), \
                int(rng.integers(1, 13))
            sem[y:y + dy, x:x + dx], inst[y:y + dy, x:x + dx] = o % 6, o
        psem, pinst = sem.copy(), inst * 3 + 1
        for _ in range(4):
            y, x = rng.integers(0, 7), rng.integers(0, 11)
            psem[y:y + 2, x:x + 3], pinst[y:y + 2, x:x + 3] = rng.integers(0, 6), rng.integers(90, 93)
        psem[rng.integers(0, 8), rng.integers(0, 12)] = 5  # a likely-rare category
        pi.append(pinst), gi.append(inst), ps.append(psem), gs.append(sem)
    kw = dict(ignore_index=void_cat, things=things, protocol=PL, min_category_fraction=frac)
    m = panoptic_quality(pi, gi, ps, gs, **kw)
    assert scores(m) == pytest.approx(_pl_reference(pi, gi, ps, gs, things, void_cat, frac), abs=1e-12)
    assert 0 < m["pq"] < 1
    acc = PanopticAccumulator(**kw)
    for k in range(3):
        acc.update(torch.from_numpy(pi[k]), gi[k], ps[k], torch.from_numpy(gs[k]))
    assert acc.compute() == m


def test_argument_checks():
    with pytest.raises(ValueError, match="needs pred_semantics"):
        panoptic_quality(a([1, 1]), a([1, 1]), protocol=PL)
    with pytest.raises(ValueError, match="only applies"):
        PanopticAccumulator(min_category_fraction=0.01)
    with pytest.raises(ValueError, match="protocol"):
        PanopticAccumulator(protocol="scannet")
    assert PanopticAccumulator().void == "coco" and PanopticAccumulator(protocol=PL).void == "drop"
