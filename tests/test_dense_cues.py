"""Dense (LSeg / MaskCLIP-style) language features: layout I/O, the simulator's dense mode, MaskCLIP patch
features of an open_clip ViT (tiny random-init models), validation and the unisem-preprocess flags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from unisem_ns.cues import layout, preprocess, sam_clip, simulator
from unisem_ns.cues.layout import (
    CueError,
    dense_path,
    dense_targets,
    load_language_cue,
    read_dense_features,
    read_manifest,
    scene_stems,
    write_dense_features,
)
from unisem_ns.cues.simulator import CueCorruption, DenseCorruption, simulate_cues, simulate_dense_features
from unisem_ns.data.validate import SceneNeeds, check_scene

QUIET = dict(progress=False, log=lambda m: None)


def _enc_json(scene: Path, dim: int, folder: str = "dense_features") -> None:
    d = scene / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / "encoder.json").write_text(json.dumps({"kind": "stub", "model": "hash", "pretrained": None, "dim": dim}))


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


def test_write_read_roundtrip_upsampling_and_normalisation(tmp_path):
    rng = np.random.default_rng(0)
    h, w, D = 5, 7, 12
    feats = rng.standard_normal((h, w, D)).astype(np.float32) * 3.0  # not unit: the writer normalises
    _enc_json(tmp_path, D)
    path = write_dense_features(tmp_path, "v0", feats)
    assert path == tmp_path / "dense_features" / "v0.npy"
    raw = np.load(path)
    assert raw.dtype == np.float16 and raw.shape == (h, w, D)
    unit = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
    np.testing.assert_allclose(raw.astype(np.float32), unit, atol=2e-3)

    grid = read_dense_features(tmp_path, "v0")
    assert grid.dtype == np.float32 and grid.shape == (h, w, D)
    np.testing.assert_allclose(np.linalg.norm(grid, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(grid, unit, atol=2e-3)

    H, W = 2 * h, 2 * w
    up = read_dense_features(tmp_path, "v0", size=(H, W))
    assert up.shape == (H, W, D) and up.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(up, axis=-1), 1.0, atol=1e-5)
    # bilinear, pixel centres aligned: torch's interpolate(align_corners=False) of the stored grid, re-normalised
    ref = F.interpolate(torch.from_numpy(raw.astype(np.float32)).permute(2, 0, 1)[None], size=(H, W),
                        mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    ref = F.normalize(ref, dim=-1).numpy()
    np.testing.assert_allclose(up, ref, atol=1e-5)
    # a non-integer factor too (e.g. MaskCLIP's patch grid to the image)
    odd = read_dense_features(tmp_path, "v0", size=(17, 24))
    ref = F.interpolate(torch.from_numpy(raw.astype(np.float32)).permute(2, 0, 1)[None], size=(17, 24),
                        mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    np.testing.assert_allclose(odd, F.normalize(ref, dim=-1).numpy(), atol=1e-5)
    # a constant field stays exactly that field after upsampling
    const = np.tile(unit[:1, :1], (h, w, 1))
    write_dense_features(tmp_path, "c", const)
    np.testing.assert_allclose(read_dense_features(tmp_path, "c", size=(H, W)), np.tile(const[:1, :1], (H, W, 1)),
                               atol=2e-3)


def test_write_is_atomic_no_partial_file(tmp_path, monkeypatch):
    _enc_json(tmp_path, 4)
    old = np.ones((2, 3, 4), np.float32)
    write_dense_features(tmp_path, "v0", old)
    before = dense_path(tmp_path, "v0").read_bytes()

    real_save = np.save

    def failing_save(f, arr, *a, **kw):
        f.write(b"\x93NUMPY partial")  # some bytes reach the temporary file, then the writer dies
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_dense_features(tmp_path, "v0", np.zeros((2, 3, 4), np.float32) + 2)
    with pytest.raises(OSError):
        write_dense_features(tmp_path, "new", old)
    monkeypatch.setattr(np, "save", real_save)
    folder = tmp_path / "dense_features"
    assert dense_path(tmp_path, "v0").read_bytes() == before  # the old file, untouched
    assert not dense_path(tmp_path, "new").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["encoder.json", "v0.npy"]  # no temporaries left

    with pytest.raises(ValueError, match=r"\[h, w, D\]"):
        write_dense_features(tmp_path, "bad", np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        write_dense_features(tmp_path, "bad", np.full((2, 2, 4), np.nan, np.float32))
    assert not dense_path(tmp_path, "bad").exists()


def test_read_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(CueError, match="dense_features: not found; make it with `unisem-preprocess"):
        read_dense_features(tmp_path, "v0")
    _enc_json(tmp_path, 8)
    with pytest.raises(CueError, match=r"v0\.npy: not found .*--dense"):
        read_dense_features(tmp_path, "v0")

    folder = tmp_path / "dense_features"
    np.save(folder / "v0.npy", np.ones((3, 4, 6), np.float16))  # 6-d, encoder.json says 8
    with pytest.raises(CueError) as e:
        read_dense_features(tmp_path, "v0", size=(6, 8))
    msg = str(e.value)
    assert msg.startswith(f"{folder / 'v0.npy'}: features are 6-d but {folder / 'encoder.json'} says 8-d;")
    assert "unisem-preprocess --dense" in msg and "\n" not in msg
    with pytest.raises(CueError, match="features are 6-d but the model says 8-d"):
        read_dense_features(tmp_path, "v0", dim=8)

    np.save(folder / "v1.npy", np.ones((3, 4), np.float16))
    with pytest.raises(CueError, match=r"v1\.npy: expected a float \[h, w, D\] array"):
        read_dense_features(tmp_path, "v1")
    np.save(folder / "v2.npy", np.ones((3, 4, 8), np.int32))
    with pytest.raises(CueError, match=r"v2\.npy: expected a float"):
        read_dense_features(tmp_path, "v2")
    (folder / "v3.npy").write_bytes(b"garbage")
    with pytest.raises(CueError, match=r"v3\.npy: unreadable cue file"):
        read_dense_features(tmp_path, "v3")
    np.save(folder / "v4.npy", np.ones((4, 3, 8), np.float16))  # transposed grid for a 8x6 (W x H) image
    with pytest.raises(CueError, match=r"v4\.npy: grid is 3x4 but the image is 8x6 \(another aspect ratio\)"):
        read_dense_features(tmp_path, "v4", size=(6, 8))

    # without its own encoder.json the folder is in language_features' text space
    (folder / "encoder.json").unlink()
    with pytest.raises(CueError, match="encoder.json: not found"):
        read_dense_features(tmp_path, "v0")
    _enc_json(tmp_path, 6, folder="language_features")
    assert read_dense_features(tmp_path, "v0", size=(6, 8)).shape == (6, 8, 6)


# --------------------------------------------------------------------------------------------
# Simulator, dense mode
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def enc():
    from unisem_ns.language.encoders import make_text_encoder

    return make_text_encoder("minilm")


@pytest.fixture(scope="module")
def room(tmp_path_factory, enc) -> Path:
    """8 views at 64x48 with the default per-mask cues (MiniLM space)."""
    from unisem_ns.data.synthetic_scene import generate_scene

    out = tmp_path_factory.mktemp("dense_room") / "scene"
    generate_scene(out, seed=0, views=8, width=64, height=48, progress=False)
    simulate_cues(out, enc, CueCorruption.preset("default"), seed=0, **QUIET)
    return out


def _interior(sem: np.ndarray, dist_px: float = 3.0) -> np.ndarray:
    """Non-void pixels at least ``dist_px`` from any class boundary."""
    import cv2

    edge = np.zeros(sem.shape, bool)
    dx, dy = sem[:, 1:] != sem[:, :-1], sem[1:] != sem[:-1]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:] |= dy
    edge[:-1] |= dy
    dist = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 3)
    return (dist >= dist_px) & (sem > 0)


def _dense_metrics(scene: Path, enc) -> dict:
    """Interior argmax accuracy vs gt/semantic and the mean cosine across class boundaries (dense vs mask cue)."""
    names = json.loads((scene / "gt" / "classes.json").read_text())
    text = simulator.encode_texts(enc, names)
    hits = total = 0
    cos_dense, cos_mask = [], []
    for stem in scene_stems(scene):
        sem = np.asarray(Image.open(scene / "gt" / "semantic" / f"{stem}.png")).astype(np.int64)
        f = read_dense_features(scene, stem, size=sem.shape)
        sims = f @ text.T
        sims[..., 0] = -np.inf  # void is never predicted
        inner = _interior(sem)
        hits += int((sims.argmax(-1)[inner] == sem[inner]).sum())
        total += int(inner.sum())
        seg, feats = load_language_cue(scene, stem)
        tgt, valid = dense_targets(seg, feats)
        a, b = sem[:, :-1], sem[:, 1:]
        across = (a != b) & (a > 0) & (b > 0) & valid[:, :-1] & valid[:, 1:]
        cos_dense.append(np.sum(f[:, :-1] * f[:, 1:], -1)[across])
        cos_mask.append(np.sum(tgt[:, :-1] * tgt[:, 1:], -1)[across])
    return {"acc": hits / total, "cos_dense": float(np.concatenate(cos_dense).mean()),
            "cos_mask": float(np.concatenate(cos_mask).mean()), "pairs": sum(len(c) for c in cos_dense)}


@pytest.fixture(scope="module")
def dense_metrics(room, enc) -> dict:
    out = {}
    for name in DenseCorruption.PRESETS:
        simulate_dense_features(room, enc, DenseCorruption.preset(name), seed=0, **QUIET)
        out[name] = _dense_metrics(room, enc)
    simulate_dense_features(room, enc, DenseCorruption.preset("default"), seed=0, **QUIET)  # leave the default
    return out


def test_dense_files_layout_and_manifest(room, dense_metrics, enc):
    stems = scene_stems(room)
    folder = room / "dense_features"
    assert sorted(p.stem for p in folder.glob("*.npy")) == sorted(stems)
    raw = np.load(folder / f"{stems[0]}.npy")
    assert raw.dtype == np.float16 and raw.shape == (24, 32, 384)  # half of 48x64, MiniLM's 384-d
    assert json.loads((folder / "encoder.json").read_text()) == enc.to_json()
    m = read_manifest(room, "dense_features")
    assert m["complete"] and sorted(m["done"]) == sorted(stems)
    assert m["settings"]["mode"] == "simulate-dense" and m["settings"]["scale"] == 0.5
    assert m["settings"]["corruption"] == DenseCorruption.preset("default").to_json()
    assert read_manifest(room)["settings"]["mode"] == "simulate"  # the mask cues' manifest is untouched
    check = check_scene(room, SceneNeeds(dense_features=True, language_cues=True))
    assert check.ok and not check.warnings, [str(p) for p in check.errors + check.warnings]


def test_dense_is_smooth_across_boundaries_and_accurate_inside(dense_metrics):
    d, h, n = dense_metrics["default"], dense_metrics["heavy"], dense_metrics["none"]
    assert d["pairs"] > 200
    # MaskCLIP / LSeg-like: neighbours on either side of a class edge are blended, the mask cue jumps
    assert d["cos_dense"] > d["cos_mask"] + 0.05, d
    assert d["cos_dense"] > 0.95 and d["cos_mask"] < 0.92, d
    # little confusion inside objects at the default preset, clearly more at heavy
    assert n["acc"] == 1.0, n
    assert 0.9 <= d["acc"] < 1.0, d
    assert h["acc"] < d["acc"] - 0.08, (d, h)


def test_dense_noise_is_low_frequency_and_weaker_than_the_mask_cue():
    C, D = 6, 64
    rng = np.random.default_rng(0)
    text = rng.standard_normal((C, D)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    sem = np.full((48, 64), 2, np.int64)  # one class everywhere: any deviation is noise
    similar = simulator.similar_classes(text)

    def residual_corr(c: DenseCorruption) -> float:
        f = simulator.simulate_dense_view(sem, text, similar, c, np.random.default_rng(1), scale=1.0)
        r = f - text[2]
        return float(np.sum(r[:, :-1] * r[:, 1:]) / np.sqrt(np.sum(r[:, :-1] ** 2) * np.sum(r[:, 1:] ** 2)))

    assert residual_corr(DenseCorruption(lowfreq_noise=0.6, noise_cell=16)) > 0.9  # spatially smooth
    assert abs(residual_corr(DenseCorruption(pixel_noise=0.15))) < 0.1  # white
    for name in ("default", "heavy"):
        assert 0 < DenseCorruption.preset(name).pixel_noise < CueCorruption.preset(name).feature_noise / 2
    clean = simulator.simulate_dense_view(sem, text, similar, DenseCorruption(), np.random.default_rng(1), scale=0.5)
    assert clean.shape == (24, 32, D)
    np.testing.assert_allclose(clean, np.broadcast_to(text[2], clean.shape), atol=1e-6)
    with pytest.raises(ValueError, match="region_confusion_prob"):
        DenseCorruption(region_confusion_prob=1.5)
    with pytest.raises(ValueError, match="unknown dense corruption preset"):
        DenseCorruption.preset("medium")


def test_dense_simulation_deterministic_per_seed_and_view(room, dense_metrics, enc, tmp_path):
    other = shutil.copytree(room, tmp_path / "copy")
    shutil.rmtree(other / "dense_features")
    stems = scene_stems(room)
    simulate_dense_features(other, enc, DenseCorruption.preset("default"), seed=0, **QUIET)
    for s in stems:  # same seed: byte-identical files
        assert dense_path(other, s).read_bytes() == dense_path(room, s).read_bytes()
    # a view depends only on (seed, its name): recompute one view on its own
    names = json.loads((room / "gt" / "classes.json").read_text())
    text = simulator.encode_texts(enc, names)
    sem = np.asarray(Image.open(room / "gt" / "semantic" / f"{stems[3]}.png")).astype(np.int64)
    inst = np.asarray(Image.open(room / "gt" / "instance" / f"{stems[3]}.png")).astype(np.int64)
    alone = simulator.simulate_dense_view(sem, text, simulator.similar_classes(text, void=0),
                                          DenseCorruption.preset("default"),
                                          simulator._view_rng(0, stems[3], stream=1), instance=inst)
    np.testing.assert_allclose(alone, np.load(dense_path(room, stems[3])).astype(np.float32), atol=1e-3)  # fp16
    # another seed: other noise (and a changed-settings recompute, not a reuse)
    logs = []
    rep = simulator.run_dense_simulation(other, enc, DenseCorruption.preset("default"), seed=1, progress=False,
                                         log=logs.append)
    assert rep.status == "settings changed" and len(rep.computed) == len(stems) and "seed" in logs[0]
    assert all(dense_path(other, s).read_bytes() != dense_path(room, s).read_bytes() for s in stems)
    rep = simulator.run_dense_simulation(other, enc, DenseCorruption.preset("default"), seed=1, **QUIET)
    assert rep.status == "up to date" and not rep.computed


def test_cli_dense_flags_and_default_unchanged(room, dense_metrics, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        preprocess.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--dense", "--dense-only", "--dense-corruption", "--dense-scale"):
        assert flag in text

    scene = shutil.copytree(room, tmp_path / "s")
    shutil.rmtree(scene / "dense_features")
    shutil.rmtree(scene / "language_features")
    shutil.rmtree(scene / "object_mask")
    preprocess.main(["--data", str(scene), "--mode", "simulate", "--no-progress"])  # the default: no dense
    assert not (scene / "dense_features").exists()
    preprocess.main(["--data", str(scene), "--mode", "simulate", "--dense-only", "--dense-corruption", "heavy",
                     "--dense-scale", "0.25", "--no-progress"])
    out = capsys.readouterr().out
    assert "dense features in" in out
    m = read_manifest(scene, "dense_features")
    assert m["settings"]["corruption"] == DenseCorruption.preset("heavy").to_json() and m["settings"]["scale"] == 0.25
    assert np.load(dense_path(scene, scene_stems(scene)[0])).shape == (12, 16, 384)
    preprocess.main(["--data", str(scene), "--mode", "simulate", "--dense", "--no-progress"])
    out = capsys.readouterr().out
    assert "up to date" in out and "dense features for" in out  # mask cues reused, dense recomputed
    for s in scene_stems(scene):
        assert dense_path(scene, s).read_bytes() == dense_path(room, s).read_bytes()
    with pytest.raises(SystemExit, match="--dense-scale"):
        preprocess.main(["--data", str(scene), "--mode", "simulate", "--dense", "--dense-scale", "2", "--no-progress"])


def test_validation_of_the_dense_folder(room, dense_metrics, tmp_path):
    scene = shutil.copytree(room, tmp_path / "v")
    stems = scene_stems(scene)
    folder = scene / "dense_features"
    np.save(folder / f"{stems[1]}.npy", np.ones((24, 32, 100), np.float16))
    dense_path(scene, stems[2]).unlink()
    for needs, kind in ((SceneNeeds(dense_features=True), "errors"), (SceneNeeds(), "warnings")):
        check = check_scene(scene, needs)
        found = [str(p) for p in getattr(check, kind)]
        other = check.warnings if kind == "errors" else check.errors
        assert not other, [str(p) for p in other]
        assert any(str(dense_path(scene, stems[1])) in p and "100-d" in p and "384-d" in p for p in found), found
        assert any(str(dense_path(scene, stems[2])) in p and f"missing (1 of {len(stems)} views" in p
                   for p in found), found
    shutil.rmtree(folder)
    assert check_scene(scene).ok
    check = check_scene(scene, SceneNeeds(dense_features=True))
    assert [p.path for p in check.errors] == [folder]


# --------------------------------------------------------------------------------------------
# MaskCLIP patch features (open_clip, random init)
# --------------------------------------------------------------------------------------------


def _tiny_vit(layers: int = 2):
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, width=32, layers=layers, heads=2, mlp_ratio=2.0,
                             output_dim=24).eval()


def test_maskclip_patch_features_equal_a_hand_computation():
    visual = _tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = sam_clip.maskclip_patch_features(visual, x)
        # by hand: open_clip's own embedding + all blocks but the last, then the last block's attention with an
        # identity attention pattern (each token attends only to itself = the value path), ln_post, proj
        tokens = visual._embeds(x)
        for blk in visual.transformer.resblocks[:-1]:
            tokens = blk(tokens)
        last = visual.transformer.resblocks[-1]
        n_tok = tokens.shape[1]
        eye = torch.full((n_tok, n_tok), float("-inf"))
        eye.fill_diagonal_(0.0)
        v = last.ls_1(last.attention(q_x=last.ln_1(tokens), attn_mask=eye))
        want = F.normalize(visual.ln_post(v[:, 1:]) @ visual.proj, dim=-1).reshape(2, 4, 4, 24)
        # ... and it is NOT the ordinary token output of the tower (which mixes tokens through attention + MLP)
        full = visual.ln_post(visual.transformer(visual._embeds(x)))[:, 1:] @ visual.proj
    assert got.shape == (2, 4, 4, 24) and got.dtype == torch.float32
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2, 4, 4))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got.reshape(2, 16, 24) - F.normalize(full, dim=-1)).abs().max() > 1e-2

    # another grid than the model's 4x4: positional embedding resampled, one cell per patch
    with torch.no_grad():
        wide = sam_clip.maskclip_patch_features(visual, torch.randn(1, 3, 48, 64))
    assert wide.shape == (1, 6, 8, 24)
    torch.testing.assert_close(wide.norm(dim=-1), torch.ones(1, 6, 8))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        sam_clip.maskclip_patch_features(visual, torch.randn(1, 3, 30, 32))


def test_maskclip_vit_b16_architecture_gives_h16_w16_512():
    from unisem_ns.language.encoders import make_text_encoder

    enc = make_text_encoder("open_clip:ViT-B-16:random")  # the real architecture, random init (no download)
    img = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)
    f = sam_clip.maskclip_view(img, enc)
    assert f.shape == (4, 6, 512) and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f, axis=-1), 1.0, atol=1e-5)


def test_run_maskclip_tiny_open_clip_writes_layout_and_resumes(room, dense_metrics, tmp_path):
    from unisem_ns.language.encoders import make_text_encoder

    scene = shutil.copytree(room, tmp_path / "m")
    shutil.rmtree(scene / "dense_features")
    enc = make_text_encoder("open_clip:tiny:random")  # TINY_OPEN_CLIP_CONFIG: patch 8, 32-d
    rep = sam_clip.run_maskclip(scene, enc, progress=False, log=lambda m: None)
    stems = scene_stems(scene)
    assert rep.kind == "dense" and sorted(rep.computed) == sorted(stems)
    raw = np.load(dense_path(scene, stems[0]))
    assert raw.dtype == np.float16 and raw.shape == (6, 8, 32)  # [48/8, 64/8, 32]
    assert json.loads((scene / "dense_features" / "encoder.json").read_text()) == enc.to_json()
    assert read_manifest(scene, "dense_features")["settings"]["mode"] == "maskclip"
    img = np.asarray(Image.open(scene / "images" / f"{stems[0]}.png").convert("RGB"))
    np.testing.assert_allclose(raw.astype(np.float32), sam_clip.maskclip_view(img, enc), atol=2e-3)
    assert read_dense_features(scene, stems[0], size=(48, 64)).shape == (48, 64, 32)
    rep = sam_clip.run_maskclip(scene, enc, progress=False, log=lambda m: None)
    assert rep.status == "up to date" and not rep.computed

    with pytest.raises(CueError, match="no OpenCLIP ViT image tower"):
        sam_clip.run_maskclip(scene, make_text_encoder("minilm"), progress=False)


def test_sam_clip_dense_only_needs_no_sam_but_the_clip_weights(room, tmp_path):
    scene = shutil.copytree(room, tmp_path / "c")
    shutil.rmtree(scene / "dense_features")
    ckpt = tmp_path / "open_clip_pytorch_model.bin"
    with pytest.raises(SystemExit) as e:
        preprocess.main(["--data", str(scene), "--mode", "sam-clip", "--dense-only", "--clip-checkpoint", str(ckpt),
                         "--no-progress"])
    msg = str(e.value)
    assert str(ckpt) in msg and "--clip-checkpoint" in msg and "--sam-checkpoint" not in msg and "\n" not in msg.strip()
    assert not (scene / "dense_features").exists()
    # with the tiny random CLIP it runs (no SAM checkpoint needed)
    preprocess.main(["--data", str(scene), "--mode", "sam-clip", "--dense-only", "--clip", "open_clip:tiny:random",
                     "--device", "cpu", "--no-progress"])
    assert np.load(dense_path(scene, scene_stems(scene)[0])).shape == (6, 8, 32)
