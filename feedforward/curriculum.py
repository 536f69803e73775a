"""Mix-training curriculum (MTC), UniSem (docs/methods/unisem_feedforward.md, step 9) — a reconstruction [R];
constants in :class:`MTCConfig`.

Stage A (t < T1): 2D cue distillation only. Stage B: add ``alpha(t) * L_proto``, alpha ramping 0 -> alpha_max.

L_proto for one prompted view v (per max-error prompt):

1. semantic error map E_u = 1 - cos(expand(F^)_u, cue_u); prompts = top-k argmax pixels with NMS;
2. mask M_v of the prompt: point-prompted SAM on real data, the simulated SAM mask under the point on synthetic
   data (``object_mask``; else the cue mask under it);
3. cross-view correspondence through the predicted geometry: lift M_v's pixels with the rendered depth, project
   into every other rendered view, keep those passing a depth (visibility) test -> M_v';
4. prototypes P_v = normalise(mean_{u in M_v} F^_u); P_3D = opacity-weighted mean of the expanded per-Gaussian
   latents of Gaussians that project inside M_v and are visible there;
5. L = mean_{v != v'} (1 - cos(P_v, P_v')) + mean_v (1 - cos(P_v, P_3D)) + beta * mean_{u in M_v} (1 - cos(F^_u, sg(P_3D))).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import MTCConfig
from .geometry import project_points

__all__ = ["curriculum_weight", "stage", "max_error_prompts", "simulator_prompt_mask", "lift_mask",
           "prototype_loss", "SamPointPrompter"]


def curriculum_weight(step: int, total_steps: int, cfg: MTCConfig) -> float:
    """alpha(t): 0 in stage A (first ``stage_a_fraction``), then a linear ramp to ``alpha_max`` over
    ``ramp_fraction`` of training; 0 when disabled."""
    if not cfg.enabled or total_steps <= 0:
        return 0.0
    t1 = cfg.stage_a_fraction * total_steps
    if step < t1:
        return 0.0
    ramp = cfg.ramp_fraction * total_steps
    if ramp <= 0:
        return float(cfg.alpha_max)
    return float(cfg.alpha_max * min(1.0, (step - t1) / ramp))


def stage(step: int, total_steps: int, cfg: MTCConfig) -> str:
    """'A' (2D only) or 'B' (mixed 2D-3D)."""
    return "B" if cfg.enabled and step >= cfg.stage_a_fraction * total_steps else "A"


def max_error_prompts(error: Tensor, valid: Tensor, k: int, nms_radius: int) -> List[Tuple[int, int]]:
    """Up to ``k`` (row, col) pixels of largest ``error`` [H, W] among ``valid``, each at least ``nms_radius``
    (Chebyshev) from the ones already taken."""
    e = torch.where(valid, error, torch.full_like(error, -float("inf"))).detach().clone()
    h, w = e.shape
    out: List[Tuple[int, int]] = []
    for _ in range(k):
        idx = int(torch.argmax(e))
        r, c = idx // w, idx % w
        if not torch.isfinite(e[r, c]):
            break
        out.append((r, c))
        e[max(0, r - nms_radius):r + nms_radius + 1, max(0, c - nms_radius):c + nms_radius + 1] = -float("inf")
    return out


def simulator_prompt_mask(point: Tuple[int, int], object_mask: Optional[Tensor], cue_seg: Optional[Tensor]) -> Optional[Tensor]:
    """The simulated SAM answer to a point prompt: the ``object_mask`` segment under the point (else the cue mask
    under it); None when the point lies on no mask."""
    r, c = point
    if object_mask is not None and int(object_mask[r, c]) > 0:
        return object_mask == object_mask[r, c]
    if cue_seg is not None and int(cue_seg[r, c]) >= 0:
        return cue_seg == cue_seg[r, c]
    return None


class SamPointPrompter:
    """Point-prompted SAM (``SamPredictor.predict(point_coords, point_labels=1, multimask_output=True)``, highest
    score mask), for real data. Needs a SAM checkpoint (``--mtc.sam-checkpoint sam_vit_h_4b8939.pth``)."""

    def __init__(self, checkpoint: str, model_type: str = "vit_h", device: str = "cpu", sam=None):
        if sam is None:
            from unisem_ns.cues.sam_clip import load_sam

            sam = load_sam(checkpoint, model_type, device)
        from segment_anything import SamPredictor

        self.predictor = SamPredictor(sam)
        self._image_id = None

    def __call__(self, image: np.ndarray, point: Tuple[int, int], image_id=None) -> Tensor:
        if image_id is None or image_id != self._image_id:
            self.predictor.set_image(image)
            self._image_id = image_id
        masks, scores, _ = self.predictor.predict(point_coords=np.array([[point[1] + 0.5, point[0] + 0.5]]),
                                                  point_labels=np.array([1]), multimask_output=True)
        return torch.from_numpy(masks[int(np.argmax(scores))])


def lift_mask(mask: Tensor, depth: Tensor, K: Tensor, viewmat: Tensor,
              others: Sequence[Tuple[Tensor, Tensor, Tensor]], tolerance: float) -> List[Tensor]:
    """Lift ``mask`` [H, W] of one view to 3D with its rendered ``depth`` [H, W] and project into ``others``
    (each (depth [H, W], K, viewmat)); returns one boolean mask per other view (visible, depth-consistent hits)."""
    h, w = mask.shape
    rows, cols = mask.nonzero(as_tuple=True)
    z = depth[rows, cols]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    cam = torch.stack([(cols.float() + 0.5 - cx) / fx * z, (rows.float() + 0.5 - cy) / fy * z, z], dim=-1)
    c2w = torch.linalg.inv(viewmat)
    pts = cam @ c2w[:3, :3].T + c2w[:3, 3]
    out = []
    for d2, K2, vm2 in others:
        u, v, z2 = project_points(pts, K2, vm2)
        ui, vi = u.floor().long(), v.floor().long()
        inb = (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h) & (z2 > 0)
        m = torch.zeros(h, w, dtype=torch.bool, device=mask.device)
        if inb.any():
            ui, vi, zz = ui[inb], vi[inb], z2[inb]
            vis = (zz - d2[vi, ui]).abs() < tolerance * zz
            m[vi[vis], ui[vis]] = True
        out.append(m)
    return out


def prototype_loss(
    feats: Tensor,
    masks: Dict[int, Tensor],
    prompted: int,
    p3d: Optional[Tensor],
    beta: float,
) -> Tensor:
    """L_proto of one correspondence set.

    Args:
        feats: [C, H, W, D] rendered, expanded features (any norm) of the rendered views.
        masks: {view index: [H, W] bool} — the prompted view and its corresponding masks.
        prompted: index of the prompted view (its pixels get the beta term).
        p3d: [D] geometry-aware prototype (None: the 3D terms are skipped).
        beta: weight of the pixel-to-P_3D term.
    """
    protos = {v: F.normalize(feats[v][m].mean(0), dim=-1) for v, m in masks.items()}
    views = list(protos)
    terms = []
    pair = [1 - torch.dot(protos[a], protos[b]) for i, a in enumerate(views) for b in views[i + 1:]]
    if pair:
        terms.append(torch.stack(pair).mean())
    if p3d is not None:
        p = F.normalize(p3d, dim=-1)
        terms.append(torch.stack([1 - torch.dot(protos[v], p) for v in views]).mean())
        pix = F.normalize(feats[prompted][masks[prompted]], dim=-1)
        terms.append(beta * (1 - pix @ p.detach()).mean())
    return torch.stack(terms).sum() if terms else feats.sum() * 0.0


def geometry_prototype(means: Tensor, opacities: Tensor, latents_expanded: Tensor, mask: Tensor, depth: Tensor,
                       K: Tensor, viewmat: Tensor, tolerance: float) -> Optional[Tensor]:
    """Opacity-weighted mean of expanded per-Gaussian latents [N, D] over the Gaussians whose means project inside
    ``mask`` of the view and pass its depth test; None when none does."""
    h, w = mask.shape
    u, v, z = project_points(means.detach(), K, viewmat)
    ui, vi = u.floor().long(), v.floor().long()
    inb = (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h) & (z > 0)
    sel = torch.zeros_like(inb)
    if inb.any():
        idx = inb.nonzero(as_tuple=True)[0]
        ok = mask[vi[idx], ui[idx]] & ((z[idx] - depth[vi[idx], ui[idx]]).abs() < tolerance * z[idx])
        sel[idx[ok]] = True
    if not sel.any():
        return None
    wgt = opacities[sel].detach()
    return (latents_expanded[sel] * wgt[:, None]).sum(0) / wgt.sum().clamp_min(1e-8)


PromptFn = Callable[[int, Tuple[int, int]], Optional[Tensor]]


def mtc_loss(
    feats: Tensor,
    cue: Tensor,
    cue_valid: Tensor,
    depth: Tensor,
    Ks: Tensor,
    viewmats: Tensor,
    prompted_views: Sequence[int],
    prompt_mask: PromptFn,
    gaussians: Dict[str, Tensor],
    expand_latents: Callable[[Tensor], Tensor],
    cfg: MTCConfig,
) -> Tuple[Tensor, Dict[str, float]]:
    """The full MTC term over the rendered views of one iteration (see the module docstring).

    Args:
        feats: [C, H, W, D] rendered expanded features; cue [C, H, W, D] and cue_valid [C, H, W]: 2D cue targets;
        depth: [C, H, W] rendered depth; Ks, viewmats: [C, 3, 3], [C, 4, 4];
        prompted_views: which of the C views get max-error prompts;
        prompt_mask: (view, (row, col)) -> [H, W] bool mask or None;
        gaussians: flat dict with means [N, 3], opacities [N], sem [N, d] (the rendered set);
        expand_latents: per-Gaussian latent -> cue space.

    Returns:
        (loss, stats) — loss is 0 (with grad graph) when no usable prompt was found.
    """
    c = feats.shape[0]
    f_n = F.normalize(feats, dim=-1)
    err = 1 - (f_n * F.normalize(cue, dim=-1)).sum(-1)
    losses, n_sets, n_corr = [], 0, 0
    lat = None
    for v in prompted_views:
        for pt in max_error_prompts(err[v], cue_valid[v], cfg.top_k, cfg.nms_radius):
            m = prompt_mask(v, pt)
            if m is None or int(m.sum()) < cfg.min_mask_pixels:
                continue
            others = [o for o in range(c) if o != v]
            lifted = lift_mask(m, depth[v].detach(), Ks[v], viewmats[v],
                               [(depth[o].detach(), Ks[o], viewmats[o]) for o in others], cfg.visibility_tolerance)
            masks = {v: m}
            for o, mo in zip(others, lifted):
                if int(mo.sum()) >= cfg.min_mask_pixels:
                    masks[o] = mo
            if lat is None:
                lat = expand_latents(gaussians["sem"])
            p3d = geometry_prototype(gaussians["means"], gaussians["opacities"], lat, m, depth[v].detach(), Ks[v],
                                     viewmats[v], cfg.visibility_tolerance)
            losses.append(prototype_loss(feats, masks, v, p3d, cfg.beta))
            n_sets += 1
            n_corr += len(masks) - 1
    stats = {"mtc_sets": float(n_sets), "mtc_corresponding_views": float(n_corr)}
    if not losses:
        return feats.sum() * 0.0, stats
    return torch.stack(losses).mean(), stats
