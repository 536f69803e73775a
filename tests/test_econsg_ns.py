"""econSG end to end on CPU: simulated CLIP + SAM cues -> ns-train econsg (CRR, 3D fusion, latent AE, latent
Gaussians) -> ns-eval mIoU -> unisem-query through the AE's latent space; and the ablation switches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import ns_bin, ns_train, run_cli

pytest.importorskip("nerfstudio")
pytestmark = pytest.mark.slow  # end to end through the ns-* commands
from test_viewer import check_viewer_shows_the_scene, needs_chromium  # noqa: E402

ITERS = 400


@pytest.fixture(scope="session")
def econ_scene(room_with_cues) -> Path:
    return room_with_cues


def _train(scene: Path, out: Path, name: str, *extra: str) -> Path:
    return ns_train("econsg", scene, out, name, ITERS, "--steps-per-eval-image", "0", *extra)


@pytest.fixture(scope="session")
def econ_run(econ_scene, tmp_path_factory) -> Path:
    return _train(econ_scene, tmp_path_factory.mktemp("econ_runs"), "full")


def test_preparation_is_cached_next_to_the_scene(econ_run, econ_scene):
    (folder,) = (econ_scene / "econsg").glob("d6-*")  # one cache per setting
    manifest = json.loads((folder / "manifest.json").read_text())
    summary = manifest["summary"]
    assert summary["points"] > 1000 and summary["memory"]["latent_dim"] == 6
    assert (folder / "autoencoder.pt").exists()


def test_ns_eval_beats_the_raw_cues(econ_run, econ_scene):
    from unisem_ns.cues.simulator import raw_cue_predictions
    from unisem_ns.data.scene_io import load_gt_maps
    from unisem_ns.language.encoders import make_text_encoder
    from unisem_ns.metrics.segmentation import semantic_segmentation_metrics

    out = econ_run / "metrics.json"
    proc = run_cli([ns_bin("ns-eval"), "--load-config", str(econ_run / "config.yml"), "--output-path", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert results["psnr"] > 18.0
    # Raw cues of the same held-out views (per-view mean, as ns-eval averages views).
    classes = json.loads((econ_scene / "gt" / "classes.json").read_text())
    stems = [Path(f).stem for f in json.loads((econ_scene / "transforms.json").read_text())["test_filenames"]]
    preds = raw_cue_predictions(econ_scene, stems, make_text_encoder("minilm"), classes)
    raw = np.mean([
        semantic_segmentation_metrics(preds[s].astype(np.int64), load_gt_maps(econ_scene, s)["semantic"],
                                      num_classes=len(classes), ignore_index=0)["miou"]
        for s in stems
    ])
    assert results["miou"] > raw, (results["miou"], raw)


def test_query_goes_through_the_autoencoder_latent(econ_run, tmp_path):
    out = tmp_path / "query"
    proc = run_cli([ns_bin("unisem-query"), "--load-config", str(econ_run / "config.yml"), "--output", str(out),
                    "--queries", "couch"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["segmentation"]["miou"] > 0.2
    assert metrics["queries"]["couch"]["best_class"] == "sofa", metrics["queries"]["couch"]


def test_no_ae_ablation_renders_full_dim_features(econ_scene, tmp_path):
    """--prep.use-ae False: the latent is the 384-d cue space itself, cached under its own key."""
    run = _train(econ_scene, tmp_path, "noae", "--pipeline.datamanager.prep.use-ae", "False",
                 "--pipeline.datamanager.prep.use-crr", "False", "--pipeline.model.latent-init", "False",
                 "--max-num-iterations", "20")
    assert len(list((econ_scene / "econsg").glob("d*-noae-*/manifest.json"))) == 1
    import torch

    import unisem_ns.ns.checkpoints  # noqa: F401  (allow-list for weights_only loads)

    ckpt = sorted((run / "nerfstudio_models").glob("*.ckpt"))[-1]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["pipeline"]
    assert state["_model.gauss_params.features_sem"].shape[1] == 384


@needs_chromium
def test_viewer_shows_the_run(tmp_path, econ_run):
    check_viewer_shows_the_scene(econ_run / "config.yml", tmp_path, "viewer_econsg.png")


def test_scene_without_depth_uses_depth_rendered_by_an_rgb_run(runs, tiny_scene, tmp_path):
    """No depths/: --pipeline.datamanager.depth-from takes a unisem-splat run's rendered depth for the fusion."""
    from conftest import copy_scene
    from unisem_ns.cues.simulator import CueCorruption, simulate_cues
    from unisem_ns.language.encoders import make_text_encoder

    scene = copy_scene(tiny_scene, tmp_path / "nodepth")
    meta = json.loads((scene / "transforms.json").read_text())
    for frame in meta["frames"]:
        frame.pop("depth_file_path", None)
    (scene / "transforms.json").write_text(json.dumps(meta))
    simulate_cues(scene, make_text_encoder("minilm"), CueCorruption.preset("default"), seed=0, progress=False)
    # Without depth and without a run to render it, the preparation says what to do.
    proc = run_cli([ns_bin("ns-train"), "econsg", "--data", str(scene), "--output-dir", str(tmp_path / "o"),
                    "--max-num-iterations", "1", "--vis", "tensorboard"])
    assert proc.returncode != 0 and "depth" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    run = _train(scene, tmp_path / "o", "rendered", "--pipeline.datamanager.depth-from",
                 str(runs["first"] / "config.yml"), "--max-num-iterations", "5")
    (folder,) = (scene / "econsg").glob("d6-*")
    summary = json.loads((folder / "manifest.json").read_text())["summary"]
    assert summary["points"] > 500 and (run / "config.yml").exists()
