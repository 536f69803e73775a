"""Weights of the GSemSplat predictor: a published MASt3R/DUSt3R/CroCo backbone, GSemSplat's released model, ours.

Key layout (after stripping a DDP ``module.`` and a Lightning ``encoder.`` prefix; the state dict may sit under
``model`` / ``state_dict`` / ``predictor``):

- backbone: ``patch_embed.proj``, ``enc_blocks.*``, ``enc_norm``, ``decoder_embed``, ``dec_blocks.*``,
  ``dec_blocks2.*``, ``dec_norm`` (CroCo: one decoder, copied into both; via
  :func:`feedforward.checkpoint_io.rename_published_keys`);
- pointmap heads: ``downstream_head{1,2}.dpt.*`` (DUSt3R and MASt3R; MASt3R's descriptor MLP
  ``downstream_head*.head_local_features.*`` is not used and is ignored);
- release heads: ``downstream_head{1,2}.gaussian_dpt[.dpt].*``, ``downstream_head{1,2}.gaussian_language[.dpt].*``;
- release decoders: ``language_decoder_sam.<i>.{weight,bias}`` (region) and ``language_decoder_patch.<i>.*``
  (context); the release's exact indices are unknown, so the i-th conv found (by index) fills our i-th conv.

A layout that does not fit the model raises a one-line :class:`InputError` naming the file and the first key that
mismatches (or is missing); nothing is silently reshaped.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Dict, List, Optional

import torch

from unisem_ns.data.scene_io import InputError

from ..checkpoint_io import read_state_dict, rename_published_keys, save_predictor
from .model import LANGUAGE_CHANNELS, GSemSplatConfig, GSemSplatPredictor, gaussian_channels

__all__ = ["normalise_keys", "config_from_state", "load_backbone_weights", "load_release_weights",
           "load_gsemsplat_checkpoint", "save_gsemsplat", "GSEMSPLAT_RELEASE_URL"]

GSEMSPLAT_RELEASE_URL = "https://github.com/wxrui182/GSemSplat"
_BACKBONE = GSemSplatPredictor.BACKBONE
_DECODERS = ("language_decoder_sam", "language_decoder_patch")


def _read(path: Path, what: str) -> Dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found; pass {what}")
    return read_state_dict(path, flag=f"the path of {what}")


def normalise_keys(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Published / released names -> ours (module docstring): strip ``module.`` / ``encoder.``, rename the
    backbone with :func:`rename_published_keys` (drops ``mask_token``, positional tables; CroCo fills
    ``dec_blocks2``), nest ``gaussian_dpt`` / ``gaussian_language`` tensors under ``.dpt.``, renumber each
    decoder's convs to 0, 2, 4, and drop ``head_local_features`` and anything else outside the model's groups."""
    flat: Dict[str, torch.Tensor] = {}
    for k, v in state.items():
        for pre in ("module.", "encoder.", "model."):
            if k.startswith(pre):
                k = k[len(pre):]
        flat[k] = v
    backbone = {k: v for k, v in flat.items() if k.split(".")[0] in _BACKBONE or k.startswith(
        ("mask_token", "enc_pos_embed", "dec_pos_embed"))}
    out = dict(rename_published_keys(backbone))
    for k, v in flat.items():
        m = re.match(r"^downstream_head([12])\.(dpt|gaussian_dpt|gaussian_language)\.(.*)$", k)
        if m:
            head, part, rest = m.groups()
            if part != "dpt" and not rest.startswith("dpt."):
                rest = "dpt." + rest
            out[f"downstream_head{head}.{part}.{rest}"] = v
    for dec in _DECODERS:
        convs = sorted({int(m.group(1)) for k in flat for m in [re.match(rf"^{dec}\.(\d+)\.weight$", k)] if m})
        for ours, theirs in zip((0, 2, 4), convs):
            for p in ("weight", "bias"):
                if f"{dec}.{theirs}.{p}" in flat:
                    out[f"{dec}.{ours}.{p}"] = flat[f"{dec}.{theirs}.{p}"]
        for extra in convs[3:]:  # more convs than ours: kept under a name the model lacks (reported unexpected)
            out[f"{dec}.extra_conv{extra}.weight"] = flat[f"{dec}.{extra}.weight"]
    return out


def _count(state: Dict[str, torch.Tensor], prefix: str) -> int:
    idx = {int(m.group(1)) for k in state for m in [re.match(rf"^{re.escape(prefix)}\.(\d+)\.", k)] if m}
    return max(idx) + 1 if idx else 0


def config_from_state(state: Dict[str, torch.Tensor], base: GSemSplatConfig = GSemSplatConfig.published(),
                      source: str = "checkpoint") -> GSemSplatConfig:
    """Sizes of a (normalised, :func:`normalise_keys`) state dict: patch size, widths and depths of encoder and
    decoder, DPT widths, SH degree, decoder widths and D; heads = width // 64 (the ViT convention; ``base``'s
    heads when the width equals ``base``'s); everything else from ``base``."""
    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise InputError(f"{source}: no tensor {key!r}; not a GSemSplat/MASt3R checkpoint in the released layout")
        return state[key]

    pe = need("patch_embed.proj.weight")
    enc_dim, patch = int(pe.shape[0]), int(pe.shape[-1])
    dec_dim = int(need("decoder_embed.weight").shape[0])
    heads = lambda dim, bdim, bh: bh if dim == bdim else max(1, dim // 64)  # noqa: E731
    kw = dict(patch_size=patch, enc_dim=enc_dim, enc_depth=_count(state, "enc_blocks"),
              enc_heads=heads(enc_dim, base.enc_dim, base.enc_heads), dec_dim=dec_dim,
              dec_depth=_count(state, "dec_blocks"), dec_heads=heads(dec_dim, base.dec_dim, base.dec_heads),
              mlp_ratio=need("enc_blocks.0.mlp.fc1.weight").shape[0] / enc_dim,
              qkv_bias="enc_blocks.0.attn.qkv.bias" in state)
    pre = "downstream_head1.dpt."
    if pre + "scratch.layer1_rn.weight" in state:
        kw["head_feature_dim"] = int(state[pre + "scratch.layer1_rn.weight"].shape[0])
        kw["head_layer_dims"] = tuple(int(need(f"{pre}act_postprocess.{i}.0.weight").shape[0]) for i in range(4))
    g = "downstream_head1.gaussian_dpt.dpt.head.4.weight"
    if g in state:
        k3 = int(state[g].shape[0]) - sum(v for n, v in gaussian_channels(0).items() if n != "sh")
        deg = math.isqrt(max(k3 // 3, 1)) - 1
        if k3 <= 0 or k3 % 3 or 3 * (deg + 1) ** 2 != k3:
            raise InputError(f"{source}: {g} has {state[g].shape[0]} channels; expected 11 + 3 (deg+1)^2 "
                             "(offset, scale, rotation, opacity, SH)")
        kw["sh_degree"] = deg
    if "language_decoder_sam.0.weight" in state and "language_decoder_sam.2.weight" in state:
        kw["decoder_hidden"] = (int(state["language_decoder_sam.0.weight"].shape[0]),
                                int(state["language_decoder_sam.2.weight"].shape[0]))
    if "language_decoder_sam.4.weight" in state:
        kw["text_dim"] = int(state["language_decoder_sam.4.weight"].shape[0])
    return dataclasses.replace(base, **kw)


def _copy(model: GSemSplatPredictor, state: Dict[str, torch.Tensor], keys: List[str], source) -> List[str]:
    own = model.state_dict()
    new = {}
    for k in keys:
        if tuple(own[k].shape) != tuple(state[k].shape):
            raise InputError(f"{source}: tensor {k!r} has shape {tuple(state[k].shape)}, the model expects "
                             f"{tuple(own[k].shape)} (a different layout or model size)")
        new[k] = state[k].to(own[k].dtype)
    model.load_state_dict(new, strict=False)
    return list(new)


def load_backbone_weights(model: GSemSplatPredictor, path: Path) -> Dict[str, List[str]]:
    """Encoder, decoders and (when present) the pointmap heads from a MASt3R / DUSt3R / CroCo checkpoint.

    Returns {"loaded", "unexpected" (tensors the model lacks, after :func:`normalise_keys` has dropped the known
    extras), "missing" (ours, not loaded: the Gaussian and language heads, the decoders, a CroCo file's pointmap
    heads)} key lists. Raises a one-line :class:`InputError` on a missing/bad file, no backbone tensor, a backbone
    tensor the file lacks, or the first shape mismatch."""
    state = normalise_keys(_read(path, "a MASt3R/DUSt3R/CroCo checkpoint (e.g. DUSt3R_ViTLarge_BaseDecoder_512_dpt"
                                       ".pth) for the GSemSplat backbone"))
    own = model.state_dict()
    wanted = [k for k in state if k.split(".")[0] in _BACKBONE or re.match(r"^downstream_head[12]\.dpt\.", k)]
    if not any(k.split(".")[0] in _BACKBONE for k in wanted):
        raise InputError(f"{path}: holds no backbone tensor (patch_embed, enc_blocks, ...); not a "
                         "MASt3R/DUSt3R/CroCo checkpoint")
    unexpected = [k for k in state if k not in own]
    first_missing = next((k for k in own if k.split(".")[0] in _BACKBONE and k not in state), None)
    if first_missing is not None:
        raise InputError(f"{path}: no tensor {first_missing!r}; the checkpoint is smaller than the model "
                         "(set the predictor sizes to the checkpoint's, e.g. GSemSplatConfig.published())")
    loaded = _copy(model, state, [k for k in wanted if k in own], path)
    return {"loaded": loaded, "unexpected": unexpected, "missing": [k for k in own if k not in loaded]}


def load_release_weights(model: GSemSplatPredictor, path: Path,
                         state: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, List[str]]:
    """Every tensor of the model from GSemSplat's released checkpoint (layout in the module docstring), strict:
    raises a one-line :class:`InputError` naming the file and the first missing or mismatching key. Returns
    {"loaded", "unexpected"} key lists (``unexpected``: e.g. MASt3R's descriptor MLP, which is dropped)."""
    if state is None:
        state = normalise_keys(_read(path, f"GSemSplat's released checkpoint ({GSEMSPLAT_RELEASE_URL})"))
    own = model.state_dict()
    for k in own:
        if k not in state:
            raise InputError(f"{path}: no tensor {k!r}; not a GSemSplat checkpoint in the released layout "
                             "(backbone, downstream_head1/2 with dpt, gaussian_dpt and gaussian_language, "
                             "language_decoder_sam/patch)")
    loaded = _copy(model, state, list(own), path)
    return {"loaded": loaded, "unexpected": [k for k in state if k not in own]}


def load_gsemsplat_checkpoint(path: Path, cfg: Optional[GSemSplatConfig] = None,
                              device: str = "cpu") -> GSemSplatPredictor:
    """A :class:`GSemSplatPredictor` from a released checkpoint or one written by :func:`save_gsemsplat`.

    Sizes: the stored ``gsemsplat_config`` (ours), else ``cfg`` when given, else :func:`config_from_state` on
    :meth:`GSemSplatConfig.published`. The language head must have 33 channels."""
    path = Path(path)
    what = f"GSemSplat's released checkpoint ({GSEMSPLAT_RELEASE_URL}) or one written by save_gsemsplat"
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found; pass {what}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"{path}: not a loadable weights-only torch checkpoint ({type(e).__name__})") from None
    stored = obj.get("gsemsplat_config") if isinstance(obj, dict) else None
    for key in ("model", "state_dict", "predictor"):  # as read_state_dict, without loading the file twice
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj_state = obj[key]
            break
    else:
        obj_state = obj
    if not isinstance(obj_state, dict) or not any(isinstance(v, torch.Tensor) for v in obj_state.values()):
        raise InputError(f"{path}: holds no state dict (expected a dict of tensors, optionally under 'state_dict')")
    state = normalise_keys({k: v for k, v in obj_state.items() if isinstance(v, torch.Tensor)})
    if stored is not None:
        fields = {f.name for f in dataclasses.fields(GSemSplatConfig)}
        cfg = GSemSplatConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in fields})
    elif cfg is None:
        cfg = config_from_state(state, source=str(path))
    lang = "downstream_head1.gaussian_language.dpt.head.4.weight"
    if lang in state and state[lang].shape[0] != LANGUAGE_CHANNELS:
        raise InputError(f"{path}: tensor {lang!r} has {state[lang].shape[0]} output channels; GSemSplat's "
                         f"language head has {LANGUAGE_CHANNELS}")
    try:
        model = GSemSplatPredictor(cfg)
    except ValueError as e:
        raise InputError(f"{path}: inferred sizes do not build a model ({e})") from None
    load_release_weights(model, path, state)
    if isinstance(obj, dict) and obj.get("image_size"):
        model.input_size = tuple(int(s) for s in obj["image_size"])
    return model.to(device).eval()


def save_gsemsplat(model: GSemSplatPredictor, path: Path) -> None:
    """Write the weights and the configuration (and input size, when set) atomically, for
    :func:`load_gsemsplat_checkpoint`."""
    extra = {"gsemsplat_config": dataclasses.asdict(model.cfg)}
    if model.input_size:
        extra["image_size"] = list(model.input_size)
    save_predictor(model, Path(path), extra=extra)
