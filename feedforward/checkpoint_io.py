"""Checkpoints of the feed-forward predictor: published backbones (DUSt3R / CroCo key names) and our own.

Published checkpoints (``torch.load(..., weights_only=True)``; the state dict sits under ``"model"``):

- DUSt3R (``DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth``): ``patch_embed.proj``, ``enc_blocks.*``, ``enc_norm``,
  ``decoder_embed``, ``dec_blocks.*`` (view 1), ``dec_blocks2.*`` (view 2), ``dec_norm``,
  ``downstream_head1.dpt.*`` / ``downstream_head2.dpt.*``;
- CroCo v2 (``CroCo_V2_ViTLarge_BaseDecoder.pth``): the same encoder/decoder names, one decoder (``dec_blocks``),
  which we copy into both of ours.

Our module names are DUSt3R's, so loading is a rename (``downstream_head1.`` -> ``head.``) plus a shape check:
tensors whose shape differs (the last head layer: our channel layout differs; a smaller/larger configuration)
are skipped and reported, never silently reshaped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

from unisem_ns.data.scene_io import InputError
from unisem_ns.utils.atomic import atomic_file

__all__ = ["load_backbone_checkpoint", "read_state_dict", "rename_published_keys", "save_predictor",
           "load_predictor", "BACKBONE_FLAG", "DUST3R_URL"]

BACKBONE_FLAG = "--pipeline.model.backbone-checkpoint"
DUST3R_URL = "https://download.europe.naverlabs.com/ComputerVision/DUSt3R/DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth"


def read_state_dict(path: Path, flag: str = BACKBONE_FLAG) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (``weights_only=True``), with one-line errors for a missing/bad file."""
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"{path}: checkpoint not found; download DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth ({DUST3R_URL}) or "
            f"CroCo_V2_ViTLarge_BaseDecoder.pth and pass it with {flag} PATH (use the 'published' predictor config)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"{path}: not a loadable weights-only torch checkpoint ({type(e).__name__}); "
                         f"re-download it and pass it with {flag}") from None
    for key in ("model", "state_dict", "predictor"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: holds no state dict (expected a dict of tensors, optionally under 'model')")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def rename_published_keys(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """DUSt3R/CroCo names -> ours: ``downstream_head1.`` -> ``head.``; drop ``downstream_head2``, ``mask_token``,
    ``prediction_head``, ``enc_pos_embed``/``dec_pos_embed``; a CroCo checkpoint (no ``dec_blocks2``) fills both
    decoders from ``dec_blocks``; strip a DDP ``module.`` prefix."""
    out: Dict[str, torch.Tensor] = {}
    has_dec2 = any(k.startswith("dec_blocks2.") or k.startswith("module.dec_blocks2.") for k in state)
    for k, v in state.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if k.startswith(("downstream_head2.", "mask_token", "prediction_head", "enc_pos_embed", "dec_pos_embed")):
            continue
        if k.startswith("downstream_head1."):
            k = "head." + k[len("downstream_head1."):]
        out[k] = v
        if not has_dec2 and k.startswith("dec_blocks."):
            out["dec_blocks2." + k[len("dec_blocks."):]] = v
    return out


def load_backbone_checkpoint(model: nn.Module, path: Path, flag: str = BACKBONE_FLAG) -> Dict[str, List[str]]:
    """Copy every tensor of a published checkpoint whose (renamed) key and shape match into ``model``.

    Returns:
        {"loaded": [...], "shape_mismatch": [...], "unexpected": [...], "missing": [...]} key lists.
    """
    state = rename_published_keys(read_state_dict(path, flag))
    own = model.state_dict()
    loaded, mismatch, unexpected = [], [], []
    new = {}
    for k, v in state.items():
        if k not in own:
            unexpected.append(k)
        elif tuple(own[k].shape) != tuple(v.shape):
            mismatch.append(k)
        else:
            new[k] = v.to(own[k].dtype)
            loaded.append(k)
    if not loaded:
        raise InputError(f"{path}: no tensor matches the predictor's names and shapes (is it a DUSt3R/CroCo checkpoint, "
                         "and does the predictor config match its size? use the 'published' config)")
    model.load_state_dict(new, strict=False)
    missing = [k for k in own if k not in new]
    return {"loaded": loaded, "shape_mismatch": mismatch, "unexpected": unexpected, "missing": missing}


def save_predictor(model: nn.Module, path: Path, extra: Optional[dict] = None) -> None:
    """Write ``{"predictor": state_dict, **extra}`` atomically (extra must hold only tensors/plain types)."""
    obj = {"predictor": model.state_dict(), **(extra or {})}
    with atomic_file(Path(path)) as f:
        torch.save(obj, f)


def load_predictor(model: nn.Module, path: Path, flag: str = "--checkpoint") -> nn.Module:
    """Load our own predictor checkpoint (strict)."""
    state = read_state_dict(path, flag)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise InputError(f"{path}: written for another predictor configuration ({first[:120]}); "
                         "load it with the configuration that trained it") from None
    return model
