"""GSemSplat core (feedforward/gsemsplat): predictor shapes and gradients, checkpoints, losses (tiny CPU models)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from feedforward.gsemsplat.checkpoint import (config_from_state, load_backbone_weights, load_gsemsplat_checkpoint,
                                              normalise_keys, save_gsemsplat)
from feedforward.gsemsplat.losses import dual_semantic_loss, rgb_loss, semantic_loss, visibility_mask
from feedforward.gsemsplat.model import LATENT_DIM, GSemSplatConfig, GSemSplatPredictor
from feedforward.predictor import PredictedGaussians
from unisem_ns.data.scene_io import InputError

TINY = GSemSplatConfig(enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=32, dec_depth=2, dec_heads=2,
                       head_feature_dim=16, head_layer_dims=(8, 8, 16, 16), text_dim=24, decoder_hidden=(16, 24))
H, W = 16, 24


def _images(b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 2, 3, H, W, generator=g)


def _grad_norm(params):
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


# ---------------------------------------------------------------------------------------------------- model


def test_output_shapes_and_ranges():
    torch.manual_seed(0)
    m = GSemSplatPredictor(TINY)
    out = m(_images(b=2))
    want = {"pts3d": (3,), "conf": (), "means": (3,), "offsets": (3,), "scales": (3,), "quats": (4,),
            "opacities": (), "sh": (1, 3), "region": (LATENT_DIM,), "context": (LATENT_DIM,)}
    for k, tail in want.items():
        assert tuple(out[k].shape) == (2, 2, H, W, *tail), k
    assert (out["scales"] > 0).all() and (out["conf"] > 1).all()
    assert torch.allclose(out["quats"].norm(dim=-1), torch.ones(2, 2, H, W), atol=1e-5)
    assert ((out["opacities"] > 0) & (out["opacities"] < 1)).all()
    # release init: opacity starts at sigmoid(-2), scale at exp(bias), offsets tiny, points near init_depth
    assert torch.allclose(out["opacities"], torch.full_like(out["opacities"], 1 / (1 + math.e ** 2)), atol=0.05)
    assert torch.allclose(out["scales"], torch.full_like(out["scales"], math.exp(TINY.scale_init[1])), rtol=1e-2)
    assert out["offsets"].abs().max() < 1e-3
    assert (out["pts3d"].norm(dim=-1) - TINY.init_depth).abs().max() < 0.5
    dec = m.decode(out["region"], "region")
    assert tuple(dec.shape) == (2, 2, H, W, TINY.text_dim)
    with pytest.raises(ValueError, match="exactly 2 views"):
        m(torch.rand(1, 3, 3, H, W))
    with pytest.raises(ValueError, match="region | context"):
        m.decode(out["region"], "sam")


def test_sh_degree_one_layout_and_ray_prior():
    cfg = dataclasses.replace(TINY, sh_degree=1)
    m = GSemSplatPredictor(cfg)
    K = torch.tensor([[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]]).expand(1, 2, 3, 3)
    out = m(_images(), K)
    assert tuple(out["sh"].shape) == (1, 2, H, W, 4, 3)
    # with intrinsics, untrained points lie along each pixel's ray: left pixels have x < 0, right ones x > 0
    assert (out["pts3d"][0, 0, :, 0, 0] < 0).all() and (out["pts3d"][0, 0, :, -1, 0] > 0).all()


def test_published_preset_has_the_released_shapes():
    with torch.device("meta"):  # no memory: shapes only
        m = GSemSplatPredictor(GSemSplatConfig.published())
    sd = m.state_dict()
    assert tuple(sd["patch_embed.proj.weight"].shape) == (1024, 3, 16, 16) and len(m.enc_blocks) == 24
    assert tuple(sd["decoder_embed.weight"].shape) == (768, 1024) and len(m.dec_blocks2) == 12
    assert tuple(sd["downstream_head1.dpt.head.4.weight"].shape) == (4, 128, 1, 1)  # MASt3R: pts3d + conf
    assert tuple(sd["downstream_head2.gaussian_dpt.dpt.head.4.weight"].shape) == (14, 128, 1, 1)  # 3+3+4+3+1
    assert tuple(sd["downstream_head1.gaussian_language.dpt.head.4.weight"].shape) == (33, 128, 1, 1)
    assert tuple(sd["downstream_head1.dpt.act_postprocess.3.0.weight"].shape) == (768, 768, 1, 1)
    assert tuple(sd["language_decoder_patch.4.weight"].shape) == (512, 128, 1, 1)
    assert not any(p.requires_grad for p in m.backbone_parameters())


def test_frozen_backbone_gets_no_grads_while_heads_do():
    for frozen in (True, False):
        torch.manual_seed(0)
        m = GSemSplatPredictor(dataclasses.replace(TINY, freeze_backbone=frozen, freeze_pointmap_head=frozen))
        out = m(_images())
        (out["pts3d"].sum() + out["scales"].sum() + out["region"].sum() + out["context"].sum()).backward()
        bb = list(m.backbone_parameters())
        if frozen:
            assert all(p.grad is None for p in bb) and all(not p.requires_grad for p in bb)
            assert all(p.grad is None for p in m.pointmap_parameters())
        else:
            assert _grad_norm(bb) > 0 and _grad_norm(m.pointmap_parameters()) > 0
        for head in (m.downstream_head1, m.downstream_head2):
            assert _grad_norm(head.gaussian_dpt.parameters()) > 0
            assert _grad_norm(head.gaussian_language.parameters()) > 0


def test_means_are_detached_pointmap_plus_offset():
    m = GSemSplatPredictor(TINY)
    out = m(_images())
    assert torch.allclose(out["means"], out["pts3d"] + out["offsets"], atol=1e-6)
    out["means"].sum().backward()
    assert _grad_norm(m.pointmap_parameters()) == 0  # no gradient to the pointmap head through the means
    assert _grad_norm(list(m.backbone_parameters())) > 0  # ... but the offset path reaches the backbone
    off = m.downstream_head1.gaussian_dpt.dpt.head[-1]
    assert float(off.weight.grad[:3].abs().sum()) > 0  # the offset channels
    assert float(off.weight.grad[3:].abs().sum()) == 0


def test_semantic_loss_reaches_both_decoders_and_both_latents():
    from feedforward.render import render_gaussians

    torch.manual_seed(0)
    m = GSemSplatPredictor(dataclasses.replace(TINY, freeze_backbone=True))
    K = torch.tensor([[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]])
    out = m(_images(), K.expand(1, 2, 3, 3))
    flat = {k: v[0].reshape(2 * H * W, *v.shape[4:]) for k, v in out.items()}
    flat["sem"] = torch.cat([flat["region"], flat["context"]], -1)
    r = render_gaussians(flat, torch.eye(4)[None], K[None], W, H, 0, with_features=True)
    lat = {"region": r["feature"][..., :LATENT_DIM], "context": r["feature"][..., LATENT_DIM:]}
    tgt = torch.nn.functional.normalize(torch.randn(1, H, W, TINY.text_dim), dim=-1)
    valid = torch.ones(1, H, W, dtype=torch.bool)
    losses = dual_semantic_loss(m.decode, lat, {"region": (tgt, valid), "context": (tgt.flip(-1), valid)},
                                torch.ones(1, H, W, dtype=torch.bool))
    assert set(losses) == {"region", "context"} and all(v.item() > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert _grad_norm(m.language_decoder_sam.parameters()) > 0
    assert _grad_norm(m.language_decoder_patch.parameters()) > 0
    last = m.downstream_head1.gaussian_language.dpt.head[-1].weight.grad  # [33, C, 1, 1]
    assert float(last[:16].abs().sum()) > 0 and float(last[16:32].abs().sum()) > 0
    assert float(last[32].abs().sum()) == 0  # channel 32 is unused
    # only the region term: the context decoder gets nothing
    m.zero_grad(set_to_none=True)
    lat = {k: v.detach().requires_grad_() for k, v in lat.items()}
    dual_semantic_loss(m.decode, lat, {"region": (tgt, valid)}, valid)["region"].backward()
    assert all(p.grad is None for p in m.language_decoder_patch.parameters()) and lat["context"].grad is None


def test_predictor_interface():
    m = GSemSplatPredictor(TINY).eval()
    pred = m.predict(_images()[0])
    assert isinstance(pred, PredictedGaussians)
    pred.check()
    assert pred.num == 2 * H * W and pred.features.shape == (2 * H * W, 2 * LATENT_DIM)
    assert pred.view_index[-1] == 1 and tuple(pred.pixel[-1].tolist()) == (H - 1, W - 1)
    cue = m.features_to_cue_space(pred.features[:5])
    assert cue.shape == (5, TINY.text_dim) and m.cue_dim == TINY.text_dim
    # == the region decoder on a 1x1 map
    ref = m.language_decoder_sam(pred.features[:5, :LATENT_DIM, None, None])[:, :, 0, 0]
    assert torch.allclose(cue, ref)
    assert m.size_multiple == TINY.patch_size and m.image_size is None
    with pytest.raises(ValueError, match="exactly 2 views"):
        m.predict(torch.rand(3, 3, H, W))


def test_scene_init_accepts_the_predictor():
    from feedforward.scene_init import predict_scene

    m = GSemSplatPredictor(TINY).eval()
    ims = [torch.rand(3, H, W) for _ in range(3)]
    K = torch.tensor([[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]]).expand(3, 3, 3)
    c2w = torch.eye(4).expand(3, 4, 4).clone()
    c2w[:, 0, 3] = torch.arange(3.0) * 0.1
    pred = predict_scene(m, ims, K, c2w, window=2, align_depth=False)
    assert pred.frame == "world" and pred.num == 3 * H * W and pred.features.shape[1] == 2 * LATENT_DIM


# ------------------------------------------------------------------------------------------------ checkpoints


def _release_layout(model: GSemSplatPredictor) -> dict:
    """Our state dict renamed to a Splatt3R/GSemSplat Lightning layout: ``encoder.`` prefix on the MASt3R part,
    MASt3R's descriptor MLP and mask token added, decoder convs numbered 0, 1, 2 (a ModuleList without ReLUs)."""
    sd = {}
    for k, v in model.state_dict().items():
        t = 0.05 * torch.randn_like(v)  # small: random weights at 1 overflow the exp activations
        if k.startswith("language_decoder"):
            dec, i, p = k.split(".")
            sd[f"{dec}.{int(i) // 2}.{p}"] = t
        else:
            sd["encoder." + k] = t
    sd["encoder.downstream_head1.head_local_features.fc1.weight"] = torch.randn(8, 64)
    sd["encoder.mask_token"] = torch.randn(1, 1, 32)
    return sd


def test_release_checkpoint_round_trip(tmp_path):
    sd = _release_layout(GSemSplatPredictor(TINY))
    path = tmp_path / "gsemsplat.ckpt"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    m = load_gsemsplat_checkpoint(path, cfg=TINY)
    own = m.state_dict()
    assert torch.equal(own["enc_blocks.0.attn.qkv.weight"], sd["encoder.enc_blocks.0.attn.qkv.weight"])
    assert torch.equal(own["downstream_head2.gaussian_language.dpt.head.4.bias"],
                       sd["encoder.downstream_head2.gaussian_language.dpt.head.4.bias"])
    assert torch.equal(own["language_decoder_patch.4.weight"], sd["language_decoder_patch.2.weight"])
    assert torch.equal(own["language_decoder_sam.2.bias"], sd["language_decoder_sam.1.bias"])
    # the sizes are inferred from the keys (heads = width // 64 by the ViT convention)
    inferred = config_from_state(normalise_keys(sd))
    for f in ("patch_size", "enc_dim", "enc_depth", "dec_dim", "dec_depth", "head_feature_dim", "head_layer_dims",
              "sh_degree", "text_dim", "decoder_hidden"):
        assert getattr(inferred, f) == getattr(TINY, f), f
    m2 = load_gsemsplat_checkpoint(path)  # no cfg: inferred
    assert torch.equal(m2.state_dict()["dec_blocks2.1.mlp.fc2.weight"], own["dec_blocks2.1.mlp.fc2.weight"])
    # a gaussian_dpt without the .dpt. nesting loads too
    flat = {k.replace("gaussian_dpt.dpt.", "gaussian_dpt."): v for k, v in sd.items()}
    torch.save({"state_dict": flat}, tmp_path / "flat.ckpt")
    m3 = load_gsemsplat_checkpoint(tmp_path / "flat.ckpt", cfg=TINY)
    assert torch.equal(m3.state_dict()["downstream_head1.gaussian_dpt.dpt.head.4.weight"],
                       own["downstream_head1.gaussian_dpt.dpt.head.4.weight"])
    # ours: save / load round trip with the configuration
    m.input_size = (H, W)
    save_gsemsplat(m, tmp_path / "ours.pth")
    m4 = load_gsemsplat_checkpoint(tmp_path / "ours.pth")
    assert m4.cfg == TINY and m4.input_size == (H, W)
    x = _images()
    with torch.no_grad():
        assert torch.allclose(m4(x)["means"], m(x)["means"]) and torch.allclose(m4(x)["region"], m(x)["region"])


def test_release_checkpoint_mismatch_errors_are_one_line(tmp_path):
    sd = _release_layout(GSemSplatPredictor(TINY))
    bad = dict(sd)
    key = "encoder.downstream_head1.gaussian_dpt.dpt.head.4.weight"
    bad[key] = torch.randn(12, *sd[key].shape[1:])
    torch.save({"state_dict": bad}, tmp_path / "bad.ckpt")
    with pytest.raises(InputError) as e:
        load_gsemsplat_checkpoint(tmp_path / "bad.ckpt", cfg=TINY)
    msg = str(e.value)
    assert "\n" not in msg and "bad.ckpt" in msg and "downstream_head1.gaussian_dpt.dpt.head.4.weight" in msg
    missing = {k: v for k, v in sd.items() if not k.startswith("language_decoder_patch")}
    torch.save({"state_dict": missing}, tmp_path / "nodec.ckpt")
    with pytest.raises(InputError, match=r"nodec\.ckpt: no tensor 'language_decoder_patch\.0\.weight'"):
        load_gsemsplat_checkpoint(tmp_path / "nodec.ckpt", cfg=TINY)
    lang = {k: (torch.randn(32, *v.shape[1:]) if k.endswith("gaussian_language.dpt.head.4.weight") else v)
            for k, v in sd.items()}
    torch.save({"state_dict": lang}, tmp_path / "lang.ckpt")
    with pytest.raises(InputError, match="33"):
        load_gsemsplat_checkpoint(tmp_path / "lang.ckpt", cfg=TINY)
    with pytest.raises(InputError, match="not found"):
        load_gsemsplat_checkpoint(tmp_path / "nowhere.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a loadable"):
        load_gsemsplat_checkpoint(tmp_path / "junk.ckpt")


def test_backbone_from_mast3r_and_croco_layouts(tmp_path):
    src = GSemSplatPredictor(TINY)
    sd = {k: torch.randn_like(v) for k, v in src.state_dict().items()
          if not k.startswith(("language_decoder", "downstream_head1.gaussian", "downstream_head2.gaussian"))}
    sd["downstream_head1.head_local_features.fc1.weight"] = torch.randn(8, 64)  # MASt3R's descriptor MLP
    sd["enc_pos_embed"] = torch.randn(4, 32)
    torch.save({"model": sd, "args": "AsymmetricMASt3R(...)"}, tmp_path / "mast3r.pth")
    m = GSemSplatPredictor(TINY)
    before = m.state_dict()["downstream_head1.gaussian_dpt.dpt.head.4.weight"].clone()
    rep = load_backbone_weights(m, tmp_path / "mast3r.pth")
    own = m.state_dict()
    assert torch.equal(own["enc_blocks.0.mlp.fc1.weight"], sd["enc_blocks.0.mlp.fc1.weight"])
    assert torch.equal(own["downstream_head2.dpt.scratch.refinenet1.out_conv.weight"],
                       sd["downstream_head2.dpt.scratch.refinenet1.out_conv.weight"])
    assert torch.equal(own["downstream_head1.gaussian_dpt.dpt.head.4.weight"], before)  # heads untouched
    assert "downstream_head1.gaussian_language.dpt.head.4.weight" in rep["missing"]
    assert "language_decoder_sam.0.weight" in rep["missing"]
    # CroCo: one decoder, copied into both; no pointmap heads
    croco = {k: v for k, v in sd.items() if not k.startswith(("dec_blocks2", "downstream_head"))}
    torch.save({"model": croco}, tmp_path / "croco.pth")
    m = GSemSplatPredictor(TINY)
    load_backbone_weights(m, tmp_path / "croco.pth")
    assert torch.equal(m.state_dict()["dec_blocks2.1.attn.qkv.weight"], sd["dec_blocks.1.attn.qkv.weight"])
    # a different size: one line naming the file and the first mismatching key
    wide = dict(sd)
    wide["enc_norm.weight"] = torch.randn(48)
    torch.save({"model": wide}, tmp_path / "wide.pth")
    with pytest.raises(InputError) as e:
        load_backbone_weights(GSemSplatPredictor(TINY), tmp_path / "wide.pth")
    assert "\n" not in str(e.value) and "wide.pth" in str(e.value) and "'enc_norm.weight'" in str(e.value)
    torch.save({"model": {"foo": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="no backbone tensor"):
        load_backbone_weights(GSemSplatPredictor(TINY), tmp_path / "other.pth")


# ------------------------------------------------------------------------------------------------------ losses


def _cam(hh=4, ww=4):
    return torch.tensor([[2.0, 0, ww / 2], [0, 2.0, hh / 2], [0, 0, 1]])


def test_visibility_mask_by_hand():
    K = _cam()[None]
    eye = torch.eye(4)[None]
    depth = torch.ones(1, 4, 4)
    assert visibility_mask(depth, K, eye, depth, K, eye).all()
    t_depth = depth.clone()
    t_depth[0, 0, 0] = 0.0  # no GT depth -> out
    c_depth = depth.clone()
    c_depth[0, 1, 1] = 2.0  # occluder-free context sees depth 2 where the target point is at 1: rel. error 0.5
    c_depth[0, 2, 2] = 1.05  # rel. error 0.048 < 0.1: kept
    mask = visibility_mask(t_depth, K, eye, c_depth, K, eye)
    expect = torch.ones(1, 4, 4, dtype=torch.bool)
    expect[0, 0, 0] = expect[0, 1, 1] = False
    assert torch.equal(mask, expect)
    c_depth[0, 3, 3] = 1.2  # rel. 0.17 (out) ...
    assert not visibility_mask(t_depth, K, eye, c_depth, K, eye)[0, 3, 3]
    c_depth[0, 3, 3] = 10.0  # ... but with an absolute tolerance of 0.25 (depth units) 1.2 would pass, 10 not
    c_depth[0, 3, 2] = 1.2
    mask = visibility_mask(t_depth, K, eye, c_depth, K, eye, abs_tol=0.25)
    assert mask[0, 3, 2] and not mask[0, 3, 3] and mask[0, 2, 2] and not mask[0, 1, 1]
    # the target camera 1 m to the right (viewmat t = -1): its columns 2, 3 project outside the context image
    shifted = torch.eye(4)
    shifted[0, 3] = -1.0
    mask = visibility_mask(depth, K, shifted[None], depth, K, eye)
    assert mask[0, :, :2].all() and not mask[0, :, 2:].any()
    # ... unless a second context view sees them (the union over context views)
    mask = visibility_mask(depth, K, shifted[None], depth.repeat(2, 1, 1), K.repeat(2, 1, 1),
                           torch.stack([torch.eye(4), shifted]))
    assert mask.all()


def test_rgb_loss_by_hand():
    pred = torch.zeros(1, 1, 2, 3)
    gt = torch.ones(1, 1, 2, 3)
    mask = torch.tensor([[[True, False]]])
    assert float(rgb_loss(pred, gt, mask)) == pytest.approx(1.0)
    pred[0, 0, 0] = 0.5
    pred[0, 0, 1] = -5.0  # masked out: no effect
    assert float(rgb_loss(pred, gt, mask)) == pytest.approx(0.25)
    lp = lambda a, b: (a - b).abs().mean()  # noqa: E731 - a stand-in LPIPS on the masked images
    assert float(rgb_loss(pred, gt, mask, lpips=lp)) == pytest.approx(0.25 + 0.25 * (0.5 * 3) / 6)
    assert float(rgb_loss(pred, gt, torch.zeros_like(mask))) == 0.0


def test_semantic_loss_by_hand():
    t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [1, 2, 2]: two pixels
    ones = torch.ones(1, 2, dtype=torch.bool)
    assert float(semantic_loss(t.clone(), t, ones)) == pytest.approx(0.0, abs=1e-6)
    assert float(semantic_loss(2 * t, t, ones)) == pytest.approx(0.5)  # L1 0.5 (channel mean), cos 1
    assert float(semantic_loss(t.flip(-1), t, ones)) == pytest.approx(2.0)  # L1 1, orthogonal: 1 - cos = 1
    p = torch.tensor([[[1.0, 1.0], [100.0, -100.0]]])
    only_first = torch.tensor([[True, False]])
    assert float(semantic_loss(p, t, only_first)) == pytest.approx(0.5 + 1 - 1 / math.sqrt(2))
    assert float(semantic_loss(p, t, torch.zeros_like(only_first))) == 0.0


# ---------------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def pair_corpus(tmp_path_factory):
    from feedforward.corpus import CorpusConfig, make_corpus

    out = tmp_path_factory.mktemp("gsem") / "corpus"
    make_corpus(CorpusConfig(out=out, num_train=1, num_val=0, num_test=0, views=6, width=32, height=24,
                             progress=False))
    return out


def test_training_steps_on_a_pair_reduce_the_loss(pair_corpus):
    import numpy as np

    from feedforward.corpus import load_split
    from feedforward.gsemsplat.training import GSemSplatTrainConfig, make_optimizer, region_targets, train_step
    from feedforward.sampling import make_view_set, random_view_set

    (scene,) = load_split(pair_corpus, "train")
    vs = make_view_set(scene, [0, 2], [1])
    # context targets: a stand-in for dense features, the region targets smoothed over 3x3 pixels
    reg, valid = region_targets(vs, torch.arange(vs.n_views))
    dense = torch.nn.functional.avg_pool2d(reg.permute(0, 3, 1, 2), 3, 1, 1).permute(0, 2, 3, 1)
    ctx = (torch.nn.functional.normalize(dense, dim=-1), valid)
    torch.manual_seed(0)
    model = GSemSplatPredictor(dataclasses.replace(TINY, text_dim=reg.shape[-1]))
    cfg = GSemSplatTrainConfig(lr=2e-3)
    opt = make_optimizer(model, cfg)
    hist = [train_step(model, opt, vs, cfg, context_features=ctx) for _ in range(12)]
    assert {"rgb", "region", "context", "geometry", "loss", "mask_fraction"} <= set(hist[0])
    assert hist[0]["mask_fraction"] > 0.5  # the neighbours of a 3-frame window see most of the target
    for k in ("loss", "region", "context"):
        assert np.mean([h[k] for h in hist[-3:]]) < hist[0][k], (k, [round(h[k], 4) for h in hist])
    # frozen backbone and pointmap head: no geometry term, the frozen weights do not move
    frozen = GSemSplatPredictor(dataclasses.replace(TINY, text_dim=reg.shape[-1], freeze_backbone=True,
                                                    freeze_pointmap_head=True))
    w0 = frozen.enc_blocks[0].attn.qkv.weight.clone()
    vs2 = random_view_set([scene], np.random.default_rng(0), views=[2], n_targets=1, strides=[2])
    st = train_step(frozen, make_optimizer(frozen, cfg), vs2, cfg)
    assert "geometry" not in st and "context" not in st and torch.equal(frozen.enc_blocks[0].attn.qkv.weight, w0)


def test_context_targets_from_dense_features_folder(pair_corpus):
    import numpy as np

    from feedforward.corpus import load_split
    from feedforward.gsemsplat.training import GSemSplatTrainConfig, dense_context_features, gsemsplat_losses
    from feedforward.sampling import make_view_set
    from unisem_ns.cues.layout import write_dense_features

    (scene,) = load_split(pair_corpus, "train")
    rng = np.random.default_rng(0)
    d = scene.cue_feats.shape[1]
    for stem in scene.stems:  # half-resolution grids, as the simulator stores them
        write_dense_features(scene.path, stem, rng.normal(size=(12, 16, d)))
    vs = make_view_set(scene, [0, 2], [1])
    feats, valid = dense_context_features(scene, vs)
    assert feats.shape == (3, 24, 32, d) and valid.all()
    assert torch.allclose(feats.norm(dim=-1), torch.ones(3, 24, 32), atol=1e-3)
    model = GSemSplatPredictor(dataclasses.replace(TINY, text_dim=d))
    losses, _ = gsemsplat_losses(model, vs, GSemSplatTrainConfig(), context_features=(feats, valid))
    assert "context" in losses and losses["context"].item() > 0
