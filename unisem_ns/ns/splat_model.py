"""``unisem-splat``: Splatfacto that runs on CPU and CUDA through ``unisem_ns.render``, with an extra
N-D feature channel per Gaussian for the semantic methods to supervise."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Type, Union

import torch
from gsplat.strategy import DefaultStrategy
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import (
    SplatfactoModel,
    SplatfactoModelConfig,
    num_sh_bases,
    random_quat_tensor,
    RGB2SH,
)
from nerfstudio.utils.colors import get_color
from pytorch_msssim import SSIM
from torch.nn import Parameter

from unisem_ns.data.scene_io import InputError
from unisem_ns.metrics import depth_metrics
from unisem_ns.metrics.image import image_metrics
from unisem_ns.ns import feedforward_init
from unisem_ns.ns.dataparser import exit_on_input_error
from unisem_ns.render import rasterization, sh_colors_split

@dataclass
class UnisemSplatBaseConfig(SplatfactoModelConfig):
    """Splatfacto on ``unisem_ns.render`` (gsplat on CUDA, compiled tile kernels on CPU), without the feature width:
    :class:`UnisemSplatModelConfig` adds it; econSG takes its width from its prepared cache instead."""

    _target: Type = field(default_factory=lambda: UnisemSplatModel)
    render_backend: Literal["auto", "gsplat", "numba", "torch"] = "auto"
    """'auto' uses gsplat for CUDA tensors, the compiled CPU kernels (numba) for CPU tensors and the sparse
    PyTorch backend on other devices; 'torch' forces the PyTorch reference."""
    lpips: Literal["auto", "off"] = "auto"
    """'auto' reports LPIPS when torchvision's AlexNet weights are on disk (torch hub cache), else skips it
    with one warning; nothing is downloaded."""
    use_absgrad: bool = True
    """Densify on absolute 2D gradients (gsplat's absgrad; emulated exactly by the PyTorch backend)."""
    num_downscales: int = 0
    """Train at 1/2^k resolution first (Splatfacto uses 2 for multi-megapixel captures; our scenes are small)."""
    depth_loss_weight: float = 0.0
    """[R] Weight of a depth loss on training views that carry a depth map (RGB-D scenes: ours, ScanNet,
    Replica): mean |d - d_gt| / d_gt of the rendered expected depth over pixels with valid depth. 0 = off
    (Splatfacto and the papers train on RGB only)."""
    init_from_predictor: Optional[Path] = None
    """Initialise the Gaussians from a trained feed-forward predictor instead of the seed cloud: the config.yml of
    an ``ns-train unisem-feedforward`` run (its newest checkpoint), or a file written by
    ``feedforward.predictor.save_unisem_predictor``. Means, scales, rotations, opacities and colours come from the
    prediction; the feature channel from its semantics, mapped by the method (docs/FEEDFORWARD_INIT.md)."""
    init_views: int = 8
    """Training views the predictor sees, evenly spaced over the training set (0 = all). Neighbouring chosen views
    form the windows, so they should overlap: raise it for long captures."""
    init_window: int = 2
    """Views per predictor pass (the first is the window's reference, whose pose places the window)."""
    init_pixel_stride: int = 1
    """Keep every k-th pixel row and column of each view's prediction (k^2 fewer Gaussians)."""
    init_depth_align: bool = True
    """Scale each window's prediction by the median ratio of the scene's depth map to the predicted depth on its
    reference view (scenes with depths/); without depth, or False, the predicted metric scale is kept."""
    init_semantics: bool = True
    """Initialise the feature channel from the predicted semantics (where the method defines a mapping,
    :meth:`UnisemSplatModel.semantic_init`); False keeps the method's own feature init."""


@dataclass
class UnisemSplatModelConfig(UnisemSplatBaseConfig):
    """Splatfacto on ``unisem_ns.render`` (gsplat on CUDA, compiled tile kernels on CPU)."""

    _target: Type = field(default_factory=lambda: UnisemSplatModel)
    feature_dim: int = 16
    """Width of the per-Gaussian feature rendered next to RGB (0 disables it). Semantic methods supervise it;
    the base method only renders it (PCA-coloured as 'features' in the viewer)."""


class UnisemSplatModel(SplatfactoModel):
    """Splatfacto whose parameters, rendering and metrics work on any device."""

    config: UnisemSplatModelConfig
    method_name = "unisem-splat"

    @property
    def feature_dim(self) -> int:
        """Width of the per-Gaussian feature rendered next to RGB (0 = none): ``config.feature_dim`` here; a
        subclass whose width is not a setting (econSG: its cache's latent width) overrides this."""
        return self.config.feature_dim

    def populate_modules(self):
        # Model.device does not exist yet inside populate_modules; nerfstudio passes it in kwargs.
        cfg = self.config
        dim_sh = num_sh_bases(cfg.sh_degree)
        cue_features = None
        use_predictor = cfg.init_from_predictor is not None
        if use_predictor and feedforward_init.restoring_from_checkpoint():
            from nerfstudio.utils.rich_utils import CONSOLE

            CONSOLE.log("--pipeline.model.init-from-predictor: a checkpoint is loaded next; the predictor is not run")
            use_predictor = False
        if use_predictor:
            predicted, cue_features = self.predict_initial_gaussians()
            params = feedforward_init.gaussian_params_from_prediction(predicted, cfg.sh_degree)
            n = predicted.num
        else:
            if self.seed_points is not None and not cfg.random_init:
                means = self.seed_points[0].float().cpu()
            else:
                means = (torch.rand((cfg.num_random, 3)) - 0.5) * cfg.random_scale
            distances, _ = self.k_nearest_sklearn(means, 3)
            avg_dist = torch.from_numpy(distances).float().mean(dim=-1, keepdim=True).clamp_min(1e-7)
            n = means.shape[0]
            seed_rgb = None
            if self.seed_points is not None and not cfg.random_init and self.seed_points[1].shape[0] > 0:
                seed_rgb = self.seed_points[1].float().cpu() / 255.0
            shs = torch.zeros(n, dim_sh, 3)
            if seed_rgb is not None:
                shs[:, 0] = RGB2SH(seed_rgb) if cfg.sh_degree > 0 else torch.logit(seed_rgb, eps=1e-10)
            else:
                shs[:, 0] = torch.rand(n, 3)
            params = {
                "means": means,
                "scales": torch.log(avg_dist.repeat(1, 3)),
                "quats": random_quat_tensor(n),
                "features_dc": shs[:, 0].clone(),
                "features_rest": shs[:, 1:].clone(),
                "opacities": torch.logit(0.1 * torch.ones(n, 1)),
            }
        if self.feature_dim > 0:
            sem = None
            if cue_features is not None and cfg.init_semantics:
                with torch.no_grad():
                    sem = self.semantic_init(cue_features)
                if sem is not None and tuple(sem.shape) != (n, self.feature_dim):
                    raise ValueError(f"{type(self).__name__}.semantic_init returned {tuple(sem.shape)}, "
                                     f"want ({n}, {self.feature_dim})")
            if sem is not None:
                from nerfstudio.utils.rich_utils import CONSOLE

                CONSOLE.log(f"{self.method_name}: feature channel initialised from the predicted semantics")
            # Otherwise small random features so the PCA view is not degenerate before any supervision.
            params["features_sem"] = sem.float().cpu() if sem is not None else 0.01 * torch.randn(n, self.feature_dim)
        self.gauss_params = torch.nn.ParameterDict({k: Parameter(v) for k, v in params.items()})

        self.camera_optimizer = cfg.camera_optimizer.setup(num_cameras=self.num_train_data, device="cpu")
        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = SSIM(data_range=1.0, size_average=True, channel=3)
        self.step = 0
        self.crop_box = None
        if cfg.background_color == "random":
            self.background_color = torch.tensor([0.1490, 0.1647, 0.2157])  # viser's default background
        else:
            self.background_color = get_color(cfg.background_color)
        if cfg.use_bilateral_grid:
            from nerfstudio.model_components.lib_bilagrid import BilateralGrid

            self.bil_grids = BilateralGrid(
                num=self.num_train_data, grid_X=cfg.grid_shape[0], grid_Y=cfg.grid_shape[1], grid_W=cfg.grid_shape[2]
            )
        self.strategy = DefaultStrategy(
            prune_opa=cfg.cull_alpha_thresh,
            grow_grad2d=cfg.densify_grad_thresh,
            grow_scale3d=cfg.densify_size_thresh,
            grow_scale2d=cfg.split_screen_size,
            prune_scale3d=cfg.cull_scale_thresh,
            prune_scale2d=cfg.cull_screen_size,
            refine_scale2d_stop_iter=cfg.stop_screen_size_at,
            refine_start_iter=cfg.warmup_length,
            refine_stop_iter=cfg.stop_split_at,
            reset_every=cfg.reset_alpha_every * cfg.refine_every,
            refine_every=cfg.refine_every,
            pause_refine_after_reset=self.num_train_data + cfg.refine_every,
            absgrad=cfg.use_absgrad,
            revised_opacity=False,
            verbose=False,
        )
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)

    # ----------------------------------------------------------------------------------- feed-forward init

    def semantic_init(self, cue_features: torch.Tensor) -> Optional[torch.Tensor]:
        """The initial feature channel ``[N, feature_dim]`` from predicted cue-space features ``[N, C]``
        (:attr:`UnisemSplatBaseConfig.init_from_predictor`), or None to keep the random init.

        Here (unisem-splat, unisem-distill): the unit cue features projected on their top ``feature_dim``
        principal directions (uncentred), so Gaussians the cues tell apart start apart and a decoder to the cue
        space (unisem-distill's) has a linear map to learn. Methods whose channel lives elsewhere override this
        (econSG: its autoencoder's latent; Unified-Lift: None, instance features are not semantic)."""
        return feedforward_init.pca_project(cue_features, self.feature_dim)

    def predict_initial_gaussians(self) -> Tuple[Any, Optional[torch.Tensor]]:
        """Run the predictor of ``init_from_predictor`` on the chosen training views (``feedforward.scene_init``):
        world-frame :class:`~feedforward.predictor.PredictedGaussians` and their cue-space features ``[N, C]``
        (None when the predictor has no semantics or its cue space is not the scene's)."""
        cfg = self.config
        try:
            return feedforward_init.predict_scene_for_model(self.kwargs.get("metadata") or {}, cfg,
                                                            self.kwargs.get("device", "cpu"))
        except InputError as e:
            raise exit_on_input_error(e) from None

    # ----------------------------------------------------------------------------------- parameters

    @property
    def features_sem(self) -> Optional[torch.Tensor]:
        return self.gauss_params["features_sem"] if "features_sem" in self.gauss_params else None

    # ----------------------------------------------------------------------------------- training state

    def training_state(self) -> Dict[str, Any]:
        """State that changes during training but is neither a parameter nor a buffer, for a checkpoint to carry
        (:class:`~unisem_ns.ns.trainer.UnisemTrainer`): the densification statistics gathered since the last
        refinement. A method with its own random streams or running state adds them here."""
        return {"strategy": {k: v.clone() if torch.is_tensor(v) else v for k, v in self.strategy_state.items()}}

    def load_training_state(self, state: Dict[str, Any]) -> None:
        """Inverse of :meth:`training_state`, after the parameters were loaded."""
        self.strategy_state.update(state["strategy"])

    def get_gaussian_param_groups(self) -> Dict[str, List[Parameter]]:
        # Every gauss_params key must be an optimizer group: gsplat's strategy updates each by name.
        return {name: [param] for name, param in self.gauss_params.items()}

    def update_to_step(self, step: int) -> None:
        # Called by Nerfstudio before loading a checkpoint: evaluate with the SH degree of that step.
        self.step = step

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):  # type: ignore[override]
        """Load a checkpoint, resizing the Gaussians in place.

        Splatfacto replaces each ``gauss_params`` Parameter with a new one here, but the trainer built
        its optimizers before loading, so after a resume they step orphaned tensors and the Gaussians
        stop training. Resizing ``.data`` keeps the Parameter objects the optimizers hold.
        """
        self._check_checkpoint(state_dict)
        n = state_dict["gauss_params.means"].shape[0]
        for param in self.gauss_params.values():
            param.data = torch.zeros((n,) + tuple(param.shape[1:]), dtype=param.dtype, device=param.device)
        return torch.nn.Module.load_state_dict(self, state_dict, strict=strict, **kwargs)

    def _check_checkpoint(self, state_dict) -> None:
        """Refuse a checkpoint written by another method or with another feature width, in one line."""
        keys = {k.split(".", 1)[1] for k in state_dict if k.startswith("gauss_params.")}
        want = set(self.gauss_params.keys())
        if keys == want:
            return
        where = _checkpoint_path_from_callers() or "the checkpoint"
        if not keys:
            raise exit_on_input_error(
                InputError(
                    f"{where}: not a Gaussian-splatting checkpoint (no gauss_params); it was written by another "
                    f"method: load it with that method, or train {self.method_name} to get one"
                )
            )
        raise exit_on_input_error(
            InputError(
                f"{where}: written by another method or configuration (Gaussian parameters {sorted(keys)}, "
                f"{self.method_name} expects {sorted(want)}); load it with the config.yml of the run that wrote it"
            )
        )

    # ----------------------------------------------------------------------------------- rendering

    def gaussian_features(self, features_sem: torch.Tensor) -> torch.Tensor:
        """The per-Gaussian features ``[N, F]`` alpha-blended into ``outputs["features"]``; methods override
        this to render a transform of the stored parameter (econSG normalises each Gaussian's latent)."""
        return features_sem

    def wants_training_depth(self) -> bool:
        """Whether training renders expected depth too (RGB+ED): for the depth loss, or a method's own needs."""
        return self.config.output_depth_during_training or self.config.depth_loss_weight > 0

    def _render_colors(self, means, features_dc, features_rest, viewmat) -> torch.Tensor:
        """Per-camera RGB [C, N, 3], with SH evaluated here so features can ride in the same pass."""
        if self.config.sh_degree > 0:
            degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
            return sh_colors_split(means, features_dc, features_rest, viewmat, degree, self.config.render_backend)
        return torch.sigmoid(features_dc)[None].expand(viewmat.shape[0], -1, -1)

    def get_outputs(self, camera: Cameras) -> Dict[str, Union[torch.Tensor, List]]:
        if not isinstance(camera, Cameras):
            raise TypeError("UnisemSplatModel.get_outputs needs a Cameras object")
        if self.training:
            assert camera.shape[0] == 1, "Only one camera at a time"
            c2w = self.camera_optimizer.apply_to_camera(camera)
        else:
            c2w = camera.camera_to_worlds

        crop_ids = None
        if self.crop_box is not None and not self.training:
            crop_ids = self.crop_box.within(self.means).squeeze()
            if crop_ids.sum() == 0:
                return self._empty_outputs(int(camera.width.item()), int(camera.height.item()))
        params = {k: (v[crop_ids] if crop_ids is not None else v) for k, v in self.gauss_params.items()}

        scale_fac = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / scale_fac)
        viewmat = get_viewmat(c2w)
        K = camera.get_intrinsics_matrices().to(self.device)
        W, H = int(camera.width.item()), int(camera.height.item())
        self.last_size = (H, W)
        camera.rescale_output_resolution(scale_fac)

        want_depth = self.wants_training_depth()
        render_mode = "RGB+ED" if (want_depth or not self.training) else "RGB"
        colors = self._render_colors(params["means"], params["features_dc"], params["features_rest"], viewmat)
        if "features_sem" in params:
            feats = self.gaussian_features(params["features_sem"])
            colors = torch.cat([colors, feats[None].expand(colors.shape[0], -1, -1)], dim=-1)
        render, alpha, self.info = rasterization(
            means=params["means"],
            quats=params["quats"],
            scales=torch.exp(params["scales"]),
            opacities=torch.sigmoid(params["opacities"]).squeeze(-1),
            colors=colors,
            viewmats=viewmat,
            Ks=K,
            width=W,
            height=H,
            packed=False,
            near_plane=0.01,
            far_plane=1e10,
            render_mode=render_mode,
            sh_degree=None,
            absgrad=self.strategy.absgrad,
            rasterize_mode=self.config.rasterize_mode,
            backend=self.config.render_backend,
        )
        if self.training:
            self.strategy.step_pre_backward(self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info)

        background = self._get_background_color()
        rgb = torch.clamp(render[..., :3] + (1 - alpha) * background, 0.0, 1.0)
        if self.config.use_bilateral_grid and self.training:
            if camera.metadata is not None and "cam_idx" in camera.metadata:
                rgb = self._apply_bilateral_grid(rgb, camera.metadata["cam_idx"], H, W)
        outputs: Dict[str, Union[torch.Tensor, List]] = {
            "rgb": rgb.squeeze(0),
            "accumulation": alpha.squeeze(0),
            "background": background.expand(H, W, 3) if not self.training else background,
        }
        if render_mode == "RGB+ED":
            depth = render[..., -1:]
            outputs["depth"] = torch.where(alpha > 0, depth, depth.detach().max()).squeeze(0)
        else:
            outputs["depth"] = None
        if "features_sem" in params:
            outputs["features"] = render[..., 3 : 3 + self.feature_dim].squeeze(0)
        return outputs

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        losses = super().get_loss_dict(outputs, batch, metrics_dict)
        weight = self.config.depth_loss_weight
        if weight > 0 and self.training and "depth_image" in batch and outputs.get("depth") is not None:
            gt = batch["depth_image"].to(self.device)
            valid = gt > 0
            if bool(valid.any()):
                rel = (outputs["depth"][valid] - gt[valid]).abs() / gt[valid]
                losses["depth_loss"] = weight * rel.mean()
        return losses

    def _empty_outputs(self, width: int, height: int) -> Dict[str, torch.Tensor]:
        out = self.get_empty_outputs(width, height, self.background_color.to(self.device))
        if self.feature_dim > 0:
            out["features"] = torch.zeros(height, width, self.feature_dim, device=self.device)
        return out

    # ----------------------------------------------------------------------------------- metrics

    def get_image_metrics_and_images(
        self, outputs: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
        gt_rgb = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        pred = outputs["rgb"]
        images = {"img": torch.cat([gt_rgb, pred], dim=1)}
        metrics = image_metrics(pred, gt_rgb, with_lpips=self.config.lpips == "auto")
        if "depth_image" in batch and outputs.get("depth") is not None:
            gt_depth = batch["depth_image"].to(self.device)
            metrics.update({f"depth_{k}": v for k, v in depth_metrics(outputs["depth"], gt_depth).items()})
            images["depth"] = _depth_pair_image(gt_depth, outputs["depth"])
        return metrics, images


def get_viewmat(camera_to_worlds: torch.Tensor) -> torch.Tensor:
    """World-to-camera [C, 4, 4] (OpenCV axes) from Nerfstudio's camera-to-world [C, 3, 4] (OpenGL axes).

    Splatfacto's version is wrapped in torch.compile, which on CPU starts a C++ build; this is 5 lines.
    """
    rot = camera_to_worlds[:, :3, :3] * torch.tensor([1.0, -1.0, -1.0], device=camera_to_worlds.device)
    trans = camera_to_worlds[:, :3, 3:4]
    rot_inv = rot.transpose(1, 2)
    viewmat = torch.zeros(camera_to_worlds.shape[0], 4, 4, device=camera_to_worlds.device, dtype=camera_to_worlds.dtype)
    viewmat[:, :3, :3] = rot_inv
    viewmat[:, :3, 3:4] = -rot_inv @ trans
    viewmat[:, 3, 3] = 1.0
    return viewmat


def _depth_pair_image(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """GT | predicted depth side by side, [H, 2W, 3], normalised on the GT range for viewing."""
    valid = gt > 0
    lo = gt[valid].min() if valid.any() else gt.min()
    hi = gt[valid].max() if valid.any() else gt.max()
    both = torch.cat([gt, pred], dim=1)
    return ((both - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1).expand(-1, -1, 3)


def _checkpoint_path_from_callers() -> Optional[str]:
    """The checkpoint path Nerfstudio is loading, read from its caller's ``load_path`` local.

    Nerfstudio's loaders (``eval_setup``, ``Trainer._load_checkpoint``) do not pass the path down to the
    model; reading it from the calling frames lets the error name the file. Best effort only.
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            value = frame.f_locals.get("load_path")
            if isinstance(value, (str, Path)):
                return str(value)
            frame = frame.f_back
    finally:
        del frame
    return None
