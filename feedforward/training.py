"""One training iteration of the feed-forward predictor (pure PyTorch; the Nerfstudio model and the benchmark
both call :func:`training_losses`).

Per view set: predict Gaussians from the V context views; (EGD) render the context views without grad, turn
their per-pixel error into a keep-mask; render the target views (and the context views) at their GT poses
relative to view 1 with the kept Gaussians; losses:

- ``rgb``: L1 (+ optional 1 - SSIM);
- ``semantic``: 1 - cos(expand(F^), cue) over the target views' pixels with a cue (``LossConfig.semantic_views``);
- ``geometry``: DUSt3R ConfLoss of the context pointmaps vs GT points in view 1's frame;
- ``mtc``: alpha(t) * L_proto (stage B of the curriculum).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import FeedForwardConfig
from .curriculum import curriculum_weight, mtc_loss, simulator_prompt_mask
from .error_aware_dropout import dropout_rate, pixel_error, sample_keep_mask
from .geometry import unproject_depth
from .model import UniSemPredictor, flatten_gaussians
from .render import render_gaussians, select_gaussians
from .sampling import ViewSet

__all__ = ["training_losses", "predict", "lr_at"]


def predict(model: UniSemPredictor, vs: ViewSet) -> Dict[str, Tensor]:
    """Gaussians of the context views of ``vs`` as a flat dict [N = V*H*W, ...] (plus ``conf``)."""
    v = vs.n_context
    sem_in = None
    if model.feature_reduction is not None and vs.cue_seg is not None:
        target, _ = _dense_many(vs.cue_seg[:v], vs.cue_feats)
        sem_in = F.normalize(target, dim=-1)[None]
    g = model(vs.images[None, :v], vs.Ks[None, :v], sem_in)
    return flatten_gaussians(g)


def _dense_many(seg: Tensor, feats: Tensor) -> Tuple[Tensor, Tensor]:
    valid = seg >= 0
    if feats.shape[0] == 0:
        return feats.new_zeros((*seg.shape, feats.shape[1])), valid
    return feats[seg.clamp(min=0)] * valid[..., None], valid


def expanded_cosine(latent: Tensor, rows: Tensor, table: Tensor, expansion: torch.nn.Conv2d) -> Tensor:
    """cos(W f + b, t_row) for latents f [M, d] and targets ``table[rows]`` [M, D], without forming the D-dim
    expansion per pixel: W f + b is linear, so the dot product and norm reduce to d-dim algebra with
    per-row (K) precomputation. Exact up to float error."""
    W = expansion.weight[:, :, 0, 0]  # [D, d]
    b = expansion.bias if expansion.bias is not None else W.new_zeros(W.shape[0])  # [D]
    t = F.normalize(table, dim=-1)  # [K, D]
    a = (t @ W)[rows]  # [M, d]
    c = (t @ b)[rows]  # [M]
    dot = (latent * a).sum(-1) + c
    G = W.T @ W  # [d, d]
    wb = W.T @ b  # [d]
    sq = ((latent @ G) * latent).sum(-1) + 2 * latent @ wb + b @ b
    return dot / sq.clamp_min(1e-12).sqrt()


def conf_loss(pred: Tensor, gt: Tensor, conf: Tensor, valid: Tensor, alpha: float, norm: str) -> Tensor:
    """DUSt3R ConfLoss(Regr3D(L21)): mean over valid pixels of conf * ||p^ - p|| - alpha * log(conf).

    ``norm='avg_dis'`` first divides each pointmap by its mean distance to the origin (over valid pixels)."""
    p, g, c = pred[valid], gt[valid], conf[valid]
    if p.numel() == 0:
        return pred.sum() * 0.0
    if norm == "avg_dis":
        p = p / p.norm(dim=-1).mean().clamp_min(1e-8)
        g = g / g.norm(dim=-1).mean().clamp_min(1e-8)
    err = (p - g).norm(dim=-1)
    return (c * err - alpha * torch.log(c)).mean()


def training_losses(
    model: UniSemPredictor,
    vs: ViewSet,
    step: int,
    total_steps: int,
    cfg: FeedForwardConfig,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Dict[str, Tensor], Dict[str, float]]:
    """Weighted losses (sum them for the total) and scalar stats of one view set."""
    h, w = vs.size
    v = vs.n_context
    pc = cfg.predictor
    g = predict(model, vs)
    stats: Dict[str, float] = {}

    keep = None
    rate = dropout_rate(step, total_steps, cfg.egd)
    if rate > 0:
        with torch.no_grad():
            gd = {k: t.detach() for k, t in g.items()}
            ctx = render_gaussians(gd, vs.viewmats[:v], vs.Ks[:v], w, h, pc.sh_degree, with_features=False)
            err = pixel_error(ctx["rgb"], vs.images[:v].permute(0, 2, 3, 1), cfg.egd.error)
        keep, p = sample_keep_mask(err, rate, cfg.egd, generator)
        stats["egd_rate"] = rate
        stats["egd_dropped"] = float((~keep).float().mean())
    gk = select_gaussians(g, keep)

    views = torch.arange(vs.n_views) if cfg.loss.render_context_views else torch.arange(v, vs.n_views)
    if len(views) == 0:
        views = torch.arange(vs.n_views)
    r = render_gaussians(gk, vs.viewmats[views], vs.Ks[views], w, h, pc.sh_degree, with_features=True)
    gt_rgb = vs.images[views].permute(0, 2, 3, 1)
    losses: Dict[str, Tensor] = {}
    losses["rgb"] = cfg.loss.rgb_l1 * (r["rgb"] - gt_rgb).abs().mean()
    if cfg.loss.ssim > 0:
        from .error_aware_dropout import _ssim_map

        losses["ssim"] = cfg.loss.ssim * (1 - _ssim_map(r["rgb"], gt_rgb)).mean()

    alpha_t = curriculum_weight(step, total_steps, cfg.mtc)
    if vs.cue_seg is not None and cfg.loss.semantic > 0:
        valid = vs.cue_seg[views] >= 0
        need_dense = alpha_t > 0 or model.cfg.expansion_downsample != 1.0
        if need_dense:
            feats = model.expand_features(r["feature"])  # [C, H', W', D]
            target, valid = _dense_many(vs.cue_seg[views], vs.cue_feats)
            target = F.normalize(target, dim=-1)
        if need_dense and feats.shape[1:3] != target.shape[1:3]:
            feats = F.interpolate(feats.permute(0, 3, 1, 2), size=(h, w), mode="bilinear",
                                  align_corners=False).permute(0, 2, 3, 1)
        if alpha_t > 0:
            om = vs.object_mask[views] if vs.object_mask is not None else None
            segs = vs.cue_seg[views]
            if cfg.mtc.prompter == "sam":  # real data: point-prompted SAM on the target image
                sam = _sam_prompter(cfg.mtc.sam_checkpoint)
                imgs = (vs.images[views].permute(0, 2, 3, 1) * 255).round().byte().cpu().numpy()
                prompt = lambda vi, pt: sam(imgs[vi], pt, image_id=(vs.scene, vs.indices[int(views[vi])])).to(  # noqa: E731
                    feats.device)
            else:  # synthetic: the simulated SAM mask under the point
                prompt = lambda vi, pt: simulator_prompt_mask(pt, None if om is None else om[vi], segs[vi])  # noqa: E731
            n_t = len(views) - (v if cfg.loss.render_context_views else 0)
            prompted = list(range(len(views) - n_t, len(views)))
            lp, st = mtc_loss(feats, target, valid, r["depth"][..., 0], vs.Ks[views], vs.viewmats[views], prompted,
                              prompt, gk, model.expand_latents, cfg.mtc)
            losses["mtc"] = alpha_t * lp
            stats.update(st)
            stats["mtc_alpha"] = alpha_t
        if cfg.loss.semantic_views == "targets" and cfg.loss.render_context_views and vs.n_views > v:
            valid = valid & (views >= v).to(valid.device)[:, None, None]
        if valid.any():
            if model.cfg.expansion_downsample == 1.0 and alpha_t == 0:
                rows = vs.cue_seg[views][valid]
                cos = expanded_cosine(r["feature"][valid], rows, vs.cue_feats, model.feature_expansion)
            else:
                cos = F.cosine_similarity(feats[valid], target[valid], dim=-1)
            losses["semantic"] = cfg.loss.semantic * (1 - cos).mean()

    if cfg.loss.geometry > 0:
        ctx_valid = (vs.depths[:v] > 0) & (vs.depths[:v] < 1e3)
        gt_pts = unproject_depth(vs.depths[:v], vs.Ks[:v], vs.viewmats[:v])  # [V, H, W, 3]
        pred_pts = g["means"].reshape(v, h, w, 3)
        conf = g["conf"].reshape(v, h, w)
        losses["geometry"] = cfg.loss.geometry * conf_loss(pred_pts, gt_pts, conf, ctx_valid,
                                                           cfg.loss.geometry_conf_alpha, cfg.loss.geometry_norm)
    with torch.no_grad():
        mse = ((r["rgb"] - gt_rgb) ** 2).mean()
        stats["psnr"] = float(-10 * torch.log10(mse.clamp_min(1e-10)))
    return losses, stats


_SAM_CACHE: Dict[str, object] = {}


def _sam_prompter(checkpoint: str):
    """One point-prompted SAM per checkpoint path (loaded on first use; one-line error if the file is missing)."""
    if checkpoint not in _SAM_CACHE:
        from .curriculum import SamPointPrompter

        _SAM_CACHE[checkpoint] = SamPointPrompter(checkpoint or None)
    return _SAM_CACHE[checkpoint]


def lr_at(step: int, total: int, lr: float, lr_final: float, warmup_fraction: float) -> float:
    """Linear warm-up then cosine decay from ``lr`` to ``lr_final``."""
    warm = int(warmup_fraction * total)
    if step < warm:
        return lr * (step + 1) / max(warm, 1)
    t = (step - warm) / max(total - warm, 1)
    return lr_final + 0.5 * (lr - lr_final) * (1 + np.cos(np.pi * min(1.0, t)))
