"""Unified-Lift core (no nerfstudio): contrastive loss, noise filter, area-aware ID mapping, codebook losses,
cross-view id consistency, HDBSCAN baseline and the instance PLY."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unisem_ns.unified_lift import (
    Codebook,
    UnifiedLiftLossConfig,
    area_aware_assignment,
    assign_pixels,
    class_loss,
    cluster_centres,
    cluster_gaussian_features,
    concentration_loss,
    contrastive_loss,
    edge_aware_argmax,
    export_instance_ply,
    label_confidence,
    norm_regulariser,
    read_instance_ply,
    sample_pixels,
    unified_lift_losses,
)



@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: a second intra-op thread only adds contention on the shared 2-core machine (10x slower)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------------------------
# area-aware ID mapping
# ---------------------------------------------------------------------------------------------------------------


def _three_mask_case():
    """SAM ids 7 (100 px), 3 (10 px), 12 (10 px); every pixel of a mask has the same probabilities over L=3.

    Sums (x n_j):      id7: 40 35 25    id3: 9 .5 .5    id12: .5 9 .5
    area-aware optimum: 7->0, 3->2, 12->1 (49.5);  normalised optimum: 7->2, 3->0, 12->1 (2.05).
    """
    rows = {7: (100, [0.40, 0.35, 0.25]), 3: (10, [0.90, 0.05, 0.05]), 12: (10, [0.05, 0.90, 0.05])}
    ids, probs = [], []
    for sam_id, (n, p) in rows.items():
        ids += [sam_id] * n
        probs += [p] * n
    ids += [0] * 5  # void pixels that would favour entry 2 if they were counted
    probs += [[0.0, 0.0, 1.0]] * 5
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))
    return torch.tensor(probs)[perm], torch.tensor(ids)[perm]


def test_area_aware_vs_normalised_assignment():
    probs, ids = _three_mask_case()
    pseudo, mapping = area_aware_assignment(probs, ids)
    assert mapping == {3: 2, 7: 0, 12: 1}
    for sam_id, k in mapping.items():
        assert (pseudo[ids == sam_id] == k).all()
    assert (pseudo[ids == 0] == -1).all()

    pseudo_n, mapping_n = area_aware_assignment(probs, ids, normalised=True)
    assert mapping_n == {3: 0, 7: 2, 12: 1}
    assert (pseudo_n[ids == 7] == 2).all()


def test_assignment_caps_ids_and_respects_keep():
    gen = torch.Generator().manual_seed(1)
    ids = torch.tensor([0, 6, 5, 1, 2, 3, 4, 6, 1])
    probs = torch.softmax(torch.randn(ids.numel(), 4, generator=gen), -1)
    pseudo, mapping = area_aware_assignment(probs, ids)  # L=4: only the 4 smallest SAM ids are matched
    assert sorted(mapping) == [1, 2, 3, 4] and sorted(mapping.values()) == [0, 1, 2, 3]
    assert (pseudo[(ids == 5) | (ids == 6) | (ids == 0)] == -1).all()
    _, mapping2 = area_aware_assignment(probs, ids, max_ids=2)
    assert sorted(mapping2) == [1, 2]

    keep = ids != 1  # mask 1 entirely filtered: no row, no labels; the cap then reaches id 5
    pseudo3, mapping3 = area_aware_assignment(probs, ids, keep)
    assert sorted(mapping3) == [2, 3, 4, 5]
    assert (pseudo3[ids == 1] == -1).all() and (pseudo3[ids == 5] >= 0).all()


def test_assignment_keep_excludes_votes():
    # mask 4: 10 pixels favour entry 0, 30 filtered pixels favour entry 1 -> with keep, entry 0 wins
    ids = torch.full((40,), 4)
    probs = torch.cat([torch.tensor([[0.8, 0.2]]).repeat(10, 1), torch.tensor([[0.1, 0.9]]).repeat(30, 1)])
    keep = torch.arange(40) < 10
    assert area_aware_assignment(probs, ids)[1] == {4: 1}
    pseudo, mapping = area_aware_assignment(probs, ids, keep)
    assert mapping == {4: 0}
    assert (pseudo[:10] == 0).all() and (pseudo[10:] == -1).all()


# ---------------------------------------------------------------------------------------------------------------
# contrastive loss
# ---------------------------------------------------------------------------------------------------------------


def _naive_contrastive(features, ids, min_pixels=20, scale=10.0, lo=0.5, hi=1.0):
    f = features.detach().double().numpy()
    ids = ids.numpy()
    labels = [c for c in sorted(set(ids.tolist()) - {0}) if (ids == c).sum() > min_pixels]
    fb = f / np.linalg.norm(f, axis=1, keepdims=True)
    mus, phis = [], []
    for c in labels:
        m = fb[ids == c]
        mu = m.mean(0)
        n = len(m)
        phis.append(np.clip(scale * np.linalg.norm(m - mu, axis=1).sum() / (n * np.log(n + 10)), lo, hi))
        mus.append(mu)
    mus, phis = np.stack(mus), np.array(phis)
    losses = []
    for ci, c in enumerate(labels):
        for u in fb[ids == c]:
            z = u @ mus.T / phis
            losses.append(-(z[ci] - np.log(np.exp(z).sum())))
    return float(np.mean(losses))


def test_contrastive_matches_formula_and_is_permutation_invariant():
    gen = torch.Generator().manual_seed(0)
    ids = torch.tensor([1] * 40 + [2] * 30 + [3] * 25 + [4] * 10 + [0] * 15)  # mask 4 too small, 0 void
    feats = torch.randn(ids.numel(), 16, generator=gen) + 2.0 * torch.randn(5, 16, generator=gen)[ids]
    loss, info = contrastive_loss(feats, ids)
    assert int(info["num_masks"]) == 3 and int(info["num_pixels"]) == 95
    assert loss.item() == pytest.approx(_naive_contrastive(feats, ids), rel=1e-5)

    relabel = torch.tensor([0, 250, 4, 17, 9])  # arbitrary new SAM ids, void stays 0
    loss_p, _ = contrastive_loss(feats, relabel[ids])
    assert loss_p.item() == pytest.approx(loss.item(), rel=1e-6)
    # pixel order does not matter either
    perm = torch.randperm(ids.numel(), generator=gen)
    assert contrastive_loss(feats[perm], ids[perm])[0].item() == pytest.approx(loss.item(), rel=1e-5)


def test_contrastive_edge_cases():
    f = torch.randn(30, 16, requires_grad=True)
    zero, info = contrastive_loss(f, torch.zeros(30, dtype=torch.long))
    assert zero.item() == 0.0 and int(info["num_masks"]) == 0
    one, _ = contrastive_loss(f, torch.ones(30, dtype=torch.long))
    assert one.item() == pytest.approx(0.0, abs=1e-6)
    ids = torch.tensor([1] * 15 + [2] * 15)
    balanced, _ = contrastive_loss(f, ids, min_pixels=5, reduction="mask")
    pixel, _ = contrastive_loss(f, ids, min_pixels=5)
    assert balanced.item() == pytest.approx(pixel.item(), rel=1e-5)  # equal mask sizes -> same value
    with pytest.raises(ValueError):
        contrastive_loss(f, ids, reduction="sum")


def test_contrastive_optimisation_separates_masks():
    torch.manual_seed(0)
    ids = torch.arange(3).repeat_interleave(100) + 1
    feats = torch.nn.Parameter(torch.randn(300, 16) * 0.3 + 1.0)  # start clumped together
    opt = torch.optim.Adam([feats], lr=0.05)
    first = None
    for _ in range(150):
        loss, _ = contrastive_loss(feats, ids)
        total = loss + norm_regulariser(feats)
        opt.zero_grad()
        total.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.6 * first
    fb = F.normalize(feats.detach(), dim=-1)
    cos = fb @ fb.T
    same = ids[:, None] == ids[None, :]
    assert cos[same].mean() > 0.9
    assert cos[~same].mean() < 0.1
    assert norm_regulariser(feats.detach()) < 0.05


def test_sample_pixels():
    g = torch.Generator().manual_seed(0)
    idx = sample_pixels(100000, 32768, g)
    assert idx.shape == (32768,) and idx.unique().numel() == 32768 and idx.max() < 100000
    assert torch.equal(sample_pixels(50, 32768, g), torch.arange(50))
    assert torch.equal(sample_pixels(1000, 10, torch.Generator().manual_seed(3)),
                       sample_pixels(1000, 10, torch.Generator().manual_seed(3)))


# ---------------------------------------------------------------------------------------------------------------
# noise filter
# ---------------------------------------------------------------------------------------------------------------


def test_label_confidence_drops_planted_wrong_region():
    gen = torch.Generator().manual_seed(0)
    dirs = torch.linalg.qr(torch.randn(16, 16, generator=gen))[0][:3]  # three orthonormal object directions
    # mask 5 (200 px) covers object a, but 30 of its pixels really show object b; mask 9 = b; mask 2 = c; 20 void
    obj = torch.tensor([0] * 170 + [1] * 30 + [1] * 150 + [2] * 100 + [0] * 20)
    ids = torch.tensor([5] * 200 + [9] * 150 + [2] * 100 + [0] * 20)
    feats = dirs[obj] * (0.5 + torch.rand(obj.numel(), 1, generator=gen)) + 0.05 * torch.randn(
        obj.numel(), 16, generator=gen)
    planted = torch.zeros(obj.numel(), dtype=torch.bool)
    planted[170:200] = True
    conf, keep = label_confidence(feats, ids)
    assert not keep[planted].any()
    assert not keep[ids == 0].any() and (conf[ids == 0] == 0).all()
    assert keep[~planted & (ids > 0)].all()
    assert conf[planted].max() < 0.2 < conf[~planted & (ids > 0)].min()
    # no grad is recorded
    conf2, _ = label_confidence(feats.clone().requires_grad_(), ids)
    assert not conf2.requires_grad


# ---------------------------------------------------------------------------------------------------------------
# codebook and its losses
# ---------------------------------------------------------------------------------------------------------------


def test_codebook_init_matches_conv2d():
    torch.manual_seed(123)
    conv = torch.nn.Conv2d(16, 256, 1, bias=False)
    torch.manual_seed(123)
    cb = Codebook(256, 16)
    assert cb.code.shape == (256, 16)
    assert torch.equal(cb.code.detach(), conv.weight.detach().reshape(256, 16))
    bound = 1 / math.sqrt(16)
    assert cb.code.abs().max() <= bound and cb.code.abs().max() > 0.95 * bound
    f = torch.randn(5, 7, 16)
    assert cb.logits(f).shape == (5, 7, 256)
    assert torch.equal(cb.instance_ids(f), (f @ cb.code.T).argmax(-1))


def test_class_loss_skip_rule():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]], requires_grad=True)
    pseudo = torch.tensor([0, 1, -1])
    loss, status = class_loss(logits, pseudo)
    assert status == "all_correct" and loss.item() == 0.0
    loss, status = class_loss(logits, pseudo, keep=torch.tensor([False, False, True]))
    assert status == "no_pixels" and loss.item() == 0.0
    pseudo = torch.tensor([0, 2, -1])  # one wrong argmax -> CE over all selected pixels, / ln L
    loss, status = class_loss(logits, pseudo)
    assert status == "ok"
    expected = F.cross_entropy(logits[:2], pseudo[:2]) / math.log(3)
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert logits.grad[2].abs().sum() == 0  # unlabelled pixel untouched
    loss256, _ = class_loss(logits, pseudo, num_ids=256)
    assert loss256.item() == pytest.approx(expected.item() * math.log(3) / math.log(256))


def test_concentration_p1_p2():
    code = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    feats = torch.tensor([[3.0, 4.0], [0.0, 2.0], [9.0, 9.0]], requires_grad=True)
    pseudo = torch.tensor([0, 1, 0])
    keep = torch.tensor([True, True, False])
    # pixel 0: (1,0) - (.6,.8) = (.4,-.8) -> L2 sqrt(.8), L1 1.2; pixel 1: exact match -> 0; pixel 2 dropped
    l2 = concentration_loss(code, feats, pseudo, keep, p=2)
    l1 = concentration_loss(code, feats, pseudo, keep, p=1)
    assert l2.item() == pytest.approx(math.sqrt(0.8) / 2)
    assert l1.item() == pytest.approx(1.2 / 2)
    l2.backward()
    assert feats.grad is None and code.grad is not None and torch.isfinite(code.grad).all()
    assert concentration_loss(code, feats, torch.full((3,), -1)).item() == 0.0


def _view(layout, sam_ids, noise, gen, H=24, W=24):
    """Object map [H, W] (-1 = background / void) for a stripe layout, and its SAM id map."""
    obj = torch.full((H, W), -1)
    for o, (r0, r1, c0, c1) in layout.items():
        obj[r0:r1, c0:c1] = o
    sam = torch.zeros(H, W, dtype=torch.long)
    for o, s in sam_ids.items():
        sam[obj == o] = s
    return obj, sam, noise * torch.randn(H, W, 16, generator=gen)


def test_unified_lift_losses_gradient_routing_and_ablation():
    gen = torch.Generator().manual_seed(0)
    obj, sam, noise = _view({0: (0, 12, 0, 24), 1: (12, 24, 0, 12), 2: (12, 24, 12, 24)}, {0: 4, 1: 8, 2: 1},
                            0.1, gen)
    table = torch.randn(3, 16, generator=gen)
    feats = (table[obj.clamp_min(0)] + noise).requires_grad_()
    cb = Codebook()
    out = unified_lift_losses(feats, sam, cb, generator=gen)
    assert set(out["losses"]) == {"contrastive", "norm", "class", "concentration"}
    assert out["aux"]["pseudo_labels"].shape == (24, 24) and len(out["aux"]["mapping"]) == 3
    (out["losses"]["class"] + out["losses"]["concentration"]).backward(retain_graph=True)
    assert feats.grad is None and cb.code.grad is not None
    cb.code.grad = None
    (out["losses"]["contrastive"] + out["losses"]["norm"]).backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0 and cb.code.grad is None

    base = unified_lift_losses(feats, sam, None, UnifiedLiftLossConfig(use_codebook=False), gen)
    assert set(base["losses"]) == {"contrastive", "norm"}
    cfg = UnifiedLiftLossConfig(use_concentration=False, use_noise_filter=False, codebook_pixels=100)
    part = unified_lift_losses(feats, sam, cb, cfg, gen)
    assert set(part["losses"]) == {"contrastive", "norm", "class"}
    assert int((part["aux"]["pseudo_labels"] >= 0).sum()) <= 100


def test_codebook_ids_agree_across_views():
    """Same 3 objects, different random SAM ids and layouts per view: after training, each object has one
    codebook id (the same in both views' Hungarian mappings and in the rendered argmax), distinct across objects."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    views = [
        _view({0: (0, 8, 0, 24), 1: (8, 16, 0, 24), 2: (16, 24, 0, 24)}, {0: 17, 1: 3, 2: 42}, 0.05, gen),
        _view({0: (0, 24, 16, 24), 1: (0, 24, 0, 8), 2: (0, 24, 8, 16)}, {0: 2, 1: 250, 2: 9}, 0.05, gen),
    ]
    # per-object feature table initialised like Unified-Lift's RGB2SH(U[0,1)) features
    table = torch.nn.Parameter((torch.rand(3, 16) - 0.5) / 0.28209479177387814)
    cb = Codebook()
    opt_f = torch.optim.Adam([table], lr=2.5e-3)  # the code's feature and codebook learning rates
    opt_c = torch.optim.Adam(cb.parameters(), lr=5e-4)
    cfg = UnifiedLiftLossConfig()
    for step in range(300):
        obj, sam, noise = views[step % 2]
        feats = table[obj.clamp_min(0)] + noise
        out = unified_lift_losses(feats, sam, cb, cfg, gen)
        total = sum(out["losses"].values())
        opt_f.zero_grad()
        opt_c.zero_grad()
        total.backward()
        opt_f.step()
        opt_c.step()

    per_view = []
    with torch.no_grad():
        for obj, sam, noise in views:
            feats = table[obj.clamp_min(0)] + noise
            ids = cb.instance_ids(feats)
            out = unified_lift_losses(feats, sam, cb, cfg, gen)
            got = {}
            for o in range(3):
                k = torch.mode(ids[obj == o]).values.item()
                assert (ids[obj == o] == k).float().mean() > 0.99
                sam_id = int(sam[obj == o][0])
                assert out["aux"]["mapping"][sam_id] == k
                got[o] = k
            per_view.append(got)
    assert per_view[0] == per_view[1]
    assert len(set(per_view[0].values())) == 3


# ---------------------------------------------------------------------------------------------------------------
# clustering baseline and export
# ---------------------------------------------------------------------------------------------------------------


def test_hdbscan_baseline_recovers_clusters():
    rng = np.random.default_rng(0)
    centres = np.linalg.qr(rng.normal(size=(16, 16)))[0][:3]
    truth = rng.integers(0, 3, 3000)
    feats = centres[truth] * rng.uniform(0.5, 2.0, (3000, 1)) + 0.05 * rng.normal(size=(3000, 16))
    labels = cluster_gaussian_features(feats, min_cluster_size=100, max_fit=1000)  # subsample + assign path
    assert labels.shape == (3000,) and set(labels.tolist()) == {0, 1, 2}
    for t in range(3):
        assert len(set(labels[truth == t].tolist())) == 1
    strict = cluster_gaussian_features(feats, min_cluster_size=100, max_fit=1000, assign_noise=False)
    assert (strict[strict >= 0] == labels[strict >= 0]).all() and (strict >= 0).mean() > 0.9

    c = cluster_centres(feats, labels)
    pix = torch.as_tensor(feats[:600].reshape(20, 30, 16), dtype=torch.float32)
    assert torch.equal(assign_pixels(pix, c), torch.as_tensor(labels[:600].reshape(20, 30)))


def test_instance_ply_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    means = rng.normal(size=(50, 3)).astype(np.float32)
    inst = rng.integers(-1, 5, 50)
    cls = rng.integers(-1, 3, 50)
    path = export_instance_ply(tmp_path / "out" / "instances.ply", torch.as_tensor(means), torch.as_tensor(inst),
                               cls, class_names=["chair", "potted plant", "tv"])
    ply = read_instance_ply(path)
    np.testing.assert_array_equal(ply.means, means)
    np.testing.assert_array_equal(ply.instance_ids, inst)
    np.testing.assert_array_equal(ply.class_ids, cls)
    assert ply.class_names == {0: "chair", 1: "potted plant", 2: "tv"}
    assert (ply.colours[inst == -1] == 128).all()
    same = inst == inst[inst >= 0][0]
    assert (ply.colours[same] == ply.colours[same][0]).all()
    assert not list((tmp_path / "out").glob(".*.tmp"))

    cols = rng.integers(0, 256, (50, 3)).astype(np.uint8)
    ply2 = read_instance_ply(export_instance_ply(tmp_path / "b.ply", means, inst, colours=cols))
    np.testing.assert_array_equal(ply2.colours, cols)
    assert (ply2.class_ids == -1).all() and ply2.class_names == {}
    with pytest.raises(ValueError):
        export_instance_ply(tmp_path / "c.ply", means, inst[:10])


def test_small_view_scales_min_pixels():
    # A 24x24 view is used whole (576 of the code's 32768-pixel batch): a 12-pixel mask is ~2% of it, far above
    # the code's 20/32768 share, so with the relative rule it gets a prototype; with the absolute 20 it does not.
    ids = torch.zeros(24, 24, dtype=torch.long)
    ids[:12] = 1
    ids[12:] = 2
    ids[0, :12] = 3  # 12 pixels
    feats = torch.randn(24, 24, 16, generator=torch.Generator().manual_seed(0))
    rel = unified_lift_losses(feats, ids, None, UnifiedLiftLossConfig(use_codebook=False))
    absolute = unified_lift_losses(feats, ids, None, UnifiedLiftLossConfig(use_codebook=False, min_pixels_relative=False))
    assert int(rel["metrics"]["num_masks"]) == 3
    assert int(absolute["metrics"]["num_masks"]) == 2


def test_instance_ids_over_live_codes():
    cb = Codebook(8, 4)
    with torch.no_grad():
        cb.code.zero_()
        cb.code[2] = torch.tensor([1.0, 0, 0, 0])
        cb.code[5] = torch.tensor([0, 1.0, 0, 0])
        cb.code[7] = torch.tensor([2.0, 0, 0, 0])  # a stray entry that would win every x-ward pixel
    f = torch.tensor([[1.0, 0.2, 0, 0], [0.1, 1.0, 0, 0]])
    assert cb.instance_ids(f).tolist() == [7, 5]
    live = torch.zeros(8, dtype=torch.bool)
    live[[2, 5]] = True
    assert cb.instance_ids(f, live).tolist() == [2, 5]
    assert cb.instance_ids(f, torch.zeros(8, dtype=torch.bool)).tolist() == [7, 5]  # none live: all compete


def _step_edge_case():
    """A 12x12 view: the rendered colour is black for x < 6 and white from x = 6 on, but the id scores put the
    boundary one column late (column 6, which is white, still leans to id 0, as a blurred render does)."""
    H = W = 12
    guide = torch.zeros(H, W, 3)
    guide[:, 6:] = 1.0
    scores = torch.zeros(H, W, 2)
    scores[:, :6, 0] = 1.0
    scores[:, 6, 0], scores[:, 6, 1] = 0.6, 0.4
    scores[:, 7:, 1] = 1.0
    return scores, guide


def test_edge_aware_argmax_moves_a_boundary_onto_the_colour_edge():
    scores, guide = _step_edge_case()
    assert (scores.argmax(-1)[:, 6] == 0).all()  # the premise: column 6 is wrong before filtering
    ids = edge_aware_argmax(scores, guide, radius=2, sigma_space=1.5, sigma_guide=0.1)
    expected = torch.zeros(12, 12, dtype=torch.long)
    expected[:, 6:] = 1
    assert torch.equal(ids, expected)
    # It is the colour guide that moves it: with a flat guide the same window is a plain blur, and column 6 (three
    # id-0 neighbours within 2 px against two id-1 ones) stays id 0.
    blurred = edge_aware_argmax(scores, torch.zeros_like(guide), radius=2, sigma_space=1.5, sigma_guide=0.1)
    assert (blurred[:, 6] == 0).all()


def _dense_joint_bilateral(scores, guide, r, ss, sg):
    """Reference: the filter at every pixel, one window offset at a time, borders replicated."""
    H, W, _ = scores.shape
    s = F.pad(scores.permute(2, 0, 1)[None], (r, r, r, r), mode="replicate")[0]
    g = F.pad(guide.permute(2, 0, 1)[None], (r, r, r, r), mode="replicate")[0]
    g0 = guide.permute(2, 0, 1)
    num, den = 0.0, 0.0
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            gq = g[:, r + dy : r + dy + H, r + dx : r + dx + W]
            w = torch.exp(-(dy * dy + dx * dx) / (2 * ss * ss) - ((gq - g0) ** 2).sum(0) / (2 * sg * sg))
            num = num + w * s[:, r + dy : r + dy + H, r + dx : r + dx + W]
            den = den + w
    return (num / den).permute(1, 2, 0)


def test_edge_aware_argmax_equals_the_dense_filter():
    """Filtering only where a window holds two plain ids gives the dense filter's argmax everywhere (blobs of
    ids with smooth scores, a random colour guide, small chunks so the gather runs in several steps)."""
    gen = torch.Generator().manual_seed(0)
    H, W, K = 20, 24, 5
    centres = torch.randn(K, 2, generator=gen) * 8 + torch.tensor([10.0, 12.0])
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    dist = ((torch.stack([yy, xx], -1)[:, :, None] - centres) ** 2).sum(-1)  # [H, W, K]
    probs = torch.softmax(-dist / 20 + 0.3 * torch.randn(H, W, K, generator=gen), dim=-1)
    guide = torch.rand(H, W, 3, generator=gen)
    assert torch.equal(edge_aware_argmax(probs, guide, radius=0), probs.argmax(-1))
    for r, ss, sg in [(1, 1.0, 0.1), (2, 1.5, 0.3), (3, 2.0, 0.5)]:
        got = edge_aware_argmax(probs, guide, r, ss, sg, chunk_elements=2000)
        want = _dense_joint_bilateral(probs, guide, r, ss, sg).argmax(-1)
        assert torch.equal(got, want), (r, (got != want).sum())
        assert (got != probs.argmax(-1)).any()  # the case is not trivial
    with pytest.raises(ValueError, match="same H, W"):
        edge_aware_argmax(probs, guide[:4], radius=1)


def test_boundary_band_marks_pixels_near_an_id_change():
    """boundary_band(ids, r): pixels within r px of another id (void included); the rest are outside the band."""
    from unisem_ns.unified_lift import boundary_band

    ids = torch.zeros(12, 16, dtype=torch.long)
    ids[:, :8], ids[:, 8:] = 3, 5
    ids[0, :] = 0  # a void row on top
    band = boundary_band(ids, 1)
    assert band[:, 7:9].all() and band[:2].all()  # both sides of the 3|5 edge, and next to the void row
    assert not band[2:, :7].any() and not band[2:, 9:].any()
    assert boundary_band(ids, 2)[:, 6:10].all() and not boundary_band(ids, 2)[3:, :6].any()


def test_drop_duplicate_codes_keeps_the_more_used_entry():
    """duplicate_code_cos: a live entry pointing the same way as a more-used live entry (a split fragment's second
    code) stops competing, so the object's pixels read as one id; distinct entries and dead ones are untouched."""
    from unisem_ns.unified_lift import drop_duplicate_codes

    cb = Codebook(6, 4)
    with torch.no_grad():
        cb.code.copy_(torch.tensor([
            [1.0, 0.0, 0, 0],   # object a
            [0.9, 0.2, 0, 0],   # a's duplicate (cos 0.98), used less
            [0.0, 1.0, 0, 0],   # object b
            [0.0, 0.0, 1, 0],   # object c
            [0.6, 0.0, 0.8, 0], # cos 0.6 with a and 0.8 with c: only a duplicate at thresholds below 0.8
            [1.0, 0.0, 0, 0],   # dead entry (not live)
        ]))
    live = torch.tensor([True, True, True, True, True, False])
    usage = torch.tensor([0.5, 0.1, 0.4, 0.3, 0.05, 0.0])
    assert drop_duplicate_codes(cb.code, live, usage, 0.9).tolist() == [True, False, True, True, True, False]
    assert drop_duplicate_codes(cb.code, live, usage, 0.7).tolist() == [True, False, True, True, False, False]
    assert drop_duplicate_codes(cb.code, live, usage, 1.0).tolist() == live.tolist()
    # the more-used of a pair survives, whichever index it has
    swapped = torch.tensor([0.1, 0.5, 0.4, 0.3, 0.05, 0.0])
    assert drop_duplicate_codes(cb.code, live, swapped, 0.9).tolist()[:2] == [False, True]
    # the duplicate's pixels now read as the surviving entry
    f = torch.tensor([[1.0, 0.6, 0, 0]])
    assert cb.instance_ids(f, live).tolist() == [1]
    assert cb.instance_ids(f, drop_duplicate_codes(cb.code, live, usage, 0.9)).tolist() == [0]


# --------------------------------------------------------------------------------------- 3D kNN regulariser


def test_nearest_neighbours_skip_the_query_and_match_brute_force():
    from unisem_ns.unified_lift import nearest_neighbours

    gen = torch.Generator().manual_seed(0)
    points = torch.rand(300, 3, generator=gen)
    query_idx = torch.tensor([0, 5, 299, 17])
    for method in ("kdtree", "cdist"):
        nn = nearest_neighbours(points[query_idx], points, k=4, method=method, chunk=3)  # chunks < queries
        assert nn.shape == (4, 4) and nn.dtype == torch.long
        for row, q in zip(nn.tolist(), query_idx.tolist()):
            d = (points - points[q]).norm(dim=-1)
            d[q] = float("inf")
            assert row == torch.topk(d, 4, largest=False).indices.tolist()  # nearest first
    with pytest.raises(ValueError, match="kdtree"):
        nearest_neighbours(points[:2], points, k=2, method="ball")


def test_knn_regulariser_is_zero_on_consistent_clusters_and_pulls_a_stray_feature_in():
    from unisem_ns.unified_lift import knn_feature_regulariser

    gen = torch.Generator().manual_seed(0)
    # two tight clusters far apart, each with its own feature direction (lengths differ: only directions count)
    a = torch.randn(20, 3, generator=gen) * 0.01
    b = torch.randn(20, 3, generator=gen) * 0.01 + 10.0
    means = torch.cat([a, b])
    e0, e1 = torch.eye(4)[0], torch.eye(4)[1]
    feats = torch.cat([e0.expand(20, 4) * 3.0, e1.expand(20, 4) * 0.5])
    assert float(knn_feature_regulariser(means, feats, k=5, num_samples=64, generator=gen)) == pytest.approx(0.0, abs=1e-10)

    # one Gaussian of cluster a carries cluster b's feature: the loss sees it, and its gradient turns it back
    feats = feats.clone()
    feats[3] = e1
    feats.requires_grad_(True)
    opt = torch.optim.SGD([feats], lr=0.5)
    start = None
    for _ in range(50):
        loss = knn_feature_regulariser(means, feats, k=5, num_samples=64, generator=gen)
        start = float(loss) if start is None else start
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert start > 0.05
    stray = F.normalize(feats[3].detach(), dim=0)
    assert float(stray @ e0) > 0.9, stray
    # ... while the two clusters keep their own directions
    assert float(F.normalize(feats[10].detach(), dim=0) @ e0) > 0.99
    assert float(F.normalize(feats[30].detach(), dim=0) @ e1) > 0.99


def test_knn_regulariser_tiny_inputs():
    from unisem_ns.unified_lift import knn_feature_regulariser

    assert float(knn_feature_regulariser(torch.zeros(1, 3), torch.ones(1, 4))) == 0.0
    # two Gaussians: k is capped at the one other Gaussian; opposite features give the maximum, 4
    loss = knn_feature_regulariser(torch.tensor([[0.0, 0, 0], [1.0, 0, 0]]), torch.tensor([[1.0, 0], [-1.0, 0]]), k=5)
    assert float(loss) == pytest.approx(4.0)
