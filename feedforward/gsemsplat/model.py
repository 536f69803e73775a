"""The GSemSplat predictor: two unposed views -> pixel-aligned semantic Gaussians of both views in view 1's frame.

Architecture (GSemSplat = Splatt3R + a language head; module names follow the released MASt3R/Splatt3R code so
published weights load by key, ``docs/methods/gsemsplat.md``):

- backbone (can be frozen): shared ViT encoder ``patch_embed``, ``enc_blocks``, ``enc_norm``; two-view CroCo
  decoder ``decoder_embed``, ``dec_blocks`` (view 1), ``dec_blocks2`` (view 2), ``dec_norm`` -- the blocks are
  :mod:`feedforward.model`'s ``PatchEmbed`` / ``Block`` / ``DecoderBlock``;
- per view v in {1, 2} a head ``downstream_head{v}`` holding three DPTs (:class:`feedforward.heads.DPTHead`) on the
  hooks (encoder, decoder L/2, 3L/4, L):
  ``dpt`` (pointmap: pts3d 3 + conf 1, MASt3R's), ``gaussian_dpt.dpt`` (offset 3, scale 3, rotation 4, SH 3K,
  opacity 1) and ``gaussian_language.dpt`` (33 channels: region latent 0-15, context latent 16-31, 32 unused);
- two 2D decoders ``language_decoder_sam`` (region latent) and ``language_decoder_patch`` (context latent):
  conv3x3 16->64, ReLU, conv3x3 64->128, ReLU, conv1x1 128->D.

forward(images [B, 2, 3, H, W], Ks [B, 2, 3, 3] | None) -> dict of [B, 2, H, W, ...]; means = pts3d.detach() + offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Literal, Optional, Tuple

import torch
from torch import Tensor, nn

from ..heads import DPTHead, pixel_rays, rgb_to_sh
from ..model import Block, DecoderBlock, PatchEmbed
from ..predictor import PredictedGaussians, Predictor

__all__ = ["GSemSplatConfig", "GSemSplatPredictor", "LATENT_DIM", "LANGUAGE_CHANNELS", "gaussian_channels"]

LATENT_DIM = 16
"""Width of each rendered latent (region, context) [C: GSemSplat release]."""
LANGUAGE_CHANNELS = 33
"""Output channels of the language DPT: region 0-15, context 16-31, one unused [C: release]."""
BRANCHES = ("region", "context")


@dataclass
class GSemSplatConfig:
    """Sizes and initialisation of :class:`GSemSplatPredictor`. Defaults: a tiny CPU model; :meth:`published` gives
    the released sizes (MASt3R ViT-L/16 encoder, ViT-B decoder, 256-d DPTs, CLIP 512)."""

    patch_size: int = 8
    enc_dim: int = 64
    enc_depth: int = 2
    enc_heads: int = 4
    dec_dim: int = 64
    dec_depth: int = 2
    dec_heads: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    head_feature_dim: int = 32
    """DPT fusion width (release: 256); the DPT's last hidden width is half of it (min 8), as MASt3R's last_dim."""
    head_layer_dims: Tuple[int, int, int, int] = (16, 32, 64, 64)
    """DPT reassemble widths per hook (release: 96, 192, 384, 768)."""
    sh_degree: int = 0
    """SH degree of the colour residual, 3 (deg+1)^2 channels. The release's ``sh_degree=1`` counts coefficients
    (``3 * sh_degree`` = 3 channels, DC only) = our degree 0."""
    text_dim: int = 384
    """D, the text-encoder width the decoders map to (release: CLIP ViT-B/16, 512; ours: MiniLM 384)."""
    decoder_hidden: Tuple[int, int] = (64, 128)
    """Hidden widths of the 2D language decoders [C: release]."""
    freeze_backbone: bool = False
    """No gradient to encoder and decoders (the release trains on a frozen MASt3R)."""
    freeze_pointmap_head: bool = False
    """No gradient to the pointmap DPTs (frozen in the release; it gets no render gradient anyway, means detach it)."""
    init_depth: Optional[float] = 2.5
    """[R] CPU-scale: the pointmap's raw xyz is offset by log1p(init_depth) x the pixel ray (the given Ks, or the
    optical axis), and its last conv starts at 0.01 x its default weights and zero bias, so an untrained head starts
    near a sphere of radius init_depth around the camera instead of scattered around its centre. None = MASt3R's plain
    'exp' depth mode (use with pretrained weights)."""
    offset_shift: float = 6.0
    """Offset activation xyz/|xyz| (exp(|xyz| - shift) - exp(-shift)) [C: Splatt3R reg_dense_offsets]."""
    offset_init: Tuple[float, float] = (1e-3, 1e-3)
    """(xavier gain, bias) of the offset channels of the last Gaussian conv [C: release]."""
    scale_init: Tuple[float, float] = (3e-5, -3.0)
    """(gain, bias) of the log-scale channels; scale = exp(raw). Release: (3e-5, -7) in MASt3R's normalised
    units; [R] -3 (5 cm) at our metric CPU scenes, where exp(-7) is under a tenth of a pixel footprint."""
    opacity_init: Tuple[float, float] = (1.0, -2.0)
    """(gain, bias) of the opacity logit [C: release]."""
    cue_branch: Literal["region", "context"] = "region"
    """Which latent :meth:`GSemSplatPredictor.features_to_cue_space` decodes (the Predictor interface)."""

    @staticmethod
    def published() -> "GSemSplatConfig":
        """Released sizes: MASt3R ViT-L/16 encoder (1024, 24 blocks, 16 heads), ViT-B decoder (768, 12, 12),
        256-d DPTs (layer dims 96..768), DC-only SH, CLIP 512, frozen backbone, MASt3R's init."""
        return GSemSplatConfig(patch_size=16, enc_dim=1024, enc_depth=24, enc_heads=16, dec_dim=768, dec_depth=12,
                               dec_heads=12, head_feature_dim=256, head_layer_dims=(96, 192, 384, 768), sh_degree=0,
                               text_dim=512, freeze_backbone=True, freeze_pointmap_head=True, init_depth=None,
                               scale_init=(3e-5, -7.0))


def gaussian_channels(sh_degree: int) -> Dict[str, int]:
    """Channel layout of ``gaussian_dpt``'s output, in order [C: release]."""
    return {"offset": 3, "scale": 3, "rot": 4, "sh": 3 * (sh_degree + 1) ** 2, "opacity": 1}


class _DPT(nn.Module):
    """Wrapper so the keys read ``<name>.dpt.*`` (MASt3R's ``PixelwiseTaskWithDPT``)."""

    def __init__(self, cfg: GSemSplatConfig, out: int):
        super().__init__()
        self.dpt = _dpt(cfg, out)


def _dpt(cfg: GSemSplatConfig, out: int) -> DPTHead:
    return DPTHead([cfg.enc_dim, cfg.dec_dim, cfg.dec_dim, cfg.dec_dim], cfg.head_layer_dims, cfg.head_feature_dim, out)


class GaussianLanguageHead(nn.Module):
    """One view's head: pointmap DPT (``dpt``), Gaussian DPT (``gaussian_dpt.dpt``), language DPT
    (``gaussian_language.dpt``)."""

    def __init__(self, cfg: GSemSplatConfig):
        super().__init__()
        self.dpt = _dpt(cfg, 4)
        self.gaussian_dpt = _DPT(cfg, sum(gaussian_channels(cfg.sh_degree).values()))
        self.gaussian_language = _DPT(cfg, LANGUAGE_CHANNELS)
        if cfg.init_depth is not None:  # [R] untrained pointmap starts on the ray prior (weights x 0.01, no bias)
            with torch.no_grad():
                self.dpt.head[-1].weight.mul_(0.01)
                self.dpt.head[-1].bias.zero_()
        last = self.gaussian_dpt.dpt.head[-1]
        inits = {"offset": cfg.offset_init, "scale": cfg.scale_init, "rot": (1.0, 0.0), "sh": (1.0, 0.0),
                 "opacity": cfg.opacity_init}
        with torch.no_grad():
            start = 0
            for name, n in gaussian_channels(cfg.sh_degree).items():
                gain, bias = inits[name]
                nn.init.xavier_uniform_(last.weight[start:start + n], gain)
                last.bias[start:start + n].fill_(bias)
                start += n


def language_decoder(cfg: GSemSplatConfig) -> nn.Sequential:
    """conv3x3 16->h1, ReLU, conv3x3 h1->h2, ReLU, conv1x1 h2->D (keys ``0``, ``2``, ``4`` as the release)."""
    h1, h2 = cfg.decoder_hidden
    return nn.Sequential(nn.Conv2d(LATENT_DIM, h1, 3, padding=1), nn.ReLU(), nn.Conv2d(h1, h2, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(h2, cfg.text_dim, 1))


def _exp_depth(xyz: Tensor) -> Tensor:
    """DUSt3R's 'exp' depth mode: xyz / |xyz| * expm1(|xyz|)."""
    d = xyz.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return xyz / d * torch.expm1(d)


class GSemSplatPredictor(nn.Module, Predictor):
    """Two unposed views -> per-pixel semantic Gaussians in view 1's OpenCV camera frame (module docstring).

    Implements :class:`feedforward.predictor.Predictor` for exactly 2 views; ``features`` of a prediction are
    [region latent | context latent] (32), and :meth:`features_to_cue_space` decodes the ``cfg.cue_branch`` half.
    """

    BACKBONE = ("patch_embed", "enc_blocks", "enc_norm", "decoder_embed", "dec_blocks", "dec_blocks2", "dec_norm")

    def __init__(self, cfg: GSemSplatConfig = GSemSplatConfig()):
        super().__init__()
        self.cfg = cfg
        self.input_size: Optional[Tuple[int, int]] = None
        if (cfg.enc_dim // cfg.enc_heads) % 4 or (cfg.dec_dim // cfg.dec_heads) % 4:
            raise ValueError("RoPE needs head dims divisible by 4 (enc_dim/enc_heads, dec_dim/dec_heads)")
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.enc_dim)
        self.enc_blocks = nn.ModuleList(
            [Block(cfg.enc_dim, cfg.enc_heads, cfg.mlp_ratio, cfg.qkv_bias, True) for _ in range(cfg.enc_depth)])
        self.enc_norm = nn.LayerNorm(cfg.enc_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(cfg.enc_dim, cfg.dec_dim)
        mk = lambda: DecoderBlock(cfg.dec_dim, cfg.dec_heads, cfg.mlp_ratio, cfg.qkv_bias, True)  # noqa: E731
        self.dec_blocks = nn.ModuleList([mk() for _ in range(cfg.dec_depth)])
        self.dec_blocks2 = nn.ModuleList([mk() for _ in range(cfg.dec_depth)])
        self.dec_norm = nn.LayerNorm(cfg.dec_dim, eps=1e-6)
        for m in self.BACKBONE:
            getattr(self, m).apply(self._init)
        self.downstream_head1 = GaussianLanguageHead(cfg)
        self.downstream_head2 = GaussianLanguageHead(cfg)
        self.language_decoder_sam = language_decoder(cfg)
        self.language_decoder_patch = language_decoder(cfg)
        self.set_frozen(cfg.freeze_backbone, cfg.freeze_pointmap_head)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def backbone_parameters(self):
        for name in self.BACKBONE:
            yield from getattr(self, name).parameters()

    def pointmap_parameters(self):
        yield from self.downstream_head1.dpt.parameters()
        yield from self.downstream_head2.dpt.parameters()

    def set_frozen(self, backbone: bool, pointmap_head: bool) -> None:
        """(Un)freeze the backbone and the pointmap DPTs (``requires_grad``)."""
        for p in self.backbone_parameters():
            p.requires_grad_(not backbone)
        for p in self.pointmap_parameters():
            p.requires_grad_(not pointmap_head)

    # ---------------------------------------------------------------------------------------------- backbone

    def backbone(self, images: Tensor) -> Tuple[List[Tuple[Tensor, Tensor]], Tuple[int, int]]:
        """Encoder + two-view decoder (DUSt3R's loop: both views updated from the previous layer of the other).

        images [B, 2, 3, H, W] in [0, 1] -> list of dec_depth + 1 pairs (view 1, view 2) of [B, N, C] tokens
        (encoder output first, the last pair normalised by ``dec_norm``), patch grid (h, w)."""
        b, v, _, hh, ww = images.shape
        if v != 2:
            raise ValueError(f"GSemSplat takes exactly 2 views, got {v}")
        p = self.cfg.patch_size
        if hh % p or ww % p:
            raise ValueError(f"image size {ww}x{hh} must be a multiple of the patch size {p}")
        x = self.patch_embed((images.reshape(b * 2, 3, hh, ww) - 0.5) / 0.5)
        gh, gw = hh // p, ww // p
        yy, xx = torch.meshgrid(torch.arange(gh, device=images.device), torch.arange(gw, device=images.device),
                                indexing="ij")
        pos = torch.stack([yy.reshape(-1), xx.reshape(-1)], -1)
        for blk in self.enc_blocks:
            x = blk(x, pos)
        x = self.enc_norm(x).reshape(b, 2, gh * gw, -1)
        outs = [(x[:, 0], x[:, 1])]
        f1, f2 = self.decoder_embed(x[:, 0]), self.decoder_embed(x[:, 1])
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2):
            f1, f2 = blk1(f1, f2, pos, pos, None), blk2(f2, f1, pos, pos, None)
            outs.append((f1, f2))
        outs[-1] = (self.dec_norm(f1), self.dec_norm(f2))
        return outs, (gh, gw)

    # ----------------------------------------------------------------------------------------------- forward

    def forward(self, images: Tensor, Ks: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Predict the Gaussians of both views.

        Args:
            images: [B, 2, 3, H, W] RGB in [0, 1]; view 0 is the reference. No poses.
            Ks: optional [B, 2, 3, 3] intrinsics, only for the ray prior of ``cfg.init_depth``.

        Returns:
            dict of [B, 2, H, W, ...]: ``pts3d`` (3, the pointmap, view-1 OpenCV frame), ``conf`` (1 + exp),
            ``means`` (3, = pts3d.detach() + offset), ``offsets`` (3), ``scales`` (3, exp), ``quats`` (4, unit,
            wxyz; the rotation channels are xyzw as Splatt3R's scalar-last quaternions, reordered for gsplat),
            ``opacities`` (sigmoid), ``sh`` (K, 3; DC += RGB2SH(input)),
            ``region`` (16), ``context`` (16).
        """
        b, _, _, hh, ww = images.shape
        layers, grid = self.backbone(images)
        dd = self.cfg.dec_depth
        hooks = [0, max(1, dd * 2 // 4), max(1, dd * 3 // 4), dd]
        per_view = []
        for vi, head in enumerate((self.downstream_head1, self.downstream_head2)):
            toks = [layers[i][vi] for i in hooks]
            pts = head.dpt(toks, grid, (hh, ww))  # [B, 4, H, W]
            gau = head.gaussian_dpt.dpt(toks, grid, (hh, ww))
            lang = head.gaussian_language.dpt(toks, grid, (hh, ww))
            per_view.append([t.permute(0, 2, 3, 1) for t in (pts, gau, lang)])
        pts, gau, lang = (torch.stack([pv[i] for pv in per_view], 1) for i in range(3))  # [B, 2, H, W, C]
        xyz = pts[..., :3]
        if self.cfg.init_depth is not None:
            if Ks is not None:
                rays = pixel_rays(Ks, hh, ww)
            else:
                rays = torch.tensor([0.0, 0.0, 1.0], device=xyz.device, dtype=xyz.dtype)
            xyz = xyz + math.log1p(self.cfg.init_depth) * rays
        pts3d = _exp_depth(xyz)
        conf = 1.0 + torch.exp(pts[..., 3])
        chans = gaussian_channels(self.cfg.sh_degree)
        parts = dict(zip(chans, torch.split(gau, list(chans.values()), dim=-1)))
        o = parts["offset"]
        d = o.norm(dim=-1, keepdim=True)
        s = self.cfg.offset_shift
        offsets = o / d.clamp_min(1e-8) * (torch.exp(d - s) - math.exp(-s))
        k = (self.cfg.sh_degree + 1) ** 2
        sh = parts["sh"].reshape(*parts["sh"].shape[:-1], 3, k).transpose(-1, -2)  # release: '(xyz d_sh)'
        dc = rgb_to_sh(images.permute(0, 1, 3, 4, 2))
        sh = torch.cat([sh[..., :1, :] + dc[..., None, :], sh[..., 1:, :]], dim=-2)
        return {
            "pts3d": pts3d, "conf": conf, "means": pts3d.detach() + offsets, "offsets": offsets,
            "scales": torch.exp(parts["scale"].clamp(max=10.0)),
            "quats": (parts["rot"] / (parts["rot"].norm(dim=-1, keepdim=True) + 1e-8))[..., [3, 0, 1, 2]],
            "opacities": torch.sigmoid(parts["opacity"][..., 0]), "sh": sh,
            "region": lang[..., :LATENT_DIM], "context": lang[..., LATENT_DIM:2 * LATENT_DIM],
        }

    def decoder(self, branch: str) -> nn.Sequential:
        if branch == "region":
            return self.language_decoder_sam
        if branch == "context":
            return self.language_decoder_patch
        raise ValueError(f"unknown latent branch {branch!r} (region | context)")

    def decode(self, latent_maps: Tensor, branch: str) -> Tensor:
        """Rendered latent maps [..., H, W, 16] -> text-space maps [..., H, W, D] (not normalised) with the
        branch's 2D decoder (3x3 convs: neighbouring pixels mix)."""
        lead, (hh, ww, c) = latent_maps.shape[:-3], latent_maps.shape[-3:]
        x = latent_maps.reshape(-1, hh, ww, c).permute(0, 3, 1, 2)
        y = self.decoder(branch)(x).permute(0, 2, 3, 1)
        return y.reshape(*lead, hh, ww, y.shape[-1])

    # ------------------------------------------------------------------------------------- Predictor interface

    @property
    def image_size(self) -> Optional[Tuple[int, int]]:
        return self.input_size

    @property
    def size_multiple(self) -> int:
        return self.cfg.patch_size

    @property
    def cue_dim(self) -> int:
        return self.cfg.text_dim

    @property
    def feature_space(self) -> str:
        return f"gsemsplat-latent-{LATENT_DIM}x2"

    @torch.no_grad()
    def predict(self, images: Tensor, intrinsics: Optional[Tensor] = None,
                cues: Optional[Tensor] = None) -> PredictedGaussians:
        """One forward pass on 2 views [2, 3, H, W] (``cues`` are ignored: GSemSplat takes no semantic input)."""
        v, _, hh, ww = images.shape
        if v != 2:
            raise ValueError(f"GSemSplat predicts from exactly 2 views, got {v}")
        dev = next(self.parameters()).device
        ks = intrinsics[None].to(dev).float() if intrinsics is not None else None
        g = {k: t[0].reshape(v * hh * ww, *t.shape[4:]) for k, t in self(images[None].to(dev).float(), ks).items()}
        yy, xx = torch.meshgrid(torch.arange(hh, device=dev), torch.arange(ww, device=dev), indexing="ij")
        pixel = torch.stack([yy.reshape(-1), xx.reshape(-1)], -1).repeat(v, 1)
        view = torch.arange(v, device=dev).repeat_interleave(hh * ww)
        return PredictedGaussians(means=g["means"], scales=g["scales"], quats=g["quats"], opacities=g["opacities"],
                                  sh=g["sh"], features=torch.cat([g["region"], g["context"]], -1), view_index=view,
                                  pixel=pixel, feature_space=self.feature_space, confidence=g["conf"],
                                  info={"input_size": (hh, ww)})

    def features_to_cue_space(self, features: Tensor) -> Tensor:
        """Per-Gaussian latents [N, 32] (region | context) -> [N, D]: the ``cfg.cue_branch`` half through its
        decoder as a 1x1 map. A 3x3 conv on a 1x1 map with zero padding uses only its centre tap, so this is the
        decoder without spatial context (a documented choice: the release decodes rendered 2D maps only)."""
        half = features[:, :LATENT_DIM] if self.cfg.cue_branch == "region" else features[:, LATENT_DIM:2 * LATENT_DIM]
        return self.decoder(self.cfg.cue_branch)(half[:, :, None, None])[:, :, 0, 0]
