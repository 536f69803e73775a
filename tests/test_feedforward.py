"""The UniSem feed-forward predictor's core (no nerfstudio): shapes, canonical frame, EGD, MTC, pose alignment,
checkpoint loading, corpus, training step and evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from feedforward.checkpoint_io import BACKBONE_FLAG, load_backbone_checkpoint, load_predictor, save_predictor
from feedforward.config import EGDConfig, EvalConfig, FeedForwardConfig, MTCConfig, PredictorConfig
from feedforward.curriculum import (curriculum_weight, lift_mask, max_error_prompts, prototype_loss,
                                    simulator_prompt_mask, stage)
from feedforward.error_aware_dropout import drop_probabilities, dropout_rate, sample_keep_mask
from feedforward.geometry import relative_viewmats, unproject_depth
from feedforward.model import UniSemPredictor, flatten_gaussians
from feedforward.pose_align import align_pose, delta_matrix, identity_delta
from feedforward.render import render_gaussians, select_gaussians
from unisem_ns.data.scene_io import InputError

TINY = PredictorConfig(enc_dim=32, enc_depth=2, enc_heads=2, dec_dim=32, dec_depth=2, dec_heads=2,
                       head_feature_dim=16, head_layer_dims=(8, 8, 16, 16), sem_dim=8, cue_dim=384)


def _K(w=64, h=48, f=50.0):
    return torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])


# ----------------------------------------------------------------------------------------------------- model


def test_output_shapes_and_gradients():
    torch.manual_seed(0)
    m = UniSemPredictor(TINY)
    x = torch.rand(2, 3, 3, 48, 64)
    Ks = _K().expand(2, 3, 3, 3)
    sem = torch.randn(2, 3, 48, 64, 384)
    g = m(x, Ks, sem)
    assert g["means"].shape == (2, 3, 48, 64, 3)
    assert g["scales"].shape == (2, 3, 48, 64, 3) and (g["scales"] > 0).all()
    assert g["quats"].shape == (2, 3, 48, 64, 4)
    assert torch.allclose(g["quats"].norm(dim=-1), torch.ones(2, 3, 48, 64), atol=1e-5)
    assert g["opacities"].shape == (2, 3, 48, 64) and ((g["opacities"] > 0) & (g["opacities"] < 1)).all()
    assert g["sh"].shape == (2, 3, 48, 64, 1, 3)
    assert g["sem"].shape == (2, 3, 48, 64, 8)
    assert g["conf"].shape == (2, 3, 48, 64) and (g["conf"] > 1).all()
    flat = flatten_gaussians(g, 1)
    assert flat["means"].shape == (3 * 48 * 64, 3)
    # one pass renders RGB, depth and the latent; the expansion maps it to the cue dimension
    r = render_gaussians(flat, torch.eye(4)[None], _K()[None], 64, 48, 0)
    assert r["rgb"].shape == (1, 48, 64, 3) and r["depth"].shape == (1, 48, 64, 1) and r["feature"].shape == (1, 48, 64, 8)
    assert m.expand_features(r["feature"]).shape == (1, 48, 64, 384)
    (r["rgb"].mean() + r["feature"].mean()).backward()
    assert m.patch_embed.proj.weight.grad.abs().sum() > 0
    assert m.dec_blocks2[0].cross_attn.projk.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiple of the patch size"):
        m(torch.rand(1, 2, 3, 50, 64))


def test_views_see_each_other_and_reference_is_special():
    """Cross-view attention: changing view 2 changes view 1's prediction; view 1 uses its own decoder weights."""
    torch.manual_seed(0)
    m = UniSemPredictor(TINY).eval()
    for p in m.parameters():  # make every layer non-trivial
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.rand(1, 2, 3, 48, 64)
    y = x.clone()
    y[:, 1] = torch.rand(3, 48, 64)
    with torch.no_grad():
        a, b = m(x)["means"], m(y)["means"]
        assert (a[:, 0] - b[:, 0]).abs().max() > 1e-4
        # swapping the order changes the canonical frame owner: outputs are not a permutation of each other
        s = m(x.flip(1))["means"]
        assert (s[:, 1] - a[:, 0]).abs().max() > 1e-4


def test_canonical_frame_is_view_one_and_pose_free():
    """GT targets live in view 1's camera frame: invariant to the world frame, identity for view 1, and the
    same surface point unprojected from two views lands on the same canonical point."""
    torch.manual_seed(1)
    from feedforward.geometry import opengl_to_opencv

    def look(eye, tgt):
        f = torch.tensor(tgt) - torch.tensor(eye)
        f = f / f.norm()
        r = torch.linalg.cross(f, torch.tensor([0.0, 1.0, 0.0]))
        r = r / r.norm()
        u = torch.linalg.cross(r, f)
        c = torch.eye(4)
        c[:3, 0], c[:3, 1], c[:3, 2], c[:3, 3] = r, u, -f, torch.tensor(eye)
        return c

    c2w = torch.stack([look([0.0, 1.5, 0.0], [0.3, 1.0, -3.0]), look([0.4, 1.4, 0.2], [0.0, 1.0, -3.0])])
    vm = relative_viewmats(c2w)
    assert torch.allclose(vm[0], torch.eye(4), atol=1e-5)
    # a rigid change of world frame leaves the relative matrices unchanged
    a = torch.randn(3, 3)
    q, _ = torch.linalg.qr(a)
    q = q * torch.sign(torch.det(q))
    T = torch.eye(4)
    T[:3, :3], T[:3, 3] = q, torch.randn(3)
    assert torch.allclose(relative_viewmats(T @ c2w), vm, atol=1e-4)
    # a world point seen in both views: depth unprojection in each view gives the same canonical point
    X = torch.tensor([0.2, 1.1, -2.5, 1.0])
    K = _K()
    pts = []
    for k in range(2):
        cam = torch.linalg.inv(opengl_to_opencv(c2w[k])) @ X
        u, v = K[0, 0] * cam[0] / cam[2] + K[0, 2], K[1, 1] * cam[1] / cam[2] + K[1, 2]
        depth = torch.zeros(48, 64)
        iu, iv = int(u), int(v)
        # place the pixel centre exactly on the point by shifting the principal point
        K2 = K.clone()
        K2[0, 2] += iu + 0.5 - u
        K2[1, 2] += iv + 0.5 - v
        depth[iv, iu] = cam[2]
        pts.append(unproject_depth(depth, K2, vm[k])[iv, iu])
    expected = (torch.linalg.inv(opengl_to_opencv(c2w[0])) @ X)[:3]
    assert torch.allclose(pts[0], expected, atol=1e-4) and torch.allclose(pts[1], expected, atol=1e-4)


def test_untrained_points_start_on_view_rays():
    """The point channels are offsets from init_depth along each view's own pixel rays (intrinsics prior)."""
    m = UniSemPredictor(TINY)
    torch.nn.init.zeros_(m.head.dpt.head[-1].weight)
    with torch.no_grad():
        g = m(torch.rand(1, 1, 3, 48, 64), _K()[None, None])
    means = g["means"][0, 0]
    assert torch.allclose(means.norm(dim=-1), torch.full((48, 64), TINY.init_depth), atol=1e-4)
    u = means[..., 0] / means[..., 2] * 50.0 + 32
    assert torch.allclose(u[0], torch.arange(64) + 0.5, atol=1e-3)


# ------------------------------------------------------------------------------------------------------- EGD


def test_dropout_schedule():
    cfg = EGDConfig(enabled=True, r_max=0.3, ramp_fraction=0.5)
    assert dropout_rate(0, 1000, cfg) == 0.0
    assert dropout_rate(250, 1000, cfg) == pytest.approx(0.15)
    assert dropout_rate(500, 1000, cfg) == pytest.approx(0.3)
    assert dropout_rate(900, 1000, cfg) == pytest.approx(0.3)
    assert dropout_rate(900, 1000, EGDConfig(enabled=False)) == 0.0


def test_dropout_mask_targets_low_error_gaussians():
    torch.manual_seed(0)
    err = torch.rand(2, 8, 8)
    cfg = EGDConfig(enabled=True, quantile=0.5, ranking="per_view")
    p = drop_probabilities(err, 0.3, cfg).reshape(2, 64)
    for v in range(2):
        e = err[v].reshape(-1)
        lo = e <= e.median()
        assert (p[v][e > e.sort().values[31]] == 0).all()  # upper half never dropped
        assert p[v].max() == pytest.approx(0.3)  # the lowest error gets r
        assert p[v][e.argmin()] == pytest.approx(0.3)
        order = torch.argsort(e)
        assert (p[v][order][:32].diff() <= 1e-7).all()  # decreasing with error among candidates
        assert lo.sum() == 32
    # global ranking: the lowest-error view collects more candidates
    err2 = torch.stack([torch.rand(8, 8) * 0.1, torch.rand(8, 8) + 1.0])
    pg = drop_probabilities(err2, 0.3, EGDConfig(enabled=True, ranking="global")).reshape(2, 64)
    assert (pg[1] == 0).all() and (pg[0] > 0).all()
    # Bernoulli frequency matches p
    gen = torch.Generator().manual_seed(0)
    keeps = torch.stack([sample_keep_mask(err, 0.3, cfg, gen)[0] for _ in range(2000)]).float()
    assert torch.allclose(1 - keeps.mean(0), p.reshape(-1), atol=0.05)


def test_dropped_gaussians_get_no_gradient():
    g = {"means": torch.randn(6, 3, requires_grad=True)}
    keep = torch.tensor([True, False, True, True, False, True])
    (select_gaussians(g, keep)["means"] ** 2).sum().backward()
    assert (g["means"].grad[~keep] == 0).all() and (g["means"].grad[keep] != 0).all()


# ------------------------------------------------------------------------------------------------------- MTC


def test_curriculum_schedule():
    cfg = MTCConfig(enabled=True, stage_a_fraction=0.3, ramp_fraction=0.3, alpha_max=0.5)
    assert curriculum_weight(0, 1000, cfg) == 0.0 and stage(0, 1000, cfg) == "A"
    assert curriculum_weight(299, 1000, cfg) == 0.0 and stage(299, 1000, cfg) == "A"
    assert stage(300, 1000, cfg) == "B" and curriculum_weight(300, 1000, cfg) == 0.0
    assert curriculum_weight(450, 1000, cfg) == pytest.approx(0.25)
    assert curriculum_weight(600, 1000, cfg) == pytest.approx(0.5)
    assert curriculum_weight(999, 1000, cfg) == pytest.approx(0.5)
    assert curriculum_weight(999, 1000, MTCConfig(enabled=False)) == 0.0 and stage(999, 1000, MTCConfig()) == "A"


def test_max_error_prompts_nms_and_prompt_masks():
    e = torch.zeros(20, 20)
    e[5, 5], e[6, 6], e[15, 15] = 3.0, 2.0, 1.0
    valid = torch.ones(20, 20, dtype=torch.bool)
    assert max_error_prompts(e, valid, 3, nms_radius=3)[:2] == [(5, 5), (15, 15)]
    valid[5, 5] = False
    assert max_error_prompts(e, valid, 1, nms_radius=3) == [(6, 6)]
    om = torch.zeros(20, 20, dtype=torch.long)
    om[:10, :10] = 4
    seg = torch.full((20, 20), -1)
    seg[10:, 10:] = 2
    assert simulator_prompt_mask((1, 1), om, seg).sum() == 100
    assert simulator_prompt_mask((15, 15), om, seg).sum() == 100
    assert simulator_prompt_mask((1, 15), om, seg) is None


def test_lift_mask_follows_geometry():
    """A mask on a fronto-parallel plane at 2 m, seen by a camera shifted 0.2 m right, moves left by f*0.2/2 px."""
    K = _K()
    depth = torch.full((48, 64), 2.0)
    mask = torch.zeros(48, 64, dtype=torch.bool)
    mask[20:28, 30:38] = True
    vm2 = torch.eye(4)
    vm2[0, 3] = -0.2  # camera centre at x = +0.2
    (m2,) = lift_mask(mask, depth, K, torch.eye(4), [(depth, K, vm2)], tolerance=0.05)
    cols = m2.nonzero()[:, 1]
    assert m2.sum() == 64 and cols.min() == 25 and cols.max() == 32  # 50 * 0.2 / 2 = 5 px
    # occluded (depth disagrees) -> nothing
    (m3,) = lift_mask(mask, depth, K, torch.eye(4), [(torch.full((48, 64), 1.0), K, vm2)], tolerance=0.05)
    assert m3.sum() == 0


def test_prototype_loss_zero_iff_consistent():
    f = torch.randn(8).expand(2, 4, 4, 8).clone().requires_grad_(True)
    masks = {0: torch.ones(4, 4, dtype=torch.bool), 1: torch.ones(4, 4, dtype=torch.bool)}
    p3d = f[0, 0, 0].detach().clone()
    assert float(prototype_loss(f, masks, 0, p3d, 0.1).detach()) == pytest.approx(0.0, abs=1e-6)
    g = f.detach().clone()
    g[1] = torch.randn(8)
    g.requires_grad_(True)
    loss = prototype_loss(g, masks, 0, p3d, 0.1)
    assert float(loss) > 0.01
    loss.backward()
    assert g.grad[1].abs().sum() > 0


# ----------------------------------------------------------------------------------------------- pose align


def test_pose_alignment_recovers_a_shifted_target():
    torch.manual_seed(0)
    n = 3000
    # a textured plane at z = 2 (canonical frame)
    xy = (torch.rand(n, 2) - 0.5) * torch.tensor([3.2, 2.4])
    g = {"means": torch.cat([xy, torch.full((n, 1), 2.0)], 1), "quats": torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4),
         "scales": torch.full((n, 3), 0.03), "opacities": torch.full((n,), 0.9),
         "sh": ((0.5 + 0.5 * torch.sin(6 * xy[:, :1]) * torch.cos(5 * xy[:, 1:])).expand(n, 3)[:, None] - 0.5) / 0.28209479,
         "sem": torch.zeros(n, 1)}
    K = _K(32, 24, 25.0)[None]
    target = render_gaussians(g, torch.eye(4)[None], K, 32, 24)["rgb"][0]
    start = torch.eye(4)
    start[0, 3] = 0.08
    fn = lambda vm: render_gaussians(g, vm[None], K, 32, 24, with_features=False)["rgb"][0]  # noqa: E731
    vm, before, after = align_pose(fn, start, target, steps=30, lr=5e-3)
    assert after < 0.6 * before
    assert abs(float(vm[0, 3])) < 0.05
    assert torch.allclose(delta_matrix(identity_delta()), torch.eye(4))


# ------------------------------------------------------------------------------------------------ checkpoints


def _dust3r_keys(model: UniSemPredictor, croco: bool = False) -> dict:
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith(("ref_view_embed", "feature_expansion", "feature_reduction")):
            continue  # ours, not in DUSt3R
        if k.startswith("head."):
            k = "downstream_head1." + k[len("head."):]
        if croco and (k.startswith("dec_blocks2.") or k.startswith("downstream_head1.")):
            continue
        sd[k] = torch.randn_like(v) if v.is_floating_point() else v
    sd["mask_token"] = torch.randn(1, 1, TINY.dec_dim)
    if not croco:
        sd["downstream_head2.dpt.head.4.weight"] = torch.randn(4, 4, 1, 1)
    return sd


def test_loads_random_checkpoint_in_dust3r_key_format(tmp_path):
    model = UniSemPredictor(TINY)
    sd = _dust3r_keys(model)
    last = "downstream_head1.dpt.head.4.weight"
    sd[last] = torch.randn(3, *sd[last].shape[1:])  # DUSt3R's 4-channel pts+conf head: shape differs -> skipped
    path = tmp_path / "dust3r.pth"
    torch.save({"model": sd, "args": "AsymmetricCroCo3DStereo(...)"}, path)
    fresh = UniSemPredictor(TINY)
    report = load_backbone_checkpoint(fresh, path)
    own = fresh.state_dict()
    assert torch.equal(own["enc_blocks.0.attn.qkv.weight"], sd["enc_blocks.0.attn.qkv.weight"])
    assert torch.equal(own["dec_blocks2.1.cross_attn.projv.weight"], sd["dec_blocks2.1.cross_attn.projv.weight"])
    assert torch.equal(own["head.dpt.scratch.refinenet2.resConfUnit1.conv1.weight"],
                       sd["downstream_head1.dpt.scratch.refinenet2.resConfUnit1.conv1.weight"])
    assert "head.dpt.head.4.weight" in report["shape_mismatch"]
    assert "mask_token" not in report["unexpected"]  # known extra keys are dropped, not reported
    assert "ref_view_embed" in report["missing"]


def test_croco_checkpoint_fills_both_decoders(tmp_path):
    model = UniSemPredictor(TINY)
    sd = _dust3r_keys(model, croco=True)
    path = tmp_path / "croco.pth"
    torch.save({"model": sd}, path)
    fresh = UniSemPredictor(TINY)
    load_backbone_checkpoint(fresh, path)
    own = fresh.state_dict()
    assert torch.equal(own["dec_blocks2.0.attn.qkv.weight"], sd["dec_blocks.0.attn.qkv.weight"])
    assert torch.equal(own["dec_blocks.0.attn.qkv.weight"], sd["dec_blocks.0.attn.qkv.weight"])


def test_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(InputError) as e:
        load_backbone_checkpoint(UniSemPredictor(TINY), tmp_path / "missing.pth")
    msg = str(e.value)
    assert "\n" not in msg and "missing.pth" in msg and BACKBONE_FLAG in msg and "DUSt3R" in msg
    torch.save({"model": {"foo": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="no tensor matches"):
        load_backbone_checkpoint(UniSemPredictor(TINY), tmp_path / "other.pth")
    # our own checkpoints round-trip (atomic write, weights-only read)
    m = UniSemPredictor(TINY)
    save_predictor(m, tmp_path / "ours.pth", {"step": 3})
    m2 = load_predictor(UniSemPredictor(TINY), tmp_path / "ours.pth")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    with pytest.raises(InputError, match="another predictor configuration"):
        load_predictor(UniSemPredictor(PredictorConfig(enc_dim=64, enc_heads=4, dec_dim=32, dec_heads=2, enc_depth=1,
                                                       dec_depth=2, head_feature_dim=16, head_layer_dims=(8, 8, 16, 16),
                                                       sem_dim=8)), tmp_path / "ours.pth")


# ----------------------------------------------------------------------------------- corpus, training, eval


@pytest.fixture(scope="session")
def ff_corpus(tmp_path_factory):
    from feedforward.corpus import CorpusConfig, make_corpus

    out = tmp_path_factory.mktemp("ff") / "corpus"
    make_corpus(CorpusConfig(out=out, num_train=2, num_val=0, num_test=1, views=32, width=32, height=24,
                             progress=False))
    return out


def test_corpus_layout_and_reader(ff_corpus):
    from feedforward.corpus import load_split, read_index

    idx = read_index(ff_corpus)
    assert len(idx["train"]) == 2 and len(idx["test"]) == 1 and not set(idx["train"]) & set(idx["test"])
    scene = ff_corpus / idx["train"][0]
    for sub in ("transforms.json", "images", "depths", "gt/classes.json", "language_features/encoder.json",
                "object_mask", "ff_pack.npz"):
        assert (scene / sub).exists(), sub
    (s,) = load_split(ff_corpus, "test")
    assert s.images.shape == (32, 24, 32, 3) and s.depths.shape == (32, 24, 32) and (s.depths > 0).all()
    assert s.cue_seg.shape == (32, 24, 32) and s.cue_feats.shape[1] == 384
    assert int(s.cue_seg.max()) < s.cue_feats.shape[0]
    # consecutive frames are a slow walk (small baseline), as the protocol assumes
    step = np.linalg.norm(np.diff(s.c2w[:, :3, 3], axis=0), axis=1)
    assert step.max() < 0.1
    with pytest.raises(InputError, match="unisem-make-corpus"):
        read_index(ff_corpus / "nowhere")


def test_protocol_view_sets(ff_corpus):
    from feedforward.corpus import load_split
    from feedforward.sampling import protocol_view_sets, random_view_set

    (s,) = load_split(ff_corpus, "test")
    two = protocol_view_sets(s, 2)
    assert two[0] == ([0, 2], [1]) and ([3, 5], [4]) in two and all(t[0] % 8 in (1, 4) for _, t in two)
    ((ctx, tgt),) = protocol_view_sets(s, 16)
    assert ctx == list(range(0, 31, 2)) and tgt == list(range(1, 31, 2))
    ((ctx, tgt),) = protocol_view_sets(s, 8, max_targets=2)
    assert ctx == list(range(0, 15, 2)) and tgt == [1, 13]
    vs = random_view_set([s], np.random.default_rng(0), (3,), 2)
    assert vs.n_context == 3 and vs.n_views == 5 and not set(vs.indices[:3]) & set(vs.indices[3:])
    assert torch.allclose(vs.viewmats[0], torch.eye(4), atol=1e-5)


def test_training_step_with_egd_and_mtc(ff_corpus):
    from feedforward.corpus import load_split
    from feedforward.sampling import random_view_set
    from feedforward.training import training_losses

    scenes = load_split(ff_corpus, "train")
    cfg = FeedForwardConfig(predictor=TINY)
    cfg.egd.enabled = True
    cfg.mtc.enabled = True
    cfg.mtc.min_mask_pixels = 2
    torch.manual_seed(0)
    model = UniSemPredictor(TINY)
    vs = random_view_set(scenes, np.random.default_rng(1), (2,), 2)
    losses, stats = training_losses(model, vs, step=90, total_steps=100, cfg=cfg)
    assert {"rgb", "semantic", "geometry", "mtc"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    assert 0 < stats["egd_dropped"] < 0.3 and stats["egd_rate"] == pytest.approx(0.3)
    assert stats["mtc_sets"] >= 1 and stats["mtc_alpha"] == pytest.approx(0.5)
    sum(losses.values()).backward()
    assert model.feature_expansion.weight.grad.abs().sum() > 0
    # stage A: no MTC term, no dropout at step 0
    losses0, stats0 = training_losses(model, vs, step=0, total_steps=100, cfg=cfg)
    assert "mtc" not in losses0 and "egd_dropped" not in stats0


def test_expanded_cosine_is_exact():
    from feedforward.training import expanded_cosine

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 384, 1)
    lat = torch.randn(50, 8)
    table = torch.randn(5, 384)
    rows = torch.randint(0, 5, (50,))
    full = torch.nn.functional.cosine_similarity(lat @ conv.weight[:, :, 0, 0].T + conv.bias, table[rows], dim=-1)
    assert torch.allclose(expanded_cosine(lat, rows, table, conv), full, atol=1e-5)


def test_evaluation_reports_model_and_baselines(ff_corpus):
    from feedforward.corpus import load_split
    from feedforward.evaluate import evaluate_scenes, raw_cue_labels
    from unisem_ns.language import make_text_encoder

    lab = torch.eye(3)
    seg = torch.tensor([[0, 1], [-1, 2]])
    feats = torch.tensor([[0.0, 1.0, 0.1], [1.0, 0.0, 0.0], [0.0, 0.2, 1.0]])
    assert raw_cue_labels(seg, feats, lab).tolist() == [[2, 1], [0, 3]]
    scenes = load_split(ff_corpus, "test")
    model = UniSemPredictor(TINY)
    res = evaluate_scenes(model, scenes, EvalConfig(views=(2, 4), targets_per_scene=1, pose_align_steps=2),
                          make_text_encoder("minilm"), const_depth=2.5)
    for v in ("v2", "v4"):
        r = res[v]
        for k in ("depth_abs_rel", "depth_delta_1.25", "depth_delta_1.03", "psnr", "miou", "macc", "macc_micro",
                  "const_depth_abs_rel", "raw_cue_miou", "raw_cue_macc_micro", "predict_s_per_scene"):
            assert k in r and math.isfinite(r[k]), (v, k)
        assert r["n_targets"] == 1
        assert 0 <= r["miou"] <= 1 and 0.3 < r["raw_cue_macc_micro"] <= 1  # default corruption keeps most pixels


def test_scannet_lsm_layout_loads_as_corpus(tmp_path):
    """LSM/Uni3R's scannet_test layout -> (unisem_ns.data.scannet) our layout -> packed multi-scene reader."""
    from test_real_data import make_lsm_root

    from feedforward.corpus import load_split
    from feedforward.sampling import protocol_view_sets
    from feedforward.scannet import prepare_scannet_corpus

    root = tmp_path / "scannet_test"
    make_lsm_root(root, n=8)
    corpus = prepare_scannet_corpus(root, tmp_path / "corpus")
    (s,) = load_split(corpus, "test")
    assert s.images.shape == (8, 24, 32, 3) and s.depths.shape == (8, 24, 32)
    assert s.class_names[:4] == ["void", "wall", "floor", "ceiling"] and len(s.class_names) == 9  # lsm8 + void
    assert set(np.unique(s.semantic)) <= {0, 1, 3}
    assert s.cue_seg is None  # no cues yet: make them with unisem-preprocess --mode sam-clip
    assert protocol_view_sets(s, 2)[0] == ([0, 2], [1])
    with pytest.raises(InputError, match="gt/instance: not found"):
        prepare_scannet_corpus(root, tmp_path / "corpus", cues="simulate")


def test_sam_point_prompter_plumbing():
    """Point-prompted SAM (real-data MTC prompter) on a tiny random SAM: one [H, W] boolean mask per prompt;
    a missing checkpoint is a one-line error."""
    pytest.importorskip("segment_anything")
    from feedforward.curriculum import SamPointPrompter
    from unisem_ns.cues.sam_clip import build_tiny_sam

    prompter = SamPointPrompter("", sam=build_tiny_sam(img_size=64, dim=32, seed=0))
    img = (np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8)
    m = prompter(img, (10, 12), image_id="a")
    assert m.shape == (24, 32) and m.dtype == torch.bool
    with pytest.raises(Exception) as e:
        SamPointPrompter("/nonexistent/sam_vit_h_4b8939.pth")
    assert "\n" not in str(e.value) and "sam_vit_h_4b8939.pth" in str(e.value)


def test_semantic_maps_start_as_a_projection():
    """expansion(reduction(x)) is an orthogonal projection at init: idempotent, and preserves in-subspace vectors."""
    m = UniSemPredictor(TINY)
    red = m.feature_reduction.weight[:, :, 0, 0]
    exp = m.feature_expansion.weight[:, :, 0, 0]
    P = exp @ red
    assert torch.allclose(P @ P, P, atol=1e-5) and torch.allclose(P, P.T, atol=1e-5)
    assert torch.allclose(red @ exp, torch.eye(TINY.sem_dim), atol=1e-5)


def test_semantic_subspace_init_passes_cues_through():
    """After the PCA init, a cue in the span of the training cues survives reduction -> expansion unchanged."""
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(384, 5))[0]  # a 5-d "label set" subspace
    rows = torch.randn(200, 5) @ basis.T
    m = UniSemPredictor(TINY)
    m.init_semantic_subspace(rows)
    x = (torch.randn(3, 5) @ basis.T)[:, :, None, None]
    back = m.feature_expansion(m.feature_reduction(x))
    assert torch.allclose(back, x, atol=1e-4)


def test_untrained_latent_is_the_lifted_cue():
    """semantic_residual: at init the per-Gaussian latent is exactly the reduced 2D cue (the head adds nothing);
    drop_semantic_head restores that after training."""
    torch.manual_seed(0)
    m = UniSemPredictor(TINY)
    x = torch.rand(1, 2, 3, 48, 64)
    sem = torch.randn(1, 2, 48, 64, 384)
    red = m.feature_reduction(sem.reshape(2, 48, 64, 384).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert torch.allclose(m(x, None, sem)["sem"][0], red, atol=1e-6)
    off = UniSemPredictor(PredictorConfig(**{**vars(TINY), "semantic_residual": False}))
    assert not torch.allclose(off(x, None, sem)["sem"][0], off.feature_reduction(
        sem.reshape(2, 48, 64, 384).permute(0, 3, 1, 2)).permute(0, 2, 3, 1), atol=1e-6)
    with torch.no_grad():
        off.head.dpt.head[-1].bias.add_(0.3)
    off.drop_semantic_head()
    red = off.feature_reduction(sem.reshape(2, 48, 64, 384).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert torch.allclose(off(x, None, sem)["sem"][0], red, atol=1e-6)


def test_nn_distance_min_does_not_cross_depth_edges():
    """A fronto-parallel plane with a step: 'min' spacing is the same on both sides of the edge, 'mean4' jumps."""
    from feedforward.heads import grid_nn_distance

    K = _K(16, 12, 12.0)
    depth = torch.full((12, 16), 2.0)
    depth[:, 8:] = 4.0
    pts = unproject_depth(depth, K, torch.eye(4))
    mn, mean = grid_nn_distance(pts, "min"), grid_nn_distance(pts, "mean4")
    spacing = 2.0 / 12.0
    assert torch.allclose(mn[:, :8], torch.full((12, 8), spacing), rtol=1e-4)
    assert mean[:, 7].min() > 2 * spacing  # the edge column sees the 2 m jump
    assert mn[:, 7].max() < 1.01 * spacing


def test_semantic_loss_is_taken_on_target_views_only(ff_corpus):
    """LossConfig.semantic_views='targets': the context views (whose cues are inputs) are still rendered for the
    photometric loss but not scored semantically; the loss equals the one of a run that renders only the targets,
    and differs from 'all'."""
    from feedforward.corpus import load_split
    from feedforward.sampling import random_view_set
    from feedforward.training import training_losses

    scenes = load_split(ff_corpus, "train")
    torch.manual_seed(0)
    model = UniSemPredictor(TINY)
    vs = random_view_set(scenes, np.random.default_rng(1), (2,), 2)

    def sem(views: str, render_context: bool) -> torch.Tensor:
        cfg = FeedForwardConfig(predictor=TINY)
        cfg.loss.semantic_views = views
        cfg.loss.render_context_views = render_context
        return training_losses(model, vs, step=0, total_steps=10, cfg=cfg)[0]["semantic"]

    targets = sem("targets", True)
    assert torch.allclose(targets, sem("all", False), atol=1e-6)
    assert not torch.allclose(targets, sem("all", True), atol=1e-4)
