"""``unisem-predict`` (feedforward/preview.py): the held-out renders, segmentation, relevancy, the 3DGS PLY and
metrics.json of a feed-forward prediction on the tiny scene, its one-line errors, and an oracle predictor built
from the scene's own depth whose held-out renders must be good."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from feedforward.predictor import save_unisem_predictor
from feedforward.preview import main, read_scene_cameras
from test_feedforward_init import OracleDepthPredictor, tiny_predictor

PROPS_3DGS = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
              "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def _ply_header(path):
    with open(path, "rb") as f:
        head = f.read(4096)
    text = head[: head.index(b"end_header")].decode()
    lines = text.splitlines()
    count = next(int(l.split()[-1]) for l in lines if l.startswith("element vertex"))
    props = [l.split()[-1] for l in lines if l.startswith("property")]
    return lines, count, props


@pytest.fixture(scope="module")
def predictor_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pred") / "predictor.pt"
    save_unisem_predictor(tiny_predictor(), path)
    return path


@pytest.fixture(scope="module")
def preview(tiny_scene, predictor_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("preview")
    main(["--data", str(tiny_scene), "--predictor", str(predictor_file), "--views", "4", "--stride", "2",
          "--output", str(out), "--queries", "sofa;a lamp", "--device", "cpu"])
    return out


def test_held_out_images(preview, tiny_scene):
    cams = read_scene_cameras(tiny_scene)
    stems = [cams.stems[i] for i in cams.test]
    assert stems == ["frame_00000", "frame_00008", "frame_00016"]  # the scene's test_filenames
    for stem in stems:
        for name in ("rgb.png", "depth.png", "segmentation.png", "relevancy_sofa.png", "relevancy_a_lamp.png"):
            with Image.open(preview / stem / name) as im:
                assert im.size == (64, 48) and im.mode == "RGB", (stem, name)
        with Image.open(preview / stem / "segmentation_ids.png") as im:
            ids = np.asarray(im)
        classes = json.loads((tiny_scene / "gt" / "classes.json").read_text())
        assert ids.shape == (48, 64) and ids.min() >= 1 and ids.max() < len(classes)  # class ids, no void


def test_gaussian_ply(preview):
    lines, count, props = _ply_header(preview / "gaussians.ply")
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    assert props[: len(PROPS_3DGS)] == PROPS_3DGS  # the order of ns-export gaussian-splat (sh degree 0)
    assert props[len(PROPS_3DGS):] == [f"f_sem_{i}" for i in range(8)]  # the tiny predictor's sem_dim
    assert all(l.startswith("property float ") for l in lines if l.startswith("property"))
    assert count == 4 * (64 // 2) * (48 // 2)  # 4 views, stride 2
    from plyfile import PlyData

    v = PlyData.read(str(preview / "gaussians.ply"))["vertex"].data
    assert len(v) == count
    q = np.stack([v[f"rot_{i}"] for i in range(4)], -1)
    assert np.allclose(np.linalg.norm(q, axis=-1), 1, atol=1e-4)
    assert np.isfinite(np.stack([v[p] for p in PROPS_3DGS], -1)).all()


def test_metrics(preview):
    m = json.loads((preview / "metrics.json").read_text())
    for key in ("psnr", "depth", "segmentation", "timing_s", "gaussians", "held_out_views", "per_view",
                "train_views_used", "depth_ratios"):
        assert key in m, key
    assert m["held_out_views"] == 3 and len(m["per_view"]) == 3 and len(m["train_views_used"]) == 4
    assert m["gaussians"] == m["gaussians_written"] == 4 * 32 * 24
    assert np.isfinite(m["psnr"]) and 0 <= m["segmentation"]["miou"] <= 1 and 0 <= m["segmentation"]["macc"] <= 1
    assert set(m["depth"]) >= {"abs_rel", "delta_1.25"}
    assert set(m["timing_s"]) >= {"load", "predict", "render", "total"}
    assert m["queries"] == ["sofa", "a lamp"]
    assert m["labels"][0] == "wall" and "void" not in m["labels"]
    assert all(r is not None for r in m["depth_ratios"])  # the tiny scene has depth: every window aligned


def test_missing_predictor_is_one_line(tiny_scene, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(tiny_scene), "--predictor", str(tmp_path / "nope.yml"), "--output", str(tmp_path / "o")])
    msg = str(exc.value.code)
    assert len(msg.splitlines()) == 1 and msg.startswith("unisem-predict: error: ")
    assert "nope.yml" in msg and "--predictor" in msg and "unisem-feedforward" in msg
    assert not (tmp_path / "o").exists()  # nothing is written for bad input


def test_bad_scene_is_one_line(predictor_file, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(tmp_path / "nowhere"), "--predictor", str(predictor_file)])
    msg = str(exc.value.code)
    assert len(msg.splitlines()) == 1 and "nowhere" in msg and "unisem-make-scene" in msg
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(tmp_path), "--predictor", str(predictor_file), "--window", "1"])
    assert "--window" in str(exc.value.code) or "transforms.json" in str(exc.value.code)


def test_oracle_predictor_renders_held_out_views(tiny_scene, tmp_path, monkeypatch):
    """A 'perfect' predictor (the scene's own depth and poses, scale 1) through the whole preview path: the
    held-out views it never saw render well, with near-zero depth error; so frames, axes and cameras agree."""
    import feedforward.predictor as fp
    from feedforward.preview import _depth
    from feedforward.scene_init import read_rgb
    from feedforward.scene_init import evenly_spaced

    cams = read_scene_cameras(tiny_scene)
    chosen = [cams.train[j] for j in evenly_spaced(len(cams.train), 0)]
    images = [read_rgb(cams.images[i]) for i in chosen]
    depths = [_depth(cams, i) for i in chosen]
    oracle = OracleDepthPredictor(images, depths, cams.K[chosen], cams.c2w[chosen], 1.0)
    monkeypatch.setattr(fp, "load_unisem_predictor", lambda path, device="cpu": oracle)
    out = tmp_path / "oracle"
    main(["--data", str(tiny_scene), "--predictor", "oracle", "--views", "0", "--output", str(out)])
    m = json.loads((out / "metrics.json").read_text())
    assert all(r == pytest.approx(1.0, rel=1e-4) for r in m["depth_ratios"])
    assert m["psnr"] > 18.0, m["per_view"]
    assert m["depth"]["abs_rel"] < 0.1, m["depth"]  # 0.065 measured: occlusion edges
    assert m["coverage"] > 0.9
    assert "segmentation" not in m and m["labels"] == []  # no semantic output: said, not faked
    assert not (out / "frame_00000" / "segmentation.png").exists()
    _, count, props = _ply_header(out / "gaussians.ply")
    assert count == len(chosen) * 64 * 48 and not any(p.startswith("f_sem_") for p in props)
