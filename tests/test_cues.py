"""2D cues: layout I/O, the cue simulator, the SAM + CLIP front end (tiny random models) and unisem-preprocess."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unisem_ns.cues import layout, preprocess, sam_clip, simulator
from unisem_ns.cues.layout import (
    CueError,
    dense_targets,
    load_language_cue,
    load_object_mask,
    read_encoder_json,
    read_manifest,
    save_language_cue,
    save_object_mask,
)
from unisem_ns.cues.simulator import CueCorruption, raw_cue_predictions, run_simulation, simulate_cues


class StubEncoder:
    """Deterministic stand-in for unisem_ns.language.encoders.TextEncoder (fast, no model): a unit vector per
    string from a hash-seeded Gaussian, and an image tower = fixed random projection of 8x8 pooled pixels."""

    name = "stub"

    def __init__(self, dim: int = 48):
        self.dim = dim
        g = torch.Generator().manual_seed(0)
        self._proj = torch.randn(3 * 8 * 8, dim, generator=g)

    def encode(self, texts):
        rows = []
        for t in texts:
            v = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim)
            rows.append(v / np.linalg.norm(v))
        return torch.tensor(np.array(rows), dtype=torch.float32).reshape(len(rows), self.dim)

    def encode_images(self, images):
        f = torch.nn.functional.adaptive_avg_pool2d(images, 8).flatten(1) @ self._proj
        return f / f.norm(dim=1, keepdim=True).clamp(min=1e-12)

    def to_json(self):
        return {"kind": "stub", "model": "hash", "pretrained": None, "dim": self.dim}


@pytest.fixture(scope="module")
def base_scene(tmp_path_factory) -> Path:
    from unisem_ns.data.synthetic_scene import generate_scene

    out = tmp_path_factory.mktemp("cue_scene") / "scene"
    generate_scene(out, seed=3, views=6, width=48, height=36, progress=False)
    return out


@pytest.fixture
def scene(base_scene, tmp_path) -> Path:
    """A private copy of the tiny scene without any cues."""
    dst = tmp_path / "scene"
    shutil.copytree(base_scene, dst)
    return dst


@pytest.fixture
def enc() -> StubEncoder:
    return StubEncoder()


def _stems(scene: Path):
    return sorted(p.stem for p in (scene / "images").glob("*.png"))


def _gt(scene: Path, kind: str, stem: str) -> np.ndarray:
    return np.asarray(Image.open(scene / "gt" / kind / f"{stem}.png")).astype(np.int64)


def _classes(scene: Path):
    return json.loads((scene / "gt" / "classes.json").read_text())


def _miou_non_void(scene: Path, preds: dict) -> float:
    """Mean IoU over classes present in GT, non-void GT pixels only, from a confusion matrix."""
    c = len(_classes(scene))
    conf = np.zeros((c, c), np.int64)
    for stem, pred in preds.items():
        gt = _gt(scene, "semantic", stem)
        sel = gt > 0
        conf += np.bincount(gt[sel] * c + pred[sel], minlength=c * c).reshape(c, c)
    tp = np.diag(conf)[1:]
    union = conf.sum(0)[1:] + conf.sum(1)[1:] - tp
    present = conf.sum(1)[1:] > 0
    return float((tp[present] / union[present]).mean())


def _agreement(scene: Path, preds: dict) -> float:
    hits = tot = 0
    for stem, pred in preds.items():
        gt = _gt(scene, "semantic", stem)
        sel = gt > 0
        hits += int((pred[sel] == gt[sel]).sum())
        tot += int(sel.sum())
    return hits / tot


def _tree_bytes(scene: Path) -> dict:
    out = {}
    for sub in ("language_features", "object_mask"):
        for p in sorted((scene / sub).iterdir()):
            if p.name != "manifest.json":
                out[f"{sub}/{p.name}"] = p.read_bytes()
    return out


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


def test_layout_roundtrip_dtypes_targets_and_missing_folder(tmp_path):
    scene = tmp_path / "s"
    scene.mkdir()
    with pytest.raises(CueError) as e:
        load_language_cue(scene, "a")
    msg = str(e.value)
    assert "language_features" in msg and "unisem-preprocess --data" in msg and "\n" not in msg
    with pytest.raises(CueError, match="object_mask.*unisem-preprocess --data"):
        load_object_mask(scene, "a")

    seg = np.array([[[0, 1, -1], [1, 1, 0]], [[2, 2, 2], [-1, 2, 2]]])
    feats = np.eye(3, 4)
    save_language_cue(scene, "a", seg, feats)
    s_raw = np.load(scene / "language_features" / "a_s.npy")
    f_raw = np.load(scene / "language_features" / "a_f.npy")
    assert s_raw.dtype == np.int16 and s_raw.shape == (2, 2, 3)
    assert f_raw.dtype == np.float16 and f_raw.shape == (3, 4)
    s, f = load_language_cue(scene, "a")
    np.testing.assert_array_equal(s, seg)
    tgt, valid = dense_targets(s, f, level=0)
    assert tgt.shape == (2, 3, 4) and tgt.dtype == np.float32
    np.testing.assert_array_equal(valid, seg[0] >= 0)
    np.testing.assert_allclose(tgt[0, 1], feats[1])
    assert not tgt[0, 2].any()
    tt, tv = dense_targets(torch.from_numpy(s), torch.from_numpy(f), level=1)
    assert isinstance(tt, torch.Tensor) and tt.shape == (2, 3, 4)
    np.testing.assert_allclose(tt.numpy(), dense_targets(s, f, 1)[0])
    with pytest.raises(ValueError, match="level"):
        dense_targets(s, f, level=2)
    # no temporaries left behind by the atomic writers
    assert not list((scene / "language_features").glob(".*"))

    small = np.array([[0, 3], [255, 7]])
    big = np.array([[0, 300], [65535, 7]])
    assert np.asarray(Image.open(save_object_mask(scene, "u8", small))).dtype == np.uint8
    assert np.asarray(Image.open(save_object_mask(scene, "u16", big))).dtype == np.uint16
    np.testing.assert_array_equal(load_object_mask(scene, "u16"), big)
    with pytest.raises(CueError, match="nope.png"):
        load_object_mask(scene, "nope")


def test_foreign_layouts_load_as_they_are(tmp_path):
    """A LangSplat folder written by hand (4 levels, int32, float16 512-d, no encoder.json) and a Gaussian
    Grouping folder (object_mask only) load as they are."""
    scene = tmp_path / "ls"
    lf = scene / "language_features"
    lf.mkdir(parents=True)
    H, W, D = 5, 7, 512
    rng = np.random.default_rng(0)
    counts = [3, 4, 2, 1]  # masks per level: default, s, m, l
    seg = np.full((4, H, W), -1, np.int32)
    off = 0
    for lvl, k in enumerate(counts):
        seg[lvl] = np.where(rng.random((H, W)) < 0.8, rng.integers(0, k, (H, W)) + off, -1)
        off += k
    feats = rng.standard_normal((off, D)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    np.save(lf / "frame_00000_s.npy", seg)
    np.save(lf / "frame_00000_f.npy", feats.astype(np.float16))
    s, f = load_language_cue(scene, "frame_00000")
    assert s.shape == (4, H, W) and f.shape == (off, D)
    tgt, valid = dense_targets(s, f, level=3)
    assert tgt.shape == (H, W, D)
    np.testing.assert_allclose(tgt[valid], feats[seg[3][valid]], atol=2e-3)
    assert layout.level_names(s.shape[0]) == ("default", "s", "m", "l")
    info = read_encoder_json(scene)
    assert info["kind"] == "open_clip" and info["dim"] == 512 and info["inferred"] is True
    assert layout.list_language_stems(scene) == ["frame_00000"]

    gg = tmp_path / "gg"
    (gg / "object_mask").mkdir(parents=True)
    ids = rng.integers(0, 40, (H, W)).astype(np.uint8)
    Image.fromarray(ids).save(gg / "object_mask" / "frame_00000.png")
    np.testing.assert_array_equal(load_object_mask(gg, "frame_00000"), ids)
    with pytest.raises(CueError, match="language_features"):
        load_language_cue(gg, "frame_00000")
    with pytest.raises(CueError, match="language_features: not found"):
        read_encoder_json(gg)
    save_language_cue(gg, "frame_00000", np.zeros((H, W), int), np.ones((1, 16)))  # not 512-d: no guessing
    with pytest.raises(CueError, match="encoder.json: not found"):
        read_encoder_json(gg)


# --------------------------------------------------------------------------------------------
# Simulator
# --------------------------------------------------------------------------------------------


def test_simulator_none_reproduces_gt_exactly(scene, enc):
    out = simulate_cues(scene, enc, CueCorruption.preset("none"), seed=0, progress=False, log=lambda m: None)
    assert out == scene / "language_features"
    names = _classes(scene)
    text = enc.encode(names).numpy()
    inst_cls = {int(k): names.index(v) for k, v in json.loads((scene / "gt" / "instances.json").read_text()).items()}
    stems = _stems(scene)
    for stem in stems:
        seg, feats = load_language_cue(scene, stem)
        inst = _gt(scene, "instance", stem)
        assert seg.shape == (1, *inst.shape)
        assert feats.shape[0] == len(np.unique(inst[inst > 0]))
        for k in range(feats.shape[0]):
            ids = np.unique(inst[seg[0] == k])
            assert len(ids) == 1, "a mask covers exactly one GT instance"
            np.testing.assert_array_equal(seg[0] == k, inst == ids[0])  # ... and all of it
            np.testing.assert_allclose(feats[k], text[inst_cls[int(ids[0])]], atol=1e-3)
        assert ((seg[0] >= 0) == (inst > 0)).all()
    preds = raw_cue_predictions(scene, stems, enc, names)
    assert _miou_non_void(scene, preds) == 1.0
    assert read_encoder_json(scene) == enc.to_json()
    m = read_manifest(scene)
    assert m["complete"] and sorted(m["done"]) == stems and m["settings"]["corruption"] == CueCorruption().to_json()


def test_corruption_lowers_agreement_monotonically(scene, enc):
    names = _classes(scene)
    stems = _stems(scene)
    agree = {}
    for preset in ("none", "default", "heavy"):
        run_simulation(scene, enc, CueCorruption.preset(preset), seed=0, progress=False, log=lambda m: None)
        agree[preset] = _agreement(scene, raw_cue_predictions(scene, stems, enc, names))
    assert agree["none"] == 1.0
    assert agree["none"] > agree["default"] > agree["heavy"], agree
    assert agree["default"] > 0.4  # corrupted, not destroyed


def test_object_mask_ids_random_per_view_but_partition_gt(scene, enc):
    run_simulation(scene, enc, CueCorruption.preset("none"), seed=0, progress=False, log=lambda m: None)
    ids_per_instance: dict = {}
    for stem in _stems(scene):
        inst = _gt(scene, "instance", stem)
        obj = load_object_mask(scene, stem)
        assert obj.shape == inst.shape
        assert ((obj > 0) == (inst > 0)).all()
        pairs = np.unique(np.stack([inst[inst > 0], obj[inst > 0]], 1), axis=0)
        # a bijection between GT instances and object ids in this view = the same partition
        assert len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))
        assert sorted(pairs[:, 1]) == list(range(1, len(pairs) + 1))
        for i, o in pairs:
            ids_per_instance.setdefault(int(i), []).append(int(o))
    multi = [v for v in ids_per_instance.values() if len(v) > 1]
    assert multi and any(len(set(v)) > 1 for v in multi), "ids must not be consistent across views"


def test_simulation_deterministic_by_seed(base_scene, tmp_path, enc):
    copies = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        dst = tmp_path / name
        shutil.copytree(base_scene, dst)
        run_simulation(dst, enc, CueCorruption.preset("heavy"), seed=seed, progress=False, log=lambda m: None)
        copies.append(_tree_bytes(dst))
    assert copies[0] == copies[1]
    assert copies[0] != copies[2]


def test_files_dtypes_shapes_and_four_levels(scene, enc):
    corr = CueCorruption.preset("default").with_(levels=4)
    run_simulation(scene, enc, corr, seed=1, progress=False, log=lambda m: None)
    for stem in _stems(scene):
        s_raw = np.load(scene / "language_features" / f"{stem}_s.npy")
        f_raw = np.load(scene / "language_features" / f"{stem}_f.npy")
        assert s_raw.dtype in (np.int16, np.int32) and s_raw.shape == (4, 36, 48)
        assert f_raw.dtype == np.float16 and f_raw.shape[1] == enc.dim
        np.testing.assert_allclose(np.linalg.norm(f_raw.astype(np.float32), axis=1), 1.0, atol=2e-3)
        obj = np.asarray(Image.open(scene / "object_mask" / f"{stem}.png"))
        assert obj.dtype in (np.uint8, np.uint16) and obj.shape == (36, 48)
        # rows are offset across levels: level l's indices lie above level l-1's
        ranges = [(s_raw[l][s_raw[l] >= 0].min(), s_raw[l].max()) for l in range(4) if (s_raw[l] >= 0).any()]
        assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))
        assert s_raw.max() < f_raw.shape[0]
        # m (level 2) repeats default (level 0) masks with the same embeddings
        k0 = int(s_raw[0].max()) + 1
        np.testing.assert_array_equal(s_raw[2] >= 0, s_raw[0] >= 0)
        np.testing.assert_array_equal(f_raw[s_raw[2][s_raw[2] >= 0]], f_raw[s_raw[0][s_raw[0] >= 0]])
        assert k0 == len(np.unique(obj[obj > 0]))
    assert json.loads((scene / "language_features" / "encoder.json").read_text())["dim"] == enc.dim


def test_simulate_needs_gt(tmp_path, enc, base_scene):
    dst = tmp_path / "nogt"
    shutil.copytree(base_scene, dst)
    shutil.rmtree(dst / "gt")
    with pytest.raises(CueError, match=r"gt/classes.json.*--mode sam-clip"):
        run_simulation(dst, enc, CueCorruption(), progress=False)


# --------------------------------------------------------------------------------------------
# Resumability, interrupts, CLI
# --------------------------------------------------------------------------------------------


def _count_views(monkeypatch):
    calls = []
    real = simulator._simulate_one

    def counting(scene, stem, *a, **k):
        calls.append(stem)
        return real(scene, stem, *a, **k)

    monkeypatch.setattr(simulator, "_simulate_one", counting)
    return calls


def test_cli_resumes_and_recomputes_on_changed_settings(scene, enc, monkeypatch, capsys):
    monkeypatch.setattr(preprocess, "load_encoder", lambda spec, device="cpu": enc)
    calls = _count_views(monkeypatch)
    argv = ["--data", str(scene), "--mode", "simulate", "--corruption", "default", "--seed", "3", "--no-progress"]
    preprocess.main(argv)
    out = capsys.readouterr().out
    stems = _stems(scene)
    assert sorted(calls) == stems
    assert str((scene / "language_features").resolve()) in out and str((scene / "object_mask").resolve()) in out
    first = _tree_bytes(scene)

    calls.clear()
    preprocess.main(argv)
    assert calls == [] and "up to date" in capsys.readouterr().out

    victim = stems[2]
    (scene / "language_features" / f"{victim}_s.npy").unlink()
    (scene / "object_mask" / f"{victim}.png").unlink()
    preprocess.main(argv)
    assert calls == [victim] and "resuming" in capsys.readouterr().out
    assert _tree_bytes(scene) == first

    calls.clear()
    mpath = scene / "language_features" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["settings"]["corruption"]["drop_prob"] = 0.99
    m["key"] = "0" * 64
    mpath.write_text(json.dumps(m))
    preprocess.main(argv)
    assert sorted(calls) == stems
    assert "settings differ" in capsys.readouterr().out
    assert _tree_bytes(scene) == first

    calls.clear()
    preprocess.main(argv[:-3] + ["--seed", "4", "--no-progress"])
    assert sorted(calls) == stems and "seed" in capsys.readouterr().out


def test_interrupted_run_completes_and_matches_uninterrupted(base_scene, tmp_path, enc, monkeypatch):
    ref = tmp_path / "ref"
    shutil.copytree(base_scene, ref)
    run_simulation(ref, enc, CueCorruption.preset("default"), seed=5, progress=False, log=lambda m: None)

    # 1. an exception between views, after 2 views
    s1 = tmp_path / "s1"
    shutil.copytree(base_scene, s1)
    real = simulator._simulate_one
    n = {"views": 0}

    def flaky(*a, **k):
        if n["views"] == 2:
            raise KeyboardInterrupt
        n["views"] += 1
        return real(*a, **k)

    monkeypatch.setattr(simulator, "_simulate_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(s1, enc, CueCorruption.preset("default"), seed=5, progress=False, log=lambda m: None)
    assert not read_manifest(s1)["complete"] and len(read_manifest(s1)["done"]) == 2
    monkeypatch.setattr(simulator, "_simulate_one", real)
    rep = run_simulation(s1, enc, CueCorruption.preset("default"), seed=5, progress=False, log=lambda m: None)
    assert rep.status == "resumed" and len(rep.reused) == 2 and len(rep.computed) == 4
    assert _tree_bytes(s1) == _tree_bytes(ref) and read_manifest(s1)["complete"]

    # 2. an interrupt in the middle of writing a file (half the bytes written)
    s2 = tmp_path / "s2"
    shutil.copytree(base_scene, s2)
    real_save = np.save
    saves = {"n": 0}

    def torn_save(f, arr, *a, **k):
        saves["n"] += 1
        if saves["n"] == 4:  # the second view's second array (_f.npy is written first, then _s.npy)
            f.write(b"\x93NUMPY half a file")
            raise KeyboardInterrupt
        return real_save(f, arr, *a, **k)

    monkeypatch.setattr(layout.np, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(s2, enc, CueCorruption.preset("default"), seed=5, progress=False, log=lambda m: None)
    monkeypatch.setattr(layout.np, "save", real_save)
    stems = _stems(s2)
    assert (s2 / "language_features" / f"{stems[1]}_f.npy").exists()
    assert not (s2 / "language_features" / f"{stems[1]}_s.npy").exists()  # nothing torn under a final name
    assert read_manifest(s2)["done"] == stems[:1]
    run_simulation(s2, enc, CueCorruption.preset("default"), seed=5, progress=False, log=lambda m: None)
    assert _tree_bytes(s2) == _tree_bytes(ref)
    assert not list((s2 / "language_features").glob(".*.tmp"))


def test_two_runs_on_one_scene_take_turns(base_scene, tmp_path, enc):
    """Two cue jobs started together on one scene: the second waits for the first's lock, then finds every view
    done; the files are those of a single run (without the lock each would sweep the other's temporaries)."""
    import threading

    ref = tmp_path / "ref"
    shutil.copytree(base_scene, ref)
    run_simulation(ref, enc, CueCorruption.preset("default"), seed=5, progress=False, log=lambda m: None)
    scene = tmp_path / "shared"
    shutil.copytree(base_scene, scene)
    reports, logs = [], []

    def run():
        reports.append(run_simulation(scene, enc, CueCorruption.preset("default"), seed=5, progress=False,
                                      log=logs.append))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status for r in reports) == ["fresh", "up to date"], logs
    assert sorted(len(r.computed) for r in reports) == [0, len(_stems(scene))]
    assert _tree_bytes(scene) == _tree_bytes(ref) and read_manifest(scene)["complete"]


def test_cli_help_and_errors(scene, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        preprocess.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data", "--mode", "--corruption", "--text-encoder", "--sam-checkpoint", "--clip", "--seed"):
        assert flag in text
    assert "resum" in text.lower() or "rerun" in text.lower()

    with pytest.raises(SystemExit) as e:
        preprocess.main(["--data", str(tmp_path / "missing"), "--mode", "simulate", "--no-progress"])
    assert "unisem-preprocess: error:" in str(e.value) and "missing" in str(e.value)


def test_missing_sam_checkpoint_error(scene, tmp_path):
    nope = tmp_path / "sam_vit_h_4b8939.pth"
    with pytest.raises(CueError) as e:
        sam_clip.load_sam(nope, "vit_h")
    msg = str(e.value)
    assert str(nope) in msg and "sam_vit_h_4b8939.pth" in msg and "--sam-checkpoint" in msg
    assert "segment-anything" in msg and "\n" not in msg
    with pytest.raises(SystemExit) as e:
        preprocess.main(["--data", str(scene), "--mode", "sam-clip", "--sam-checkpoint", str(nope), "--no-progress"])
    assert "sam_vit_h_4b8939.pth" in str(e.value) and "--sam-checkpoint" in str(e.value)
    with pytest.raises(SystemExit, match="--sam-checkpoint"):
        preprocess.main(["--data", str(scene), "--mode", "sam-clip", "--no-progress"])
    assert not (scene / "language_features").exists()


# --------------------------------------------------------------------------------------------
# Real path with tiny random models
# --------------------------------------------------------------------------------------------


def test_mask_nms_langsplat_rules():
    H = W = 20
    big = np.zeros((H, W), bool)
    big[:, :10] = True
    dup = big.copy()
    dup[0, 0] = False
    inner = np.zeros((H, W), bool)
    inner[2:6, 2:6] = True
    side = np.zeros((H, W), bool)
    side[:, 12:] = True
    masks = np.stack([big, dup, inner, side])
    keep = sam_clip.mask_nms(masks, np.array([0.9, 0.8, 0.95, 0.75]))
    # dup: IoU > 0.8 with the better-scored big; inner: 8 % of big and fully inside it; side: disjoint, kept
    assert sorted(keep.tolist()) == [0, 3]
    assert sam_clip.mask_nms(masks[[2, 3]], np.array([0.1, 0.2])).tolist() == [1, 0]  # none pass 0.7: best 3 kept


def _clip_encoder():
    try:
        from unisem_ns.language.encoders import make_text_encoder

        return make_text_encoder("open_clip:tiny:random")
    except Exception:  # the encoders module is optional for this test
        return StubEncoder()


def test_sam_clip_tiny_random_models_write_layout_and_resume(scene):
    enc = _clip_encoder()
    sam = sam_clip.build_tiny_sam(img_size=64)
    fast = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=0, min_mask_region_area=10)
    gen = sam_clip.make_mask_generator(sam, **fast)
    cfg = sam_clip.SamClipConfig(generator=dict(sam_clip.LANGSPLAT_SAM_SETTINGS, **fast), nms_score=0.0)
    rep = sam_clip.run_sam_clip(scene, enc, cfg, mask_generator=gen, generator_name="tiny-random", progress=False, log=lambda m: None)
    stems = _stems(scene)
    assert sorted(rep.computed) == stems
    for stem in stems:
        s_raw = np.load(scene / "language_features" / f"{stem}_s.npy")
        f_raw = np.load(scene / "language_features" / f"{stem}_f.npy")
        assert s_raw.shape == (4, 36, 48) and s_raw.dtype in (np.int16, np.int32)
        assert f_raw.dtype == np.float16 and f_raw.ndim == 2 and f_raw.shape[1] == enc.dim
        assert -1 <= s_raw.min() and s_raw.max() < f_raw.shape[0]
        obj = load_object_mask(scene, stem)
        assert obj.shape == (36, 48) and ((obj > 0) == (s_raw[0] >= 0)).all()
    assert sum(np.load(scene / "language_features" / f"{s}_f.npy").shape[0] for s in stems) > 0  # CLIP path ran
    assert read_encoder_json(scene) == enc.to_json()
    assert read_manifest(scene)["settings"]["mode"] == "sam-clip"
    rep = sam_clip.run_sam_clip(scene, enc, cfg, mask_generator=gen, generator_name="tiny-random", progress=False, log=lambda m: None)
    assert rep.computed == [] and rep.status == "up to date"


def test_levelled_generator_langsplat_settings_output_format(base_scene):
    """The real SAM generator path (LangSplat's crop layer included) returns SAM records for 4 levels."""
    sam = sam_clip.build_tiny_sam(img_size=64)
    gen = sam_clip.make_mask_generator(sam, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    img = np.asarray(Image.open(base_scene / "images" / "frame_00000.png").convert("RGB"))
    levels = gen(img)
    assert list(levels) == ["default", "s", "m", "l"]
    for name, recs in levels.items():
        for r in recs:
            assert r["segmentation"].shape == img.shape[:2] and r["segmentation"].dtype == bool
            assert {"area", "bbox", "predicted_iou", "stability_score", "point_coords", "crop_box"} <= set(r)
        if name != "default":
            assert all(r["level"] == "sml".index(name) for r in recs)
    enc = StubEncoder()
    seg, feats, obj = sam_clip.sam_clip_view(img, gen, enc, sam_clip.SamClipConfig(nms_score=0.0))
    assert seg.shape == (4, 36, 48) and feats.shape[1] == enc.dim and obj.shape == (36, 48)
    crop = sam_clip.clip_crop(img, np.pad(np.ones((4, 10), bool), ((3, 29), (5, 33))))
    assert crop.shape == (3, 224, 224) and crop.min() >= 0 and crop.max() <= 1
    assert not crop[:, :50].any() and not crop[:, -50:].any() and crop[:, 100:120].any()  # 4x10 box padded to square
