"""Every constant of the UniSem feed-forward predictor, in small dataclasses (tyro builds the CLI from them).

[R] marks a reconstruction (UniSem has no code; docs/methods/unisem_feedforward.md, "Paper, Uni3R code and this
implementation"); [C] a value from Uni3R/LSM/DUSt3R code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Tuple


@dataclass
class PredictorConfig:
    """Architecture: shared ViT encoder, cross-view decoder (reference view + others), DPT head."""

    patch_size: int = 8
    """ViT patch size (DUSt3R/Uni3R: 16). Image sides must be multiples of it."""
    enc_dim: int = 96
    """Encoder width (DUSt3R ViT-L: 1024)."""
    enc_depth: int = 4
    """Encoder blocks (ViT-L: 24)."""
    enc_heads: int = 4
    """Encoder attention heads (ViT-L: 16)."""
    dec_dim: int = 96
    """Decoder width (DUSt3R: 768)."""
    dec_depth: int = 4
    """Decoder blocks (DUSt3R: 12)."""
    dec_heads: int = 4
    """Decoder attention heads (DUSt3R: 12)."""
    mlp_ratio: float = 4.0
    """MLP hidden width / token width [C: CroCo]."""
    qkv_bias: bool = True
    """Bias in the qkv projections [C: DUSt3R]."""
    pos_embed: Literal["rope100", "none"] = "rope100"
    """2D rotary position embedding with base 100 (DUSt3R's RoPE100), or none."""
    head_feature_dim: int = 64
    """DPT fusion width (Uni3R: 256)."""
    head_layer_dims: Tuple[int, int, int, int] = (24, 48, 96, 192)
    """DPT reassemble widths per hook (DUSt3R: 96, 192, 384, 768)."""
    sem_dim: int = 24
    """Per-Gaussian semantic latent (Uni3R gs_feats: 64)."""
    semantic_input: Literal["cue", "none"] = "cue"
    """2D semantic features of the context views added (after a 1x1 ``feature_reduction``) to the per-Gaussian
    latent, as Uni3R adds its frozen LSeg features. 'cue': the context views' 2D language cues (the CPU stand-in
    for LSeg: the 2D segmenter's output); 'none': appearance only."""
    cue_dim: int = 384
    """Dimension of the 2D language cues the expanded feature is compared with (MiniLM 384; LSeg 512)."""
    sh_degree: int = 0
    """SH degree of the colour (Uni3R: 3; 0 = view-independent RGB)."""
    scale_multiplier: float = 0.5
    """Gaussian scale = exp(s) * multiplier * nn-dist (the head's s starts at 0). [R] Uni3R uses 0.0025 with
    distCUDA2; ours multiplies a pixel spacing in the predicted pointmap (:attr:`nn_distance`), about half of
    which covers a pixel; the head learns s."""
    nn_distance: Literal["min", "mean4"] = "min"
    """[R] Pixel spacing the scale is relative to: 'min' = distance to the nearest of the 4 grid neighbours in the
    predicted pointmap, 'mean4' = their mean. Like distCUDA2's 3-NN in 3D, 'min' never measures across a depth
    edge; 'mean4' does, so edge Gaussians grow to the clamp and smear objects over their surroundings."""
    scale_min_ratio: float = 0.1
    """Lower clamp of the scale, times the view's median nn-dist [C: Uni3R 0.1]."""
    scale_max_ratio: float = 1.0
    """Upper clamp of the scale, times the view's median nn-dist [R; Uni3R: 3]. The photometric and cosine losses
    both reward blur while the pointmap is noisy, so a loose clamp lets the learned scales grow until the rendered
    semantics smear small objects away."""
    init_depth: float = 2.5
    """Depth the untrained head puts every point at (bias of the point channels), metres."""
    semantic_residual: bool = True
    """[R] Zero-initialise the semantic channels of the head's last layer, so an untrained model's per-Gaussian
    latent is exactly the reduced 2D cue of its pixel (the render at a target = the context cues lifted on the
    predicted geometry) and the head learns a residual on top. Uni3R's head starts random; at CPU scale a random
    residual drowns the cue for the whole (short) training."""
    head_init_scale: float = 0.01
    """[R] Factor on the default init of the head's last conv weights, so the untrained head sits at its bias
    (depth prior, identity rotation, opacity 0.5, input colour)."""
    expansion_downsample: float = 1.0
    """Bilinear factor before the 1x1 feature expansion (Uni3R: 0.5 at 256 px; 1.0 at our 64 px)."""

    @staticmethod
    def published() -> "PredictorConfig":
        """DUSt3R/Uni3R scale: ViT-L/16 encoder, ViT-B decoder, 256-d DPT, 64-d latent, LSeg 512-d, SH 3."""
        return PredictorConfig(patch_size=16, enc_dim=1024, enc_depth=24, enc_heads=16, dec_dim=768, dec_depth=12,
                               dec_heads=12, head_feature_dim=256, head_layer_dims=(96, 192, 384, 768), sem_dim=64,
                               cue_dim=512, sh_degree=3, expansion_downsample=0.5)


@dataclass
class LossConfig:
    """Training loss: L1 + w_sem (1 - cos) + w_geo ConfLoss(Regr3D) (+ MTC), rendered at GT relative poses."""

    rgb_l1: float = 1.0
    """Photometric L1 [C: Uni3R 1.0]."""
    ssim: float = 0.0
    """(1 - SSIM) weight (Uni3R uses 0.05 LPIPS-vgg instead; no VGG weights offline)."""
    semantic: float = 0.2
    """(1 - cos(expand(F), cue)) weight [C: Uni3R/LSM 0.2]."""
    geometry: float = 1.0
    """Pointmap ConfLoss weight [R: LSM uses DUSt3R ConfLoss(Regr3D) with GT points; Uni3R 0.005 L_geo to a
    distiller]. GT depth is available in the corpus and ScanNet."""
    geometry_conf_alpha: float = 0.2
    """DUSt3R ConfLoss alpha: conf * err - alpha * log(conf) [C: LSM 0.2]."""
    geometry_norm: Literal["none", "avg_dis"] = "none"
    """Regr3D normalisation: 'avg_dis' divides both pointmaps by their mean distance (scale-free, DUSt3R);
    'none' keeps metric scale (our corpus poses are metric, and rendering at GT poses needs it)."""
    render_context_views: bool = True
    """Also supervise the renders of the context views (EGD renders them anyway)."""
    semantic_views: Literal["all", "targets"] = "targets"
    """[R] Views the semantic loss is taken on. A context view's own cue is an input of the model, so its render
    can score by copying that (noisy) cue back; only a target view's cue is noise independent of the input, so
    only there does the loss ask for the denoised semantics (the expectation over cue noise). 'all' also
    supervises the context views (when ``render_context_views``)."""


@dataclass
class EGDConfig:
    """Error-aware Gaussian dropout (docs/methods/unisem_feedforward.md, step 6; every constant [R]). The kept set
    is used by the iteration's one training render, so RGB, feature and depth all see the dropout."""

    enabled: bool = False
    """Turn EGD on."""
    error: Literal["l1", "l1+ssim"] = "l1"
    """Per-pixel error of the context-view renders: |I^ - I|_1 (mean over RGB), optionally + (1 - SSIM map)."""
    quantile: float = 0.5
    """Candidates = Gaussians in the lowest q-quantile of error (per view or global)."""
    r_max: float = 0.3
    """Maximum drop probability."""
    ramp_fraction: float = 0.5
    """r(t) ramps linearly 0 -> r_max over this fraction of training ("progressive")."""
    ranking: Literal["per_view", "global"] = "per_view"
    """Rank errors within each context view, or over all Gaussians."""


@dataclass
class MTCConfig:
    """Mix-training curriculum (docs/methods/unisem_feedforward.md, step 9; every constant [R])."""

    enabled: bool = False
    """Turn MTC on."""
    stage_a_fraction: float = 0.3
    """Stage A (2D cue distillation only) for this fraction of training."""
    ramp_fraction: float = 0.3
    """alpha(t) ramps 0 -> alpha_max over this fraction after stage A."""
    alpha_max: float = 0.5
    """Maximum weight of the prototype loss."""
    top_k: int = 2
    """Max-error prompts per prompted view."""
    nms_radius: int = 6
    """Pixels: prompts closer than this to a chosen one are suppressed."""
    beta: float = 0.1
    """Weight of the pixel-to-3D-prototype term."""
    visibility_tolerance: float = 0.1
    """Relative depth tolerance of the visibility test when a lifted mask is projected into another view."""
    min_mask_pixels: int = 8
    """Prompted or projected masks smaller than this are skipped."""
    prompter: Literal["simulator", "sam"] = "simulator"
    """Mask of a point prompt: the simulated SAM mask under the point (synthetic) or point-prompted SAM (real)."""
    sam_checkpoint: str = ""
    """SAM checkpoint for prompter='sam' (sam_vit_h_4b8939.pth)."""


@dataclass
class ScheduleConfig:
    """Optimisation (CPU scale; Uni3R 2-view: lr 1e-4 -> 1e-6 cosine, warm-up 10 of 100 epochs)."""

    steps: int = 1500
    """Training iterations."""
    lr: float = 1e-3
    """Peak learning rate (AdamW). Uni3R: 1e-4 at batch 4 x 8 GPUs on a pretrained backbone."""
    lr_final: float = 1e-5
    """Cosine end value."""
    warmup_fraction: float = 0.05
    """Linear warm-up fraction (Uni3R: 10/100 epochs)."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient norm clip (0 = off)."""
    views: Tuple[int, ...] = (2, 3, 4)
    """Context views V per training sample, drawn uniformly."""
    targets: int = 2
    """Target views per sample (between the context frames, never one of them)."""


@dataclass
class EvalConfig:
    """Held-out evaluation: Uni3R's protocol on the corpus's video frames."""

    views: Tuple[int, ...] = (2, 8, 16)
    """Numbers of context views V evaluated."""
    targets_per_scene: int = 2
    """Target views scored per (scene, V) [the LSM test uses all: 2 per 8 frames for 2-view, V-1 for V-view]."""
    pose_align_steps: int = 100
    """Adam steps refining each target pose by photometric L1 [C: Uni3R 100]."""
    pose_align_lr: float = 5e-3
    """Adam learning rate of the 9-D pose delta [C: Uni3R 5e-3]."""
    depth_thresholds: Tuple[float, ...] = (1.25, 1.03)
    """delta thresholds reported (LSM/Uni3R use 1.03)."""
    depth_align: Literal["none", "median", "lsq"] = "lsq"
    """Depth alignment before AbsRel/delta (Uni3R: per-image trimmed least squares scale+shift)."""
    depth_cap: float = 10.0
    """GT depth above this is ignored [C: Uni3R 10 m]."""


@dataclass
class FeedForwardConfig:
    """Everything one training run needs (except the data location)."""

    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    egd: EGDConfig = field(default_factory=EGDConfig)
    mtc: MTCConfig = field(default_factory=MTCConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    seed: int = 0
    """Sampling seed."""
