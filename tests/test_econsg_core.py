"""econSG algorithm core: CRR (steps a-d, a', feature-level), geometry (back-projection, projection,
occlusion, fusion), the latent autoencoder, and prepare_econsg end to end on a tiny synthetic scene.

No nerfstudio import; everything runs on CPU in seconds (the MiniLM load dominates).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from unisem_ns.data.scene_io import InputError, load_depth, load_gt_maps
from unisem_ns.econsg.autoencoder import (
    AEConfig,
    LatentAutoencoder,
    autoencoder_loss,
    load_autoencoder,
    save_autoencoder,
    train_autoencoder,
)
from unisem_ns.econsg.crr import (
    CRRConfig,
    MVView,
    boundary_weights,
    confidence,
    crr_view,
    labels_from_png,
    labels_to_png,
    multiview_labels,
    regularize_features,
    thresholds,
    vote_mask_labels,
)
from unisem_ns.geometry import (
    VoxelAccumulator,
    backproject_depth,
    fuse_point_features,
    invert_pose,
    opengl_to_opencv_c2w,
    project_points,
    visible_points,
    voxel_downsample,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: on a busy 2-core machine one intra-op thread is several times faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# CRR on hand-built maps. Classes are the basis vectors e0 (A), e1 (B), e2 (C); e3 is "off-class".
# ---------------------------------------------------------------------------------------------

TEXT = torch.eye(4)[:3]  # [K=3, D=4]
A, B, C = 0, 1, 2


def _feat(cls: int, conf: float) -> torch.Tensor:
    """A unit feature whose cosine to class ``cls`` is ``conf`` (and 0 to the others)."""
    f = torch.zeros(4)
    f[cls] = conf
    f[3] = math.sqrt(1 - conf**2)
    return f


def _canvas(h=10, w=30):
    feats = torch.zeros(h, w, 4)
    ids = torch.zeros(h, w, dtype=torch.long)
    return feats, ids


def test_mask_majority_fills_low_confidence_pixels_and_unconfident_mask_stays_unlabelled():
    feats, ids = _canvas()
    # mask 1 (columns 0-9): 70 % confident A, 30 % low-confidence B
    ids[:, :10] = 1
    feats[:, :7] = _feat(A, 1.0)
    feats[:, 7:10] = _feat(B, 0.35)
    # mask 2 (columns 10-19): no confident pixel at all
    ids[:, 10:20] = 2
    feats[:, 10:20] = _feat(C, 0.35)
    cfg = CRRConfig(tau1=0.5, tau2=0.3, threshold_mode="absolute")
    res = crr_view(feats, ids, TEXT, cfg)
    assert (res.labels[:, :10] == A).all()
    assert (res.labels[:, 10:20] == -1).all() and (res.weights[:, 10:20] == 0).all()
    assert (res.raw_labels[:, 7:10] == B).all()  # the raw argmax said B
    assert res.high_conf_mask[:, :7].all() and not res.high_conf_mask[:, 7:].any()
    assert (res.labels[:, 20:] == -1).all()  # no feature, no mask
    # hard boundary weights: 1[conf >= tau2] -> the 0.35 pixels keep weight 1
    assert torch.allclose(res.weights[:, :10], torch.ones(10, 10))
    soft = crr_view(feats, ids, TEXT, CRRConfig(tau1=0.5, tau2=0.3, threshold_mode="absolute", boundary_weight="soft"))
    assert torch.allclose(soft.weights[:, :7], torch.ones(10, 7))
    assert torch.allclose(soft.weights[:, 7:10], torch.full((10, 3), 0.25), atol=1e-5)  # (0.35 - 0.3) / 0.2


def test_boundary_weight_numbers():
    conf = torch.tensor([0.1, 0.3, 0.4, 0.5, 0.9, 0.8])
    labels = torch.tensor([0, 0, 1, 1, 2, -1])
    assert boundary_weights(conf, labels, 0.5, 0.3, "hard").tolist() == [0, 1, 1, 1, 1, 0]
    soft = boundary_weights(conf, labels, 0.5, 0.3, "soft")
    assert torch.allclose(soft, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0, 0.0]), atol=1e-6)
    assert boundary_weights(conf, labels, 0.5, 0.3, "none").tolist() == [1, 1, 1, 1, 1, 0]


def test_relative_vs_absolute_thresholds():
    feats, ids = _canvas()
    feats[:, :10] = _feat(A, 0.6)  # the best pixel of the image has conf 0.6
    feats[:, 10:20] = _feat(B, 0.35)
    ids[:, 10:20] = 1
    conf, label = confidence(feats, TEXT)
    assert thresholds(conf, CRRConfig(threshold_mode="relative")) == pytest.approx((0.3, 0.18), abs=1e-6)
    assert thresholds(conf, CRRConfig(threshold_mode="absolute")) == (0.5, 0.3)
    rel = crr_view(feats, ids, TEXT, CRRConfig(threshold_mode="relative"))
    ab = crr_view(feats, ids, TEXT, CRRConfig(threshold_mode="absolute"))
    assert rel.high_conf_mask[:, :20].all()  # 0.35 >= 0.5 * 0.6
    assert ab.high_conf_mask[:, :10].all() and not ab.high_conf_mask[:, 10:20].any()
    assert (rel.labels[:, 10:20] == B).all() and (ab.labels[:, 10:20] == -1).all()
    # invalid pixels: conf 0, label -1
    assert (conf[:, 20:] == 0).all() and (label[:, 20:] == -1).all()


def test_code_and_paper_forms_differ_as_specified():
    feats, ids = _canvas()
    # mask 1: 40 % confident A, 60 % unconfident
    ids[:, :10] = 1
    feats[:, :4] = _feat(A, 1.0)
    feats[:, 4:10] = _feat(C, 0.2)
    # mask 2: 60 % confident A, 40 % confident B
    ids[:, 10:20] = 2
    feats[:, 10:16] = _feat(A, 1.0)
    feats[:, 16:20] = _feat(B, 0.9)
    base = dict(tau1=0.5, tau2=0.1, threshold_mode="absolute")
    paper = crr_view(feats, ids, TEXT, CRRConfig(**base))
    code = crr_view(feats, ids, TEXT, CRRConfig(**base, vote_exclude_unlabelled=False, fill_mode="code"))
    # vote: the paper votes among confident pixels only (A); the code's vote is won by "unlabelled"
    assert (paper.labels[:, :10] == A).all()
    assert (code.labels[:, :10] == -1).all()
    # fill: the paper keeps confident B pixels as B; the code overwrites the whole mask with A
    assert (paper.labels[:, 10:16] == A).all() and (paper.labels[:, 16:20] == B).all()
    assert (code.labels[:, 10:20] == A).all()
    # the vote function directly
    hc = torch.tensor([[0, 0, -1, -1, -1]])
    sam = torch.tensor([[3, 3, 3, 3, 3]])
    assert vote_mask_labels(hc, sam, True, 3).tolist() == [-1, -1, -1, 0]
    assert vote_mask_labels(hc, sam, False, 3).tolist() == [-1, -1, -1, -1]


def test_feature_level_crr_replaces_masks_by_class_centres():
    feats, ids = _canvas(4, 6)
    feats[:, :3] = F.normalize(torch.tensor([1.0, 0.2, 0.0, 0.0]), dim=0)
    feats[:, 3:] = F.normalize(torch.tensor([0.8, 0.0, 0.0, 0.6]), dim=0)
    labels = torch.full((4, 6), A)
    labels[0, 5] = B
    ids[:, 3:] = 1  # mask 1: majority A
    out = regularize_features(feats, ids, labels)
    a_pixels = labels == A
    mu = F.normalize(feats[a_pixels].mean(0), dim=0)
    assert torch.allclose(out[:, 3:].reshape(-1, 4), mu.expand(12, 4), atol=1e-6)
    assert torch.equal(out[:, :3], feats[:, :3])  # outside masks: unchanged
    # centres restricted to a subset of pixels
    centre = torch.zeros(4, 6, dtype=torch.bool)
    centre[:, :3] = True
    out2 = regularize_features(feats, ids, labels, centre_mask=centre)
    assert torch.allclose(out2[0, 4], feats[0, 0], atol=1e-6)
    # assign="label": pixel (0, 5), labelled B inside the A mask, gets B's centre (its own feature here)
    out3 = regularize_features(feats, ids, labels, assign="label")
    assert torch.allclose(out3[0, 5], feats[0, 5], atol=1e-6)
    assert torch.allclose(out3[1, 4], mu, atol=1e-6) and torch.allclose(out[0, 5], mu, atol=1e-6)


def test_label_png_round_trip():
    lab = np.array([[-1, 0, 5], [16, -1, 2]])
    png = labels_to_png(lab, 17)
    assert png.dtype == np.uint8 and png.tolist() == [[0, 1, 6], [17, 0, 3]]
    assert np.array_equal(labels_from_png(png), lab)
    assert labels_to_png(lab, 300).dtype == np.uint16


# ---------------------------------------------------------------------------------------------
# Geometry: a plane z = 2 seen by three cameras (OpenCV axes) looking along +z.
# ---------------------------------------------------------------------------------------------

W, H = 40, 30
KMAT = torch.tensor([[30.0, 0.0, 20.0], [0.0, 30.0, 15.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
PLANE_Z = 2.0


def _look_c2w(x: float, tilt_deg: float = 0.0) -> torch.Tensor:
    """OpenCV camera at (x, 0, 0) looking along +z, rotated about the y axis by ``tilt_deg``."""
    t = math.radians(tilt_deg)
    R = torch.tensor([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = R
    c2w[0, 3] = x
    return c2w


def _plane_depth(c2w: torch.Tensor) -> torch.Tensor:
    """Exact z-depth of the plane z = PLANE_Z through pixel centres."""
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    d_cam = torch.stack([(u + 0.5 - KMAT[0, 2]) / KMAT[0, 0], (v + 0.5 - KMAT[1, 2]) / KMAT[1, 1], torch.ones_like(u)], -1)
    d_world = d_cam @ c2w[:3, :3].T
    t = (PLANE_Z - c2w[2, 3]) / d_world[..., 2]
    return t.float()  # the camera-z component of d_cam is 1, so t is the z-depth


CAMS = [_look_c2w(-0.2, 3.0), _look_c2w(0.0), _look_c2w(0.2, -3.0)]


def test_opengl_to_opencv_flips_camera_y_and_z():
    gl = torch.eye(4, dtype=torch.float64)
    gl[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    cv = opengl_to_opencv_c2w(gl)
    assert torch.allclose(cv[:3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)))
    assert torch.allclose(cv[:3, 3], gl[:3, 3])
    # an OpenGL camera looks along its -z: after conversion the OpenCV +z axis is that direction
    assert torch.allclose(cv[:3, 2], -gl[:3, 2])


def test_backprojection_lands_on_plane_and_round_trips():
    for c2w in CAMS:
        depth = _plane_depth(c2w)
        pts, idx = backproject_depth(depth, KMAT, c2w)
        assert pts.shape == (H * W, 3) and idx.shape == (H * W,)
        assert (pts[:, 2] - PLANE_Z).abs().max() < 1e-5
        uv, z, inside = project_points(pts, KMAT, invert_pose(c2w), W, H)
        assert inside.all()
        assert torch.equal(uv[:, 1] * W + uv[:, 0], idx)
        assert torch.allclose(z, depth.reshape(-1)[idx], atol=1e-5)
    # mask and stride
    depth = _plane_depth(CAMS[1])
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[:5] = True
    pts, idx = backproject_depth(depth, KMAT, CAMS[1], mask=mask, stride=2)
    assert idx.numel() == 3 * 20 and (idx // W < 5).all() and (idx % 2 == 0).all()
    # cut_bound and behind-camera points are outside
    _, _, inside = project_points(torch.tensor([[0.0, 0.0, -1.0], [-1.3, 0.0, 2.0]]), KMAT, torch.eye(4), W, H, cut_bound=2)
    assert not inside.any()


def test_fusion_is_mean_of_views_that_see_the_point_and_skips_occluded_views():
    pts = torch.tensor([[0.0, 0.0, PLANE_Z], [0.1, 0.05, PLANE_Z]])
    depths = [_plane_depth(c) for c in CAMS]
    # an occluder at z = 1 in front of view 2 covers the pixel of point 1 (not point 0)
    uv, _, _ = project_points(pts, KMAT, invert_pose(CAMS[2]), W, H)
    u1, v1 = uv[1].tolist()
    u0, v0 = uv[0].tolist()
    assert (u0, v0) != (u1, v1)
    depths[2][max(v1 - 1, 0) : v1 + 2, max(u1 - 1, 0) : u1 + 2] = 1.0
    assert depths[2][v0, u0] > 1.5
    vis, _ = visible_points(pts, KMAT, invert_pose(CAMS[2]), depths[2], cut_bound=0)
    assert vis.tolist() == [True, False]
    views = [(torch.eye(3)[i].expand(H, W, 3), None, depths[i], KMAT, CAMS[i]) for i in range(3)]
    fused, counts = fuse_point_features(pts, iter(views), cut_bound=0)
    assert counts.tolist() == [3, 2]
    assert torch.allclose(fused[0], torch.full((3,), 1 / 3))
    assert torch.allclose(fused[1], torch.tensor([0.5, 0.5, 0.0]))
    # per-pixel [H * W, D] rows and a valid mask: point 0's pixel in view 0 is invalid -> views 1, 2 remain
    uv0, _, _ = project_points(pts, KMAT, invert_pose(CAMS[0]), W, H)
    valid = torch.ones(H, W, dtype=torch.bool)
    valid[uv0[0, 1], uv0[0, 0]] = False
    views[0] = (torch.eye(3)[0].expand(H * W, 3), valid, depths[0], KMAT, CAMS[0])
    fused, counts = fuse_point_features(pts, views, cut_bound=0)
    assert counts.tolist() == [2, 2] and torch.allclose(fused[0], torch.tensor([0.0, 0.5, 0.5]))


def test_voxel_downsample_and_streaming_accumulator():
    pts = torch.tensor([[0.01, 0.01, 0.01], [0.03, 0.02, 0.04], [0.11, 0.0, 0.0], [-0.01, 0.0, 0.0]])
    reps, inv = voxel_downsample(pts, 0.05)
    assert reps.shape == (3, 3)
    assert inv[0] == inv[1] and len({int(inv[0]), int(inv[2]), int(inv[3])}) == 3
    assert torch.allclose(reps[inv[0]], pts[:2].mean(0))
    centers, _ = voxel_downsample(pts, 0.05, reduce="center")
    assert torch.allclose(centers[inv[2]], torch.tensor([0.125, 0.025, 0.025]))
    acc = VoxelAccumulator(0.05)
    acc.add(pts[:2], torch.tensor([[1.0], [3.0]]))
    acc.add(pts[2:], torch.tensor([[5.0], [7.0]]))
    assert len(acc) == 3
    assert torch.allclose(acc.centroids(), reps)
    assert acc.mean_values()[inv[0]].item() == pytest.approx(2.0)
    assert acc.lookup(torch.tensor([[0.02, 0.02, 0.02], [5.0, 5.0, 5.0]])).tolist() == [int(inv[0]), -1]


@pytest.mark.parametrize("reproject", ["lookup", "project"])
def test_multiview_step_fixes_a_view_the_other_two_contradict(reproject):
    depths = [_plane_depth(c) for c in CAMS]
    text = TEXT
    feats = [_feat(A, 0.9).expand(H, W, 4), _feat(B, 0.9).expand(H, W, 4), _feat(A, 0.9).expand(H, W, 4)]
    views = [MVView(feats[i], depths[i], KMAT, CAMS[i]) for i in range(3)]
    cfg = CRRConfig(mv_voxel=0.05, mv_reproject=reproject)
    mv_lab, mv_conf, p3 = multiview_labels(views, text, cfg)
    # pixels of view 1 whose plane point both other views see
    pts, idx = backproject_depth(depths[1], KMAT, CAMS[1])
    both = torch.ones(idx.numel(), dtype=torch.bool)
    for j in (0, 2):
        _, _, inside = project_points(pts, KMAT, invert_pose(CAMS[j]), W, H)
        both &= inside
    overlap = torch.zeros(H * W, dtype=torch.bool)
    overlap[idx[both]] = True
    overlap = overlap.reshape(H, W)
    assert overlap.float().mean() > 0.5
    sam = torch.zeros(H, W, dtype=torch.long)
    plain = crr_view(feats[1], sam, text, cfg)
    assert (plain.labels == B).all()  # alone, view 1 is confidently wrong
    fixed = crr_view(feats[1], sam, text, cfg, mv_labels=mv_lab[1], mv_conf=mv_conf[1])
    got = fixed.labels[overlap]
    assert (got == A).float().mean() > 0.95
    # views 0 and 2 stay A everywhere they are labelled by 3D
    assert (mv_lab[0][mv_lab[0] >= 0] == A).float().mean() > 0.95
    assert p3.labels.numel() > 0


# ---------------------------------------------------------------------------------------------
# Autoencoder
# ---------------------------------------------------------------------------------------------


def _clusters(n=1500, k=5, d=64, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(k, d, generator=g), dim=-1)
    y = torch.randint(k, (n,), generator=g)
    x = F.normalize(text[y] + noise * torch.randn(n, d, generator=g) / math.sqrt(d) * 3, dim=-1)
    return x, y, text


@pytest.fixture(scope="module")
def trained_ae():
    x, y, text = _clusters()
    cfg = AEConfig(epochs=40, samples_per_class=64, batch_size=64, lr=2e-3, eval_every=5, seed=0)
    model, hist = train_autoencoder(x, y, text, cfg, progress=False)
    return model, hist, x, y, text


def test_autoencoder_architecture():
    m = LatentAutoencoder(384)
    linears = [l for l in m.encoder if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(384, 256), (256, 128), (128, 64), (64, 32), (32, 6)]
    assert sum(isinstance(l, torch.nn.BatchNorm1d) for l in m.encoder) == 4
    dec = [l.out_features for l in m.decoder if isinstance(l, torch.nn.Linear)]
    assert dec == [16, 32, 64, 128, 256, 256, 384]
    m.eval()
    z = m.encode(torch.randn(5, 384))
    assert z.shape == (5, 6) and torch.allclose(z.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(m.decode(z).norm(dim=-1), torch.ones(5), atol=1e-5)


def test_autoencoder_round_trip_and_losses(trained_ae):
    model, hist, x, y, text = trained_ae
    with torch.no_grad():
        rec = model.decode(model.encode(x))
    cos = F.cosine_similarity(rec, x, dim=-1)
    assert cos.mean() > 0.9
    assert torch.equal((rec @ text.T).argmax(-1), (x @ text.T).argmax(-1))
    # the paper form has both CE terms and they go down
    for term in ("ce_re", "ce_z", "rec"):
        assert f"train_{term}" in hist and f"val_{term}" in hist
        assert hist[f"train_{term}"][-1] < hist[f"train_{term}"][0]
    terms = autoencoder_loss(model, x[:32], y[:32], text, "paper")
    assert set(terms) == {"rec", "ce_re", "ce_z", "total"}
    assert torch.isclose(terms["total"], terms["rec"] + terms["ce_re"] + terms["ce_z"])
    code = autoencoder_loss(model, x[:32], y[:32], text, "code")
    assert set(code) == {"rec", "cos", "total"}
    assert torch.isclose(code["total"], code["rec"] + 1e-3 * code["cos"])


def test_autoencoder_save_load_identical(trained_ae, tmp_path):
    model, _, x, _, _ = trained_ae
    path = save_autoencoder(model, tmp_path / "ae.pt")
    assert json.loads(path.with_suffix(".json").read_text())["encoder_dims"] == [256, 128, 64, 32, 6]
    loaded = load_autoencoder(path)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), model.encode(x))
        z = model.encode(x)
        assert torch.equal(loaded.decode(z), model.decode(z))
    assert not list(tmp_path.glob(".*.tmp"))
    (tmp_path / "bad.pt").write_bytes(b"junk")
    (tmp_path / "bad.json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(InputError, match="bad.pt"):
        load_autoencoder(tmp_path / "bad.pt")


# ---------------------------------------------------------------------------------------------
# prepare_econsg end to end
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    from unisem_ns.language.encoders import make_text_encoder

    return make_text_encoder("minilm")


@pytest.fixture(scope="module")
def cue_scene(tmp_path_factory, minilm):
    from unisem_ns.cues.simulator import CueCorruption, run_simulation
    from unisem_ns.data.synthetic_scene import generate_scene

    scene = tmp_path_factory.mktemp("econsg") / "scene"
    generate_scene(scene, seed=1, views=12, width=48, height=36, progress=False)
    run_simulation(scene, minilm, CueCorruption.preset("default"), seed=0, progress=False, log=lambda m: None)
    return scene


def _small_cfg(**kw):
    from unisem_ns.econsg.prepare import EconSGPrepConfig

    ae = AEConfig(epochs=10, samples_per_class=64, max_steps=100, eval_every=5)
    return EconSGPrepConfig(ae=ae, **kw)


def _accuracy(scene: Path, maps) -> float:
    ok = tot = 0
    for stem, lab in maps.items():
        gt = load_gt_maps(scene, stem)["semantic"] - 1  # classes.json[0] = void -> -1
        sel = (lab >= 0) & (gt >= 0)
        ok += int((lab[sel] == gt[sel]).sum())
        tot += int(sel.sum())
    return ok / max(tot, 1)


def test_prepare_econsg_end_to_end(cue_scene, minilm):
    from unisem_ns.econsg.prepare import prepare_econsg

    logs = []
    cache = prepare_econsg(cue_scene, cfg=_small_cfg(), progress=False, text_encoder=minilm, log=logs.append)
    out = cue_scene / "econsg" / "d6"
    assert cache.out == out and not cache.reused
    meta = json.loads((cue_scene / "transforms.json").read_text())
    train = [Path(p).stem for p in meta["train_filenames"]]
    assert cache.stems == train
    names = json.loads((cue_scene / "gt" / "classes.json").read_text())[1:]
    assert json.loads((out / "class_names.json").read_text()) == names
    K = len(names)
    for stem in train:
        lab = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / "labels" / f"{stem}.png"))
        assert lab.shape == (36, 48) and lab.dtype == np.uint8 and lab.max() <= K
        w = np.load(out / "weights" / f"{stem}.npy")
        assert w.shape == (36, 48) and w.dtype == np.float16 and ((w >= 0) & (w <= 1)).all()
        assert (w[lab == 0] == 0).all()
        lat = np.load(out / "latents" / f"{stem}.npy")
        assert lat.shape == (36, 48, 6) and lat.dtype == np.float16
        norms = np.linalg.norm(lat.astype(np.float32), axis=-1)
        assert np.allclose(norms[norms > 0], 1.0, atol=1e-2)
    for stem in set(Path(f["file_path"]).stem for f in meta["frames"]) - set(train):
        assert not (out / "labels" / f"{stem}.png").exists()
    pts = cache.load_points()
    n = pts["xyz"].shape[0]
    assert n > 1000 and pts["rgb"].shape == (n, 3) and pts["rgb"].dtype == np.uint8
    assert pts["latent"].shape == (n, 6) and pts["label"].shape == (n,)
    assert cache.text_latents().shape == (K, 6)
    assert (out / "autoencoder.pt").exists() and (out / "autoencoder.json").exists()
    ae = cache.load_autoencoder()
    assert ae.latent_dim == 6 and ae.in_dim == 384
    s = cache.summary
    assert 0 < s["frac_crr_labelled"] <= 1 and s["points"] == n and "timings_s" in s and "memory" in s
    # CRR (with the multi-view step) labels are more accurate than the raw per-pixel argmax
    crr_acc, raw_acc = _accuracy(cue_scene, cache.crr_label_maps()), _accuracy(cue_scene, cache.raw_label_maps())
    assert crr_acc > raw_acc + 0.01, (crr_acc, raw_acc)
    # same settings and inputs: a no-op that touches nothing
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = prepare_econsg(cue_scene, cfg=_small_cfg(), progress=False, text_encoder=minilm, log=logs.append)
    assert again.reused and "up to date" in logs[-1]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes
    assert again.summary["points"] == n
    # a changed setting recomputes
    changed = prepare_econsg(cue_scene, cfg=_small_cfg(use_crr=False), progress=False, text_encoder=minilm, log=logs.append)
    assert not changed.reused
    assert _accuracy(cue_scene, changed.crr_label_maps()) == pytest.approx(raw_acc)  # ablation: labels = raw argmax
    w = changed.load_weights(train[0])
    assert set(np.unique(w).tolist()) <= {0.0, 1.0}


def test_prepare_econsg_without_ae_and_without_depth(cue_scene, minilm, tmp_path):
    from unisem_ns.econsg.prepare import EconSGPrepConfig, prepare_econsg

    scene = tmp_path / "nodepth"
    shutil.copytree(cue_scene, scene, ignore=shutil.ignore_patterns("econsg"))
    meta = json.loads((scene / "transforms.json").read_text())
    depth_files = {Path(f["file_path"]).stem: scene / f.pop("depth_file_path") for f in meta["frames"]}
    (scene / "transforms.json").write_text(json.dumps(meta))
    cfg = EconSGPrepConfig(use_ae=False, crr=CRRConfig(multiview=False))
    with pytest.raises(InputError, match="depths.*depth_provider"):
        prepare_econsg(scene, cfg=cfg, progress=False, text_encoder=minilm, log=lambda m: None)
    cache = prepare_econsg(
        scene, cfg=cfg, depth_provider=lambda stem: load_depth(depth_files[stem], 1e-3), progress=False,
        text_encoder=minilm, log=lambda m: None,
    )
    assert cache.out == scene / "econsg" / "d384-noae" and cache.latent_dim == 384
    lat = cache.load_latents(cache.stems[0])
    assert lat.shape == (36, 48, 384)
    text = minilm.encode(cache.class_names).numpy()
    assert np.allclose(cache.text_latents(), text, atol=1e-6)
    assert not (cache.out / "autoencoder.pt").exists()
    assert cache.load_points()["latent"].shape[1] == 384


# ---------------------------------------------------------------------------------------------
# Faults: a killed preparation, two preparations of one cache at once
# ---------------------------------------------------------------------------------------------


def test_autoencoder_training_leaves_the_callers_random_state_alone():
    """ns-train seeds the global generators before the datamanager prepares the cache: a fresh preparation and a
    reused one must leave the same random state for training to start from."""
    x, y, text = _clusters()
    before = torch.get_rng_state()
    train_autoencoder(x, y, text, AEConfig(epochs=2, samples_per_class=16, batch_size=32, seed=0), progress=False)
    assert torch.equal(torch.get_rng_state(), before)


def _cache_bytes(out: Path) -> dict:
    """Every output of a preparation but the manifest (whose summary holds timings)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("manifest.json", ".unisem.lock")}


def test_prepare_econsg_killed_midway_recomputes_to_the_same_outputs(cue_scene, minilm, tmp_path, monkeypatch):
    from unisem_ns.econsg import prepare
    from unisem_ns.econsg.prepare import prepare_econsg

    out = tmp_path / "cache"
    quiet = dict(progress=False, text_encoder=minilm, log=lambda m: None)
    prepare_econsg(cue_scene, out, cfg=_small_cfg(), **quiet)
    ref = _cache_bytes(out)
    # another setting into the same folder, killed after three of its per-view arrays were written
    real, saves = prepare.atomic_save_npy, {"n": 0}

    def dies_on_the_fourth(path, arr):
        saves["n"] += 1
        if saves["n"] == 4:
            raise KeyboardInterrupt
        real(path, arr)

    monkeypatch.setattr(prepare, "atomic_save_npy", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        prepare_econsg(cue_scene, out, cfg=_small_cfg(use_crr=False), **quiet)
    monkeypatch.setattr(prepare, "atomic_save_npy", real)
    # the old manifest went before the first file was overwritten: the mixed folder is not taken as up to date
    assert not (out / "manifest.json").exists()
    assert _cache_bytes(out) != ref and not list(out.rglob(".*.tmp"))
    again = prepare_econsg(cue_scene, out, cfg=_small_cfg(), **quiet)
    assert not again.reused and _cache_bytes(out) == ref


def test_two_preparations_of_one_cache_take_turns(cue_scene, minilm, tmp_path):
    import threading

    from unisem_ns.econsg.prepare import prepare_econsg

    ref = tmp_path / "ref"
    prepare_econsg(cue_scene, ref, cfg=_small_cfg(), progress=False, text_encoder=minilm, log=lambda m: None)
    out, results, logs = tmp_path / "shared", [], []

    def run():
        results.append(prepare_econsg(cue_scene, out, cfg=_small_cfg(), progress=False, text_encoder=minilm,
                                      log=logs.append))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # one computed, the other waited for the lock and found its outputs up to date
    assert sorted(r.reused for r in results) == [False, True], logs
    assert _cache_bytes(out) == _cache_bytes(ref)
    assert json.loads((out / "manifest.json").read_text())["complete"]
