"""Tests for the procedural indoor scene generator (unisem_ns.data)."""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unisem_ns.data import default_scene
from unisem_ns.data import synthetic_scene as ss
from unisem_ns.data.make_scene import main as make_scene_main

W, H = 48, 36
VIEWS = 8


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scene") / "s0"
    ss.generate_scene(out, seed=0, views=VIEWS, width=W, height=H, test_every=4, progress=False)
    return out


@pytest.fixture(scope="module")
def room0() -> ss.Room:
    return ss.build_room(0)


def _down_c2w(x: float, y: float, z: float) -> np.ndarray:
    """Camera at (x, y, z) looking straight down (-y), image up = world -z."""
    c2w = np.eye(4)
    c2w[:3, 0] = (1.0, 0.0, 0.0)
    c2w[:3, 1] = (0.0, 0.0, -1.0)
    c2w[:3, 2] = (0.0, 1.0, 0.0)  # camera looks along -z_cam = -y
    c2w[:3, 3] = (x, y, z)
    return c2w


def _free_points(room: ss.Room, margin: float, ignore: tuple[str, ...] = ()) -> list[tuple[float, float]]:
    lx, _, lz = room.size
    pts = [(x, z) for x in np.linspace(-lx / 2, lx / 2, 41) for z in np.linspace(-lz / 2, lz / 2, 41)]
    return [(float(x), float(z)) for x, z in pts if room.is_free(x, z, margin=margin, ignore=ignore)]


# ---------------------------------------------------------------------------------------------
# Scene content
# ---------------------------------------------------------------------------------------------


def test_vocabulary() -> None:
    assert ss.CLASS_NAMES[0] == "void"
    assert {"wall", "floor", "ceiling"} <= set(ss.CLASS_NAMES)
    required = {"chair", "table", "sofa", "bed", "lamp", "cabinet", "shelf", "plant", "tv", "rug", "box", "door"}
    assert required <= set(ss.OBJECT_CLASSES)
    assert len(ss.OBJECT_CLASSES) >= 12
    assert len(set(ss.CLASS_NAMES)) == len(ss.CLASS_NAMES)


def test_default_room_content(room0: ss.Room) -> None:
    counts = Counter(i.class_name for i in room0.instances)
    for cls in ss.OBJECT_CLASSES:
        assert counts[cls] >= 1, cls
    assert counts["sofa"] >= 2
    assert sum(counts[c] >= 2 for c in ss.OBJECT_CLASSES) >= 4
    assert counts["wall"] == 4 and counts["floor"] == 1 and counts["ceiling"] == 1
    lx, h, lz = room0.size
    assert 6.0 <= lx <= 8.0 and 6.0 <= lz <= 8.0 and 2.5 <= h <= 3.1
    ids = [i.instance_id for i in room0.instances]
    assert len(set(ids)) == len(ids)
    assert {p.instance_id for p in room0.primitives} == set(ids)


def _inside(prim: ss.Primitive, pts: np.ndarray, shrink: float = 0.995) -> np.ndarray:
    """Independent point-in-primitive test. pts: [N, 3] -> [N] bool (strictly inside, shrunk)."""
    c, s = math.cos(prim.yaw), math.sin(prim.yaw)
    d = pts - np.asarray(prim.center)
    loc = np.stack([c * d[:, 0] - s * d[:, 2], d[:, 1], s * d[:, 0] + c * d[:, 2]], axis=1)
    size = np.asarray(prim.size) * shrink
    if prim.kind == "box":
        return np.all(np.abs(loc) < size, axis=1)
    if prim.kind == "cylinder":
        return (loc[:, 0] ** 2 + loc[:, 2] ** 2 < size[0] ** 2) & (np.abs(loc[:, 1]) < size[1])
    return np.sum((loc / size) ** 2, axis=1) < 1.0


def _sample_in(prim: ss.Primitive, rng: np.random.Generator, n: int = 300) -> np.ndarray:
    c, s = math.cos(prim.yaw), math.sin(prim.yaw)
    loc = rng.uniform(-1.0, 1.0, (n, 3)) * np.asarray(prim.size)
    world = np.stack([c * loc[:, 0] + s * loc[:, 2], loc[:, 1], -s * loc[:, 0] + c * loc[:, 2]], axis=1)
    world += np.asarray(prim.center)
    return world[_inside(prim, world, shrink=1.0)]


def test_objects_inside_room_and_not_interpenetrating(room0: ss.Room) -> None:
    rng = np.random.default_rng(0)
    cls_of = {i.instance_id: i.class_name for i in room0.instances}
    objs = [p for p in room0.primitives if cls_of[p.instance_id] not in ss.ROOM_CLASSES]
    lo, hi = room0.bounds_min, room0.bounds_max
    for p in objs:
        pts = _sample_in(p, rng)
        assert len(pts) > 0
        # Wall-mounted items may reach 1 cm into the wall slab; everything else is inside.
        assert np.all(pts >= lo - 0.011) and np.all(pts <= hi + 0.011), (cls_of[p.instance_id], p)
        for q in objs:
            if q.instance_id == p.instance_id or "rug" in (cls_of[p.instance_id], cls_of[q.instance_id]):
                continue  # rugs may lie under furniture
            assert not _inside(q, pts).any(), (cls_of[p.instance_id], cls_of[q.instance_id])


def test_room_roundtrip_dict(room0: ss.Room) -> None:
    d = json.loads(json.dumps(room0.to_dict()))
    assert ss.Room.from_dict(d) == room0


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def test_build_room_deterministic(room0: ss.Room) -> None:
    assert ss.build_room(0) == room0
    other = ss.build_room(1)
    assert other != room0
    assert other.size != room0.size
    np.testing.assert_array_equal(ss.make_cameras(room0, 4), ss.make_cameras(ss.build_room(0), 4))
    # the first poses do not depend on the number of views
    np.testing.assert_array_equal(ss.make_cameras(room0, 3), ss.make_cameras(room0, 5)[:3])


def test_generate_byte_identical(tmp_path: Path) -> None:
    a = ss.generate_scene(tmp_path / "a", seed=2, views=2, width=32, height=24, progress=False)
    b = ss.generate_scene(tmp_path / "b", seed=2, views=2, width=32, height=24, progress=False)
    c = ss.generate_scene(tmp_path / "c", seed=3, views=2, width=32, height=24, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 * 4 + 5  # 4 maps per view + transforms, ply, classes, instances, scene
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "images/frame_00000.png").read_bytes() != (c / "images/frame_00000.png").read_bytes()
    assert json.loads((a / "scene.json").read_text())["room"] != json.loads((c / "scene.json").read_text())["room"]


# ---------------------------------------------------------------------------------------------
# Exact geometry
# ---------------------------------------------------------------------------------------------


def test_floor_depth_looking_down(room0: ss.Room) -> None:
    for margin in (1.2, 1.0, 0.8, 0.6):  # the most open patch of bare floor (rugs count as obstacles)
        free = _free_points(room0, margin=margin, ignore=())
        if free:
            break
    assert free, "no free floor spot"
    x, z = free[len(free) // 2]
    height = 1.5
    K = ss.camera_intrinsics(W, H)
    r = ss.render_view(room0, _down_c2w(x, height, z), K.fx, K.fy, K.cx, K.cy, W, H)
    cy, cx = H // 2, W // 2
    centre = (slice(cy - 1, cy + 1), slice(cx - 1, cx + 1))
    np.testing.assert_allclose(r["depth"][centre], height, atol=1e-4)
    assert np.all(r["semantic"][centre] == ss.CLASS_IDS["floor"])
    assert np.all(r["instance"][centre] == ss.FLOOR_INSTANCE)
    # z-depth (not ray length) is constant over the whole floor plane, corners included
    floor = r["instance"] == ss.FLOOR_INSTANCE
    assert floor.mean() > 0.3
    np.testing.assert_allclose(r["depth"][floor], height, atol=1e-4)
    assert r["semantic"].min() > 0  # closed room: no void


def test_wall_zdepth_patch(room0: ss.Room) -> None:
    lx, _, lz = room0.size
    K = ss.camera_intrinsics(W, H)
    north = ss.WALL_INSTANCES["north"]
    best = None
    for x0 in np.linspace(-lx / 2 + 1.0, lx / 2 - 1.0, 13):
        for dz in (1.5, 2.0, 2.5, 3.0):
            z0 = -lz / 2 + dz
            if not room0.is_free(float(x0), z0, margin=0.4):
                continue
            c2w = np.eye(4)
            c2w[:3, 3] = (x0, 1.6, z0)  # identity rotation: looks down -z, at the north wall
            r = ss.render_view(room0, c2w, K.fx, K.fy, K.cx, K.cy, W, H)
            frac = (r["instance"] == north).mean()
            if best is None or frac > best[0]:
                best = (frac, dz, r)
    assert best is not None and best[0] > 0.2
    _, dist, r = best
    wall = r["instance"] == north
    assert np.all(r["semantic"][wall] == ss.CLASS_IDS["wall"])
    np.testing.assert_allclose(r["depth"][wall], dist, atol=1e-4)
    # an off-centre wall pixel: its ray length is clearly longer than the z-depth we store
    vs, us = np.nonzero(wall)
    k = int(np.argmax(np.abs(us + 0.5 - K.cx) + np.abs(vs + 0.5 - K.cy)))
    ray = np.array([(us[k] + 0.5 - K.cx) / K.fx, (vs[k] + 0.5 - K.cy) / K.fy, 1.0])
    assert abs(us[k] + 0.5 - K.cx) > W / 4
    assert r["depth"][vs[k], us[k]] == pytest.approx(dist, abs=1e-4)
    assert np.linalg.norm(ray) * dist > dist + 0.05


def test_render_points_match_depth(room0: ss.Room) -> None:
    K = ss.camera_intrinsics(W, H)
    c2w = ss.make_cameras(room0, 1)[0]
    r = ss.render_view(room0, c2w, K.fx, K.fy, K.cx, K.cy, W, H, return_points=True)
    assert r["rgb"].dtype == np.uint8 and r["rgb"].shape == (H, W, 3)
    assert r["depth"].dtype == np.float32 and r["depth"].shape == (H, W)
    assert r["semantic"].shape == (H, W) and r["instance"].shape == (H, W)
    cam = (r["points"].reshape(-1, 3) - c2w[:3, 3]) @ c2w[:3, :3]  # world -> camera
    np.testing.assert_allclose(-cam[:, 2], r["depth"].reshape(-1), rtol=1e-5, atol=1e-5)
    # each hit lies on the ray through its pixel centre (u + 0.5, v + 0.5), OpenGL axes
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    expect = np.stack([(u - K.cx) / K.fx, -(v - K.cy) / K.fy], axis=-1).reshape(-1, 2)
    np.testing.assert_allclose(cam[:, :2] / -cam[:, 2:3], expect, atol=1e-6)
    assert 0 < r["rgb"].min() and r["rgb"].max() < 255  # no blow-outs


# ---------------------------------------------------------------------------------------------
# Files on disk
# ---------------------------------------------------------------------------------------------


def test_layout(scene: Path) -> None:
    tf = json.loads((scene / "transforms.json").read_text())
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_model", "k1", "k2", "p1", "p2", "frames",
                "depth_unit_scale_factor", "ply_file_path", "train_filenames", "val_filenames", "test_filenames"):
        assert key in tf, key
    assert tf["camera_model"] == "OPENCV" and tf["w"] == W and tf["h"] == H
    assert tf["depth_unit_scale_factor"] == 0.001
    assert tf["cx"] == W / 2 and tf["cy"] == H / 2 and tf["fl_x"] == tf["fl_y"]
    hfov = 2 * math.degrees(math.atan(W / 2 / tf["fl_x"]))
    assert 60 <= hfov <= 70
    assert len(tf["frames"]) == VIEWS
    names = [f["file_path"] for f in tf["frames"]]
    train, val, test = set(tf["train_filenames"]), set(tf["val_filenames"]), set(tf["test_filenames"])
    assert val == test and not (train & test) and train | test == set(names)
    assert tf["test_filenames"] == names[::4]
    for f in tf["frames"]:
        stem = Path(f["file_path"]).stem
        assert f["file_path"] == f"images/{stem}.png" and f["depth_file_path"] == f"depths/{stem}.png"
        m = np.asarray(f["transform_matrix"])
        assert m.shape == (4, 4)
        np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-9)
        np.testing.assert_array_equal(m[3], [0, 0, 0, 1])
        assert 1.2 <= m[1, 3] <= 1.8
        rgb = _read(scene / f["file_path"])
        assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
        depth = _read(scene / f["depth_file_path"])
        assert depth.shape == (H, W) and depth.dtype == np.uint16 and depth.min() > 0
        sem = _read(scene / "gt" / "semantic" / f"{stem}.png")
        inst = _read(scene / "gt" / "instance" / f"{stem}.png")
        assert sem.dtype == np.uint8 and inst.dtype == np.uint16
        assert sem.shape == (H, W) and inst.shape == (H, W)

    classes = json.loads((scene / "gt" / "classes.json").read_text())
    assert classes == ss.CLASS_NAMES and classes[0] == "void"
    assert {"wall", "floor", "ceiling"} <= set(classes) and len(classes) - 4 >= 12
    instances = json.loads((scene / "gt" / "instances.json").read_text())
    for f in tf["frames"]:
        stem = Path(f["file_path"]).stem
        sem = _read(scene / "gt" / "semantic" / f"{stem}.png")
        inst = _read(scene / "gt" / "instance" / f"{stem}.png")
        assert inst.min() > 0 and sem.min() > 0
        for iid in np.unique(inst):
            assert str(int(iid)) in instances
            assert np.all(sem[inst == iid] == classes.index(instances[str(int(iid))]))

    meta = json.loads((scene / "scene.json").read_text())
    assert meta["generator"] == ss.GENERATOR_NAME and meta["version"] == ss.GENERATOR_VERSION
    assert meta["seed"] == 0 and meta["args"]["views"] == VIEWS
    assert ss.Room.from_dict(meta["room"]) == ss.build_room(0)


def test_depth_png_matches_render(scene: Path, room0: ss.Room) -> None:
    tf = json.loads((scene / "transforms.json").read_text())
    f = tf["frames"][1]
    r = ss.render_view(room0, np.asarray(f["transform_matrix"]), tf["fl_x"], tf["fl_y"], tf["cx"], tf["cy"], W, H)
    depth = _read(scene / f["depth_file_path"]).astype(np.float64) * tf["depth_unit_scale_factor"]
    np.testing.assert_allclose(depth, r["depth"], atol=0.0005 + 1e-6)
    np.testing.assert_array_equal(_read(scene / f["file_path"]), r["rgb"])
    np.testing.assert_array_equal(_read(scene / "gt" / "instance" / Path(f["file_path"]).name), r["instance"])


def test_multiview_instance_consistency(scene: Path) -> None:
    tf = json.loads((scene / "transforms.json").read_text())
    fx, fy, cx, cy = tf["fl_x"], tf["fl_y"], tf["cx"], tf["cy"]
    frames = tf["frames"]
    c2w = [np.asarray(f["transform_matrix"]) for f in frames]
    depth = [_read(scene / f["depth_file_path"]).astype(np.float64) * tf["depth_unit_scale_factor"] for f in frames]
    inst = [_read(scene / "gt" / "instance" / Path(f["file_path"]).name).astype(np.int64) for f in frames]
    agree = checked = 0
    for i in range(len(frames)):
        # interior pixels only: the 3x3 neighbourhood has one instance, so pixel snapping is harmless
        pad = np.pad(inst[i], 1, mode="edge")
        same = np.ones_like(inst[i], dtype=bool)
        for dv in (0, 1, 2):
            for du in (0, 1, 2):
                same &= pad[dv : dv + H, du : du + W] == inst[i]
        v, u = np.nonzero(same)
        z = depth[i][v, u]
        cam = np.stack([(u + 0.5 - cx) / fx * z, -(v + 0.5 - cy) / fy * z, -z], axis=1)
        world = cam @ c2w[i][:3, :3].T + c2w[i][:3, 3]
        for j in range(len(frames)):
            if j == i:
                continue
            cj = (world - c2w[j][:3, 3]) @ c2w[j][:3, :3]
            zj = -cj[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                uj = np.floor(cj[:, 0] / zj * fx + cx)
                vj = np.floor(-cj[:, 1] / zj * fy + cy)
            ok = (zj > 0.1) & (uj >= 0) & (uj < W) & (vj >= 0) & (vj < H)
            uj, vj = uj[ok].astype(np.int64), vj[ok].astype(np.int64)
            visible = np.abs(depth[j][vj, uj] - zj[ok]) < 0.01 * zj[ok] + 0.002  # not occluded
            a = inst[i][v[ok], u[ok]][visible]
            b = inst[j][vj, uj][visible]
            checked += len(a)
            agree += int((a == b).sum())
    assert checked > 2000
    assert agree / checked > 0.97, agree / checked


def test_point_cloud(scene: Path, room0: ss.Room) -> None:
    ply = scene / "sparse_pc.ply"
    with open(ply, "rb") as f:
        header = b""
        while not header.endswith(b"end_header\n"):
            header += f.readline()
    text = header.decode("ascii")
    assert "format binary_little_endian 1.0" in text
    for prop in ("float x", "float y", "float z", "uchar red", "uchar green", "uchar blue"):
        assert f"property {prop}\n" in text
    n = int(text.split("element vertex ")[1].split()[0])
    assert 5000 <= n <= 20000
    assert ply.stat().st_size == len(header) + n * 15
    xyz, rgb = ss.read_ply(ply)
    assert xyz.shape == (n, 3) and rgb.shape == (n, 3) and rgb.dtype == np.uint8
    assert np.all(xyz >= room0.bounds_min - 1e-3) and np.all(xyz <= room0.bounds_max + 1e-3)
    assert rgb.std() > 10


def test_point_cloud_open3d(scene: Path) -> None:
    o3d = pytest.importorskip("open3d")
    pc = o3d.io.read_point_cloud(str(scene / "sparse_pc.ply"))
    xyz, rgb = ss.read_ply(scene / "sparse_pc.ply")
    np.testing.assert_allclose(np.asarray(pc.points), xyz, atol=1e-6)
    np.testing.assert_allclose(np.asarray(pc.colors), rgb / 255.0, atol=1e-6)


def test_refuses_non_empty_out(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="busy.*overwrite"):
        ss.generate_scene(out, views=2, width=16, height=12, progress=False)
    ss.generate_scene(out, views=3, width=16, height=12, progress=False, overwrite=True)
    ss.generate_scene(out, views=2, width=16, height=12, progress=False, overwrite=True)
    assert len(list((out / "images").iterdir())) == 2  # stale frames removed
    assert (out / "keep.txt").exists()  # files we did not write are left alone


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli_scene"
    argv = ["unisem-make-scene", "--seed", "1", "--views", "3", "--width", "24", "--height", "16",
            "--test-every", "2", "--out", str(out), "--no-progress"]
    monkeypatch.setattr(sys, "argv", argv)
    make_scene_main()
    assert str(out.resolve()) in capsys.readouterr().out
    tf = json.loads((out / "transforms.json").read_text())
    assert tf["w"] == 24 and tf["h"] == 16 and len(tf["frames"]) == 3
    assert tf["test_filenames"] == ["images/frame_00000.png", "images/frame_00002.png"]
    assert json.loads((out / "scene.json").read_text())["seed"] == 1

    with pytest.raises(SystemExit) as exc:
        make_scene_main()
    assert str(out) in str(exc.value) and "--overwrite" in str(exc.value)

    monkeypatch.setattr(sys, "argv", argv + ["--overwrite"])
    make_scene_main()


def test_cli_help_mentions_flags(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        make_scene_main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--seed", "--views", "--width", "--height", "--out", "--test-every", "--overwrite"):
        assert flag in text


# ---------------------------------------------------------------------------------------------
# Cached default scene
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def tiny_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default_scene, "DEFAULT_SCENE_KWARGS",
                        {"seed": 0, "views": 3, "width": 16, "height": 12, "test_every": 8})


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_default_scene_created_once(tmp_path: Path, tiny_default: None) -> None:
    path = default_scene.default_scene_dir(tmp_path, progress=False)
    assert path == tmp_path / "scenes" / default_scene.DEFAULT_SCENE_NAME
    assert (path / "transforms.json").is_file() and (path / "sparse_pc.ply").is_file()
    mtime = (path / "transforms.json").stat().st_mtime_ns
    assert _leftovers(path.parent) == []
    assert default_scene.default_scene_dir(tmp_path, progress=False) == path
    assert (path / "transforms.json").stat().st_mtime_ns == mtime


def test_default_scene_env_var(tmp_path: Path, tiny_default: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(default_scene.CACHE_ENV, str(tmp_path / "envcache"))
    path = default_scene.default_scene_dir(progress=False)
    assert path.is_relative_to(tmp_path / "envcache") and (path / "transforms.json").is_file()


def test_default_scene_interrupted_leaves_nothing(tmp_path: Path, tiny_default: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(out: Path, **kw: object) -> Path:
        (Path(out) / "images").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(default_scene, "generate_scene", boom)
    with pytest.raises(KeyboardInterrupt):
        default_scene.default_scene_dir(tmp_path, progress=False)
    parent = tmp_path / "scenes"
    assert not (parent / default_scene.DEFAULT_SCENE_NAME).exists()
    assert _leftovers(parent) == []


def test_default_scene_concurrent_winner(tmp_path: Path, tiny_default: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process finishes first while we render: use its scene, drop ours."""
    final = tmp_path / "scenes" / default_scene.DEFAULT_SCENE_NAME
    real = default_scene.generate_scene

    def racing(out: Path, **kw: object) -> Path:
        real(out, **kw)
        real(final, **kw)  # the "other process" renames its complete copy into place
        (final / "winner").write_text("other")
        return out

    monkeypatch.setattr(default_scene, "generate_scene", racing)
    assert default_scene.default_scene_dir(tmp_path, progress=False) == final
    assert (final / "winner").read_text() == "other"
    assert _leftovers(final.parent) == []
    assert os.listdir(final.parent) == [final.name]
