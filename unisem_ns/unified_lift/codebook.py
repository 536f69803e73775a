"""Unified-Lift's global object codebook and the per-view loss composition (docs/methods/unified_lift.md,
steps 3-8 and 11).

- :class:`Codebook`: ``F_obj [L, D]`` (L=256, D=16), logits ``F_u . F_obj^T``; instance id = argmax (no clustering).
- :func:`class_loss` (L_class), :func:`concentration_loss` (L_concen).
- :class:`UnifiedLiftLossConfig` + :func:`unified_lift_losses`: everything for one training view.

Gradient routing (docs/methods/unified_lift.md, "Gradient routing"): the Gaussian features get gradients only from
L_contra + L_reg; the codebook only from L_class + L_concen, because the codebook branch sees **detached** features.
The photometric loss is the model's.

Shapes: ``H x W`` view, ``P = H*W`` pixels, ``D`` feature width, ``L`` codebook entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .contrastive import (
    MIN_PIXELS,
    N_PIXELS,
    TEMP_LOG_OFFSET,
    TEMP_MAX,
    TEMP_MIN,
    TEMP_SCALE,
    contrastive_loss,
    norm_regulariser,
    sample_pixels,
    unit_features,
)
from .id_mapping import area_aware_assignment
from .noise_filter import CONF_THRESHOLD, FILTER_TEMP_MAX, FILTER_TEMP_MIN, FILTER_TEMP_SCALE, label_confidence

__all__ = [
    "Codebook",
    "class_loss",
    "concentration_loss",
    "UnifiedLiftLossConfig",
    "unified_lift_losses",
]


class Codebook(nn.Module):
    """Global object codebook ``code [L, D]``; entry ``k`` is the feature of 3D object id ``k``."""

    def __init__(self, num_ids: int = 256, dim: int = 16) -> None:
        super().__init__()
        # The reference code stores the codebook as Conv2d(D, L, 1, bias=False).weight; reproduce its default
        # init (kaiming_uniform a=sqrt(5) on [L, D, 1, 1] = U(-1/sqrt(D), 1/sqrt(D))) with the same RNG draws.
        weight = torch.empty(num_ids, dim, 1, 1)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.code = nn.Parameter(weight.reshape(num_ids, dim))

    @property
    def num_ids(self) -> int:
        return self.code.shape[0]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``[..., L]`` dot products of features ``[..., D]`` (raw, unnormalised) with every entry."""
        return features @ self.code.T

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """``[..., L]`` softmax of :meth:`logits` (text-query selection thresholds this at 0.2 in the authors'
        LERF-Mask protocol, docs/methods/unified_lift.md, step 14)."""
        return torch.softmax(self.logits(features), dim=-1)

    @torch.no_grad()
    def instance_ids(self, features: torch.Tensor, live: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[...]`` long: argmax codebook entry per feature ``[..., D]`` (the instance map,
        docs/methods/unified_lift.md, steps 11-13).

        ``live``: optional ``[L]`` bool; only these entries compete (all of them when None or none is live).
        """
        logits = self.logits(features)
        if live is not None and bool(live.any()):
            logits = logits.masked_fill(~live.to(device=logits.device, dtype=torch.bool), float("-inf"))
        return logits.argmax(dim=-1)

    def extra_repr(self) -> str:
        return f"num_ids={self.code.shape[0]}, dim={self.code.shape[1]}"


@torch.no_grad()
def drop_duplicate_codes(code: torch.Tensor, live: torch.Tensor, usage: torch.Tensor, max_cos: float) -> torch.Tensor:
    """``[L]`` bool: ``live`` without the entries that duplicate a more-used live entry.

    Going from the most to the least used live entry (``usage [L]``), an entry whose direction has cosine above
    ``max_cos`` with one already kept is dropped. A mask split in some views gets a second entry from the
    one-to-one mapping, and the concentration loss pulls both onto the same object, so at inference the two
    share its pixels (a false segment, and often a missed one). ``max_cos >= 1`` keeps ``live`` as is.
    """
    out = live.clone()
    if max_cos >= 1 or int(live.sum()) < 2:
        return out
    idx = torch.nonzero(live).flatten()
    idx = idx[torch.argsort(usage[idx], descending=True, stable=True)]
    unit = F.normalize(code[idx].float(), dim=-1)
    cos = unit @ unit.T
    kept = torch.zeros(len(idx), dtype=torch.bool, device=code.device)
    for i in range(len(idx)):
        if bool((cos[i, :i][kept[:i]] > max_cos).any()):
            out[idx[i]] = False
        else:
            kept[i] = True
    return out


def _selection(pseudo: torch.Tensor, keep: Optional[torch.Tensor]) -> torch.Tensor:
    sel = pseudo >= 0
    return sel if keep is None else sel & keep.to(torch.bool)


def class_loss(
    logits: torch.Tensor,
    pseudo: torch.Tensor,
    keep: Optional[torch.Tensor] = None,
    num_ids: Optional[int] = None,
) -> Tuple[torch.Tensor, str]:
    """L_class: cross-entropy to the pseudo labels over confident labelled pixels, divided by ``ln L``.

    Args:
        logits: ``[P, L]`` codebook logits (from detached features in training).
        pseudo: ``[P]`` long codebook ids from :func:`~.id_mapping.area_aware_assignment`, ``-1`` = none.
        keep: ``[P]`` bool confident pixels, or None.
        num_ids: ``L`` for the ``ln L`` normaliser (default ``logits.shape[-1]``; makes a uniform prediction 1).

    Returns:
        ``(loss, status)``: status ``"ok"``; ``"no_pixels"`` (no confident labelled pixel) or ``"all_correct"``
        (every such pixel's argmax already equals its pseudo label: "never reinforce correct labels") with a
        zero loss that does not require grad.
    """
    sel = _selection(pseudo, keep)
    if not bool(sel.any()):
        return logits.new_zeros(()), "no_pixels"
    lg, target = logits[sel], pseudo[sel]
    if bool((lg.detach().argmax(dim=-1) == target).all()):
        return logits.new_zeros(()), "all_correct"
    num_ids = logits.shape[-1] if num_ids is None else num_ids
    return F.cross_entropy(lg, target) / math.log(num_ids), "ok"


def concentration_loss(
    code: torch.Tensor,
    features: torch.Tensor,
    pseudo: torch.Tensor,
    keep: Optional[torch.Tensor] = None,
    p: float = 2,
) -> torch.Tensor:
    """L_concen = mean over confident labelled pixels of ``|| code[K_u] - F_u / ||F_u|| ||_p``.

    Args:
        code: ``[L, D]`` codebook (receives the gradient).
        features: ``[P, D]`` rendered features, detached here (L_concen moves the codebook only).
        pseudo, keep: as in :func:`class_loss`.
        p: vector norm order: 2 = reference code (default), 1 = the paper summary's L1.

    Returns:
        scalar; zero (no grad) when no pixel is selected.
    """
    sel = _selection(pseudo, keep)
    if not bool(sel.any()):
        return code.new_zeros(())
    target = unit_features(features.detach()[sel])
    return torch.linalg.vector_norm(code[pseudo[sel]] - target, ord=p, dim=-1).mean()


@dataclass
class UnifiedLiftLossConfig:
    """Weights, batch sizes, temperatures and ablation switches of the Unified-Lift losses (code defaults).

    The total the model should optimise is ``photometric + sum(losses.values())`` where ``losses`` already carry
    these weights (code: 1e-6 contra, 1e-4 class, 1.0 concen, 1e-6 reg). With Adam the 1e-6 on the feature
    branch hardly changes the feature update, but it keeps feature gradients into geometry negligible.
    """

    contrastive_weight: float = 1e-6
    class_weight: float = 1e-4
    concentration_weight: float = 1.0
    norm_weight: float = 1e-6
    #: contrastive batch (pixels per view) and the minimum samples for a mask to get a prototype (> min_pixels)
    n_pixels: int = N_PIXELS
    min_pixels: int = MIN_PIXELS
    #: [R] A view with fewer pixels than ``n_pixels`` is used whole, so ``min_pixels`` samples would be a much
    #: larger share of the image than the code's 20-of-32768 sample: scale it by ``pixels / n_pixels`` (at least
    #: 2) so a mask needs the same image fraction as in the code. False = the code's absolute 20.
    min_pixels_relative: bool = True
    contrastive_temp_scale: float = TEMP_SCALE
    contrastive_temp_min: float = TEMP_MIN
    contrastive_temp_max: float = TEMP_MAX
    temp_log_offset: float = TEMP_LOG_OFFSET
    #: "pixel" (per-pixel mean, default) or "mask" (mean of per-mask means); see contrastive_loss
    contrastive_reduction: str = "pixel"
    filter_temp_scale: float = FILTER_TEMP_SCALE
    filter_temp_min: float = FILTER_TEMP_MIN
    filter_temp_max: float = FILTER_TEMP_MAX
    conf_threshold: float = CONF_THRESHOLD
    #: Panoptic Lifting's per-mask mean cost instead of the area-aware sum
    normalised_cost: bool = False
    concentration_p: float = 2
    #: pixels per view for the codebook branch (filter, Hungarian, L_class, L_concen); 0 = every pixel (code)
    codebook_pixels: int = 0
    # ablation switches (paper Table: +codebook, +area-aware, +concentration, +noise filter)
    use_codebook: bool = True
    #: False = normalised (Panoptic Lifting) cost, whatever ``normalised_cost`` says
    area_aware: bool = True
    use_concentration: bool = True
    use_noise_filter: bool = True

    def view_min_pixels(self, pixels: int) -> int:
        """The minimum mask size (samples) for a batch of ``pixels`` samples (see ``min_pixels_relative``)."""
        if self.min_pixels_relative and pixels < self.n_pixels:
            return max(2, round(self.min_pixels * pixels / self.n_pixels))
        return self.min_pixels


def unified_lift_losses(
    rendered_features: torch.Tensor,
    mask_ids: torch.Tensor,
    codebook: Optional[Codebook],
    cfg: Optional[UnifiedLiftLossConfig] = None,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, Any]:
    """All Unified-Lift losses of one training view.

    Args:
        rendered_features: ``[H, W, D]`` rendered per-pixel features (raw, with grad to the Gaussians).
        mask_ids: ``[H, W]`` int SAM ids of the view, ``0`` = void; values arbitrary per view.
        codebook: the :class:`Codebook` (may be None when ``cfg.use_codebook`` is False).
        cfg: settings (default :class:`UnifiedLiftLossConfig`).
        generator: RNG for pixel sampling.

    Returns:
        ``{"losses": {name: weighted scalar}, "metrics": {name: detached scalar}, "aux": {...}}``.
        ``losses`` has ``contrastive`` and ``norm`` always, ``class`` and ``concentration`` with the codebook
        (``use_codebook=False`` is the clustering-baseline training: contrastive + norm only). ``metrics`` holds
        the unweighted values and diagnostics (``num_masks``, ``keep_fraction``, ``class_skipped``, ``mapped_ids``);
        ``aux`` the codebook branch's ``pseudo_labels [H, W]``, ``keep [H, W]``, ``confidence [H, W]`` (NaN-free,
        0 where not computed), ``mapping`` dict and ``class_status`` str.
    """
    cfg = cfg or UnifiedLiftLossConfig()
    H, W, D = rendered_features.shape
    feats = rendered_features.reshape(H * W, D)
    ids = mask_ids.reshape(H * W).to(device=feats.device, dtype=torch.long)

    def confidence(f: torch.Tensor, i: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return label_confidence(f, i, cfg.filter_temp_scale, cfg.filter_temp_min, cfg.filter_temp_max,
                                cfg.conf_threshold, cfg.temp_log_offset)

    # --- feature branch: contrastive + norm on a random pixel batch ---
    idx = sample_pixels(H * W, cfg.n_pixels, generator).to(feats.device)
    f_s = feats[idx]
    min_pixels = cfg.view_min_pixels(idx.numel())
    l_con, info = contrastive_loss(
        f_s, ids[idx], min_pixels, cfg.contrastive_temp_scale, cfg.contrastive_temp_min,
        cfg.contrastive_temp_max, cfg.temp_log_offset, cfg.contrastive_reduction,
    )
    # the regulariser sees the same batch (void pixels included: every rendered feature should stay near unit length)
    l_norm = norm_regulariser(f_s)
    losses = {"contrastive": cfg.contrastive_weight * l_con, "norm": cfg.norm_weight * l_norm}
    metrics: Dict[str, torch.Tensor] = {
        "contrastive": l_con.detach(),
        "norm": l_norm.detach(),
        "num_masks": info["num_masks"].to(feats.device, torch.float32),
    }
    aux: Dict[str, Any] = {}
    if not cfg.use_codebook:
        return {"losses": losses, "metrics": metrics, "aux": aux}
    if codebook is None:
        raise ValueError("unified_lift_losses: cfg.use_codebook is True but no codebook was given")

    # --- codebook branch: detached features, so the codebook never moves the Gaussians ---
    fd = feats.detach()
    cb_idx = None
    if 0 < cfg.codebook_pixels < H * W:
        cb_idx = sample_pixels(H * W, cfg.codebook_pixels, generator).to(feats.device)
        fd, ids_cb = fd[cb_idx], ids[cb_idx]
    else:
        ids_cb = ids
    labelled = ids_cb > 0
    if cfg.use_noise_filter:
        conf, keep = confidence(fd, ids_cb)
    else:
        conf, keep = labelled.to(fd.dtype), labelled

    logits = codebook.logits(fd)  # [P', L]
    normalised = cfg.normalised_cost or not cfg.area_aware
    pseudo, mapping = area_aware_assignment(torch.softmax(logits.detach(), -1), ids_cb, keep, normalised)
    l_cls, status = class_loss(logits, pseudo, keep, codebook.num_ids)
    losses["class"] = cfg.class_weight * l_cls
    metrics["class"] = l_cls.detach()
    metrics["class_skipped"] = torch.tensor(float(status != "ok"), device=feats.device)
    if cfg.use_concentration:
        l_conc = concentration_loss(codebook.code, fd, pseudo, keep, cfg.concentration_p)
        losses["concentration"] = cfg.concentration_weight * l_conc
        metrics["concentration"] = l_conc.detach()
    n_lab = int(labelled.sum())
    metrics["keep_fraction"] = torch.tensor(float(keep.sum()) / max(n_lab, 1), device=feats.device)
    metrics["mapped_ids"] = torch.tensor(float(len(mapping)), device=feats.device)

    if cb_idx is None:
        aux.update(pseudo_labels=pseudo.reshape(H, W), keep=keep.reshape(H, W), confidence=conf.reshape(H, W))
    else:
        # subsampled branch: scatter into full maps (-1 / False / 0 where not sampled)
        full_p = torch.full((H * W,), -1, dtype=torch.long, device=feats.device)
        full_k = torch.zeros(H * W, dtype=torch.bool, device=feats.device)
        full_c = feats.new_zeros(H * W)
        full_p[cb_idx], full_k[cb_idx], full_c[cb_idx] = pseudo, keep, conf.to(full_c.dtype)
        aux.update(pseudo_labels=full_p.reshape(H, W), keep=full_k.reshape(H, W), confidence=full_c.reshape(H, W))
    aux.update(mapping=mapping, class_status=status)
    return {"losses": losses, "metrics": metrics, "aux": aux}
