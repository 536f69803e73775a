"""``unisem-predict``: what a feed-forward predictor gives a scene before any per-scene training step.

The predictor sees ``--views`` training views of a ``transforms.json`` scene (evenly spaced, windows of
``--window``), its Gaussians are placed with the scene's own poses (no dataparser transform: the scene's world
frame, scale 1; :func:`feedforward.scene_init.predict_scene`), and every held-out view (the scene's
``test_filenames``, else ``val_filenames``, else every 8th frame, as Nerfstudio splits it) is rendered from them.

Writes under ``--output``:

* ``<stem>/rgb.png``, ``<stem>/depth.png`` (turbo, near = blue; black where nothing was rendered);
* ``<stem>/segmentation.png`` (label palette) and ``<stem>/segmentation_ids.png`` (uint16, label index + 1 =
  the scene's class id) over the scene's ``gt/classes.json`` without void, or ``--labels``;
* ``<stem>/relevancy_<query>.png`` (turbo) for each of ``--queries``;
* ``gaussians.ply``: binary PLY in the standard 3DGS layout (x y z nx ny nz f_dc_0..2 [f_rest_*] opacity (logit)
  scale_0..2 (log) rot_0..3 (wxyz), Nerfstudio's ``ns-export gaussian-splat`` order; SuperSplat and other splat
  viewers read it), plus the predictor's semantic latent as ``f_sem_0..D-1``;
* ``metrics.json``: PSNR, depth AbsRel (GT depth present), mIoU/mAcc (``gt/semantic`` present;
  :class:`~unisem_ns.metrics.scene.SceneEvaluator`, the protocol of ``ns-eval``), counts and timing.

The scene is read with :mod:`unisem_ns.data.scene_io` (no dataparser, no Nerfstudio). Every file is written
atomically.
"""


from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import tyro
from torch import Tensor

from feedforward.scene_init import read_rgb, scene_cues
from unisem_ns.data.scene_io import InputError, exit_on_input_error

__all__ = ["PredictArgs", "SceneCameras", "read_scene_cameras", "write_gaussian_ply", "run_predict", "main"]

HELP = """Preview a feed-forward predictor on a scene, before any per-scene training step.

The predictor sees --views evenly spaced training views (windows of --window); its Gaussians are placed with the
scene's own poses (the scene's world frame, scale 1, no dataparser transform) and every held-out view
(test_filenames, else val_filenames, else every 8th frame) is rendered from them. Writes to --output:
<stem>/rgb.png, depth.png (turbo), segmentation.png + segmentation_ids.png (uint16 class id; over gt/classes.json
or --labels), relevancy_<query>.png per --queries; gaussians.ply (3DGS layout, viewers such as SuperSplat read it;
semantic latent as f_sem_*); metrics.json (PSNR, depth AbsRel, mIoU/mAcc where the scene has ground truth, timing).

Example: unisem-predict --data SCENE --predictor outputs/<exp>/unisem-feedforward/<time>/config.yml --views 8
  --output outputs/predict --queries "sofa;lamp"
"""

PROG = "unisem-predict"
EVAL_INTERVAL = 8  # Nerfstudio's interval split when transforms.json has no split lists


@dataclass
class PredictArgs:
    """Preview a feed-forward predictor on a scene: render its held-out views from the predicted Gaussians
    (RGB, depth, closed-set segmentation, text relevancy), export the Gaussians as a 3DGS PLY and score them
    (metrics.json), all before any per-scene training step."""

    predictor: Path
    """The predictor: the config.yml (or run folder, or step-*.ckpt) of an `ns-train unisem-feedforward` run, or a
    file written by feedforward.predictor.save_unisem_predictor."""
    data: Optional[Path] = None
    """Scene folder with transforms.json (docs/DATA.md). Default: the embedded default scene (made once, cached)."""
    views: int = 8
    """Training views given to the predictor, evenly spaced over the training split (0 = all)."""
    window: int = 2
    """Views per predictor pass (>= 2); views are split into windows of this many consecutive chosen views."""
    stride: int = 1
    """Keep every k-th pixel row and column of each view's Gaussians (k^2 fewer)."""
    depth_align: bool = True
    """Rescale each window to the scene's depth maps of its reference view, when the scene has them."""
    output: Path = Path("outputs/predict")
    """Folder for the PNGs, gaussians.ply and metrics.json."""
    queries: str = ""
    """Free-text queries separated by ';', e.g. "couch;lamp": one relevancy PNG each per held-out view."""
    labels: Optional[Path] = None
    """JSON list of class names for the closed-set segmentation; default: the scene's gt/classes.json without
    void."""
    encoder: str = ""
    """Text encoder of the predictor's cue space; default: the scene's language_features/encoder.json, else
    'minilm' (the space unisem-make-corpus simulates cues in)."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""


# ------------------------------------------------------------------------------------------------------- scene


@dataclass
class SceneCameras:
    """A transforms.json scene as the preview reads it, frames sorted by file path (Nerfstudio's order).

    ``c2w`` [N, 3, 4] OpenGL camera-to-world in the scene's own frame and units (no dataparser transform),
    ``K`` [N, 3, 3] pinhole intrinsics at each image's size, ``sizes`` [(h, w)], ``train`` / ``test`` indices."""

    scene: Path
    images: List[Path]
    depths: List[Optional[Path]]
    stems: List[str]
    c2w: Tensor
    K: Tensor
    sizes: List[Tuple[int, int]]
    train: List[int]
    test: List[int]
    depth_unit: float
    class_names: List[str]


def read_scene_cameras(scene: Path) -> SceneCameras:
    """Cameras, poses and the train / held-out split of a scene (one-line :class:`InputError` on bad input)."""
    from unisem_ns.data.scene_io import read_transforms, validate_scene

    scene = Path(scene)
    meta = read_transforms(scene)
    frames = validate_scene(scene, check_images=False)  # every problem, one per line, names the file
    tpath = scene / "transforms.json"
    rows = []
    for fr, fm in zip(frames, meta["frames"]):
        def g(key, fm=fm):
            v = fm.get(key, meta.get(key))
            if v is None:
                raise InputError(f"{tpath}: frame {fm.get('file_path')} has no '{key}' (nor a top-level one); "
                                 "give fl_x, fl_y, cx, cy for every frame or once at the top")
            return float(v)

        if str(fm.get("camera_model", meta.get("camera_model", "OPENCV"))).upper() not in ("OPENCV", "PINHOLE",
                                                                                           "SIMPLE_PINHOLE"):
            raise InputError(f"{tpath}: camera_model {fm.get('camera_model', meta.get('camera_model'))!r} is not a "
                             "pinhole model; undistort the images first (ns-process-data) and use OPENCV")
        K = torch.tensor([[g("fl_x"), 0.0, g("cx")], [0.0, g("fl_y"), g("cy")], [0.0, 0.0, 1.0]])
        tm = torch.tensor(fm["transform_matrix"], dtype=torch.float64)[:3].float()
        rows.append((str(fm["file_path"]), fr, K, tm))
    rows.sort(key=lambda r: r[0])
    names = [r[0] for r in rows]

    def split(key: str) -> Optional[List[int]]:
        if key not in meta:
            return None
        wanted = {Path(p).as_posix().lstrip("./") for p in meta[key]}
        return [i for i, n in enumerate(names) if Path(n).as_posix().lstrip("./") in wanted]

    test = split("test_filenames")
    if not test:
        test = split("val_filenames")
    train = split("train_filenames")
    if not test or train is None:
        test = [i for i in range(len(rows)) if i % EVAL_INTERVAL == 0]
        train = [i for i in range(len(rows)) if i % EVAL_INTERVAL != 0]
    if not train:
        raise InputError(f"{tpath}: no training views (train_filenames is empty); the predictor needs at least one")
    classes: List[str] = []
    cpath = scene / "gt" / "classes.json"
    if cpath.exists():
        try:
            classes = [str(c) for c in json.loads(cpath.read_text())]
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise InputError(f"{cpath}: unreadable class list ({e}); fix it or remove it") from None
    return SceneCameras(
        scene=scene, images=[r[1].image for r in rows], depths=[r[1].depth for r in rows],
        stems=[Path(r[1].image).stem for r in rows], c2w=torch.stack([r[3] for r in rows]),
        K=torch.stack([r[2] for r in rows]), sizes=[(r[1].height, r[1].width) for r in rows], train=train, test=test,
        depth_unit=float(meta.get("depth_unit_scale_factor", 1e-3)), class_names=classes)


def _depth(cams: SceneCameras, i: int) -> Optional[Tensor]:
    from unisem_ns.data.scene_io import load_depth

    if cams.depths[i] is None:
        return None
    d = torch.from_numpy(load_depth(cams.depths[i], cams.depth_unit))
    return torch.where(torch.isfinite(d) & (d > 0), d, torch.zeros(()))


# ------------------------------------------------------------------------------------------------------- PLY


def write_gaussian_ply(path: Path, pred, sem_prefix: str = "f_sem_") -> int:
    """World-frame :class:`~feedforward.predictor.PredictedGaussians` as a binary little-endian PLY in the 3DGS
    layout (the order of Nerfstudio's ``ns-export gaussian-splat``), the latent as ``f_sem_*``; Gaussians with a
    non-finite value are dropped. Returns the number of vertices written (atomic)."""
    from plyfile import PlyData, PlyElement

    from unisem_ns.utils.atomic import atomic_file

    n = pred.num
    sh = pred.sh.detach().float().cpu()
    cols: Dict[str, np.ndarray] = {}
    means = pred.means.detach().float().cpu().numpy()
    for i, k in enumerate("xyz"):
        cols[k] = means[:, i]
    for k in ("nx", "ny", "nz"):
        cols[k] = np.zeros(n, np.float32)
    for i in range(3):
        cols[f"f_dc_{i}"] = sh[:, 0, i].numpy()
    if sh.shape[1] > 1:  # 3DGS order: channel-major over the higher bands
        rest = sh[:, 1:].transpose(1, 2).reshape(n, -1).numpy()
        for i in range(rest.shape[1]):
            cols[f"f_rest_{i}"] = rest[:, i]
    cols["opacity"] = torch.logit(pred.opacities.detach().float().cpu().clamp(1e-6, 1 - 1e-6)).numpy()
    scales = torch.log(pred.scales.detach().float().cpu().clamp_min(1e-10)).numpy()
    for i in range(3):
        cols[f"scale_{i}"] = scales[:, i]
    quats = torch.nn.functional.normalize(pred.quats.detach().float().cpu(), dim=-1).numpy()
    for i in range(4):
        cols[f"rot_{i}"] = quats[:, i]
    feats = pred.features.detach().float().cpu().numpy()
    for i in range(feats.shape[1]):
        cols[f"{sem_prefix}{i}"] = feats[:, i]
    keep = np.ones(n, bool)
    for v in cols.values():
        keep &= np.isfinite(v)
    vertex = np.empty(int(keep.sum()), dtype=[(k, "<f4") for k in cols])
    for k, v in cols.items():
        vertex[k] = v[keep]
    comments = [f"unisem-predict: {feats.shape[1]} semantic latent channels f_sem_* in space '{pred.feature_space}'"]
    ply = PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<", comments=comments)
    with atomic_file(path) as f:
        ply.write(f)
    return int(keep.sum())


# ------------------------------------------------------------------------------------------------------- run


def _u8(img: Tensor) -> np.ndarray:
    return (img.detach().clamp(0, 1) * 255).round().byte().cpu().numpy()


def colour_depth(depth: Tensor, alpha: Tensor) -> Tensor:
    """Turbo colours [H, W, 3] of a depth map [H, W]: near blue, far red (2nd-98th percentile of the rendered
    pixels); black where alpha < 0.5."""
    from unisem_ns.language.query_field import turbo

    valid = (alpha > 0.5) & torch.isfinite(depth) & (depth > 0)
    out = torch.zeros(*depth.shape, 3)
    if int(valid.sum()) < 2:
        return out
    v = depth[valid].float()
    lo, hi = torch.quantile(v, 0.02), torch.quantile(v, 0.98)
    x = ((depth - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    col = turbo(x)
    return torch.where(valid[..., None], col, out)


def _device(spec: str) -> str:
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec not in ("cpu", "cuda"):
        raise InputError(f"--device {spec!r}: use auto, cpu or cuda")
    if spec == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device here; use --device cpu (or auto)")
    return spec


def _text_encoder(args: PredictArgs, scene: Path, cue_dim: int):
    """(encoder, note): the text encoder of the predictor's cue space, or None with the reason."""
    from unisem_ns.language.encoders import make_text_encoder

    if cue_dim <= 0:
        return None, "the predictor has no semantic output"
    spec = args.encoder or None
    if spec is None and (scene / "language_features").is_dir():
        from unisem_ns.cues.layout import CueError, read_encoder_json

        try:
            spec = read_encoder_json(scene)
        except CueError:
            spec = None
    try:
        enc = make_text_encoder(spec or "minilm")
    except Exception as e:  # noqa: BLE001 - an unavailable model is reported, the rest of the preview still runs
        if args.encoder:
            raise InputError(f"--encoder {args.encoder!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                             ) from None
        return None, f"no text encoder ({type(e).__name__})"
    if enc.dim != cue_dim:
        return None, f"the text encoder {enc.name} is {enc.dim}-d, the predictor's cue space {cue_dim}-d"
    return enc, ""


def run_predict(args: PredictArgs, log=print) -> Dict:
    """Everything ``unisem-predict`` does; returns metrics.json's content."""
    from feedforward.predictor import INIT_FLAG, load_unisem_predictor
    from feedforward.render import render_gaussians
    from feedforward.scene_init import evenly_spaced, input_size, predict_scene
    from unisem_ns.cues.layout import atomic_save_png
    from unisem_ns.language.query_field import CANONICAL_NEGATIVES, palette, relevancy, segment, turbo
    from unisem_ns.metrics.depth import depth_metrics
    from unisem_ns.metrics.scene import SceneEvaluator
    from unisem_ns.query import parse_queries, query_file_names
    from unisem_ns.utils.atomic import atomic_write_json

    t_start = time.perf_counter()
    queries = parse_queries(args.queries)  # before loading anything
    if args.views < 0:
        raise InputError(f"--views {args.views}: give a number of training views >= 1, or 0 for all of them")
    if args.window < 2:
        raise InputError(f"--window {args.window}: the predictor needs a reference and another view; use >= 2")
    if args.stride < 1:
        raise InputError(f"--stride {args.stride}: use 1 (every pixel) or more")
    labels: Optional[List[str]] = None
    if args.labels is not None:
        try:
            labels = [str(c) for c in json.loads(Path(args.labels).read_text())]
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise InputError(f"--labels {args.labels}: cannot read the label list ({e}); pass a JSON list of class "
                             "names") from None
    device = _device(args.device)
    scene = args.data
    if scene is None:
        from unisem_ns.data.default_scene import default_scene_dir

        scene = default_scene_dir()
        log(f"{PROG}: no --data given: using the embedded default scene at {scene}")
    cams = read_scene_cameras(Path(scene))
    try:
        predictor = load_unisem_predictor(Path(args.predictor), device=device)
    except InputError as e:  # its messages name ns-train's flag; here it is --predictor
        raise InputError(str(e).replace(INIT_FLAG, "--predictor")) from None
    t_loaded = time.perf_counter()

    # --- prediction on the chosen training views, placed with the scene's own poses (scale 1)
    chosen = [cams.train[j] for j in evenly_spaced(len(cams.train), args.views)]
    images = [read_rgb(cams.images[i]) for i in chosen]
    size = input_size(predictor, *images[0].shape[-2:])
    depths = [_depth(cams, i) for i in chosen] if args.depth_align else None
    if depths is not None and all(d is None for d in depths):
        depths = None
    t_enc = time.perf_counter()
    enc, sem_note = _text_encoder(args, cams.scene, predictor.cue_dim)
    t_enc = time.perf_counter() - t_enc
    cues = None
    if enc is not None and (cams.scene / "language_features").is_dir():
        cues = [scene_cues(cams.scene, cams.stems[i], size) for i in chosen]
        if any(c is None or c.shape[-1] != predictor.cue_dim for c in cues):
            cues = None
    with torch.no_grad():
        pred = predict_scene(predictor, images, cams.K[chosen], cams.c2w[chosen], dataparser_scale=1.0,
                             depths=depths, cues=cues, window=args.window, stride=args.stride,
                             align_depth=args.depth_align)
    if device == "cuda":
        torch.cuda.synchronize()
    t_predicted = time.perf_counter()
    log(f"{PROG}: {pred.num} Gaussians from {len(chosen)} training views in {len(pred.info['windows'])} windows at "
        f"{size[1]}x{size[0]} ({t_predicted - t_loaded - t_enc:.2f} s)")

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    n_written = write_gaussian_ply(out / "gaussians.ply", pred)
    t_ply = time.perf_counter()

    # --- the label set and the text phrases, in the predictor's cue space
    if labels is None:
        labels = [c for c in cams.class_names[1:]] if cams.class_names else []
    label_emb = enc.encode(labels) if (enc is not None and labels) else None
    scored = label_emb is not None and args.labels is None and bool(cams.class_names)
    evaluator = SceneEvaluator(num_classes=len(cams.class_names) if scored else None, ignore_index=0)
    pos = enc.encode(queries) if (enc is not None and queries) else None
    neg = enc.encode(list(CANONICAL_NEGATIVES)) if pos is not None else None
    if queries and pos is None:
        log(f"{PROG}: warning: no relevancy maps: {sem_note}")
    if labels and label_emb is None:
        log(f"{PROG}: warning: no segmentation: {sem_note}")
    names = query_file_names(queries)

    # --- render the held-out views
    dev = torch.device(device)
    sh = pred.sh.float().to(dev)
    sh_degree = int(round(math.sqrt(sh.shape[1]))) - 1
    with_features = label_emb is not None or pos is not None
    g = {"means": pred.means.float().to(dev), "quats": pred.quats.float().to(dev),
         "scales": pred.scales.float().to(dev), "opacities": pred.opacities.float().to(dev), "sh": sh,
         "sem": pred.features.float().to(dev)}
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    per_view: List[Dict] = []
    from unisem_ns.data.scene_io import load_gt_maps

    t_render = 0.0
    for i in cams.test:
        h, w = cams.sizes[i]
        c2w = torch.eye(4)
        c2w[:3] = cams.c2w[i]
        viewmat = torch.linalg.inv(c2w @ flip)  # OpenCV world-to-camera
        t0 = time.perf_counter()
        with torch.no_grad():
            r = render_gaussians(g, viewmat[None].to(dev), cams.K[i : i + 1].to(dev), w, h, sh_degree,
                                 with_features=with_features)
        t_render += time.perf_counter() - t0
        rgb = r["rgb"][0].cpu()
        depth = r["depth"][0, ..., 0].cpu()
        alpha = r["alpha"][0, ..., 0].cpu()
        stem = cams.stems[i]
        vdir = out / stem
        vdir.mkdir(exist_ok=True)
        atomic_save_png(vdir / "rgb.png", _u8(rgb))
        atomic_save_png(vdir / "depth.png", _u8(colour_depth(depth, alpha)))
        gt_rgb = read_rgb(cams.images[i]).permute(1, 2, 0)
        if gt_rgb.shape[:2] != rgb.shape[:2]:
            raise InputError(f"{cams.images[i]}: image is {gt_rgb.shape[1]}x{gt_rgb.shape[0]}, transforms.json "
                             f"says {w}x{h}; fix w/h in transforms.json")
        mse = float(((rgb - gt_rgb) ** 2).mean())
        rec: Dict = {"stem": stem, "psnr": -10.0 * math.log10(max(mse, 1e-10)),
                     "coverage": float((alpha > 0.5).float().mean())}
        gt_d = _depth(cams, i)
        if gt_d is not None:
            # expected depth (already divided by alpha); pixels nothing covers are not scored as 0 m
            dm = depth_metrics(depth, gt_d, mask=alpha > 0.5)
            rec["depth_abs_rel"] = dm["abs_rel"]
            rec["depth_delta_1.25"] = dm["delta_1.25"]
        gt = load_gt_maps(cams.scene, stem)
        if with_features:
            cue_feats = predictor.features_to_cue_space(r["feature"][0].reshape(h * w, -1)).float()
            if label_emb is not None:
                ids = segment(cue_feats, label_emb.to(cue_feats.device)).reshape(h, w).cpu()
                colours = palette(len(labels))
                atomic_save_png(vdir / "segmentation.png", _u8(colours[ids]))
                atomic_save_png(vdir / "segmentation_ids.png", (ids.numpy() + 1).astype(np.uint16))
                if scored and "semantic" in gt:
                    own = evaluator.update(ids + 1, torch.from_numpy(gt["semantic"]))
                    rec.update({f"view_{k}": v for k, v in own.items()})
            if pos is not None:
                rel = relevancy(cue_feats, pos.to(cue_feats.device), neg.to(cue_feats.device)).reshape(h, w, -1).cpu()
                for q_i, q in enumerate(queries):
                    atomic_save_png(vdir / f"relevancy_{names[q]}.png", _u8(turbo(rel[..., q_i])))
        per_view.append(rec)

    def mean(key: str) -> Optional[float]:
        vals = [v[key] for v in per_view if key in v and v[key] == v[key]]
        return float(np.mean(vals)) if vals else None

    metrics: Dict = {
        "scene": str(cams.scene), "predictor": str(args.predictor), "device": device,
        "train_views_used": [cams.stems[i] for i in chosen], "held_out_views": len(per_view),
        "gaussians": pred.num, "gaussians_written": n_written, "input_size": list(size),
        "window": args.window, "stride": args.stride,
        "depth_ratios": pred.info.get("depth_ratios"), "with_scene_cues": cues is not None,
        "psnr": mean("psnr"), "coverage": mean("coverage"),
    }
    if any("depth_abs_rel" in v for v in per_view):
        metrics["depth"] = {"abs_rel": mean("depth_abs_rel"), "delta_1.25": mean("depth_delta_1.25")}
    seg = evaluator.compute()
    if seg:
        metrics["segmentation"] = {k: seg[k] for k in ("miou", "macc", "miou_micro", "pixel_acc") if k in seg}
    metrics["labels"] = labels if label_emb is not None else []
    metrics["queries"] = queries if pos is not None else []
    if sem_note:
        metrics["semantics_note"] = sem_note
    metrics["per_view"] = per_view
    t_end = time.perf_counter()
    metrics["timing_s"] = {"load": t_loaded - t_start, "text_encoder": t_enc,
                           "predict": t_predicted - t_loaded - t_enc, "ply": t_ply - t_predicted,
                           "render": t_render, "total": t_end - t_start}
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def main(argv: Optional[List[str]] = None) -> None:
    args = tyro.cli(PredictArgs, args=argv, prog=PROG, description=HELP)
    try:
        m = run_predict(args)
    except InputError as e:
        raise exit_on_input_error(e, prog=PROG) from None
    print(f"{PROG}: {m['held_out_views']} held-out views, {m['gaussians_written']} Gaussians -> {args.output}")
    line = f"  PSNR {m['psnr']:.2f} dB" if m["psnr"] is not None else "  PSNR n/a"
    if "depth" in m and m["depth"]["abs_rel"] is not None:
        line += f"  depth AbsRel {m['depth']['abs_rel']:.3f}"
    if "segmentation" in m:
        line += f"  mIoU {m['segmentation']['miou']:.3f}  mAcc {m['segmentation']['macc']:.3f}"
    print(line)
    t = m["timing_s"]
    print(f"  predict {t['predict']:.2f} s, render {t['render']:.2f} s, total {t['total']:.2f} s; "
          f"PLY {args.output / 'gaussians.ply'}, metrics {args.output / 'metrics.json'}")


if __name__ == "__main__":
    main()
