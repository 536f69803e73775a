"""The semantic baseline end to end on CPU: simulated cues -> ns-train unisem-distill -> ns-eval -> unisem-query."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import copy_scene, ns_bin, ns_train, run_cli

pytest.importorskip("nerfstudio")
pytestmark = pytest.mark.slow  # end to end through the ns-* commands


@pytest.fixture(scope="session")
def cue_scene(room_with_cues) -> Path:
    return room_with_cues


@pytest.fixture(scope="session")
def distill_run(cue_scene, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distill")
    return ns_train("unisem-distill", cue_scene, out, "run", 600, "--steps-per-eval-image", "0")


def test_ns_eval_reports_segmentation_metrics(distill_run):
    out = distill_run / "metrics.json"
    proc = run_cli([ns_bin("ns-eval"), "--load-config", str(distill_run / "config.yml"), "--output-path", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert 0.0 <= results["miou"] <= 1.0 and 0.0 <= results["macc"] <= 1.0
    assert results["miou"] > 0.25, results  # 17 classes: chance is far below this
    assert results["psnr"] > 20.0
    # pooled over the views (the scene protocol); the per-view mean is reported beside it
    assert 0.0 < results["miou_view_mean"] <= 1.0 and results["miou_view_mean"] != results["miou"]


def test_ns_eval_and_unisem_query_report_the_same_scene_figures(distill_run, tmp_path):
    proc = run_cli([ns_bin("ns-eval"), "--load-config", str(distill_run / "config.yml"),
                    "--output-path", str(tmp_path / "eval.json")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ns_eval = json.loads((tmp_path / "eval.json").read_text())["results"]
    proc = run_cli([ns_bin("unisem-query"), "--load-config", str(distill_run / "config.yml"),
                    "--output", str(tmp_path / "query")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    query = json.loads((tmp_path / "query" / "metrics.json").read_text())["segmentation"]
    assert ns_eval["miou"] == pytest.approx(query["miou"], abs=1e-9)
    assert ns_eval["macc"] == pytest.approx(query["macc"], abs=1e-9)


def test_query_couch_highlights_the_sofas(distill_run, cue_scene, tmp_path):
    out = tmp_path / "query"
    proc = run_cli([ns_bin("unisem-query"), "--load-config", str(distill_run / "config.yml"), "--output", str(out),
                    "--queries", "couch;lamp"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    couch = metrics["queries"]["couch"]
    # "couch" is no class name: MiniLM brings it to the sofas, and the mask overlaps them best of all classes.
    assert couch["best_class"] == "sofa", couch
    assert couch["best_iou"] > 0.3, couch
    assert "segmentation" in metrics and metrics["segmentation"]["miou"] > 0.2
    views = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(views) == metrics["views"] > 0
    for name in ("rgb.png", "relevancy_couch.png", "composited_couch.png", "mask_couch.png", "segmentation.png"):
        img = np.asarray(Image.open(views[0] / name))
        assert img.shape[:2] == (48, 64), name
    ids = np.asarray(Image.open(views[0] / "segmentation_ids.png"))
    assert ids.min() >= 1 and ids.max() < 18


def test_query_killed_while_writing_then_rerun_writes_what_one_run_writes(distill_run, tmp_path, monkeypatch):
    """unisem-query writes every file through a temporary: killed after some images, it leaves no torn file and
    no metrics.json; the rerun writes exactly what an uninterrupted run writes."""
    from unisem_ns import query

    def run(out):
        query.main(["--load-config", str(distill_run / "config.yml"), "--output", str(out), "--queries", "couch"])

    def tree(out):
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    run(tmp_path / "ref")
    real, n = query.atomic_save_png, {"saves": 0}

    def dies_on_the_seventh(path, arr):
        n["saves"] += 1
        if n["saves"] == 7:
            raise KeyboardInterrupt
        real(path, arr)

    monkeypatch.setattr(query, "atomic_save_png", dies_on_the_seventh)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    monkeypatch.setattr(query, "atomic_save_png", real)
    assert not (tmp_path / "cut" / "metrics.json").exists() and not list((tmp_path / "cut").rglob(".*.tmp"))
    run(tmp_path / "cut")
    assert tree(tmp_path / "cut") == tree(tmp_path / "ref")


def test_viewer_text_box_drives_the_query_outputs(distill_run):
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(distill_run / "config.yml", test_mode="test")
    model = pipeline.model
    camera, _ = next(iter(pipeline.datamanager.fixed_indices_eval_dataloader))
    box = model.query_controls.queries_box
    box.value = "couch; lamp"  # what typing in ns-viewer's text box does
    box.cb_hook(box)
    outputs = model.get_outputs_for_camera(camera)
    for key in ("relevancy_0", "relevancy_1", "composited_0", "composited_1", "segmentation"):
        assert key in outputs, key
    assert outputs["relevancy_0"].shape == (48, 64, 1)
    assert 0.0 <= float(outputs["relevancy_0"].min()) and float(outputs["relevancy_0"].max()) <= 1.0
    labels = model.query_controls.labels_box
    labels.value = "sofa; floor"
    labels.cb_hook(labels)
    outputs = model.get_outputs_for_camera(camera)
    assert int(outputs["segmentation_ids"].max()) <= 1


def test_distill_without_cues_fails_in_one_line(tiny_scene, tmp_path):
    scene = copy_scene(tiny_scene, tmp_path / "nocues")
    proc = run_cli([ns_bin("ns-train"), "unisem-distill", "--data", str(scene), "--vis", "tensorboard",
                    "--output-dir", str(tmp_path / "out"), "--max-num-iterations", "1"])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("unisem_ns: error: ") and str(scene / "language_features") in last
    assert "unisem-preprocess --data" in last


def test_query_refuses_a_run_without_language_features(runs, tmp_path):
    proc = run_cli([ns_bin("unisem-query"), "--load-config", str(runs["first"] / "config.yml"), "--output", str(tmp_path)])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "renders no language features" in last and "unisem-distill" in last
