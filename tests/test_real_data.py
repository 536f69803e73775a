"""Real-dataset converters (Replica, ScanNet, COLMAP / LERF-Mask) and their Nerfstudio dataparsers.

Every test writes a tiny dataset in the source layout (cameras on a circle looking at a unit sphere, z-depth
ray-cast from the poses, label maps split by hemisphere), converts it and checks the result numerically.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unisem_ns.data.colmap_scene import APPLIED_TRANSFORM, ColmapSceneConfig, convert_colmap_scene
from unisem_ns.data.convert_common import MANIFEST_NAME, select_frames
from unisem_ns.data.replica import ReplicaConfig, convert_replica
from unisem_ns.data.scannet import (
    ScanNetConfig,
    convert_scannet,
    convert_scannet_lsm_corpus,
    iter_scannet_scenes,
    load_lsm_view,
)
from unisem_ns.data.scene_io import InputError, load_depth, load_gt_maps, load_gt_queries, validate_scene
from unisem_ns.data.synthetic_scene import read_ply

# --------------------------------------------------------------------------------------------
# Tiny synthetic sources
# --------------------------------------------------------------------------------------------


def look_at_cv(pos, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """OpenCV camera-to-world (x right, y down, z forward) at ``pos`` looking at ``target``."""
    pos = np.asarray(pos, float)
    z = np.asarray(target, float) - pos
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, pos
    return c2w


def circle_poses(n: int, radius: float = 3.0, height: float = 0.6) -> list:
    return [look_at_cv((radius * np.cos(a), height, radius * np.sin(a))) for a in np.linspace(0, 2 * np.pi, n, endpoint=False)]


def render_sphere(c2w_cv, fx, fy, cx, cy, w, h, r=1.0):
    """z-depth (0 = miss) and world hit points of a sphere of radius r at the origin (pixel centres +0.5)."""
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    d_cam = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1)
    d = d_cam @ c2w_cv[:3, :3].T
    o = c2w_cv[:3, 3]
    a = (d * d).sum(-1)
    b = 2 * (d @ o)
    c = o @ o - r * r
    disc = b * b - 4 * a * c
    t = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), 0.0)
    hit = (disc > 0) & (t > 0)
    depth = np.where(hit, t, 0.0)
    pts = o + d * depth[..., None]
    return depth, pts, hit


def hemi_labels(pts, hit, upper, lower):
    lab = np.zeros(hit.shape, np.int64)
    lab[hit & (pts[..., 1] >= 0)] = upper
    lab[hit & (pts[..., 1] < 0)] = lower
    return lab


def save(path: Path, arr) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path)


def shade(pts, hit):
    rgb = np.full(hit.shape + (3,), 40, np.uint8)
    rgb[hit] = np.clip((pts[hit] * 0.5 + 0.5) * 255, 0, 255).astype(np.uint8)
    return rgb


def make_replica(root: Path, n: int = 10, w: int = 32, h: int = 24) -> list:
    poses = circle_poses(n)
    fx = w / 2.0  # hfov 90
    lines = []
    for i, c2w in enumerate(poses):
        depth, pts, hit = render_sphere(c2w, fx, fx, w / 2, h / 2, w, h)
        save(root / "rgb" / f"rgb_{i}.png", shade(pts, hit))
        save(root / "depth" / f"depth_{i}.png", np.rint(depth * 1000).astype(np.uint16))
        sem = hemi_labels(pts, hit, 3, 7)
        if i == 0:
            sem[0:2, 0:2] = 42  # a class the name file does not know
        save(root / "semantic_class" / f"semantic_class_{i}.png", sem.astype(np.uint8))
        save(root / "semantic_instance" / f"semantic_instance_{i}.png", hemi_labels(pts, hit, 11, 4).astype(np.uint16))
        lines.append(" ".join(f"{v:.9f}" for v in c2w.reshape(-1)))
    (root / "traj_w_c.txt").write_text("\n".join(lines) + "\n")
    return poses


TSV_ROWS = [  # id, raw_category, nyu40id, nyu40class
    (1, "wall", 1, "wall"),
    (2, "chair", 5, "chair"),
    (5, "kitchen cabinet", 3, "cabinet"),
    (7, "lamp", 35, "lamp"),
    (9, "ceiling", 22, "ceiling"),
]


def write_tsv(path: Path) -> None:
    cols = ["id", "raw_category", "category", "count", "nyu40id", "eigen13id", "nyuClass", "nyu40class",
            "eigen13class", "ModelNet40", "ModelNet10", "ShapeNetCore55", "synsetoffset", "wnsynsetid",
            "wnsynsetkey", "mpcat40", "mpcat40index"]
    rows = ["\t".join(cols)]
    for lid, raw, nid, ncls in TSV_ROWS:
        rows.append("\t".join([str(lid), raw, raw, "10", str(nid), "1", raw, ncls] + [""] * 9))
    path.write_text("\n".join(rows) + "\n")


def make_scannet(root: Path, n: int = 8, dw: int = 32, dh: int = 24) -> tuple:
    """SensReader export: colour at 2x the depth size, labels at the colour size (2x2 blocks)."""
    poses = circle_poses(n)
    cw, ch = 2 * dw, 2 * dh
    fx = fy = 0.9 * cw
    K = np.array([[fx, 0, cw / 2, 0], [0, fy, ch / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    (root / "intrinsic").mkdir(parents=True)
    np.savetxt(root / "intrinsic" / "intrinsic_color.txt", K)
    np.savetxt(root / "intrinsic" / "intrinsic_depth.txt", K * np.array([[0.5], [0.5], [1], [1]]))
    base_labels = {}
    for i, c2w in enumerate(poses):
        depth, pts, hit = render_sphere(c2w, fx / 2, fy / 2, dw / 2, dh / 2, dw, dh)
        save(root / "depth" / f"{i}.png", np.rint(depth * 1000).astype(np.uint16))
        _, cpts, chit = render_sphere(c2w, fx, fy, cw / 2, ch / 2, cw, ch)
        (root / "color").mkdir(exist_ok=True)
        Image.fromarray(shade(cpts, chit)).save(root / "color" / f"{i}.jpg", quality=95)
        lab = hemi_labels(pts, hit, 2, 5)  # chair above, kitchen cabinet below
        lab[0:2, 0:3] = 999  # not in the tsv
        lab[-2:, -3:] = 7  # lamp: not a scannet20 class
        base_labels[i] = lab
        save(root / "label-filt" / f"{i}.png", np.kron(lab, np.ones((2, 2), np.int64)).astype(np.uint16))
        inst = hemi_labels(pts, hit, 1, 3)
        save(root / "instance-filt" / f"{i}.png", np.kron(inst, np.ones((2, 2), np.int64)).astype(np.uint8))
        (root / "pose").mkdir(exist_ok=True)
        np.savetxt(root / "pose" / f"{i}.txt", c2w)
    write_tsv(root.parent / "scannetv2-labels.combined.tsv")
    return poses, K, base_labels


def write_colmap_text(model: Path, poses_cv, w, h, fx, names) -> None:
    from nerfstudio.data.utils import colmap_parsing_utils as cpu

    model.mkdir(parents=True, exist_ok=True)
    cams = {1: cpu.Camera(id=1, model="PINHOLE", width=w, height=h, params=np.array([fx, fx, w / 2, h / 2]))}
    ims = {}
    for k, (c2w, name) in enumerate(zip(poses_cv, names), 1):
        w2c = np.linalg.inv(c2w)
        ims[k] = cpu.Image(id=k, qvec=cpu.rotmat2qvec(w2c[:3, :3]), tvec=w2c[:3, 3], camera_id=1, name=name,
                           xys=np.zeros((0, 2)), point3D_ids=np.zeros(0, dtype=int))
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(20, 3))
    pts = {k: cpu.Point3D(id=k, xyz=xyz[k - 1], rgb=np.array([10, 20, 30]), error=0.5, image_ids=np.array([1]),
                          point2D_idxs=np.array([0])) for k in range(1, 21)}
    cpu.write_cameras_text(cams, model / "cameras.txt")
    cpu.write_images_text(ims, model / "images.txt")
    cpu.write_points3D_text(pts, model / "points3D.txt")
    return xyz


def make_lerf_mask(root: Path, n: int = 8, w: int = 32, h: int = 24):
    poses = circle_poses(n)
    fx = 0.8 * w
    names = [f"frame_{k:05d}.jpg" for k in range(n)]
    for c2w, name in zip(poses, names):
        _, pts, hit = render_sphere(c2w, fx, fx, w / 2, h / 2, w, h)
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(shade(pts, hit)).save(root / "images" / name, quality=95)
        save(root / "object_mask" / f"{Path(name).stem}.png", hemi_labels(pts, hit, 1, 2).astype(np.uint8))
    xyz = write_colmap_text(root / "sparse" / "0", poses, w, h, fx, names)
    train = [nm for k, nm in enumerate(names) if k not in (2, 5)]
    for nm in train:
        (root / "images_train").mkdir(exist_ok=True)
        (root / "images_train" / nm).write_bytes((root / "images" / nm).read_bytes())
    # LERF-Mask GT: test_mask/<index into sorted test views>/<query>.png
    m0 = np.zeros((h, w), np.uint8)
    m0[4:10, 5:12] = 255
    save(root / "test_mask" / "0" / "red apple.png", m0)
    save(root / "test_mask" / "1" / "rubber duck.png", 255 - m0)
    return poses, names, fx, xyz


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def frames_by_stem(scene: Path) -> dict:
    meta = json.loads((scene / "transforms.json").read_text())
    return meta, {Path(f["file_path"]).stem: f for f in meta["frames"]}


def assert_same_camera(c2w_gl, c2w_cv, world=np.eye(3), atol=1e-6):
    """Camera centre, viewing direction and right axis agree (OpenGL -z looks where OpenCV +z does)."""
    c2w_gl = np.asarray(c2w_gl)
    np.testing.assert_allclose(c2w_gl[:3, 3], world @ c2w_cv[:3, 3], atol=atol)
    np.testing.assert_allclose(-c2w_gl[:3, 2], world @ c2w_cv[:3, 2], atol=atol)
    np.testing.assert_allclose(c2w_gl[:3, 0], world @ c2w_cv[:3, 0], atol=atol)
    np.testing.assert_allclose(-c2w_gl[:3, 1], world @ c2w_cv[:3, 1], atol=atol)


def mtime(p: Path) -> int:
    return p.stat().st_mtime_ns


# --------------------------------------------------------------------------------------------
# Replica
# --------------------------------------------------------------------------------------------


def test_replica_convert(tmp_path):
    src = tmp_path / "Sequence_1"
    poses = make_replica(src)
    (src / "info_semantic.json").write_text(json.dumps({"classes": [{"id": 3, "name": "chair"}, {"id": 7, "name": "table"}]}))
    scene = convert_replica(src, cfg=ReplicaConfig(test_interval=4, seed_points=2000))
    assert scene == src / "unisem"
    frames = validate_scene(scene)
    assert len(frames) == 10
    meta, by_stem = frames_by_stem(scene)
    # intrinsics: hfov 90 -> fx = W/2; principal point at the image centre (pixel centres at +0.5)
    assert (meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"], meta["w"], meta["h"]) == (16.0, 16.0, 16.0, 12.0, 32, 24)
    for i, c2w in enumerate(poses):
        assert_same_camera(by_stem[f"frame_{i:05d}"]["transform_matrix"], c2w)
    # split: kept frame j is test when j % 4 == 0
    assert meta["test_filenames"] == [f"images/frame_{i:05d}.png" for i in (0, 4, 8)]
    assert len(meta["train_filenames"]) == 7 and meta["val_filenames"] == meta["test_filenames"]
    # images and depth linked (relative symlinks inside the dataset folder), depth in metres
    img = scene / "images" / "frame_00003.png"
    assert img.is_symlink() and not os.path.isabs(os.readlink(img))
    assert img.resolve() == (src / "rgb" / "rgb_3.png").resolve()
    d = load_depth(scene / by_stem["frame_00003"]["depth_file_path"])
    ref, _, hit = render_sphere(poses[3], 16, 16, 16, 12, 32, 24)
    np.testing.assert_allclose(d, ref, atol=6e-4)
    # classes: names from info_semantic.json, compacted; id 42 (unnamed) -> void
    assert json.loads((scene / "gt" / "classes.json").read_text()) == ["void", "chair", "table"]
    gt0 = load_gt_maps(scene, "frame_00000")
    assert gt0["semantic"][0, 0] == 0
    _, pts, hit = render_sphere(poses[0], 16, 16, 16, 12, 32, 24)
    expect = hemi_labels(pts, hit, 1, 2)
    expect[0:2, 0:2] = 0
    np.testing.assert_array_equal(gt0["semantic"], expect)
    # instances: majority class, renumbered in raw-id order (4 -> 1 table, 11 -> 2 chair)
    assert json.loads((scene / "gt" / "instances.json").read_text()) == {"1": "table", "2": "chair"}
    np.testing.assert_array_equal(gt0["instance"], hemi_labels(pts, hit, 2, 1))
    # the seed cloud lies on the sphere (checks axes, intrinsics and depth units together)
    xyz, _ = read_ply(scene / "sparse_pc.ply")
    assert len(xyz) > 500
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=1), 1.0, atol=2e-3)


def test_replica_downscale_names_and_semantic_nerf_split(tmp_path):
    src = tmp_path / "seq"
    poses = make_replica(src)
    cfg = ReplicaConfig(image_downscale=2, split="semantic-nerf", frame_step=4, compact_classes=False, seed_points=0)
    scene = convert_replica(src, tmp_path / "out", cfg)
    meta, by_stem = frames_by_stem(scene)
    assert (meta["fl_x"], meta["cx"], meta["cy"], meta["w"], meta["h"]) == (8.0, 8.0, 6.0, 16, 12)
    # Semantic-NeRF: train 0, 4, 8; test 2, 6 (train + step // 2)
    assert sorted(by_stem) == [f"frame_{i:05d}" for i in (0, 2, 4, 6, 8)]
    assert meta["test_filenames"] == ["images/frame_00002.png", "images/frame_00006.png"]
    validate_scene(scene)
    raw = np.asarray(Image.open(src / "depth" / "depth_6.png"), dtype=np.float64) / 1000
    np.testing.assert_allclose(load_depth(scene / "depths" / "frame_00006.png"), raw[1::2, 1::2], atol=6e-4)
    assert not (scene / "images" / "frame_00000.png").is_symlink()  # resized, written
    # no name file: raw ids kept, named class_<id>
    names = json.loads((scene / "gt" / "classes.json").read_text())
    assert len(names) == 43 and names[3] == "class_3" and names[7] == "class_7" and names[0] == "void"
    sem = load_gt_maps(scene, "frame_00000")["semantic"]
    assert sem.shape == (12, 16) and set(np.unique(sem)) <= {0, 3, 7, 42}
    assert not (scene / "sparse_pc.ply").exists()


def test_replica_cache_reused_and_invalidated(tmp_path):
    src = tmp_path / "seq"
    make_replica(src, n=6)
    cfg = ReplicaConfig(seed_points=100)
    scene = convert_replica(src, cfg=cfg)
    t0, m0 = mtime(scene / "transforms.json"), mtime(scene / MANIFEST_NAME)
    assert convert_replica(src, cfg=ReplicaConfig(seed_points=100)) == scene
    assert (mtime(scene / "transforms.json"), mtime(scene / MANIFEST_NAME)) == (t0, m0)
    # another option -> rebuilt (atomically replaced)
    convert_replica(src, cfg=ReplicaConfig(seed_points=100, test_interval=3))
    assert mtime(scene / "transforms.json") != t0
    t1 = mtime(scene / "transforms.json")
    # a changed source file -> rebuilt
    traj = src / "traj_w_c.txt"
    os.utime(traj, ns=(mtime(traj) + 10**9, mtime(traj) + 10**9))
    convert_replica(src, cfg=ReplicaConfig(seed_points=100, test_interval=3))
    assert mtime(scene / "transforms.json") != t1
    assert not [p for p in tmp_path.glob("seq/.unisem.*")]  # no temporaries left


def test_replica_bad_input(tmp_path):
    src = tmp_path / "seq"
    make_replica(src, n=4)
    traj = src / "traj_w_c.txt"
    lines = traj.read_text().splitlines()
    traj.write_text("\n".join(lines[:2] + [" ".join(["nan"] * 16)] + lines[3:]) + "\n")
    with pytest.raises(InputError, match=rf"^{traj}: line 3 holds a non-finite pose") as err:
        convert_replica(src)
    assert "\n" not in str(err.value)
    traj.unlink()
    with pytest.raises(InputError, match=rf"^{traj}: not found; a Semantic-NeRF Replica sequence needs traj_w_c.txt"):
        convert_replica(src)
    (src / "unrelated").mkdir()
    (src / "unisem").mkdir()
    (src / "unisem" / "notes.txt").write_text("mine")
    traj.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"^{src / 'unisem'}: folder exists and is not a unisem conversion"):
        convert_replica(src)


# --------------------------------------------------------------------------------------------
# ScanNet
# --------------------------------------------------------------------------------------------


def test_scannet_convert_lsm8(tmp_path, caplog):
    src = tmp_path / "scans" / "scene0000_00"
    src.mkdir(parents=True)
    poses, K, base = make_scannet(src)
    np.savetxt(src / "pose" / "5.txt", np.full((4, 4), -np.inf))  # lost tracking
    cfg = ScanNetConfig(label_set="lsm8", frame_step=1, test_interval=3, seed_points=1000)
    with caplog.at_level(logging.WARNING):
        scene = convert_scannet(src, cfg=cfg)
    assert "skipped 1 frame(s) with non-finite poses" in caplog.text
    validate_scene(scene)
    meta, by_stem = frames_by_stem(scene)
    assert sorted(by_stem) == [f"frame_{i:05d}" for i in range(8) if i != 5]
    # split decided before dropping the invalid frame: positions 0, 3, 6 are test
    assert meta["test_filenames"] == [f"images/frame_{i:05d}.jpg" for i in (0, 3, 6)]
    # colour intrinsics scaled from 64x48 to the depth size 32x24
    assert (meta["w"], meta["h"]) == (32, 24)
    np.testing.assert_allclose([meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"]],
                               [K[0, 0] / 2, K[1, 1] / 2, K[0, 2] / 2, K[1, 2] / 2])
    for i in by_stem:
        assert_same_camera(by_stem[i]["transform_matrix"], poses[int(i[-5:])])
    assert Image.open(scene / "images" / "frame_00001.jpg").size == (32, 24)
    assert (scene / "depths" / "frame_00001.png").is_symlink()  # depth already at the output size
    ref, _, _ = render_sphere(poses[1], K[0, 0] / 2, K[1, 1] / 2, 16, 12, 32, 24)
    np.testing.assert_allclose(load_depth(scene / "depths" / "frame_00001.png"), ref, atol=6e-4)
    # lsm8: chair -> chair, kitchen cabinet -> other, unknown id 999 -> other, lamp -> other, 0 -> void
    names = json.loads((scene / "gt" / "classes.json").read_text())
    assert names == ["void", "wall", "floor", "ceiling", "chair", "table", "sofa", "bed", "other"]
    sem = load_gt_maps(scene, "frame_00001")["semantic"]
    lut = {0: 0, 2: 4, 5: 8, 999: 8, 7: 8}
    np.testing.assert_array_equal(sem, np.vectorize(lut.get)(base[1]))
    assert sem[0, 0] == 8 and (sem == 0).any() and (sem == 4).any()
    inst = json.loads((scene / "gt" / "instances.json").read_text())
    assert inst == {"1": "chair", "2": "other"}
    xyz, _ = read_ply(scene / "sparse_pc.ply")
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=1), 1.0, atol=2e-3)


def test_scannet_scannet20_color_size_and_errors(tmp_path):
    src = tmp_path / "scans" / "scene0001_00"
    src.mkdir(parents=True)
    poses, K, base = make_scannet(src, n=6)
    scene = convert_scannet(src, tmp_path / "out", ScanNetConfig(frame_step=2, resize_to="color", seed_points=0))
    meta, by_stem = frames_by_stem(scene)
    assert sorted(by_stem) == ["frame_00000", "frame_00002", "frame_00004"]
    assert (meta["w"], meta["h"], meta["fl_x"], meta["cx"]) == (64, 48, K[0, 0], K[0, 2])
    assert (scene / "images" / "frame_00002.jpg").is_symlink()  # colour already at the output size
    d = load_depth(scene / "depths" / "frame_00002.png")
    raw = np.asarray(Image.open(src / "depth" / "2.png"), dtype=np.float64) / 1000
    np.testing.assert_allclose(d, np.kron(raw, np.ones((2, 2))), atol=6e-4)
    names = json.loads((scene / "gt" / "classes.json").read_text())
    assert len(names) == 21 and names[5] == "chair" and names[3] == "cabinet" and names[20] == "otherfurniture"
    sem = load_gt_maps(scene, "frame_00002")["semantic"]
    lut = {0: 0, 2: 5, 5: 3, 999: 0, 7: 0}  # lamp is not a benchmark class
    np.testing.assert_array_equal(sem, np.kron(np.vectorize(lut.get)(base[2]), np.ones((2, 2), np.int64)))

    # a NaN pose with invalid_poses="error" names the file
    np.savetxt(src / "pose" / "2.txt", np.full((4, 4), np.nan))
    with pytest.raises(InputError, match=rf"^{src / 'pose' / '2.txt'}: non-finite camera pose"):
        convert_scannet(src, tmp_path / "out2", ScanNetConfig(frame_step=2, invalid_poses="error"))
    np.savetxt(src / "pose" / "2.txt", poses[2])
    # a missing tsv names the expected path
    (tmp_path / "scans" / "scannetv2-labels.combined.tsv").unlink()
    with pytest.raises(InputError, match=r"scannetv2-labels.combined.tsv: ScanNet label map not found"):
        convert_scannet(src, tmp_path / "out3", ScanNetConfig(frame_step=2))
    with pytest.raises(InputError, match=rf"^{tmp_path / 'nope.tsv'}: ScanNet label map not found"):
        convert_scannet(src, tmp_path / "out3", ScanNetConfig(frame_step=2, label_map=tmp_path / "nope.tsv"))
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\traw_category\n1\twall\n")
    with pytest.raises(InputError, match=rf"^{bad}: label map lacks column\(s\) nyu40id, nyu40class"):
        convert_scannet(src, tmp_path / "out3", ScanNetConfig(frame_step=2, label_map=bad))
    with pytest.raises(InputError, match=rf"^{tmp_path / 'none'}: no such ScanNet scene folder"):
        convert_scannet(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=rf"^{tmp_path / 'empty' / 'color'}: not found; a ScanNet scene needs color/"):
        convert_scannet(tmp_path / "empty")
    # labels=False converts without ground truth (no tsv needed)
    scene = convert_scannet(src, tmp_path / "out4", ScanNetConfig(frame_step=2, labels=False, seed_points=0))
    assert not (scene / "gt").exists()


def make_lsm_root(root: Path, n: int = 8, w: int = 32, h: int = 24) -> list:
    scene = root / "scene0710_00"
    poses = circle_poses(n)
    fx = 0.8 * w
    K = np.array([[fx, 0, w / 2], [0, fx, h / 2], [0, 0, 1]])
    views = [f"{k * 20:06d}" for k in range(n)]
    for v, c2w in zip(views, poses):
        depth, pts, hit = render_sphere(c2w, fx, fx, w / 2, h / 2, w, h)
        (scene / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(shade(pts, hit)).save(scene / "images" / f"{v}.jpg", quality=95)
        np.savez(scene / "images" / f"{v}.npz", camera_pose=c2w.astype(np.float32), camera_intrinsics=K.astype(np.float32))
        save(scene / "depths" / f"{v}.png", np.rint(depth * 1000).astype(np.uint16))
        save(scene / "labels" / f"{v}.png", hemi_labels(pts, hit, 9, 1).astype(np.uint16))  # ceiling / wall
    write_tsv(root / "scannetv2-labels.combined.tsv")
    (root / "selected_seqs_test.json").write_text(json.dumps({"scene0710_00": views}))
    return poses


def test_scannet_lsm_test_layout(tmp_path):
    root = tmp_path / "scannet_test"
    poses = make_lsm_root(root)
    scenes = list(iter_scannet_scenes(root))
    assert [s.name for s in scenes] == ["scene0710_00"]
    assert scenes[0].test_views == ["000020", "000080"]  # positions 1 and 4 (i % 8 in (1, 4))
    view = load_lsm_view(scenes[0], "000020")
    assert view["image"].shape == (24, 32, 3) and view["depth"].shape == (24, 32)
    assert set(np.unique(view["semantic"])) <= {0, 1, 3}  # lsm8: wall 1, ceiling 3
    scene = convert_scannet(root / "scene0710_00", tmp_path / "conv", ScanNetConfig(seed_points=500))
    meta, by_stem = frames_by_stem(scene)
    assert meta["test_filenames"] == ["images/000020.jpg", "images/000080.jpg"]
    assert_same_camera(by_stem["000040"]["transform_matrix"], poses[2], atol=1e-5)
    assert json.loads((scene / "gt" / "classes.json").read_text())[3] == "ceiling"
    xyz, _ = read_ply(scene / "sparse_pc.ply")
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=1), 1.0, atol=3e-3)
    corpus = convert_scannet_lsm_corpus(root, tmp_path / "corpus", ScanNetConfig(seed_points=0))
    assert json.loads((corpus / "index.json").read_text()) == {"train": [], "val": [], "test": ["scene0710_00"]}
    validate_scene(corpus / "scene0710_00")


# --------------------------------------------------------------------------------------------
# COLMAP / LERF-Mask
# --------------------------------------------------------------------------------------------


def test_colmap_lerf_mask_convert(tmp_path):
    src = tmp_path / "figurines"
    poses, names, fx, xyz = make_lerf_mask(src)
    scene = convert_colmap_scene(src)
    validate_scene(scene)
    meta, by_stem = frames_by_stem(scene)
    assert (meta["fl_x"], meta["cx"], meta["w"], meta["h"]) == (pytest.approx(fx), 16.0, 32, 24)
    A = APPLIED_TRANSFORM[:3, :3]
    assert np.allclose(meta["applied_transform"], APPLIED_TRANSFORM)
    for k, name in enumerate(names):
        assert_same_camera(by_stem[Path(name).stem]["transform_matrix"], poses[k], world=A, atol=1e-5)
    # images_train/ decides the split: frames 2 and 5 are test
    assert meta["test_filenames"] == ["images/frame_00002.jpg", "images/frame_00005.jpg"]
    # test_mask/<idx> -> idx-th test view in name order
    q = json.loads((scene / "gt" / "queries.json").read_text())
    assert q == {"frame_00002": {"red apple": "gt/queries/frame_00002/red apple.png"},
                 "frame_00005": {"rubber duck": "gt/queries/frame_00005/rubber duck.png"}}
    masks = load_gt_queries(scene)
    assert masks["frame_00002"]["red apple"].sum() == 6 * 7
    assert masks["frame_00005"]["rubber duck"].sum() == 32 * 24 - 6 * 7
    # object masks linked as they are
    om = scene / "object_mask" / "frame_00003.png"
    assert om.is_symlink() and om.read_bytes() == (src / "object_mask" / "frame_00003.png").read_bytes()
    # points3D -> sparse_pc.ply in the re-axed world
    pts, rgb = read_ply(scene / "sparse_pc.ply")
    np.testing.assert_allclose(pts, xyz @ A.T, atol=1e-5)
    assert (rgb == [10, 20, 30]).all()


def test_colmap_binary_llffhold_downscale_and_errors(tmp_path):
    from nerfstudio.data.utils import colmap_parsing_utils as cpu

    src = tmp_path / "scene"
    poses, names, fx, _ = make_lerf_mask(src)
    model = src / "sparse" / "0"
    cams, ims, pts = cpu.read_cameras_text(model / "cameras.txt"), cpu.read_images_text(model / "images.txt"), \
        cpu.read_points3D_text(model / "points3D.txt")
    for p in model.iterdir():
        p.unlink()
    cpu.write_model(cams, ims, pts, str(model), ext=".bin")
    for d in ("images_train", "test_mask"):
        for p in sorted((src / d).rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        (src / d).rmdir()
    cfg = ColmapSceneConfig(image_downscale=2, keep_original_world_coordinate=True)
    scene = convert_colmap_scene(src, tmp_path / "out", cfg)
    meta, by_stem = frames_by_stem(scene)
    assert (meta["fl_x"], meta["cx"], meta["w"], meta["h"]) == (pytest.approx(fx / 2), 8.0, 16, 12)
    assert "applied_transform" not in meta
    assert_same_camera(by_stem["frame_00003"]["transform_matrix"], poses[3], atol=1e-5)
    assert meta["test_filenames"] == ["images/frame_00000.jpg"]  # llffhold 8 over 8 images
    assert np.asarray(Image.open(scene / "object_mask" / "frame_00003.png")).shape == (12, 16)
    validate_scene(scene)
    # missing images folder
    os.rename(src / "images", src / "imgs")
    with pytest.raises(InputError, match=rf"^{src / 'images'}: image folder not found"):
        convert_colmap_scene(src, tmp_path / "out5")
    # no model and no transforms.json
    os.rename(src / "imgs", src / "images")
    os.rename(model, src / "sparse" / "old")
    with pytest.raises(InputError, match=r"no COLMAP model .* and no .*transforms.json"):
        convert_colmap_scene(src, tmp_path / "out6")


def test_colmap_transforms_json_source(tmp_path):
    src = tmp_path / "ns_scene"
    poses, names, fx, _ = make_lerf_mask(src)
    frames = [{"file_path": f"images/{n}", "transform_matrix": (p @ np.diag([1, -1, -1, 1])).tolist()} for n, p in zip(names, poses)]
    (src / "transforms.json").write_text(json.dumps({"fl_x": fx, "fl_y": fx, "cx": 16, "cy": 12, "w": 32, "h": 24, "frames": frames}))
    import shutil

    shutil.rmtree(src / "sparse")
    scene = convert_colmap_scene(src, tmp_path / "out")
    meta, by_stem = frames_by_stem(scene)
    assert_same_camera(by_stem["frame_00004"]["transform_matrix"], poses[4])
    assert meta["test_filenames"] == ["images/frame_00002.jpg", "images/frame_00005.jpg"]


# --------------------------------------------------------------------------------------------
# Frame selection and the Nerfstudio dataparsers
# --------------------------------------------------------------------------------------------


def test_select_frames():
    assert select_frames(range(10), 1, None, "interval", 4) == [(i, i % 4 == 0) for i in range(10)]
    assert select_frames(range(20), 5, None, "semantic-nerf") == [(0, False), (2, True), (5, False), (7, True),
                                                                  (10, False), (12, True), (15, False), (17, True)]
    assert [i for i, _ in select_frames(range(100), 2, 5, "none")] == [0, 24, 48, 74, 98]
    with pytest.raises(InputError, match="frame_step >= 2"):
        select_frames(range(10), 1, None, "semantic-nerf")


def test_dataparsers(tmp_path):
    pytest.importorskip("nerfstudio")
    from unisem_ns.ns import real_dataparsers as rd

    for parser_cfg, conv_cfg in ((rd.ReplicaDataParserConfig, ReplicaConfig), (rd.ScanNetDataParserConfig, ScanNetConfig),
                                 (rd.ColmapSceneDataParserConfig, ColmapSceneConfig)):
        assert parser_cfg().convert == conv_cfg()  # converter options live in one place, nested as --convert.*

    rep = tmp_path / "rep"
    make_replica(rep)
    cfg = rd.ReplicaDataParserConfig(data=rep, cache_dir=tmp_path / "cache_rep", convert=ReplicaConfig(seed_points=300))
    parser = cfg.setup()
    train = parser.get_dataparser_outputs("train")
    test = parser.get_dataparser_outputs("test")
    assert (len(train.image_filenames), len(test.image_filenames)) == (8, 2)
    assert train.metadata["class_names"][:1] == ["void"] and train.metadata["depth_filenames"] is not None
    assert "points3D_xyz" in train.metadata and train.metadata["scene_dir"] == tmp_path / "cache_rep"
    assert cfg.data == rep  # the saved config keeps the raw dataset folder

    sn = tmp_path / "scans" / "scene0002_00"
    sn.mkdir(parents=True)
    make_scannet(sn, n=8)
    outs = rd.ScanNetDataParserConfig(data=sn, convert=ScanNetConfig(frame_step=1, seed_points=0, label_set="lsm8")).setup()
    assert len(outs.get_dataparser_outputs("train").image_filenames) == 7
    assert len(outs.get_dataparser_outputs("val").image_filenames) == 1
    assert (sn / "unisem" / "transforms.json").is_file()

    lm = tmp_path / "lerf"
    make_lerf_mask(lm)
    outs = rd.ColmapSceneDataParserConfig(data=lm).setup()
    assert len(outs.get_dataparser_outputs("train").image_filenames) == 6
    assert len(outs.get_dataparser_outputs("test").image_filenames) == 2

    # bad input: a clean exit naming the file
    with pytest.raises(SystemExit, match=rf"unisem_ns: error: {tmp_path / 'nowhere'}: no such Replica sequence folder"):
        rd.ReplicaDataParserConfig(data=tmp_path / "nowhere").setup().get_dataparser_outputs("train")
    with pytest.raises(SystemExit, match=r"no --data given"):
        rd.ScanNetDataParserConfig().setup().get_dataparser_outputs("train")


def test_a_scene_listing_only_test_views_serves_val_from_them(tiny_scene, tmp_path):
    """Corpus scenes list train and test views only: the val split (what ns-train evaluates) is the test list."""
    import json

    from conftest import copy_scene
    from unisem_ns.ns.dataparser import UnisemDataParserConfig

    scene = copy_scene(tiny_scene, tmp_path / "no_val")
    meta = json.loads((scene / "transforms.json").read_text())
    meta.pop("val_filenames", None)
    (scene / "transforms.json").write_text(json.dumps(meta))
    parser = UnisemDataParserConfig(data=scene).setup()
    val = parser.get_dataparser_outputs("val").image_filenames
    test = parser.get_dataparser_outputs("test").image_filenames
    assert [p.name for p in val] == [p.name for p in test] == sorted(Path(f).name for f in meta["test_filenames"])
