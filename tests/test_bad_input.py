"""Bad input: each case ends in one line that names the file and says what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import copy_scene, ns_bin, run_cli
from unisem_ns.data.scene_io import InputError, validate_scene


def edit_transforms(scene: Path, fn) -> None:
    path = scene / "transforms.json"
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def first_image(scene: Path) -> Path:
    return scene / json.loads((scene / "transforms.json").read_text())["frames"][0]["file_path"]


def test_valid_scene_passes(tiny_scene):
    frames = validate_scene(tiny_scene)
    assert len(frames) == 24 and all(f.depth is not None for f in frames)


def test_missing_image(tiny_scene, tmp_path):
    scene = copy_scene(tiny_scene, tmp_path / "s")
    img = first_image(scene)
    img.unlink()
    with pytest.raises(InputError, match=rf"{img}: image named by .*transforms.json \(frame 0\) is missing"):
        validate_scene(scene)


def test_unreadable_image(tiny_scene, tmp_path):
    scene = copy_scene(tiny_scene, tmp_path / "s")
    img = first_image(scene)
    img.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InputError, match=rf"{img}: unreadable image .*replace the file"):
        validate_scene(scene)


def test_transforms_without_intrinsics(tiny_scene, tmp_path):
    scene = copy_scene(tiny_scene, tmp_path / "s")

    def drop(meta):
        for key in ("fl_x", "fl_y", "cx", "cy"):
            meta.pop(key)

    edit_transforms(scene, drop)
    with pytest.raises(InputError, match=r"transforms.json: frame 0 has no intrinsics \(fl_x missing\); add fl_x, fl_y"):
        validate_scene(scene)


def test_image_size_not_matching_intrinsics(tiny_scene, tmp_path):
    scene = copy_scene(tiny_scene, tmp_path / "s")
    edit_transforms(scene, lambda meta: meta.update(w=meta["w"] * 2))
    with pytest.raises(InputError, match=r"image is 64x48 but .*declares w=128, h=48; fix w/h"):
        validate_scene(scene)


def test_empty_scene_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty/transforms.json: not found \(the folder is empty\); make a scene with `unisem-make-scene"):
        validate_scene(tmp_path / "empty")
    with pytest.raises(InputError, match="no such scene folder"):
        validate_scene(tmp_path / "nowhere")


def test_ns_train_prints_one_line_for_bad_input(tiny_scene, tmp_path):
    scene = copy_scene(tiny_scene, tmp_path / "s")
    img = first_image(scene)
    img.unlink()
    proc = run_cli([ns_bin("ns-train"), "unisem-splat", "--data", str(scene), "--vis", "tensorboard",
                    "--output-dir", str(tmp_path / "out"), "--max-num-iterations", "1"])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("unisem_ns: error: ") and str(img) in last and "restore it" in last


def test_checkpoint_from_another_method(tiny_scene, tmp_path):
    """A checkpoint whose pipeline holds no Gaussians (e.g. a NeRF's) is refused by ns-eval in one line."""
    pytest.importorskip("nerfstudio")
    out = tmp_path / "out"
    proc = run_cli([ns_bin("ns-train"), "unisem-splat", "--data", str(tiny_scene), "--vis", "tensorboard",
                    "--output-dir", str(out), "--experiment-name", "x", "--timestamp", "t", "--max-num-iterations", "1"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = out / "x" / "unisem-splat" / "t"
    ckpt = next((run / "nerfstudio_models").glob("step-*.ckpt"))
    import unisem_ns.ns.checkpoints  # noqa: F401

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    # Replace the model state with a NeRF-style field, as another method would have written.
    state["pipeline"] = {"_model.field.mlp_base.params": torch.zeros(10), "_model.field.aabb": torch.zeros(2, 3)}
    torch.save(state, ckpt)
    proc = run_cli([ns_bin("ns-eval"), "--load-config", str(run / "config.yml"), "--output-path", str(tmp_path / "m.json")])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("unisem_ns: error: ") and str(ckpt) in last, last
    assert "not a Gaussian-splatting checkpoint" in last and "load it with that method" in last

    # Same Gaussians but another feature width (another configuration): also refused, naming both.
    state["pipeline"] = {"_model.gauss_params.means": torch.zeros(5, 3), "_model.gauss_params.scales": torch.zeros(5, 3)}
    torch.save(state, ckpt)
    proc = run_cli([ns_bin("ns-eval"), "--load-config", str(run / "config.yml"), "--output-path", str(tmp_path / "m.json")])
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "written by another method or configuration" in last and "features_sem" in last


def test_gt_maps_and_queries_load(tiny_scene, tmp_path):
    import numpy as np
    from PIL import Image

    from unisem_ns.data.scene_io import load_gt_maps, load_gt_queries

    scene = copy_scene(tiny_scene, tmp_path / "s")
    maps = load_gt_maps(scene, "frame_00000")
    assert maps["semantic"].shape == maps["instance"].shape == (48, 64) and maps["semantic"].max() > 0
    assert load_gt_queries(scene) == {}
    mask = np.zeros((48, 64), np.uint8)
    mask[10:20, 5:15] = 255
    Image.fromarray(mask).save(scene / "gt" / "q0.png")
    (scene / "gt" / "queries.json").write_text(json.dumps({"frame_00000": {"red sofa": "gt/q0.png"}}))
    q = load_gt_queries(scene)
    assert q["frame_00000"]["red sofa"].sum() == 100
    (scene / "gt" / "queries.json").write_text("{broken")
    with pytest.raises(InputError, match=r"queries.json: unreadable JSON"):
        load_gt_queries(scene)
