"""One validation pass over a scene folder, run before anything is written.

:func:`check_scene` reads a scene the way training, evaluation and the cue tools will (``transforms.json``,
images, depths, 2D cues, ground truth) and returns *every* problem it finds, one line each, naming the file, what
is wrong and the fix. :func:`require_valid_scene` raises them all at once as an :class:`InputError`. What a
caller needs from the scene (cues, masks, a text space) is a :class:`SceneNeeds`; the rest is checked always.

Everything here reads headers or whole files but writes nothing, so a failed check leaves no partial output.
The cases and their messages are listed in ``docs/BAD_INPUT.md``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from unisem_ns.data.scene_io import InputError, SceneFrame, load_depth, read_transforms

__all__ = ["SceneNeeds", "Problem", "SceneCheck", "SceneInvalid", "check_scene", "require_valid_scene",
           "train_stems"]

#: [R] |R^T R - I| above this (max entry) is not a rotation; exported poses round to ~1e-6.
ROTATION_TOLERANCE = 1e-3
#: [R] camera centres closer than this (scene units) and rotations equal to this are "identical poses".
SAME_POSE_TOLERANCE = 1e-6
_EVAL_INTERVAL = 8  # Nerfstudio's every-8th-view split when transforms.json has no train/test lists

# PIL modes Nerfstudio's loader reads correctly: it repeats greyscale, composites RGBA on the background.
_GOOD_MODES = {"RGB", "RGBA", "L"}


@dataclass(frozen=True)
class SceneNeeds:
    """What a command will read from a scene, beyond transforms.json, images and depths."""

    language_cues: bool = False
    """``language_features/`` for every view, with an ``encoder.json`` matching the features' width."""
    object_masks: bool = False
    """``object_mask/<stem>.png`` for every training view, of the image's size, not all empty."""
    dense_features: bool = False
    """``dense_features/<stem>.npy`` for every view, [h, w, D] with D = its encoder.json's. When False, a
    ``dense_features/`` folder that is present is still checked, but its problems are warnings."""
    encoder: Optional[Mapping] = None
    """The text space the model was built for (kind, model, pretrained, dim); None = take the scene's."""
    min_train_views: int = 2
    """Fewer training views than this is an error."""
    min_labelled_fraction: float = 0.01
    """[R] A training view whose object mask labels less than this share of pixels is named in a warning."""
    check_images: bool = True
    """Decode every image (False: only their presence; for very large scenes)."""


@dataclass(frozen=True)
class Problem:
    """One problem: ``"<path>: <what>; <fix>"``."""

    path: Path
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}; {self.fix}"


@dataclass
class SceneCheck:
    """What :func:`check_scene` found."""

    scene: Path
    frames: List[SceneFrame] = field(default_factory=list)
    train: List[str] = field(default_factory=list)
    """Stems of the training views (transforms.json's lists, else Nerfstudio's every-8th rule)."""
    errors: List[Problem] = field(default_factory=list)
    warnings: List[Problem] = field(default_factory=list)

    def error(self, path: Path, what: str, fix: str) -> None:
        self.errors.append(Problem(Path(path), what, fix))

    def warn(self, path: Path, what: str, fix: str) -> None:
        self.warnings.append(Problem(Path(path), what, fix))

    @property
    def ok(self) -> bool:
        return not self.errors


def _problem(err: InputError) -> Problem:
    """A reader's one-line :class:`InputError` (``"<path>: <what>; <fix>"``) as a :class:`Problem`."""
    path, _, rest = str(err).partition(": ")
    what, _, fix = rest.partition("; ")
    return Problem(Path(path), what, fix)


class SceneInvalid(InputError):
    """All problems of a scene, one per line (a single problem is a single line)."""

    def __init__(self, check: SceneCheck):
        self.check = check
        super().__init__("\n".join(str(p) for p in check.errors))


def require_valid_scene(scene: Path, needs: SceneNeeds = SceneNeeds()) -> SceneCheck:
    """:func:`check_scene`, raising :class:`SceneInvalid` (every problem) unless the scene passes."""
    check = check_scene(scene, needs)
    if check.errors:
        raise SceneInvalid(check)
    return check


def check_scene(scene: Path, needs: SceneNeeds = SceneNeeds()) -> SceneCheck:
    """Check a scene folder for everything a command with ``needs`` will read; never raises for bad content.

    A missing folder or an unreadable ``transforms.json`` is the one problem reported (nothing else can be
    checked without it); otherwise every frame, image, depth, cue and ground-truth map is checked.
    """
    scene = Path(scene)
    check = SceneCheck(scene)
    try:
        meta = read_transforms(scene)
    except InputError as e:
        check.errors.append(_problem(e))
        return check
    tpath = scene / "transforms.json"
    poses: List[np.ndarray] = []
    stems: List[str] = []
    for i, frame in enumerate(meta["frames"]):
        fr = _check_frame(check, scene, tpath, meta, i, frame, needs)
        if fr is not None:
            check.frames.append(fr[0])
            poses.append(fr[1])
            stems.append(fr[0].image.stem)
    dup = sorted(s for s, n in Counter(stems).items() if n > 1)
    for s in dup:
        names = [str(f.image.relative_to(scene)) for f in check.frames if f.image.stem == s]
        check.error(tpath, f"several frames share the image name {s!r} ({', '.join(names)})",
                    "cue files are named by image stem, so give every image a unique file name")
    check.train = train_stems(meta, stems)
    if len(check.frames) == len(meta["frames"]):
        _check_poses(check, tpath, poses, needs)
    if needs.language_cues:
        _check_language(check, scene, needs)
    if needs.object_masks:
        _check_object_masks(check, scene, needs)
    _check_dense(check, scene, needs)
    _check_gt(check, scene)
    return check


def train_stems(meta: Mapping, stems: Sequence[str]) -> List[str]:
    """The training views' stems: ``train_filenames`` when transforms.json has train and test lists, else all
    but every 8th view (Nerfstudio's interval split)."""
    if "train_filenames" in meta and ("test_filenames" in meta or "val_filenames" in meta):
        names = {Path(p).stem for p in meta["train_filenames"]}
        return [s for s in stems if s in names]
    return [s for i, s in enumerate(stems) if i % _EVAL_INTERVAL != 0]


# ----------------------------------------------------------------------------------------------
# frames: intrinsics, poses, images, depths
# ----------------------------------------------------------------------------------------------


def _check_frame(check: SceneCheck, scene: Path, tpath: Path, meta: Mapping, i: int, frame, needs: SceneNeeds
                 ) -> Optional[Tuple[SceneFrame, np.ndarray]]:
    if not isinstance(frame, dict):
        check.error(tpath, f"frame {i} is not an object", "every frame needs file_path and transform_matrix")
        return None
    if "file_path" not in frame:
        check.error(tpath, f"frame {i} has no file_path", "name the frame's image, e.g. images/frame_00000.png")
        return None
    missing = [k for k in ("fl_x", "w", "h") if k not in frame and k not in meta]
    if missing:
        check.error(tpath, f"frame {i} has no intrinsics ({', '.join(missing)} missing)",
                    "add fl_x, fl_y, cx, cy, w, h at the top level or per frame")
        return None
    try:
        tm = np.asarray(frame.get("transform_matrix", []), dtype=float)
    except (TypeError, ValueError):
        tm = np.zeros(0)
    if tm.shape not in ((4, 4), (3, 4)):
        check.error(tpath, f"frame {i} ({frame['file_path']}) needs a 4x4 camera-to-world transform_matrix",
                    "add the frame's pose")
        return None
    if not np.isfinite(tm).all():
        check.error(tpath, f"frame {i} ({frame['file_path']}) has a non-finite transform_matrix",
                    "re-export the camera poses")
        return None
    rot = tm[:3, :3]
    err = float(np.abs(rot.T @ rot - np.eye(3)).max())
    if err > ROTATION_TOLERANCE or np.linalg.det(rot) < 0:
        what = "a reflection" if np.linalg.det(rot) < 0 else f"not orthonormal (max |R^T R - I| = {err:.3g})"
        check.error(tpath, f"frame {i} ({frame['file_path']}): the rotation of transform_matrix is {what}",
                    "re-export the poses as rigid camera-to-world matrices (scale belongs in the translation)")
        return None
    w, h = int(frame.get("w", meta.get("w"))), int(frame.get("h", meta.get("h")))
    image = scene / frame["file_path"]
    if not image.exists():
        check.error(image, f"image named by {tpath} (frame {i}) is missing", "restore it or remove the frame")
        return None
    if needs.check_images:
        _check_image(check, image, tpath, w, h)
    depth = None
    if "depth_file_path" in frame:
        depth = scene / frame["depth_file_path"]
        if not depth.exists():
            check.error(depth, f"depth map named by {tpath} (frame {i}) is missing",
                        "restore it or drop depth_file_path")
        else:
            _check_depth(check, depth, w, h)
    return SceneFrame(image=image, depth=depth, width=w, height=h), tm[:3, :4]


def _check_image(check: SceneCheck, image: Path, tpath: Path, w: int, h: int) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as im:
            im.verify()
        with Image.open(image) as im:
            im.load()  # verify() does not decode: a truncated PNG only fails here
            mode, size = im.mode, im.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        check.error(image, f"unreadable image ({type(e).__name__})",
                    "replace the file or drop its frame from transforms.json")
        return
    if mode not in _GOOD_MODES:
        kind = {"I;16": "16-bit", "I;16B": "16-bit", "I": "32-bit integer", "F": "float", "P": "palette",
                "LA": "greyscale+alpha", "1": "1-bit", "CMYK": "CMYK"}.get(mode, f"{mode!r}-mode")
        check.error(image, f"{kind} image ({mode}); images must be 8-bit RGB, RGBA or greyscale",
                    "convert it, e.g. `python -c \"from PIL import Image; Image.open('IN').convert('RGB').save('OUT')\"`")
        return
    if size != (w, h):
        check.error(image, f"image is {size[0]}x{size[1]} but {tpath} declares w={w}, h={h}",
                    "fix w/h (and fl_x, fl_y, cx, cy) or resize the image")


def _check_depth(check: SceneCheck, depth: Path, w: int, h: int) -> None:
    try:
        arr = load_depth(depth)  # the trainer's reader: float32, .npy metres or PNG units
    except InputError as e:
        check.errors.append(_problem(e))
        return
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        check.error(depth, f"depth must be a 2-D [H, W] number array, got {arr.dtype} {tuple(arr.shape)}",
                    "store one depth value per pixel (.npy float metres or a 16-bit PNG in millimetres)")
        return
    dh, dw = arr.shape
    # a depth map at another resolution is resampled, but only when it covers the same field of view
    if abs(dw / dh - w / h) > max(1.0 / dh, 1.0 / dw) * (w / h) + 1e-9:
        check.error(depth, f"depth is {dw}x{dh} but the image is {w}x{h} (another aspect ratio)",
                    "store the depth at the image's size")
        return
    bad_n = int((~np.isfinite(arr)).sum())
    if bad_n:
        check.error(depth, f"{bad_n} NaN/inf depth values", "write 0 where depth is unknown (0 = no depth)")
        return
    neg = int((arr < 0).sum())
    if neg:
        check.error(depth, f"{neg} negative depth values", "depths are distances in front of the camera; "
                    "write 0 where depth is unknown")


def _check_poses(check: SceneCheck, tpath: Path, poses: List[np.ndarray], needs: SceneNeeds) -> None:
    n_train = len(check.train)
    if n_train < needs.min_train_views:
        check.error(tpath, f"{n_train} training view(s) (of {len(poses)} frames); at least {needs.min_train_views} "
                    "are needed", "add views, or list more of them in train_filenames")
    if len(poses) >= 2:
        p = np.stack(poses)
        if np.abs(p - p[:1]).max() <= SAME_POSE_TOLERANCE:
            check.error(tpath, f"all {len(poses)} frames have the same camera pose",
                        "the poses are placeholders: estimate them (e.g. `ns-process-data` or COLMAP)")


# ----------------------------------------------------------------------------------------------
# 2D cues
# ----------------------------------------------------------------------------------------------


def _check_language(check: SceneCheck, scene: Path, needs: SceneNeeds) -> None:
    from unisem_ns.cues.layout import (
        CueError,
        _make_hint,
        language_dir,
        language_paths,
        load_language_cue,
        read_encoder_json,
    )

    folder = language_dir(scene)
    if not folder.is_dir():
        check.error(folder, "not found (the method needs 2D language cues)", _make_hint(scene))
        return
    try:
        enc = read_encoder_json(scene)
    except CueError as e:
        check.errors.append(_problem(e))
        return
    dim = int(enc["dim"])
    want = needs.encoder
    if want is not None:
        keys = [k for k in ("kind", "model", "pretrained", "dim") if str(want.get(k)) != str(enc.get(k))]
        if keys:
            check.error(folder / "encoder.json",
                        f"cues are in {_encoder_name(enc)} but the model was built for {_encoder_name(want)}",
                        "recompute the cues with that encoder (unisem-preprocess --text-encoder / --clip) "
                        "or train a new model on these cues")
            return
    for fr in check.frames:
        stem = fr.image.stem
        s_path, f_path = language_paths(scene, stem)
        try:  # the trainer's reader (presence, readability, dtypes, shapes), on memory maps
            seg, feats = load_language_cue(scene, stem, mmap=True)
        except CueError as e:
            check.errors.append(_problem(e))
            continue
        if feats.shape[1] != dim:
            check.error(f_path, f"features are {feats.shape[1]}-d but {folder / 'encoder.json'} says {dim}-d",
                        "recompute this view's cues with the scene's encoder (delete the file, rerun unisem-preprocess)")
            continue
        if seg.shape[1:] != (fr.height, fr.width):
            check.error(s_path, f"mask map is {seg.shape[2]}x{seg.shape[1]} but the image is {fr.width}x{fr.height}",
                        "recompute the cues at the image's size (rerun unisem-preprocess)")
            continue
        top = int(np.max(seg)) if seg.size else -1
        if top >= feats.shape[0] or (seg.size and int(np.min(seg)) < -1):
            check.error(s_path, f"mask index {top} but {f_path.name} has only {feats.shape[0]} rows",
                        "regenerate both files (rerun unisem-preprocess)")


def _check_dense(check: SceneCheck, scene: Path, needs: SceneNeeds) -> None:
    """``dense_features/``: errors when the command needs it, else (an optional folder) warnings."""
    from unisem_ns.cues.layout import (
        ENCODER_JSON,
        CueError,
        _dense_encoder_path,
        _dense_hint,
        _load_npy,
        dense_dir,
        dense_path,
        language_dir,
        read_dense_encoder_json,
    )

    folder = dense_dir(scene)
    report = check.error if needs.dense_features else check.warn
    if not folder.is_dir():
        if needs.dense_features:
            check.error(folder, "not found (the method needs dense language features)", _dense_hint(scene))
        return
    try:
        enc = read_dense_encoder_json(scene)
    except CueError as e:
        (check.errors if needs.dense_features else check.warnings).append(_problem(e))
        return
    enc_path = _dense_encoder_path(scene)
    dim = int(enc["dim"])
    lang_enc = language_dir(scene) / ENCODER_JSON
    if enc_path != lang_enc and lang_enc.is_file():
        import json

        try:
            other = json.loads(lang_enc.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            other = None
        if isinstance(other, dict) and any(str(other.get(k)) != str(enc.get(k)) for k in ("kind", "model", "dim")):
            report(enc_path, f"dense features are in {_encoder_name(enc)} but the language cues in "
                   f"{_encoder_name(other)}", "recompute one of them with the other's encoder (unisem-preprocess --dense)")
    want = needs.encoder
    if needs.dense_features and want is not None:
        keys = [k for k in ("kind", "model", "pretrained", "dim") if str(want.get(k)) != str(enc.get(k))]
        if keys:
            check.error(enc_path, f"dense features are in {_encoder_name(enc)} but the model was built for "
                        f"{_encoder_name(want)}", "recompute them with that encoder (unisem-preprocess --dense)")
            return
    missing: List[str] = []
    for fr in check.frames:
        stem = fr.image.stem
        path = dense_path(scene, stem)
        if not path.exists():
            missing.append(stem)
            continue
        try:
            arr = _load_npy(path, mmap=True)  # the header only
        except CueError as e:
            (check.errors if needs.dense_features else check.warnings).append(_problem(e))
            continue
        if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.floating) or min(arr.shape) < 1:
            report(path, f"expected a float [h, w, D] array, got {arr.dtype} {tuple(arr.shape)}",
                   "regenerate it (delete it and rerun unisem-preprocess --dense)")
            continue
        h, w, d = arr.shape
        if d != dim:
            report(path, f"features are {d}-d but {enc_path} says {dim}-d",
                   "recompute the dense features with the scene's encoder (delete the file, rerun unisem-preprocess --dense)")
            continue
        if 2 * abs(h * fr.width - w * fr.height) > fr.width + fr.height or h > fr.height or w > fr.width:
            report(path, f"grid is {w}x{h} but the image is {fr.width}x{fr.height} (another aspect ratio, or larger)",
                   "recompute the dense features for this image (rerun unisem-preprocess --dense)")
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        report(dense_path(scene, missing[0]), f"missing ({len(missing)} of {len(check.frames)} views have no dense "
               f"features: {shown})", f"one <image stem>.npy per image is needed; {_dense_hint(scene)}")


def _encoder_name(info: Mapping) -> str:
    name = "/".join(str(info[k]) for k in ("kind", "model", "pretrained") if info.get(k))
    return f"{name} ({info.get('dim')}-d)"


def _check_object_masks(check: SceneCheck, scene: Path, needs: SceneNeeds) -> None:
    from unisem_ns.cues.layout import CueError, load_object_mask, object_mask_dir, object_mask_path

    folder = object_mask_dir(scene)
    fix = (f"make them with `unisem-preprocess --data {scene} --mode simulate` (scenes with gt/) or `--mode sam-clip`, "
           "or copy Gaussian Grouping / LERF-Mask masks there (one <image stem>.png per view)")
    if not folder.is_dir():
        check.error(folder, "no 2D instance masks", fix)
        return
    frames = {f.image.stem: f for f in check.frames}
    labelled: Dict[str, float] = {}
    missing: List[str] = []
    for stem in check.train:
        path = object_mask_path(scene, stem)
        if not path.exists():
            missing.append(stem)
            continue
        try:
            arr = load_object_mask(scene, stem)
        except CueError as e:
            check.errors.append(_problem(e))
            continue
        fr = frames[stem]
        if arr.shape != (fr.height, fr.width):
            check.error(path, f"mask is {arr.shape[1]}x{arr.shape[0]} but its image is {fr.width}x{fr.height}",
                        "write the mask at the image's size (rerun unisem-preprocess)")
            continue
        labelled[stem] = float((arr > 0).mean())
    if missing:
        check.error(object_mask_path(scene, missing[0]), f"missing ({len(missing)} training views have no mask)", fix)
    if labelled and max(labelled.values()) == 0.0 and not missing:
        check.error(folder, f"every instance mask of the {len(labelled)} training views is empty (all 0)",
                    "the masks hold no object; recompute them (unisem-preprocess) or check the id format (0 = none)")
        return
    sparse = sorted(s for s, v in labelled.items() if v < needs.min_labelled_fraction)
    if sparse:
        shown = ", ".join(sparse[:5]) + (f" and {len(sparse) - 5} more" if len(sparse) > 5 else "")
        check.warn(folder, f"{len(sparse)} training view(s) label under {needs.min_labelled_fraction:.0%} of their "
                   f"pixels ({shown})", "those views add little to the instance losses; check their masks")


def _check_gt(check: SceneCheck, scene: Path) -> None:
    from PIL import Image

    for key in ("semantic", "instance"):
        folder = scene / "gt" / key
        if not folder.is_dir():
            continue
        for fr in check.frames:
            path = folder / f"{fr.image.stem}.png"
            if not path.exists():
                continue
            try:
                with Image.open(path) as im:
                    size = im.size
            except (OSError, SyntaxError, ValueError) as e:
                check.error(path, f"unreadable ground-truth map ({type(e).__name__})", "regenerate or remove it")
                continue
            if size != (fr.width, fr.height):
                check.error(path, f"ground truth is {size[0]}x{size[1]} but its image is {fr.width}x{fr.height}",
                            "regenerate or remove it")
