"""A corpus of small synthetic scenes for feed-forward training, and the multi-scene reader.

Layout (``docs/DATA.md``): a folder of scene folders plus ``index.json`` =
``{"train": [...], "val": [...], "test": [...]}``. Every scene folder is a normal scene (``transforms.json``,
``images/``, ``depths/``, ``gt/``, ``language_features/``, ``object_mask/``) so the per-scene methods read it
too. Scenes here are rendered along a *video-like* trajectory (a slow walk with a slow pan, like a ScanNet
capture), so consecutive frames overlap and the Uni3R test protocol (context = even frames, targets = odd frames
between them) applies.

Each scene also gets ``ff_pack.npz`` (written atomically, last): every view's RGB, depth, pose, cue (level 0) and
GT labels in one file, so a training run loads hundreds of scenes in seconds. :func:`load_scene` builds the pack
for any DATA.md scene that lacks one (e.g. a converted ScanNet scene), so real data goes through the same path.

Importing this module needs numpy only (torch for the tensors in :func:`to_tensors`).
"""

from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from unisem_ns.data.scene_io import InputError, exit_on_input_error
from unisem_ns.utils.atomic import atomic_file, atomic_save_png, atomic_write_json

__all__ = [
    "CorpusConfig",
    "SceneViews",
    "make_corpus",
    "video_trajectory",
    "read_index",
    "load_scene",
    "load_split",
    "pack_path",
    "PACK_VERSION",
]

PACK_VERSION = 1
"""Bump when the content of ``ff_pack.npz`` changes (older packs are rebuilt)."""
PACK_NAME = "ff_pack.npz"


@dataclass
class CorpusConfig:
    """``unisem-make-corpus``: many small synthetic scenes with GT and simulated cues, split by scene."""

    out: Path = Path("outputs/ff_corpus")
    """Corpus folder (scene folders + index.json)."""
    num_train: int = 200
    """Training scenes."""
    num_val: int = 16
    """Validation scenes."""
    num_test: int = 24
    """Held-out test scenes."""
    views: int = 32
    """Views per scene along the trajectory (>= 31 so the 16-view protocol, 2*16-1 frames, fits)."""
    width: int = 64
    """Image width (px)."""
    height: int = 48
    """Image height (px)."""
    fov_deg: float = 65.0
    """Horizontal field of view."""
    step_m: float = 0.07
    """Camera translation between consecutive frames (m). [R] chosen so 2 frames apart still overlap ~80 %."""
    yaw_step_deg: float = 3.0
    """Pan between consecutive frames (deg). [R]"""
    corruption: str = "default"
    """Cue simulator corruption preset: none | default | heavy."""
    cue_seed: int = 0
    """Seed of the cue simulator."""
    dense: bool = False
    """Also write simulated dense (LSeg/MaskCLIP-style) features, ``dense_features/`` (GSemSplat's context-aware
    targets; ``unisem_ns.cues.simulator.simulate_dense_features``). A kept scene without them gets them added."""
    dense_corruption: str = "default"
    """Dense-feature corruption preset: none | default | heavy."""
    seed_offset: int = 100000
    """Scene seeds are seed_offset + i (train), then val, then test: disjoint rooms per split."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class SceneViews:
    """All views of one scene, as arrays (what the datamanager samples from).

    Shapes: N views, H x W pixels, K_total cue embeddings, D cue dim.
    """

    name: str
    images: np.ndarray  # [N, H, W, 3] uint8
    depths: np.ndarray  # [N, H, W] float32 metres, 0 = missing
    c2w: np.ndarray  # [N, 4, 4] float32 OpenGL camera-to-world
    K: np.ndarray  # [N, 3, 3] float32 pinhole intrinsics
    cue_seg: Optional[np.ndarray]  # [N, H, W] int32 row into cue_feats (-1 = none), or None
    cue_feats: Optional[np.ndarray]  # [K_total, D] float16 (rows of all views, offset per view)
    object_mask: Optional[np.ndarray]  # [N, H, W] int32 simulated/real SAM ids (0 = none)
    semantic: Optional[np.ndarray]  # [N, H, W] int32 GT class ids (eval only)
    class_names: List[str] = field(default_factory=list)
    stems: List[str] = field(default_factory=list)
    path: Optional[Path] = None

    @property
    def num_views(self) -> int:
        return int(self.images.shape[0])


# ---------------------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------------------


def video_trajectory(room, views: int, step_m: float = 0.07, yaw_step_deg: float = 3.0, seed: int = 0) -> np.ndarray:
    """OpenGL camera-to-world poses [views, 4, 4]: a slow straight walk with a slow pan, inside ``room``.

    Every eye stays >= 0.4 m from object footprints and 0.7 m from walls; the first frame looks at the room
    (nothing closer than 0.8 m along the optical axis). Deterministic in ``seed``.
    """
    from unisem_ns.data.synthetic_scene import _trace, look_at  # noqa: PLC2701 (ray test only)

    rng = np.random.default_rng([int(seed), 7])
    lx, h, lz = room.size
    geo = room._geometry
    for attempt in range(3000):
        step = step_m * (1.0 if attempt < 1000 else 0.7 if attempt < 2000 else 0.5)
        x0, z0 = rng.uniform(-lx / 2 + 0.9, lx / 2 - 0.9), rng.uniform(-lz / 2 + 0.9, lz / 2 - 0.9)
        walk = rng.uniform(0, 2 * math.pi)
        yaw0 = walk + rng.uniform(-0.6, 0.6)
        pan = math.radians(yaw_step_deg) * (1 if rng.random() < 0.5 else -1)
        y0, pitch0 = rng.uniform(1.3, 1.7), math.radians(rng.uniform(-25, -8))
        poses, ok = [], True
        for k in range(views):
            x, z = x0 + k * step * math.cos(walk), z0 + k * step * math.sin(walk)
            if not (abs(x) < lx / 2 - 0.7 and abs(z) < lz / 2 - 0.7 and room.is_free(x, z, margin=0.4)):
                ok = False
                break
            yaw = yaw0 + k * pan
            pitch = pitch0 + math.radians(4.0) * math.sin(k / 5.0)
            fwd = np.array([math.cos(pitch) * math.cos(yaw), math.sin(pitch), math.cos(pitch) * math.sin(yaw)])
            eye = np.array([x, y0 + 0.03 * math.sin(k / 3.0), z])
            t, _ = _trace(geo, eye, fwd[None])
            if t[0] < 0.8:
                ok = False
                break
            poses.append(look_at(eye, eye + fwd))
        if ok:
            return np.stack(poses)
    raise RuntimeError(f"could not place a {views}-frame trajectory in room of seed {room.seed}")


def _feasible(seed: int, cfg: "CorpusConfig") -> bool:
    from unisem_ns.data.synthetic_scene import build_room

    try:
        video_trajectory(build_room(seed), cfg.views, cfg.step_m, cfg.yaw_step_deg, seed=seed)
        return True
    except RuntimeError:
        return False


def _save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path)


def _write_scene(out: Path, seed: int, cfg: CorpusConfig, encoder) -> None:
    from unisem_ns.cues.simulator import CueCorruption, simulate_cues
    from unisem_ns.data.synthetic_scene import CLASS_NAMES, build_room, camera_intrinsics, render_view

    room = build_room(seed)
    poses = video_trajectory(room, cfg.views, cfg.step_m, cfg.yaw_step_deg, seed=seed)
    K = camera_intrinsics(cfg.width, cfg.height, cfg.fov_deg)
    frames = []
    for i, c2w in enumerate(poses):
        stem = f"frame_{i:05d}"
        r = render_view(room, c2w, K.fx, K.fy, K.cx, K.cy, cfg.width, cfg.height)
        # Plain writes: the scene counts as complete only once ff_pack.npz (atomic, last) exists.
        depth_mm = np.clip(np.rint(np.nan_to_num(r["depth"], posinf=0.0) * 1000.0), 0, 65535).astype(np.uint16)
        for sub, arr in (("images", r["rgb"]), ("depths", depth_mm), ("gt/semantic", r["semantic"].astype(np.uint8)),
                         ("gt/instance", r["instance"].astype(np.uint16))):
            _save_png(out / sub / f"{stem}.png", arr)
        frames.append({"file_path": f"images/{stem}.png", "depth_file_path": f"depths/{stem}.png",
                       "transform_matrix": [[float(v) for v in row] for row in c2w]})
    atomic_write_json(out / "gt" / "classes.json", list(CLASS_NAMES))
    atomic_write_json(out / "gt" / "instances.json", {str(i.instance_id): i.class_name for i in room.instances})
    stems = [Path(f["file_path"]).stem for f in frames]
    meta = {
        "camera_model": "OPENCV", "fl_x": K.fx, "fl_y": K.fy, "cx": K.cx, "cy": K.cy, "w": cfg.width,
        "h": cfg.height, "depth_unit_scale_factor": 1e-3, "frames": frames,
        "train_filenames": [f["file_path"] for i, f in enumerate(frames) if i % 2 == 0],
        "test_filenames": [f["file_path"] for i, f in enumerate(frames) if i % 2 == 1],
        "generator": "feedforward.corpus (video trajectory)", "seed": int(seed),
    }
    atomic_write_json(out / "transforms.json", meta)
    simulate_cues(out, encoder, CueCorruption.preset(cfg.corruption), seed=cfg.cue_seed, progress=False,
                  log=lambda *_: None)
    if cfg.dense:
        _write_dense(out, cfg, encoder)
    write_pack(out)


def _write_dense(out: Path, cfg: CorpusConfig, encoder) -> None:
    from unisem_ns.cues.simulator import DenseCorruption, simulate_dense_features

    simulate_dense_features(out, encoder, DenseCorruption.preset(cfg.dense_corruption), seed=cfg.cue_seed,
                            progress=False, log=lambda *_: None)


def _dense_ok(scene: Path) -> bool:
    return (scene / "dense_features" / "encoder.json").exists()


def make_corpus(cfg: CorpusConfig, log=print) -> Path:
    """Write (or complete) a corpus; scenes whose ``ff_pack.npz`` exists are kept (resumable)."""
    from unisem_ns.language import make_text_encoder

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
    index: Dict[str, List[str]] = {}
    seed = cfg.seed_offset
    todo: List[Tuple[str, int]] = []
    dense_todo: List[str] = []
    for split, n in splits.items():
        index[split] = []
        for _ in range(n):
            while True:  # rooms where no trajectory fits are skipped (deterministically)
                name = f"scene_{seed:06d}"
                if _pack_ok(out / name) or _feasible(seed, cfg):
                    break
                seed += 1
            index[split].append(name)
            if not _pack_ok(out / name):
                todo.append((name, seed))
            elif cfg.dense and not _dense_ok(out / name):
                dense_todo.append(name)
            seed += 1
    atomic_write_json(out / "corpus.json", {"config": {k: str(v) if isinstance(v, Path) else v
                                                       for k, v in cfg.__dict__.items()}})
    if dense_todo:
        encoder = make_text_encoder("minilm")
        for name in dense_todo:
            _write_dense(out / name, cfg, encoder)
    if todo:
        encoder = make_text_encoder("minilm")
        t0 = time.time()
        for k, (name, s) in enumerate(todo):
            _write_scene(out / name, s, cfg, encoder)
            if cfg.progress and (k + 1) % 10 == 0:
                el = time.time() - t0
                log(f"unisem-make-corpus: {k + 1}/{len(todo)} scenes ({el / (k + 1):.2f} s/scene)")
    atomic_write_json(out / "index.json", index)
    return out


# ---------------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------------


def read_index(corpus: Path) -> Dict[str, List[str]]:
    """``index.json`` of a corpus, with one-line errors."""
    corpus = Path(corpus)
    path = corpus / "index.json"
    if not path.exists():
        raise InputError(f"{path}: not found; make a corpus with `unisem-make-corpus --out {corpus}` "
                         "(or write index.json = {\"train\": [...], \"val\": [...], \"test\": [...]})")
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable JSON ({e}); fix it or rerun unisem-make-corpus") from None
    if not isinstance(index, dict) or not all(isinstance(index.get(k, []), list) for k in ("train", "val", "test")):
        raise InputError(f"{path}: must be {{\"train\": [scene, ...], \"val\": [...], \"test\": [...]}}")
    return {k: list(index.get(k, [])) for k in ("train", "val", "test")}


def pack_path(scene: Path) -> Path:
    return Path(scene) / PACK_NAME


def _pack_ok(scene: Path) -> bool:
    p = pack_path(scene)
    if not p.exists():
        return False
    try:
        with np.load(p) as z:
            return int(z["version"]) == PACK_VERSION
    except Exception:
        return False


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def write_pack(scene: Path, labels: Optional[Dict[int, int]] = None) -> Path:
    """Pack every view of a DATA.md scene into ``ff_pack.npz`` (atomic). Needs transforms.json, images; uses
    depths, language_features (level 0), object_mask and gt/semantic when present.

    ``labels`` optionally remaps GT class ids (e.g. ScanNet ids to an 8-class set) before packing.
    """
    from unisem_ns.cues.layout import load_language_cue
    from unisem_ns.data.scene_io import load_depth
    from unisem_ns.data.validate import SceneNeeds, require_valid_scene

    scene = Path(scene)
    needs = SceneNeeds(language_cues=(scene / "language_features").is_dir(), min_train_views=0, check_images=False)
    frames = require_valid_scene(scene, needs).frames
    meta = json.loads((scene / "transforms.json").read_text())
    n = len(frames)
    imgs, depths, c2ws, Ks, segs, feats, objs, sems, stems = [], [], [], [], [], [], [], [], []
    offset = 0
    unit = float(meta.get("depth_unit_scale_factor", 1e-3))
    for i, (fr, fmeta) in enumerate(zip(frames, meta["frames"])):
        stem = fr.image.stem
        stems.append(stem)
        im = _read_png(fr.image)
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, -1)
        imgs.append(im[..., :3].astype(np.uint8))
        h, w = im.shape[:2]
        depths.append(load_depth(fr.depth, unit) if fr.depth is not None else np.zeros((h, w), np.float32))
        tm = np.eye(4)
        tm[: np.asarray(fmeta["transform_matrix"]).shape[0]] = np.asarray(fmeta["transform_matrix"], dtype=float)
        c2ws.append(tm)
        g = lambda k: float(fmeta.get(k, meta.get(k)))  # noqa: E731
        Ks.append(np.array([[g("fl_x"), 0, g("cx")], [0, g("fl_y"), g("cy")], [0, 0, 1]]))
        lang = scene / "language_features" / f"{stem}_s.npy"
        if lang.exists():
            s, f = load_language_cue(scene, stem)
            s0 = s[0].astype(np.int32)
            segs.append(np.where(s0 >= 0, s0 + offset, -1))
            feats.append(f.astype(np.float16))
            offset += f.shape[0]
        om = scene / "object_mask" / f"{stem}.png"
        if om.exists():
            objs.append(_read_png(om).astype(np.int32))
        sp = scene / "gt" / "semantic" / f"{stem}.png"
        if sp.exists():
            sem = _read_png(sp).astype(np.int32)
            if labels is not None:
                lut = np.zeros(max(max(labels) + 1, int(sem.max()) + 1), np.int32)
                for a, b in labels.items():
                    lut[a] = b
                sem = lut[sem]
            sems.append(sem)
    arrays = {
        "version": np.array(PACK_VERSION),
        "images": np.stack(imgs), "depths": np.stack(depths).astype(np.float32),
        "c2w": np.stack(c2ws).astype(np.float32), "K": np.stack(Ks).astype(np.float32),
        "stems": np.array(stems),
    }
    if len(segs) == n:
        arrays["cue_seg"] = np.stack(segs).astype(np.int32)
        arrays["cue_feats"] = np.concatenate(feats) if offset else np.zeros((0, 1), np.float16)
    if len(objs) == n:
        arrays["object_mask"] = np.stack(objs)
    if len(sems) == n:
        arrays["semantic"] = np.stack(sems)
    path = pack_path(scene)
    with atomic_file(path) as fobj:
        np.savez(fobj, **arrays)
    return path


def load_scene(scene: Path, build_pack: bool = True) -> SceneViews:
    """Every view of a DATA.md scene as :class:`SceneViews` (from ``ff_pack.npz``; built first if missing)."""
    scene = Path(scene)
    if not _pack_ok(scene):
        if not build_pack:
            raise InputError(f"{pack_path(scene)}: missing; run `unisem-make-corpus` or pass build_pack=True")
        write_pack(scene)
    with np.load(pack_path(scene)) as z:
        get = lambda k: z[k] if k in z.files else None  # noqa: E731
        classes_path = scene / "gt" / "classes.json"
        return SceneViews(
            name=scene.name, images=z["images"], depths=z["depths"], c2w=z["c2w"], K=z["K"],
            cue_seg=get("cue_seg"), cue_feats=get("cue_feats"), object_mask=get("object_mask"),
            semantic=get("semantic"),
            class_names=json.loads(classes_path.read_text()) if classes_path.exists() else [],
            stems=[str(s) for s in z["stems"]], path=scene,
        )


def load_split(corpus: Path, split: str, limit: Optional[int] = None) -> List[SceneViews]:
    """The scenes of one split of a corpus (``index.json``), loaded."""
    corpus = Path(corpus)
    names = read_index(corpus)[split]
    if not names:
        raise InputError(f"{corpus / 'index.json'}: split '{split}' is empty; list scene folders under \"{split}\"")
    if limit is not None:
        names = names[:limit]
    out = []
    for name in names:
        if not (corpus / name).is_dir():
            raise InputError(f"{corpus / name}: scene listed in {corpus / 'index.json'} is missing; "
                             "rerun unisem-make-corpus or fix index.json")
        out.append(load_scene(corpus / name))
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    import tyro

    cfg = tyro.cli(CorpusConfig, args=argv)
    t0 = time.time()
    try:
        out = make_corpus(cfg)
    except InputError as e:
        raise exit_on_input_error(e) from None
    idx = read_index(out)
    print(f"unisem-make-corpus: {out} ({len(idx['train'])} train / {len(idx['val'])} val / "
          f"{len(idx['test'])} test scenes) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
