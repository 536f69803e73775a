"""unisem-panoptic end to end on CPU: ns-train unisem-panoptic (econSG's semantic latent + Unified-Lift's
instance codebook in one model) -> ns-eval (mIoU, PQ^scene, panoptic PQ) -> unisem-query (class / instance /
panoptic PNGs) -> unisem-export-instances (class, instance, latent per Gaussian). A short training: these check
that every piece runs and answers in range, not how good it is (benchmarks are separate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_cue_scene, ns_bin, ns_train, run_cli

pytest.importorskip("nerfstudio")
pytestmark = pytest.mark.slow  # end to end through the ns-* commands

ITERS = 40


@pytest.fixture(scope="module")
def panoptic_scene(tmp_path_factory) -> Path:
    """Seed-1 room at 64x48 with simulated SAM masks (ids permuted per view), language cues and GT."""
    return make_cue_scene(tmp_path_factory.mktemp("panoptic") / "scene", seed=1, views=24)


@pytest.fixture(scope="module")
def panoptic_run(panoptic_scene, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("panoptic_runs")
    return ns_train("unisem-panoptic", panoptic_scene, out, "run", ITERS, "--steps-per-eval-image", "0")


@pytest.fixture(scope="module")
def pipeline(panoptic_run):
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipe, _, _ = eval_setup(panoptic_run / "config.yml", test_mode="test")
    return pipe


def _classes(scene: Path):
    return json.loads((scene / "gt" / "classes.json").read_text())


def test_one_model_declares_both_heads_and_named_channels(pipeline, panoptic_run):
    import torch

    from unisem_ns.capabilities import FeatureChannelsHead, InstanceHead, PanopticHead, SemanticHead

    model = pipeline.model
    assert isinstance(model, PanopticHead) and isinstance(model, SemanticHead) and isinstance(model, InstanceHead)
    assert isinstance(model, FeatureChannelsHead)
    assert model.feature_channels == {"semantic": 6, "instance": 16}
    assert model.gauss_params["features_sem"].shape[1] == 22
    import unisem_ns.utils.safe_globals  # noqa: F401  (allow-list for weights_only loads)

    ckpt = torch.load(next((panoptic_run / "nerfstudio_models").glob("*.ckpt")), weights_only=True)
    keys = set(ckpt["pipeline"])
    assert {"_model.codebook.code", "_model.class_sum", "_model.code_usage", "_model.text_latents"} <= keys
    # the codes accumulated class votes during training
    assert float(model.class_sum.sum()) > 0
    assert set(model.thing_class_ids).isdisjoint(model.stuff_class_ids)
    assert model.class_names.index("wall") in model.stuff_class_ids
    assert model.class_names.index("chair") in model.thing_class_ids


def test_losses_reach_only_their_own_channel(pipeline):
    """econSG's semantic terms train the semantic columns, Unified-Lift's contrastive term the instance columns;
    both share the geometry through the one render (docs/methods/panoptic.md, "Shared geometry")."""
    import torch

    model = pipeline.model
    camera = pipeline.datamanager.train_dataset.cameras[0:1].to(model.device)
    batch = pipeline.datamanager.train_dataset[0]
    try:
        model.eval()  # a differentiable render outside the trainer (no densification bookkeeping)
        outputs = model.get_outputs(camera)
        model.train()
        losses = model.get_loss_dict(outputs, batch, {})
        assert {"semantic_loss", "ce_loss", "instance_contrastive_loss", "instance_norm_loss"} <= set(losses)
        params = model.gauss_params
        d = model.feature_channels["semantic"]
        (g_sem,) = torch.autograd.grad(losses["semantic_loss"], params["features_sem"], retain_graph=True)
        assert g_sem[:, :d].abs().sum() > 0 and (g_sem[:, d:] == 0).all()
        g_inst, g_means = torch.autograd.grad(losses["instance_contrastive_loss"],
                                              [params["features_sem"], params["means"]], retain_graph=True)
        assert g_inst[:, d:].abs().sum() > 0 and (g_inst[:, :d] == 0).all()
        assert g_means.abs().sum() > 0  # the instance loss is not detached from geometry (weighted 1e-6)
    finally:
        model.eval()


def test_ns_eval_reports_semantic_instance_and_panoptic_figures(panoptic_run):
    out = panoptic_run / "metrics.json"
    proc = run_cli([ns_bin("ns-eval"), "--load-config", str(panoptic_run / "config.yml"), "--output-path", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    for key in ("miou", "macc", "pq_scene", "sq_scene", "rq_scene", "panoptic_pq", "panoptic_sq", "panoptic_rq"):
        assert key in results, (key, sorted(results))
        assert 0.0 <= results[key] <= 1.0, (key, results[key])
    assert "miou_view_mean" in results  # pooled over the views, as econsg's ns-eval
    assert results["miou"] > 0.05  # econSG's latent init already separates classes after a few steps
    assert results["psnr"] > 15.0


def test_query_writes_class_instance_and_panoptic_pngs(panoptic_run, panoptic_scene, tmp_path):
    out = tmp_path / "query"
    proc = run_cli([ns_bin("unisem-query"), "--load-config", str(panoptic_run / "config.yml"), "--output", str(out),
                    "--queries", "chair"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["panoptic"]["pq"] <= 1.0 and metrics["panoptic"]["protocol"] == "panoptic_lifting"
    assert 0.0 <= metrics["instances"]["pq_scene"] <= 1.0
    classes = _classes(panoptic_scene)
    stuff = {classes.index(c) for c in ("wall", "floor", "ceiling", "window", "door", "rug")}
    views = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(views) == metrics["views"] > 0
    for view in views:
        cls = np.asarray(Image.open(view / "panoptic_class.png")).astype(np.int64)
        inst = np.asarray(Image.open(view / "panoptic_instance.png")).astype(np.int64)
        colour = np.asarray(Image.open(view / "panoptic.png"))
        assert cls.shape == inst.shape == (48, 64) and colour.shape == (48, 64, 3)
        assert cls.min() >= 0 and cls.max() < len(classes)
        on_stuff = np.isin(cls, list(stuff))
        assert (inst[on_stuff] == 0).all()  # stuff is one segment per class, no instance
        assert (inst[~on_stuff & (cls > 0)] > 0).all()  # every thing pixel belongs to an instance
        assert on_stuff.any()  # the room's walls / floor are in every view


def test_text_query_selects_the_instances_of_its_class(pipeline):
    model = pipeline.model
    model.query_field.set_queries(["chair", "wall"])
    try:
        camera, _ = next(iter(pipeline.datamanager.fixed_indices_eval_dataloader))
        outputs = model.get_outputs_for_camera(camera)
        chair, wall = model.class_names.index("chair"), model.class_names.index("wall")
        assert model.query_classes().tolist() == [chair, wall]
        for i, c in enumerate((chair, wall)):
            mask = outputs[f"query_class_mask_{i}"][..., 0] > 0.5
            assert (mask == (outputs["panoptic_classes"] == c)).all()
        assert outputs["query_class_mask_1"].sum() > 0  # walls are visible
    finally:
        model.query_field.set_queries([])


def test_click_names_the_selected_objects_class(pipeline):
    import torch

    model = pipeline.model
    camera, _ = next(iter(pipeline.datamanager.fixed_indices_eval_dataloader))
    outputs = model.get_outputs_for_camera(camera)
    # the ray through the view's centre pixel
    c2w = camera.camera_to_worlds[0]
    origin, direction = c2w[:, 3], -c2w[:, 2]
    code = model.instance_along_ray(origin, direction)
    assert 0 <= code < model.config.instance.codebook_size
    text = model.describe_instance(code)
    c = int(model.code_class_ids()[code])
    assert f"selected instance {code}" in text and (model.class_names[c] if c > 0 else "unknown") in text
    assert outputs["panoptic"].shape[-1] == 3


def test_export_ply_has_class_instance_and_latent(panoptic_run, panoptic_scene, tmp_path):
    from unisem_ns.panoptic import read_panoptic_ply

    out = tmp_path / "pan.ply"
    proc = run_cli([ns_bin("unisem-export-instances"), "--load-config", str(panoptic_run / "config.yml"),
                    "--output", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    base, latents = read_panoptic_ply(out)
    assert latents.shape == (base.means.shape[0], 6)
    norms = np.linalg.norm(latents, axis=1)  # econSG's unit latent per Gaussian (0 where a fused point had none)
    assert np.all((np.abs(norms - 1) < 1e-4) | (norms == 0)) and (norms > 0).mean() > 0.95
    classes = _classes(panoptic_scene)
    assert base.class_ids.min() >= 1 and base.class_ids.max() < len(classes)
    stuff = np.isin(base.class_ids, [classes.index(c) for c in ("wall", "floor", "ceiling", "window", "door", "rug")])
    assert (base.instance_ids[stuff] == 0).all() and (base.instance_ids[~stuff] > 0).all()
    assert base.class_names[classes.index("chair")] == "chair"
