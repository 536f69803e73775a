"""Feed-forward initialisation of per-scene training (docs/FEEDFORWARD_INIT.md): the Predictor interface, placing
predicted Gaussians in a scene's frame (windows, axes, scale), the per-method semantic mapping, and a short
unisem-splat run started from a predictor."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from feedforward.config import PredictorConfig
from feedforward.model import UniSemPredictor
from feedforward.predictor import PredictedGaussians, Predictor, load_unisem_predictor, save_unisem_predictor
from feedforward.scene_init import evenly_spaced, make_windows, predict_scene, quat_multiply, rotmat_to_quat, to_world
from unisem_ns.data.scene_io import InputError

TINY = dict(enc_dim=32, enc_depth=2, enc_heads=2, dec_dim=32, dec_depth=2, dec_heads=2, head_feature_dim=16,
            sem_dim=8)
H, W = 24, 32
K1 = torch.tensor([[28.0, 0.0, 16.5], [0.0, 28.0, 12.5], [0.0, 0.0, 1.0]])  # pixel (12, 16)'s centre is on the axis
AXIS_PIXEL = (12, 16)


def tiny_predictor(exact_bias: bool = False, seed: int = 0) -> UniSemPredictor:
    """Random-init tiny predictor; ``exact_bias`` zeroes the head's last weights, so every point is exactly
    init_depth * (its pixel ray) in the reference frame and every rotation the identity."""
    torch.manual_seed(seed)
    cfg = PredictorConfig(**TINY, head_init_scale=0.0 if exact_bias else 0.01)
    return UniSemPredictor(cfg).eval()


def random_pose(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    c2w = torch.eye(4)
    c2w[:3, :3] = q
    c2w[:3, 3] = torch.randn(3, generator=g)
    return c2w[:3]


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def views(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, H, W, generator=g) for _ in range(n)]
    c2w = torch.stack([random_pose(seed * 100 + i) for i in range(n)])
    return images, K1.repeat(n, 1, 1), c2w


# ------------------------------------------------------------------------------------------------- interface


def test_unisem_predictor_implements_interface():
    m = tiny_predictor()
    assert isinstance(m, Predictor) and m.image_size is None and m.size_multiple == 8 and m.cue_dim == 384
    images, Ks, _ = views(2)
    cues = torch.nn.functional.normalize(torch.randn(2, H, W, 384), dim=-1)
    p = m.predict(torch.stack(images), Ks, cues).check()
    assert p.num == 2 * H * W and p.frame == "reference-opencv" and p.feature_space == "unisem-latent-8"
    assert p.sh.shape == (2 * H * W, 1, 3) and p.features.shape == (2 * H * W, 8)
    assert torch.equal(p.view_index.bincount(), torch.tensor([H * W, H * W]))
    assert m.features_to_cue_space(p.features).shape == (2 * H * W, 384)
    # semantic residual: the untrained latent is the reduced cue, so it expands back onto a cue direction
    assert not torch.allclose(p.features, m.predict(torch.stack(images), Ks).features)


def test_predictor_abc_needs_predict():
    class Half(Predictor):
        image_size = None

    with pytest.raises(TypeError):
        Half()


def test_save_and_load_checkpoint(tmp_path):
    m = tiny_predictor(seed=3)
    m.input_size = (24, 32)
    save_unisem_predictor(m, tmp_path / "p.pt")
    back = load_unisem_predictor(tmp_path / "p.pt")
    assert back.cfg == m.cfg and back.image_size == (24, 32)
    for k, v in m.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_load_from_run_config(tmp_path):
    """A run folder as ns-train writes it: config.yml (Python-tagged YAML) + nerfstudio_models/step-*.ckpt."""
    pytest.importorskip("nerfstudio")
    import copy

    import yaml

    from feedforward.method_config import unisem_feedforward

    corpus = tmp_path / "corpus"
    (corpus / "s0").mkdir(parents=True)
    (corpus / "index.json").write_text('{"train": ["s0"], "val": [], "test": []}')
    (corpus / "s0" / "transforms.json").write_text('{"w": 32, "h": 24, "frames": []}')
    m = tiny_predictor(seed=4)
    cfg = copy.deepcopy(unisem_feedforward.config)  # a copy: the registered config is shared by every test
    cfg.pipeline.model.predictor = m.cfg
    cfg.pipeline.datamanager.data = corpus
    run = tmp_path / "run"
    (run / "nerfstudio_models").mkdir(parents=True)
    (run / "config.yml").write_text(yaml.dump(cfg))
    torch.save({"step": 1, "pipeline": {f"_model.predictor.{k}": v for k, v in m.state_dict().items()}},
               run / "nerfstudio_models" / "step-000000001.ckpt")
    for path in (run / "config.yml", run, run / "nerfstudio_models" / "step-000000001.ckpt"):
        back = load_unisem_predictor(path)
        assert back.cfg == m.cfg and back.image_size == (24, 32)
        assert torch.equal(back.head.dpt.head[-1].weight, m.head.dpt.head[-1].weight)


def test_missing_or_foreign_predictor_is_one_line(tmp_path):
    with pytest.raises(InputError, match="init-from-predictor"):
        load_unisem_predictor(tmp_path / "nope.yml")
    torch.save({"x": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="init-from-predictor"):
        load_unisem_predictor(tmp_path / "foreign.pt")


# ------------------------------------------------------------------------------------------------- placement


def test_windows_and_view_choice():
    assert make_windows(5, 2) == [([0, 1], [0, 1]), ([2, 3], [2, 3]), ([3, 4], [4])]
    assert make_windows(1, 2) == [([0, 0], [0])]
    assert make_windows(6, 3) == [([0, 1, 2], [0, 1, 2]), ([3, 4, 5], [3, 4, 5])]
    assert evenly_spaced(21, 4) == [0, 7, 13, 20] and evenly_spaced(5, 0) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("n,window,stride", [(4, 2, 1), (5, 2, 2), (6, 3, 4), (1, 2, 1)])
def test_counts(n, window, stride):
    images, Ks, c2w = views(n)
    p = predict_scene(tiny_predictor(), images, Ks, c2w, window=window, stride=stride)
    per_view = (H // stride) * (W // stride)
    assert p.num == n * per_view and p.frame == "world"
    assert torch.equal(p.view_index.bincount(minlength=n), torch.full((n,), per_view))
    assert len(p.info["windows"]) == math.ceil(n / window)
    assert all(len(w) == window for w in p.info["windows"])


def test_quaternion_helpers():
    R = torch.stack([random_pose(i)[:, :3] for i in range(20)])
    R[0] = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # 180 deg: the trace-based branch fails here
    q = rotmat_to_quat(R)
    assert torch.allclose(quat_to_rotmat(q), R, atol=1e-5)
    a, b = q[:10], q[10:]
    assert torch.allclose(quat_to_rotmat(quat_multiply(a, b)), quat_to_rotmat(a) @ quat_to_rotmat(b), atol=1e-5)


def test_frames_optical_axis_and_rotations():
    """The reference view's on-axis pixel lands at centre + s * depth * forward (Nerfstudio: forward = -z of the
    camera-to-world); rotations are the camera's (identity predicted), then composed with predicted ones."""
    m = tiny_predictor(exact_bias=True)
    depth = m.cfg.init_depth
    images, Ks, c2w = views(4, seed=1)
    s = 0.37
    p = predict_scene(m, images, Ks, c2w, dataparser_scale=s, window=2)
    for ref in (0, 2):  # the references of windows [0, 1] and [2, 3]
        on = (p.view_index == ref) & (p.pixel[:, 0] == AXIS_PIXEL[0]) & (p.pixel[:, 1] == AXIS_PIXEL[1])
        assert int(on.sum()) == 1
        centre, forward = c2w[ref, :3, 3], -c2w[ref, :3, 2]
        assert torch.allclose(p.means[on][0], centre + s * depth * forward, atol=1e-4)
        r_cv = c2w[ref, :3, :3] * torch.tensor([1.0, -1.0, -1.0])
        assert torch.allclose(quat_to_rotmat(p.quats[p.view_index == ref]), r_cv.expand(H * W, 3, 3), atol=1e-5)
    # the second view of a window is placed with its reference's pose (the predictor's frame is view 0's)
    assert torch.allclose(p.means[p.view_index == 1], p.means[p.view_index == 0], atol=1e-4)
    # scales follow the dataparser scale
    raw = m.predict(torch.stack(images[:2]), Ks[:2])
    assert torch.allclose(p.scales[p.view_index <= 1], s * raw.scales, atol=1e-6)
    # a predicted rotation is composed after the camera's: R_world = R_cv @ R_pred
    q_pred = rotmat_to_quat(random_pose(7)[:, :3])
    g = raw.replace(quats=q_pred.expand(raw.num, 4))
    out = to_world(g, c2w[0], s)
    r_cv0 = c2w[0, :3, :3] * torch.tensor([1.0, -1.0, -1.0])
    assert torch.allclose(quat_to_rotmat(out.quats[0]), r_cv0 @ quat_to_rotmat(q_pred), atol=1e-5)


def test_scale_alignment_with_depth():
    m = tiny_predictor(exact_bias=True)
    images, Ks, c2w = views(2, seed=2)
    raw = m.predict(torch.stack(images), Ks)
    z = torch.zeros(H, W)
    ref = raw.view_index == 0
    z[raw.pixel[ref, 0], raw.pixel[ref, 1]] = raw.means[ref, 2]
    k, s = 1.8, 0.5
    depth = k * z
    depth[:3] = 0.0  # missing depth is ignored
    aligned = predict_scene(m, images, Ks, c2w, dataparser_scale=s, depths=[depth, None])
    plain = predict_scene(m, images, Ks, c2w, dataparser_scale=s)
    assert aligned.info["depth_ratios"] == [pytest.approx(k, rel=1e-5)] and plain.info["depth_ratios"] == [None]
    centre = c2w[0, :3, 3]
    assert torch.allclose(aligned.means - centre, k * (plain.means - centre), atol=1e-4)
    assert torch.allclose(aligned.scales, k * plain.scales, rtol=1e-5)
    # no depth map for the reference: the predicted scale is kept
    kept = predict_scene(m, images, Ks, c2w, dataparser_scale=s, depths=[None, depth])
    assert torch.allclose(kept.means, plain.means)


def test_resize_to_predictor_input_size():
    m = tiny_predictor()
    m.input_size = (16, 24)
    images, Ks, c2w = views(2)
    p = predict_scene(m, images, Ks, c2w)
    assert p.num == 2 * 16 * 24 and p.info["input_size"] == (16, 24)


def test_parameter_ranges():
    torch.manual_seed(0)
    cfg = PredictorConfig(**TINY, head_init_scale=1.0, sh_degree=1)  # a far-from-bias head
    m = UniSemPredictor(cfg).eval()
    images, Ks, c2w = views(3, seed=5)
    p = predict_scene(m, images, Ks, c2w, dataparser_scale=0.3, depths=[torch.full((H, W), 2.0)] * 3)
    for t in (p.means, p.scales, p.quats, p.opacities, p.sh, p.features):
        assert torch.isfinite(t).all()
    assert (p.opacities > 0).all() and (p.opacities < 1).all() and (p.scales > 0).all()
    assert torch.allclose(p.quats.norm(dim=-1), torch.ones(p.num), atol=1e-5)
    pytest.importorskip("nerfstudio")
    from unisem_ns.ns.feedforward_init import gaussian_params_from_prediction

    for degree, k in ((0, 0), (3, 15)):
        params = gaussian_params_from_prediction(p, degree)
        assert params["features_rest"].shape == (p.num, k, 3) and params["opacities"].shape == (p.num, 1)
        assert all(torch.isfinite(v).all() for v in params.values())
        assert torch.allclose(torch.exp(params["scales"]), p.scales, rtol=1e-5)
        assert torch.allclose(torch.sigmoid(params["opacities"][:, 0]), p.opacities, atol=1e-4)
    rgb0 = torch.sigmoid(gaussian_params_from_prediction(p, 0)["features_dc"])
    assert torch.allclose(rgb0, (0.5 + 0.28209479177387814 * p.sh[:, 0]).clamp(1e-4, 1 - 1e-4), atol=1e-4)
    rest = gaussian_params_from_prediction(p, 3)["features_rest"]
    assert torch.equal(rest[:, :3], p.sh[:, 1:]) and (rest[:, 3:] == 0).all()


# ------------------------------------------------------------------------------------------------- semantics


def test_semantic_mapping_per_method():
    pytest.importorskip("nerfstudio")
    from unisem_ns.econsg.autoencoder import LatentAutoencoder
    from unisem_ns.ns.distill_model import UnisemDistillModel
    from unisem_ns.ns.econsg_model import EconSGModel
    from unisem_ns.ns.feedforward_init import pca_project
    from unisem_ns.ns.splat_model import UnisemSplatModel
    from unisem_ns.ns.unified_lift_model import UnifiedLiftModel

    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(5, 384), dim=-1)
    cue = centres[torch.arange(600) % 5] + 0.01 * torch.randn(600, 384)
    # unisem-splat / unisem-distill: unit cue features on their top principal directions
    z = UnisemDistillModel.semantic_init(SimpleNamespace(feature_dim=16), cue)
    assert z.shape == (600, 16) and torch.isfinite(z).all()
    same = (torch.arange(600) % 5)[:, None] == (torch.arange(600) % 5)[None]
    zn = torch.nn.functional.normalize(z, dim=-1)
    sim = zn @ zn.T
    assert sim[same].mean() > 0.99 and sim[~same].mean() < sim[same].mean() - 0.1  # classes stay apart
    assert UnisemDistillModel.semantic_init is UnisemSplatModel.semantic_init
    assert pca_project(cue[:, :8], 16).shape == (600, 16)
    # econSG: the cache's AE encoder, unit d-dim latents; a width that does not fit keeps the random init
    ae = LatentAutoencoder(384, encoder_dims=(32, 6), decoder_dims=(32, 384))
    cache = SimpleNamespace(use_ae=True, load_autoencoder=lambda: ae)
    model = SimpleNamespace(kwargs={"metadata": {"econsg_cache": cache}}, latent_dim=6)
    lat = EconSGModel.semantic_init(model, cue)
    assert lat.shape == (600, 6) and torch.allclose(lat.norm(dim=-1), torch.ones(600), atol=1e-5)
    assert EconSGModel.semantic_init(model, cue[:, :100]) is None
    no_ae = SimpleNamespace(kwargs={"metadata": {"econsg_cache": SimpleNamespace(use_ae=False)}}, latent_dim=384)
    assert EconSGModel.semantic_init(no_ae, cue).shape == (600, 384)
    # Unified-Lift: instance features are not semantic
    assert UnifiedLiftModel.semantic_init(SimpleNamespace(), cue) is None


def test_feedforward_core_has_no_nerfstudio_import():
    import subprocess
    import sys

    code = ("import sys; import feedforward.predictor, feedforward.scene_init; "
            "sys.exit(1 if any(m.startswith('nerfstudio') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


class OracleDepthPredictor(Predictor):
    """Each window's points from the scene's own depth maps and poses (the 'perfect predictor'), so that a scene
    initialised from it must re-render its training views: checks the whole chain of frames and scales."""

    image_size = None

    def __init__(self, images, depths, Ks, c2w_gl, scale):
        self.keys = [float(im.sum()) for im in images]  # identifies a view by its pixels
        self.depths, self.Ks, self.c2w, self.scale = depths, Ks, c2w_gl, scale

    def predict(self, images, intrinsics=None, cues=None):
        from feedforward.heads import rgb_to_sh

        v, _, h, w = images.shape
        idx = [min(range(len(self.keys)), key=lambda j: abs(self.keys[j] - float(im.sum()))) for im in images]
        flip = torch.tensor([1.0, -1.0, -1.0])
        R_ref, t_ref = self.c2w[idx[0], :3, :3] * flip, self.c2w[idx[0], :3, 3]
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        pts = []
        for i in idx:
            K, d = self.Ks[i], self.depths[i]
            cam = torch.stack([(xx + 0.5 - K[0, 2]) / K[0, 0] * d, (yy + 0.5 - K[1, 2]) / K[1, 1] * d, d], -1)
            world = self.scale * cam.reshape(-1, 3) @ (self.c2w[i, :3, :3] * flip).T + self.c2w[i, :3, 3]
            pts.append((world - t_ref) @ R_ref / self.scale)  # metric, in the reference camera's OpenCV frame
        means = torch.cat(pts)
        n = means.shape[0]
        depth = torch.stack([self.depths[i] for i in idx]).reshape(-1)
        scales = (0.6 * depth / self.Ks[idx[0]][0, 0])[:, None].repeat(1, 3)
        return PredictedGaussians(
            means=means, scales=scales, quats=torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
            opacities=torch.full((n,), 0.99), sh=rgb_to_sh(images.permute(0, 2, 3, 1).reshape(n, 1, 3)),
            features=torch.zeros(n, 0), view_index=torch.arange(v).repeat_interleave(h * w),
            pixel=torch.stack([yy.reshape(-1), xx.reshape(-1)], -1).repeat(v, 1))

    def features_to_cue_space(self, features):
        return features


def test_oracle_init_rerenders_training_views(tiny_scene):
    """Through the real dataparser (its orientation, centring and scale) and the model's own camera convention:
    Gaussians placed from the scene's depth re-render the training views they came from."""
    pytest.importorskip("nerfstudio")
    from unisem_ns.data.scene_io import load_depth
    from unisem_ns.ns.dataparser import UnisemDataParserConfig
    from feedforward.scene_init import read_rgb
    from unisem_ns.ns.feedforward_init import gaussian_params_from_prediction
    from unisem_ns.ns.splat_model import get_viewmat
    from unisem_ns.render import rasterization

    outputs = UnisemDataParserConfig(data=tiny_scene).setup().get_dataparser_outputs("train")
    tv, scale = outputs.metadata["train_views"], outputs.metadata["dataparser_scale"]
    assert scale != 1.0  # the dataparser rescales: the test covers it
    chosen = evenly_spaced(len(tv["image_filenames"]), 4)
    images = [read_rgb(tv["image_filenames"][i]) for i in chosen]
    depths = [torch.from_numpy(load_depth(tv["depth_filenames"][i], tv["depth_unit_scale_factor"])) for i in chosen]
    depths = [torch.where(torch.isfinite(d), d, torch.zeros(())) for d in depths]
    Ks, c2w = tv["K"][chosen], tv["c2w"][chosen]
    oracle = OracleDepthPredictor(images, depths, Ks, c2w, scale)
    p = predict_scene(oracle, images, Ks, c2w, dataparser_scale=scale, depths=depths)
    assert all(r == pytest.approx(1.0, rel=1e-4) for r in p.info["depth_ratios"])
    params = gaussian_params_from_prediction(p, 0)
    keep = torch.isfinite(params["means"]).all(-1) & (p.means.norm(dim=-1) < 1e3)
    for j, i in enumerate(chosen):
        viewmat = get_viewmat(c2w[j : j + 1])
        h, w = images[j].shape[-2:]
        render, alpha, _ = rasterization(
            means=params["means"][keep], quats=params["quats"][keep], scales=torch.exp(params["scales"][keep]),
            opacities=torch.sigmoid(params["opacities"][keep, 0]),
            colors=torch.sigmoid(params["features_dc"][keep])[None], viewmats=viewmat, Ks=Ks[j : j + 1],
            width=w, height=h, packed=False, near_plane=0.01, far_plane=1e10, render_mode="RGB", sh_degree=None)
        valid = depths[j] > 0
        err = (render[0, ..., :3] - images[j].permute(1, 2, 0)).abs().mean(-1)
        assert float(alpha[0, ..., 0][valid].mean()) > 0.95
        psnr = -10 * torch.log10((err[valid] ** 2).mean())
        assert psnr > 20.0, (i, float(psnr))


# ------------------------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_unisem_splat_trains_from_predictor(tiny_scene, tmp_path):
    """ns-train unisem-splat, a few steps, Gaussians from a (random-init) tiny predictor on 4 training views."""
    pytest.importorskip("nerfstudio")
    from conftest import ns_train

    ckpt = tmp_path / "predictor.pt"
    save_unisem_predictor(tiny_predictor(), ckpt)
    run = ns_train("unisem-splat", tiny_scene, tmp_path / "runs", "ff", 6, "--steps-per-save", "5",
                   "--logging.steps-per-log", "1", "--machine.device-type", "cpu",
                   "--pipeline.model.init-from-predictor", str(ckpt), "--pipeline.model.init-views", "4",
                   "--pipeline.model.init-pixel-stride", "2", experiment="ffinit")
    want = 4 * (64 // 2) * (48 // 2)  # 4 views, 64x48, stride 2: no densification before step 500
    ckpts = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))
    assert ckpts
    import unisem_ns.utils.safe_globals  # noqa: F401  (allow-list for weights_only loads)

    state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)["pipeline"]
    means = state["_model.gauss_params.means"]
    assert means.shape == (want, 3) and all(torch.isfinite(v).all() for k, v in state.items()
                                            if k.startswith("_model.gauss_params."))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("Train Loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    # a trained run loads without its predictor (ns-eval rebuilds the model, then loads the checkpoint)
    ckpt.unlink()
    from conftest import evaluate

    assert math.isfinite(evaluate(run)["psnr"])


@pytest.mark.slow
def test_missing_predictor_path_is_one_line(tiny_scene, tmp_path):
    from conftest import ns_bin, run_cli

    proc = run_cli([ns_bin("ns-train"), "unisem-splat", "--data", str(tiny_scene), "--output-dir", str(tmp_path),
                    "--vis", "tensorboard", "--machine.device-type", "cpu", "--max-num-iterations", "1",
                    "--pipeline.model.init-from-predictor", str(tmp_path / "nope" / "config.yml")], timeout=300)
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.splitlines() if l.startswith("unisem_ns: error:")]
    assert lines and "--pipeline.model.init-from-predictor" in lines[0] and "unisem-feedforward" in lines[0]
