"""One GSemSplat training iteration on a view pair of the feed-forward corpus (pure PyTorch, CPU or CUDA).

Per view set (2 context views + T targets, :class:`feedforward.sampling.ViewSet`): predict the Gaussians of both
context views in view 1's frame; render the targets (and the context views) at their GT poses with RGB and both
16-d latents in one pass (:func:`feedforward.render.render_gaussians`); losses on the pixels the pair sees
(:func:`~feedforward.gsemsplat.losses.visibility_mask`):

- ``rgb``: masked MSE (+ ``lpips`` x LPIPS when a callable is given);
- ``region`` / ``context``: L1 + (1 - cos) of the decoded latents against the per-mask / dense targets;
- ``geometry`` [R]: DUSt3R's ConfLoss of the context pointmaps against GT points -- only while the pointmap head is
  trainable (the release freezes a pretrained MASt3R; at CPU scale there is none, and the render losses never
  reach the pointmap, since means = pts3d.detach() + offset).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from unisem_ns.cues.layout import dense_targets

from ..geometry import unproject_depth
from ..render import render_gaussians
from ..sampling import ViewSet
from ..training import conf_loss
from .losses import dual_semantic_loss, rgb_loss, visibility_mask
from .model import LATENT_DIM, GSemSplatPredictor

__all__ = ["GSemSplatTrainConfig", "gsemsplat_losses", "make_optimizer", "train_step", "region_targets",
           "dense_context_features", "has_dense_features", "sample_pair", "train_pairs"]


@dataclass
class GSemSplatTrainConfig:
    lr: float = 1e-3
    """Adam learning rate (release: 1e-5 on a frozen ViT-L backbone; [R] higher for the tiny CPU model)."""
    grad_clip: float = 0.5
    """Gradient-norm clip [C: release]."""
    rgb: float = 1.0
    """Masked MSE weight."""
    lpips: float = 0.0
    """LPIPS weight (release 0.25; needs an ``lpips`` callable, no VGG weights offline)."""
    region: float = 1.0
    """Region (per-mask feature) semantic loss weight."""
    context: float = 1.0
    """Context (dense feature) semantic loss weight."""
    geometry: float = 1.0
    """[R] Pointmap ConfLoss weight while the pointmap head is trainable (0: off)."""
    geometry_conf_alpha: float = 0.2
    """ConfLoss alpha [C: DUSt3R]."""
    mask_rel_tol: float = 0.1
    """Relative depth tolerance of the visibility mask [R] (Splatt3R: absolute 0.1, see ``mask_abs_tol``)."""
    mask_abs_tol: Optional[float] = None
    """Absolute depth tolerance (metres) instead, as Splatt3R's ``isclose(atol=0.1)``, when set."""
    render_context_views: bool = True
    """Also supervise the renders of the two context views (Splatt3R renders targets only) [R]."""


def region_targets(vs: ViewSet, views: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
    """Per-pixel per-mask targets ([T, H, W, D], valid [T, H, W]) of ``views`` from the view set's level-0 cue
    (``unisem_ns.cues.layout.dense_targets``), or None without cues."""
    if vs.cue_seg is None or vs.cue_feats is None:
        return None
    pairs = [dense_targets(vs.cue_seg[int(i)], vs.cue_feats) for i in views]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def dense_context_features(scene, vs: ViewSet, dim: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Context-aware targets of every view of ``vs`` from the scene's ``dense_features/`` folder.

    Args:
        scene: the :class:`feedforward.corpus.SceneViews` ``vs`` was drawn from (its ``path`` and ``stems``).
        dim: expected D (default: the folder's encoder.json).

    Returns:
        (features [V+T, H, W, D] unit rows upsampled to the image size, valid [V+T, H, W] all True). A missing or
        bad file raises the reader's one-line ``CueError`` (``unisem_ns.cues.layout.read_dense_features``).
    """
    from unisem_ns.cues.layout import read_dense_features

    if scene.path is None or not scene.stems:
        raise ValueError(f"scene {scene.name}: no folder/stems to read dense_features/ from")
    feats = torch.stack([torch.from_numpy(read_dense_features(scene.path, scene.stems[i], size=vs.size, dim=dim))
                         for i in vs.indices])
    return feats, torch.ones(feats.shape[:3], dtype=torch.bool)


def gsemsplat_losses(model: GSemSplatPredictor, vs: ViewSet, cfg: GSemSplatTrainConfig = GSemSplatTrainConfig(),
                     context_features: Optional[Tuple[Tensor, Tensor]] = None,
                     lpips: Optional[Callable[[Tensor, Tensor], Tensor]] = None
                     ) -> Tuple[Dict[str, Tensor], Dict[str, float]]:
    """Weighted losses (sum them) and scalar stats of one view set.

    Args:
        vs: 2 context views then T >= 0 targets (viewmats relative to view 1).
        context_features: optional (dense features [V+T, H, W, D], valid [V+T, H, W]) of every view of ``vs``, the
            context-aware targets (``dense_features/``); without them the context term is skipped.
        lpips: optional LPIPS callable for :func:`~feedforward.gsemsplat.losses.rgb_loss`.
    """
    if vs.n_context != 2:
        raise ValueError(f"GSemSplat trains on view pairs; the view set has {vs.n_context} context views")
    h, w = vs.size
    out = model(vs.images[None, :2], vs.Ks[None, :2])
    flat = {k: t[0].reshape(2 * h * w, *t.shape[4:]) for k, t in out.items()}
    flat["sem"] = torch.cat([flat["region"], flat["context"]], -1)
    views = torch.arange(vs.n_views) if cfg.render_context_views or vs.n_views == 2 else torch.arange(2, vs.n_views)
    r = render_gaussians(flat, vs.viewmats[views], vs.Ks[views], w, h, model.cfg.sh_degree, with_features=True)
    mask = visibility_mask(vs.depths[views], vs.Ks[views], vs.viewmats[views], vs.depths[:2], vs.Ks[:2],
                           vs.viewmats[:2], cfg.mask_rel_tol, cfg.mask_abs_tol)
    gt = vs.images[views].permute(0, 2, 3, 1)
    losses: Dict[str, Tensor] = {"rgb": cfg.rgb * rgb_loss(r["rgb"], gt, mask, lpips, cfg.lpips)}
    targets = {}
    if cfg.region > 0:
        targets["region"] = region_targets(vs, views)
    if cfg.context > 0 and context_features is not None:
        feats, valid = context_features
        targets["context"] = (feats[views], valid[views])
    lat = {"region": r["feature"][..., :LATENT_DIM], "context": r["feature"][..., LATENT_DIM:2 * LATENT_DIM]}
    weights = {"region": cfg.region, "context": cfg.context}
    for k, v in dual_semantic_loss(model.decode, lat, targets, mask).items():
        losses[k] = weights[k] * v
    if cfg.geometry > 0 and any(p.requires_grad for p in model.pointmap_parameters()):
        valid = (vs.depths[:2] > 0) & (vs.depths[:2] < 1e3)
        gt_pts = unproject_depth(vs.depths[:2], vs.Ks[:2], vs.viewmats[:2])
        losses["geometry"] = cfg.geometry * conf_loss(out["pts3d"][0], gt_pts, out["conf"][0], valid,
                                                      cfg.geometry_conf_alpha, "none")
    with torch.no_grad():
        m = mask[..., None].float()
        mse = (((r["rgb"] - gt) ** 2) * m).sum() / (3 * m.sum()).clamp_min(1.0)
        stats = {"psnr_masked": float(-10 * torch.log10(mse.clamp_min(1e-10))), "mask_fraction": float(m.mean())}
    return losses, stats


def make_optimizer(model: GSemSplatPredictor, cfg: GSemSplatTrainConfig = GSemSplatTrainConfig()):
    """Adam over the trainable parameters (frozen ones are left out)."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)


def train_step(model: GSemSplatPredictor, optimizer: torch.optim.Optimizer, vs: ViewSet,
               cfg: GSemSplatTrainConfig = GSemSplatTrainConfig(), **kw) -> Dict[str, float]:
    """One optimiser step (grad-norm clip ``cfg.grad_clip``); returns the losses and stats as floats
    (``loss`` = their sum). ``kw`` go to :func:`gsemsplat_losses`."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    losses, stats = gsemsplat_losses(model, vs, cfg, **kw)
    total = sum(losses.values())
    total.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
    optimizer.step()
    return {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in losses.items()}, **stats}


def has_dense_features(scene) -> bool:
    """Whether the scene folder has ``dense_features/`` (written by ``unisem-make-corpus --dense`` or
    ``unisem-preprocess --dense``)."""
    from pathlib import Path

    return scene.path is not None and (Path(scene.path) / "dense_features" / "encoder.json").exists()


def sample_pair(scenes: Sequence, rng, targets: int = 2, strides: Sequence[int] = (2, 3, 4),
                context_features: bool = True, dim: Optional[int] = None):
    """A random training view set of 2 context views + ``targets`` targets (:func:`feedforward.sampling.
    random_view_set` with V = 2), and its context-aware targets (:func:`dense_context_features`) when
    ``context_features`` and the scene has ``dense_features/`` (else None).

    Returns (scene, view set, context features or None)."""
    from ..sampling import random_view_set

    by_name = {s.name: s for s in scenes}
    vs = random_view_set(scenes, rng, (2,), targets, strides)
    scene = by_name[vs.scene]
    ctx = dense_context_features(scene, vs, dim) if context_features and has_dense_features(scene) else None
    return scene, vs, ctx


def train_pairs(model: GSemSplatPredictor, scenes: Sequence, steps: int,
                cfg: GSemSplatTrainConfig = GSemSplatTrainConfig(), targets: int = 2,
                strides: Sequence[int] = (2, 3, 4), seed: int = 0, log: Optional[Callable[[str], None]] = None,
                log_every: int = 25, device: str = "cpu") -> List[Dict[str, float]]:
    """``steps`` :func:`train_step` iterations on random view pairs of ``scenes`` (the loop ``ns-train gsemsplat``
    runs, without Nerfstudio); returns the per-step stats."""
    import time

    import numpy as np

    rng = np.random.default_rng(seed)
    opt = make_optimizer(model, cfg)
    hist: List[Dict[str, float]] = []
    t0 = time.perf_counter()
    for step in range(steps):
        _, vs, ctx = sample_pair(scenes, rng, targets, strides, cfg.context > 0, model.cfg.text_dim)
        vs = vs.to(device)
        if ctx is not None:
            ctx = (ctx[0].to(device), ctx[1].to(device))
        hist.append(train_step(model, opt, vs, cfg, context_features=ctx))
        if log is not None and (step % log_every == 0 or step == steps - 1):
            recent = hist[-log_every:]
            keys = sorted({k for h in recent for k in h})
            log(f"  step {step} ({time.perf_counter() - t0:.0f} s): "
                + ", ".join(f"{k} {np.mean([h[k] for h in recent if k in h]):.4f}" for k in keys))
    return hist
