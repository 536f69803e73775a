"""Held-out evaluation of a GSemSplat predictor on view pairs of the feed-forward corpus (no Nerfstudio).

Pairs: Uni3R's 2-view protocol (:func:`feedforward.sampling.protocol_view_sets`, context (i - 1, i + 1), target
i), ``pairs_per_scene`` of them per held-out scene. Per pair the model predicts from the two context images (no
poses); the target is rendered at its GT pose relative to view 1 (GSemSplat and Splatt3R evaluate at GT poses:
the predicted pointmap is metric). Queries [R]: every GT class visible in the target (void excluded), query text =
its class name, GT mask = its pixels in ``gt/semantic``. Scored with both reference protocols of
:mod:`unisem_ns.metrics.open_vocab` (``gsemsplat``: visibility mask = the pixels the pair sees,
:func:`~feedforward.gsemsplat.losses.visibility_mask`; ``langsplat``: no mask), one row per relevancy source:

- ``region`` / ``context``: the decoded region / context map alone (one head);
- ``dual``: both heads, one per query picked by the larger maximum of the smoothed relevancy (GSemSplat's rule);
- ``raw_cue``: the target view's own 2D cue (``language_features/`` level 0, per-mask features painted on their
  masks; pixels without a mask get a zero feature) -- the 2D input the model distils, seen at the target itself;
- ``oracle_dual``: the predicted semantics (and colour) on GT geometry: Gaussians at the GT depth of the context
  pixels (GT poses), isotropic, ``oracle_scale_px`` pixel footprints, opacity 0.99 -- separates geometry errors
  from semantic ones.

Also: PSNR masked to the visible pixels (model and oracle), depth AbsRel on the visible pixels at the target (no
alignment: metric), the oracle's depth AbsRel re-rendered at context view 1 (a check of the oracle geometry),
and the time of one forward pass per pair (``predict_s_per_pair``) and of rendering + decoding.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from unisem_ns.cues.layout import dense_targets
from unisem_ns.metrics.open_vocab import aggregate_results, evaluate_queries, relevancy_maps

from ..geometry import unproject_depth
from ..render import render_gaussians, select_gaussians
from ..sampling import ViewSet, make_view_set, protocol_view_sets
from .losses import visibility_mask
from .model import LATENT_DIM, GSemSplatPredictor

__all__ = ["GSemSplatEvalConfig", "ROWS", "PROTOCOLS", "predict_flat", "oracle_gaussians", "gt_queries",
           "evaluate_pair", "evaluate_pairs", "flatten_eval", "format_table"]

ROWS = ("region", "context", "dual", "raw_cue", "oracle_dual")
PROTOCOLS = ("gsemsplat", "langsplat")


@dataclass
class GSemSplatEvalConfig:
    """Held-out pair evaluation (``ns-eval`` of ``gsemsplat``, ``benchmarks/bench_gsemsplat.py``)."""

    pairs_per_scene: Optional[int] = 4
    """Pairs (targets of the 2-view protocol, evenly spread) per held-out scene; None = all."""
    raw_cue: bool = True
    """Score the target view's own 2D cue (row raw_cue)."""
    oracle: bool = True
    """Score the predicted semantics on GT geometry (row oracle_dual)."""
    oracle_scale_px: float = 0.7
    """Isotropic scale of an oracle Gaussian in pixels of its view (depth / fx x this)."""
    mask_rel_tol: float = 0.1
    """Relative depth tolerance of the visibility mask (as training)."""
    depth_cap: float = 10.0
    """GT depths beyond this (m) are not scored."""


# ---------------------------------------------------------------------------------------------------- pieces


def predict_flat(model: GSemSplatPredictor, vs: ViewSet) -> Dict[str, Tensor]:
    """The Gaussians of the pair's two context views as a flat dict [2 H W, ...] with ``sem`` = [region | context]
    (what :func:`feedforward.render.render_gaussians` takes)."""
    h, w = vs.size
    with torch.no_grad():
        out = model(vs.images[None, :2], vs.Ks[None, :2])
    flat = {k: t[0].reshape(2 * h * w, *t.shape[4:]) for k, t in out.items()}
    flat["sem"] = torch.cat([flat["region"], flat["context"]], -1)
    return flat


def oracle_gaussians(g: Dict[str, Tensor], vs: ViewSet, scale_px: float = 0.7) -> Dict[str, Tensor]:
    """GT geometry with the predicted appearance and semantics: every context pixel with a valid GT depth becomes a
    Gaussian at its GT point (view 1's frame, GT poses), isotropic with ``scale_px`` pixel footprints, opacity
    0.99, identity rotation; ``sh`` and ``sem`` are the prediction's. Pixels without depth are dropped."""
    depth = vs.depths[:2]
    pts = unproject_depth(depth, vs.Ks[:2], vs.viewmats[:2]).reshape(-1, 3)
    fx = vs.Ks[:2, 0, 0][:, None, None].expand_as(depth)
    n = pts.shape[0]
    out = dict(g)
    out["means"] = pts.to(g["means"].dtype)
    out["scales"] = (depth / fx * scale_px).reshape(-1, 1).expand(n, 3).contiguous().to(g["scales"].dtype)
    out["quats"] = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=g["quats"].dtype, device=g["quats"].device).expand(n, 4)
    out["opacities"] = torch.full((n,), 0.99, dtype=g["opacities"].dtype, device=g["opacities"].device)
    keep = (depth > 0).reshape(-1) & torch.isfinite(pts).all(-1)
    return select_gaussians({k: v for k, v in out.items() if isinstance(v, Tensor) and v.shape[:1] == (n,)}, keep)


def gt_queries(semantic: Tensor, class_names: Sequence[str]) -> Dict[str, Tensor]:
    """Per GT class visible in a view (void, id 0, excluded): class name -> its [H, W] bool mask."""
    out: Dict[str, Tensor] = {}
    for c in torch.unique(semantic).tolist():
        if c <= 0 or c >= len(class_names):
            continue
        out[str(class_names[c])] = semantic == c
    return out


def _psnr(pred: Tensor, gt: Tensor, mask: Tensor) -> float:
    m = mask[..., None].float()
    mse = (((pred - gt) ** 2) * m).sum() / (3 * m.sum()).clamp_min(1.0)
    return float(-10 * torch.log10(mse.clamp_min(1e-10)))


def _abs_rel(depth: Tensor, gt: Tensor, mask: Tensor, cap: float) -> float:
    m = mask & (gt > 0) & (gt <= cap)
    if not bool(m.any()):
        return math.nan
    return float(((depth[m] - gt[m]).abs() / gt[m]).mean())


def _decode(model: GSemSplatPredictor, latents: Tensor) -> Tensor:
    """Rendered [H, W, 32] latents -> [2, H, W, D] decoded maps (region, context)."""
    with torch.no_grad():
        return torch.stack([model.decode(latents[None, ..., :LATENT_DIM], "region")[0],
                            model.decode(latents[None, ..., LATENT_DIM:2 * LATENT_DIM], "context")[0]])


# ---------------------------------------------------------------------------------------------------- one pair


def evaluate_pair(model: GSemSplatPredictor, vs: ViewSet, class_names: Sequence[str], label_embeds: Dict[str, Tensor],
                  negatives: Tensor, cfg: GSemSplatEvalConfig = GSemSplatEvalConfig()) -> Dict:
    """One pair (2 context views + 1 target, GT semantics in ``vs.semantic``): per row and protocol the
    :class:`~unisem_ns.metrics.open_vocab.ImageResult`, plus PSNR / depth / timing scalars.

    ``label_embeds``: class name -> [D] text embedding (the scene's classes); ``negatives``: [K, D]."""
    if vs.n_context != 2 or vs.n_views != 3:
        raise ValueError("evaluate_pair takes 2 context views + 1 target")
    model.eval()
    h, w = vs.size
    dev = vs.images.device
    t0 = time.perf_counter()
    g = predict_flat(model, vs)
    t_pred = time.perf_counter() - t0
    vm, K = vs.viewmats[2:3], vs.Ks[2:3]
    t0 = time.perf_counter()
    with torch.no_grad():
        r = render_gaussians(g, vm, K, w, h, model.cfg.sh_degree, with_features=True)
        decoded = _decode(model, r["feature"][0])
    t_render = time.perf_counter() - t0
    valid = visibility_mask(vs.depths[2:3], K, vm, vs.depths[:2], vs.Ks[:2], vs.viewmats[:2], cfg.mask_rel_tol)[0]
    gt_img = vs.images[2].permute(1, 2, 0)
    rec: Dict = {"scene": vs.scene, "target": vs.indices[2], "predict_s": t_pred, "render_decode_s": t_render,
                 "mask_fraction": float(valid.float().mean()),
                 "psnr_masked": _psnr(r["rgb"][0], gt_img, valid),
                 "depth_abs_rel": _abs_rel(r["depth"][0, ..., 0], vs.depths[2], valid, cfg.depth_cap)}
    sources: Dict[str, Tensor] = {"region": decoded[:1], "context": decoded[1:], "dual": decoded}
    if cfg.raw_cue and vs.cue_seg is not None and vs.cue_feats is not None:
        cue, _ = dense_targets(vs.cue_seg[2], vs.cue_feats)
        sources["raw_cue"] = cue[None].to(dev).float()
    if cfg.oracle:
        go = oracle_gaussians(g, vs, cfg.oracle_scale_px)
        with torch.no_grad():
            ro = render_gaussians(go, vm, K, w, h, model.cfg.sh_degree, with_features=True)
            rc = render_gaussians(go, vs.viewmats[:1], vs.Ks[:1], w, h, model.cfg.sh_degree, with_features=False)
        sources["oracle_dual"] = _decode(model, ro["feature"][0])
        rec["oracle_psnr_masked"] = _psnr(ro["rgb"][0], gt_img, valid)
        rec["oracle_depth_abs_rel"] = _abs_rel(ro["depth"][0, ..., 0], vs.depths[2], valid, cfg.depth_cap)
        rec["oracle_context_depth_abs_rel"] = _abs_rel(rc["depth"][0, ..., 0], vs.depths[0],
                                                       torch.ones_like(valid), cfg.depth_cap)
    gts = gt_queries(vs.semantic[2], class_names) if vs.semantic is not None else {}
    queries = [q for q in gts if q in label_embeds]
    rec["n_queries"] = len(queries)
    rec["results"] = {}
    if not queries:
        return rec
    pos = torch.stack([label_embeds[q] for q in queries]).to(dev).float()
    masks = {q: gts[q].cpu() for q in queries}
    for row, feats in sources.items():
        rel = relevancy_maps(feats, pos, negatives.to(dev).float())
        res = {"gsemsplat": evaluate_queries(rel, masks, "gsemsplat", valid=valid.cpu(), queries=queries),
               "langsplat": evaluate_queries(rel, masks, "langsplat", queries=queries)}
        rec["results"][row] = res
    return rec


# ---------------------------------------------------------------------------------------------------- scenes


def _mean(xs: List[float]) -> float:
    xs = [x for x in xs if x == x]
    return float(np.mean(xs)) if xs else float("nan")


def evaluate_pairs(model: GSemSplatPredictor, scenes: Sequence, encoder, cfg: GSemSplatEvalConfig = GSemSplatEvalConfig(),
                   device: Optional[str] = None, log: Optional[Callable[[str], None]] = None) -> Dict:
    """Every held-out pair of ``scenes`` (:class:`feedforward.corpus.SceneViews` with GT semantics).

    Returns ``{"rows": {row: {"gsemsplat_miou", "gsemsplat_loc", "langsplat_miou", "langsplat_loc",
    "n_evaluated"}}, "dual_region_fraction" (share of queries whose dual head is the region one), "psnr_masked",
    "depth_abs_rel", "oracle_*", "predict_s_per_pair", "render_decode_s_per_pair", "mask_fraction", "n_pairs",
    "n_queries", "n_scenes"}``; mIoU = mean IoU over (target, query) pairs, loc = hit rate
    (:func:`unisem_ns.metrics.open_vocab.aggregate_results`)."""
    from unisem_ns.language.query_field import CANONICAL_NEGATIVES

    dev = device or str(next(model.parameters()).device)
    model.eval()
    negatives = encoder.encode(list(CANONICAL_NEGATIVES))
    recs: List[Dict] = []
    for s in scenes:
        names = [str(c) for c in s.class_names[1:]]
        emb = encoder.encode(names) if names else torch.zeros(0)
        label_embeds = {n: emb[i] for i, n in enumerate(names)}
        for context, targets in protocol_view_sets(s, 2, cfg.pairs_per_scene):
            vs = make_view_set(s, context, targets, with_gt=True).to(dev)
            recs.append(evaluate_pair(model, vs, s.class_names, label_embeds, negatives, cfg))
        if log is not None:
            log(f"  {s.name}: {sum(1 for r in recs if r['scene'] == s.name)} pairs")
    rows: Dict[str, Dict[str, float]] = {}
    for row in ROWS:
        per = {p: [r["results"][row][p] for r in recs if row in r.get("results", {})] for p in PROTOCOLS}
        if not per["gsemsplat"]:
            continue
        entry: Dict[str, float] = {}
        for p in PROTOCOLS:
            agg = aggregate_results(per[p])
            entry[f"{p}_miou"] = agg.miou
            entry[f"{p}_loc"] = agg.localization_accuracy
            entry[f"{p}_n_evaluated"] = float(agg.num_evaluated)
        rows[row] = entry
    heads = [q.head for r in recs if "dual" in r.get("results", {}) for q in r["results"]["dual"]["gsemsplat"].evaluated]
    out: Dict = {"rows": rows, "dual_region_fraction": _mean([float(hd == 0) for hd in heads])}
    for k in ("psnr_masked", "depth_abs_rel", "oracle_psnr_masked", "oracle_depth_abs_rel",
              "oracle_context_depth_abs_rel", "mask_fraction"):
        if any(k in r for r in recs):
            out[k] = _mean([r[k] for r in recs if k in r])
    out["predict_s_per_pair"] = _mean([r["predict_s"] for r in recs])
    out["render_decode_s_per_pair"] = _mean([r["render_decode_s"] for r in recs])
    out["n_pairs"] = float(len(recs))
    out["n_queries"] = float(sum(r["n_queries"] for r in recs))
    out["n_scenes"] = float(len(scenes))
    if log is not None:
        log(format_table(out))
    return out


def flatten_eval(results: Dict) -> Dict[str, float]:
    """``{"rows": {"dual": {"gsemsplat_miou": x}}, "psnr_masked": y}`` -> ``{"dual_gsemsplat_miou": x,
    "psnr_masked": y}`` (ns-eval wants one flat dict of floats)."""
    flat = {f"{row}_{k}": float(v) for row, d in results["rows"].items() for k, v in d.items()}
    flat.update({k: float(v) for k, v in results.items() if k != "rows"})
    return flat


def format_table(results: Dict) -> str:
    """A markdown table of the rows (mIoU / localisation under both protocols)."""
    lines = ["| row | mIoU (GSemSplat) | loc (GSemSplat) | mIoU (LangSplat) | loc (LangSplat) | queries |",
             "|---|---|---|---|---|---|"]
    for row, d in results["rows"].items():
        lines.append(f"| {row} | {d['gsemsplat_miou']:.3f} | {d['gsemsplat_loc']:.3f} | {d['langsplat_miou']:.3f} | "
                     f"{d['langsplat_loc']:.3f} | {int(d['gsemsplat_n_evaluated'])} |")
    extra = [f"{k} {results[k]:.4g}" for k in ("psnr_masked", "oracle_psnr_masked", "depth_abs_rel",
                                               "oracle_depth_abs_rel", "oracle_context_depth_abs_rel",
                                               "predict_s_per_pair", "render_decode_s_per_pair", "n_pairs")
             if k in results]
    return "\n".join(lines + ["", ", ".join(extra)])
