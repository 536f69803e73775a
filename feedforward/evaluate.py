"""Held-out evaluation of the feed-forward predictor, with the trivial baselines.

Per scene and V: Uni3R's protocol (:func:`~feedforward.sampling.protocol_view_sets`); per target view: predict
from the context views, align the target pose by photometric Adam steps (:mod:`feedforward.pose_align`), render,
then score

- depth: AbsRel, delta < 1.25 / 1.03 after per-image alignment (default trimmed LSQ scale+shift, GT capped at 10 m);
- semantics: argmax cosine of the expanded feature with the text embeddings of the scene's class names (void
  excluded), pooled over all targets: mIoU and mAcc, macro and micro (micro mAcc = pixel accuracy, LSM's "mAcc");
- PSNR of the aligned render.

Baselines on the same pixels: a constant depth (the mean training depth) aligned the same way, and the raw cue of
the target view itself (argmax of its own 2D cue; pixels without a cue count as wrong).
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from unisem_ns.language.query_field import segment
from unisem_ns.metrics import depth_metrics
from unisem_ns.metrics.segmentation import ConfusionMatrix

from .config import EvalConfig, PredictorConfig
from .corpus import SceneViews
from .model import UniSemPredictor
from .pose_align import align_pose
from .render import render_gaussians
from .sampling import ViewSet, make_view_set, protocol_view_sets
from .training import predict

__all__ = ["evaluate_scenes", "raw_cue_labels", "mean_training_depth", "flatten_results"]


def mean_training_depth(scenes: Sequence[SceneViews]) -> float:
    """The constant-depth baseline's value: mean valid GT depth over the training scenes."""
    tot, n = 0.0, 0
    for s in scenes:
        d = s.depths[s.depths > 0]
        tot += float(d.sum())
        n += d.size
    return tot / max(n, 1)


def raw_cue_labels(seg: Tensor, feats: Tensor, label_embeds: Tensor) -> Tensor:
    """Raw-cue baseline [H, W]: label id + 1 of the cue embedding under each pixel (0 where there is no cue)."""
    if feats.shape[0] == 0:
        return torch.zeros_like(seg)
    lab = segment(feats, label_embeds) + 1  # [K]
    return torch.where(seg >= 0, lab[seg.clamp(min=0)], torch.zeros_like(seg))


def _capped(depth: Tensor, cap: float) -> Tensor:
    return torch.where((depth > 0) & (depth <= cap), depth, torch.zeros_like(depth))


@torch.no_grad()
def _predict(model, vs):
    return {k: v.detach() for k, v in predict(model, vs).items()}


def evaluate_view_set(model: UniSemPredictor, vs: ViewSet, cfg: EvalConfig, label_embeds: Optional[Tensor],
                      const_depth: float) -> List[Dict]:
    """Per-target records (metrics, label maps) of one view set."""
    h, w = vs.size
    pc: PredictorConfig = model.cfg
    t0 = time.perf_counter()
    g = _predict(model, vs)
    t_pred = time.perf_counter() - t0
    out = []
    for t in range(vs.n_context, vs.n_views):
        image = vs.images[t].permute(1, 2, 0)
        K = vs.Ks[t:t + 1]
        render_rgb = lambda vm: render_gaussians(g, vm[None], K, w, h, pc.sh_degree, with_features=False)["rgb"][0]  # noqa: E731
        with torch.enable_grad():
            vm, l1_before, l1_after = align_pose(render_rgb, vs.viewmats[t], image, cfg.pose_align_steps, cfg.pose_align_lr)
        with torch.no_grad():
            r = render_gaussians(g, vm[None], K, w, h, pc.sh_degree, with_features=True)
            gt_d = _capped(vs.depths[t], cfg.depth_cap)
            depth = r["depth"][0, ..., 0]
            rec: Dict = {"scene": vs.scene, "target": vs.indices[t], "predict_s": t_pred, "views_kept": vs.n_context,
                         "pose_l1_before": l1_before, "pose_l1_after": l1_after}
            rec["depth"] = depth_metrics(depth, gt_d, cfg.depth_thresholds, align=cfg.depth_align)
            rec["depth_const"] = depth_metrics(torch.full_like(depth, const_depth), gt_d, cfg.depth_thresholds,
                                               align=cfg.depth_align)
            mse = ((r["rgb"][0] - image) ** 2).mean()
            rec["psnr"] = float(-10 * torch.log10(mse.clamp_min(1e-10)))
            if label_embeds is not None and vs.semantic is not None:
                feats = model.expand_features(r["feature"])[0]
                if feats.shape[:2] != (h, w):
                    feats = F.interpolate(feats.permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
                                          align_corners=False)[0].permute(1, 2, 0)
                rec["pred"] = segment(feats, label_embeds) + 1
                rec["gt"] = vs.semantic[t]
                if vs.cue_seg is not None:
                    rec["raw_cue"] = raw_cue_labels(vs.cue_seg[t], vs.cue_feats, label_embeds)
        out.append(rec)
    return out


def _mean(xs: List[float]) -> float:
    xs = [x for x in xs if x == x]
    return float(np.mean(xs)) if xs else float("nan")


def evaluate_scenes(
    model: UniSemPredictor,
    scenes: Sequence[SceneViews],
    cfg: EvalConfig,
    encoder=None,
    const_depth: float = 2.5,
    views: Optional[Sequence[int]] = None,
    log=None,
) -> Dict[str, Dict[str, float]]:
    """Metrics per number of context views: ``{"v2": {...}, "v8": {...}, ...}``.

    Each entry: depth_abs_rel, depth_delta_1.25, depth_delta_1.03, psnr, miou, macc, miou_micro, macc_micro
    (= pixel accuracy), the same for the baselines (``const_depth_*``, ``raw_cue_*``), n_targets,
    predict_s_per_scene (one forward pass), eval_s_per_scene (with pose alignment and rendering).
    """
    model.eval()
    results: Dict[str, Dict[str, float]] = {}
    for v in views or cfg.views:
        recs: List[Dict] = []
        cms = {}
        t_scene = []
        for s in scenes:
            labels = [c for c in s.class_names[1:]] if s.class_names else []
            emb = encoder.encode(labels) if (encoder is not None and labels) else None
            n_cls = len(s.class_names)
            t0 = time.perf_counter()
            for context, targets in protocol_view_sets(s, v, cfg.targets_per_scene):
                vs = make_view_set(s, context, targets, with_gt=True)
                recs_s = evaluate_view_set(model, vs, cfg, emb, const_depth)
                recs.extend(recs_s)
                for r in recs_s:
                    if "pred" in r:
                        for key in ("pred", "raw_cue"):
                            if key in r:
                                cm = cms.setdefault((key, n_cls), ConfusionMatrix(n_cls, ignore_index=0))
                                cm.update(r[key], r["gt"])
            t_scene.append(time.perf_counter() - t0)
        entry: Dict[str, float] = {"n_targets": float(len(recs)), "n_scenes": float(len(scenes))}
        for prefix, key in (("", "depth"), ("const_depth_", "depth_const")):
            for m in ("abs_rel", "delta_1.25", "delta_1.03"):
                entry[f"{prefix}{'depth_' if not prefix else ''}{m}"] = _mean([r[key].get(m, float("nan")) for r in recs])
        entry["psnr"] = _mean([r["psnr"] for r in recs])
        entry["views_kept"] = _mean([r["views_kept"] for r in recs])
        entry["pose_align_l1_before"] = _mean([r["pose_l1_before"] for r in recs])
        entry["pose_align_l1_after"] = _mean([r["pose_l1_after"] for r in recs])
        for (key, _), cm in cms.items():
            m = cm.compute()
            p = "" if key == "pred" else "raw_cue_"
            entry[f"{p}miou"] = m["miou"]
            entry[f"{p}macc"] = m["macc"]
            entry[f"{p}miou_micro"] = m["miou_micro"]
            entry[f"{p}macc_micro"] = m["pixel_acc"]
        per_vs = {}
        for r in recs:
            per_vs.setdefault((r["scene"], r["predict_s"]), r["predict_s"])
        entry["predict_s_per_scene"] = _mean(list(per_vs.values()))
        entry["eval_s_per_scene"] = _mean(t_scene)
        results[f"v{v}"] = entry
        if log is not None:
            log(f"  V={v}: " + ", ".join(f"{k} {val:.4g}" for k, val in entry.items()))
    return results


def flatten_results(results: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """{"v2": {"miou": x}} -> {"v2_miou": x} (ns-eval wants one flat dict of floats)."""
    return {f"{v}_{k}": float(x) for v, d in results.items() for k, x in d.items()}
