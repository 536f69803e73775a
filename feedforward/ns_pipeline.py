"""Nerfstudio glue for the feed-forward predictor (thin: the work is in the nerfstudio-free core).

- :class:`FeedForwardDataManager` samples a scene of a corpus, V context views and target views per step
  (``next_train`` returns a :class:`~feedforward.sampling.ViewSet` in place of a ray bundle); its ``train_dataset``
  is one *display* scene (a held-out scene's context views, in view 1's frame) for the viewer and pipeline.
- :class:`FeedForwardModel` (a SplatfactoModel subclass, so ns-viewer treats it as a splat) computes the training
  losses inside ``forward`` (so DDP sees them) and, in ``get_outputs_for_camera``, renders the Gaussians it
  predicted for the display scene, with the language-query field.
- :class:`FeedForwardPipeline` replaces per-image evaluation by the held-out-scene protocol of
  :mod:`feedforward.evaluate` (``ns-eval``), and wraps the model in DDP without ``device_ids`` on CPU (gloo).
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
import torch.distributed as dist
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.datamanagers.base_datamanager import DataManager, DataManagerConfig
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.models.splatfacto import SplatfactoModel
from nerfstudio.pipelines.base_pipeline import Pipeline, VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch.nn import Parameter
from torch.nn.parallel import DistributedDataParallel as DDP

from unisem_ns.capabilities import SemanticHead
from unisem_ns.data.scene_io import InputError
from unisem_ns.ns.dataparser import exit_on_input_error
from unisem_ns.ns.splat_model import get_viewmat
from unisem_ns.utils.atomic import atomic_write_json

from .config import EGDConfig, EvalConfig, FeedForwardConfig, LossConfig, MTCConfig, PredictorConfig
from .corpus import SceneViews, load_scene, load_split, read_index
from .evaluate import evaluate_scenes, flatten_results, mean_training_depth
from .geometry import opengl_to_opencv
from .model import UniSemPredictor
from .render import render_gaussians
from .sampling import ViewSet, make_view_set, protocol_view_sets, random_view_set
from .training import predict, training_losses


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class FeedForwardDataManagerConfig(DataManagerConfig):
    """A corpus of scenes (``index.json``, DATA.md); each step samples one scene, V context and T target views."""

    _target: Type = field(default_factory=lambda: FeedForwardDataManager)
    data: Optional[Path] = None
    """Corpus folder with index.json (make one with unisem-make-corpus)."""
    train_limit: Optional[int] = None
    """Use only the first N training scenes."""
    views: Tuple[int, ...] = (2, 3, 4)
    """Context views V per training sample, drawn uniformly (evaluation uses --pipeline.model.evaluation.views)."""
    targets: int = 2
    """Target views per training sample."""
    strides: Tuple[int, ...] = (2, 3, 4)
    """Frames between consecutive context views in training samples."""
    eval_split: Literal["test", "val"] = "test"
    """Held-out split scored by ns-eval."""
    eval_limit: Optional[int] = None
    """Score only the first N held-out scenes."""
    display_scene: Optional[str] = None
    """Scene shown in ns-viewer (default: the first held-out scene)."""
    display_views: int = 8
    """Context views of the displayed prediction."""
    seed: int = 0
    """Sampling seed (each DDP rank adds its rank)."""


class FeedForwardDataManager(DataManager):
    config: FeedForwardDataManagerConfig

    def __init__(self, config: FeedForwardDataManagerConfig, device="cpu", test_mode="val", world_size: int = 1,
                 local_rank: int = 0, **kwargs):
        self.config = config
        self.device = device
        self.test_mode = test_mode
        self.world_size = world_size
        self.local_rank = local_rank
        if config.data is None:
            raise exit_on_input_error(InputError(
                "no --data: ns-train unisem-feedforward needs a corpus; make one with "
                "`unisem-make-corpus --out DIR` and pass --data DIR"))
        try:
            self.index = read_index(config.data)
            split = config.eval_split if self.index[config.eval_split] else "train"
            self.eval_names = self.index[split][: config.eval_limit] if config.eval_limit else self.index[split]
            name = config.display_scene or (self.eval_names[0] if self.eval_names else self.index["train"][0])
            self.display_scene: SceneViews = load_scene(Path(config.data) / name)
            self.train_scenes: List[SceneViews] = []
            if test_mode == "val":  # training run
                self.train_scenes = load_split(config.data, "train", config.train_limit)
        except InputError as e:
            raise exit_on_input_error(e) from None
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else local_rank
        self.rng = np.random.default_rng([config.seed, rank])
        v = min(config.display_views, (self.display_scene.num_views + 1) // 2)
        context, _ = protocol_view_sets(self.display_scene, v)[0] if v > 2 else ([0, 2], [1])
        self.display_view_set = make_view_set(self.display_scene, context, [])
        self.train_dataset = InputDataset(self._display_outputs(self.display_view_set))
        self.train_dataset.scene_dir = self.display_scene.path  # unisem-query reads gt/queries.json from here
        self.eval_dataset = self.train_dataset
        super().__init__()

    def _display_outputs(self, vs: ViewSet) -> DataparserOutputs:
        c2w_cv = torch.linalg.inv(vs.viewmats.double()).float()
        c2w_gl = c2w_cv @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
        cams = Cameras(camera_to_worlds=c2w_gl[:, :3, :4], fx=vs.Ks[:, 0, 0:1], fy=vs.Ks[:, 1, 1:2],
                       cx=vs.Ks[:, 0, 2:3], cy=vs.Ks[:, 1, 2:3], width=vs.size[1], height=vs.size[0],
                       camera_type=CameraType.PERSPECTIVE)
        scene = self.display_scene
        files = [Path(scene.path) / "images" / f"{scene.stems[i]}.png" for i in vs.indices]
        meta: Dict[str, Any] = {"class_names": scene.class_names}
        enc = Path(scene.path) / "language_features" / "encoder.json"
        if enc.exists():
            meta["cue_encoder"] = json.loads(enc.read_text())
        meta["const_depth"] = mean_training_depth(self.train_scenes) if self.train_scenes else None
        return DataparserOutputs(image_filenames=files, cameras=cams,
                                 scene_box=SceneBox(aabb=torch.tensor([[-4.0, -4.0, -1.0], [4.0, 4.0, 8.0]])),
                                 metadata=meta)

    @property
    def fixed_indices_eval_dataloader(self) -> List[Tuple[Cameras, Dict]]:
        """(camera, batch) per context view of the display scene, for ``unisem-query`` (ground truth included
        when the scene has it; the predictor itself only sees the images)."""
        vs = self.display_view_set
        cams = self.train_dataset.cameras
        out = []
        for i, idx in enumerate(vs.indices):
            batch: Dict[str, Any] = {"image_idx": i, "image": vs.images[i].permute(1, 2, 0)}
            if self.display_scene.semantic is not None:
                batch["gt_semantic"] = torch.from_numpy(self.display_scene.semantic[idx]).long()
            out.append((cams[i:i + 1].to(self.device), batch))
        return out

    def eval_scenes(self) -> List[SceneViews]:
        return [load_scene(Path(self.config.data) / n) for n in self.eval_names]

    def setup_train(self):
        pass

    def setup_eval(self):
        pass

    def next_train(self, step: int) -> Tuple[ViewSet, Dict]:
        self.train_count += 1
        vs = random_view_set(self.train_scenes, self.rng, self.config.views, self.config.targets, self.config.strides)
        vs = vs.to(self.device)
        return vs, {"view_set": vs}

    def next_eval(self, step: int) -> Tuple[ViewSet, Dict]:
        vs = self.display_view_set.to(self.device)
        return vs, {"view_set": vs}

    def next_eval_image(self, step: int):
        raise NotImplementedError("unisem-feedforward scores held-out scenes with ns-eval (get_average_eval_image_metrics)")

    def get_train_rays_per_batch(self) -> int:
        return int(np.prod(self.display_view_set.size)) * (max(self.config.views) + self.config.targets)

    def get_eval_rays_per_batch(self) -> int:
        return self.get_train_rays_per_batch()

    def get_datapath(self) -> Path:
        return Path(self.config.data)

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {}


# ---------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class FeedForwardModelConfig(ModelConfig):
    """The UniSem feed-forward predictor (every constant in the nested configs)."""

    _target: Type = field(default_factory=lambda: FeedForwardModel)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    egd: EGDConfig = field(default_factory=EGDConfig)
    mtc: MTCConfig = field(default_factory=MTCConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    backbone_checkpoint: Optional[Path] = None
    """Published DUSt3R/CroCo checkpoint to initialise the encoder/decoder/head from (names and shapes must match:
    use the published predictor configuration)."""
    total_steps: Optional[int] = None
    """Length of training for the EGD/MTC schedules (default: the trainer's --max-num-iterations)."""
    background_color: Literal["black", "white"] = "black"
    """Background of renders in the viewer."""


class FeedForwardModel(SemanticHead, SplatfactoModel):
    """Predicts Gaussians per view set; subclasses SplatfactoModel only so ns-viewer treats it as a splat. Its
    semantic head answers text queries when the corpus scenes carry language cues (``query_field`` else None)."""

    config: FeedForwardModelConfig

    def populate_modules(self):
        cfg = self.config
        self.predictor = UniSemPredictor(cfg.predictor)
        if cfg.backbone_checkpoint is not None:
            from .checkpoint_io import load_backbone_checkpoint

            try:
                report = load_backbone_checkpoint(self.predictor, cfg.backbone_checkpoint)
            except InputError as e:
                raise exit_on_input_error(e) from None
            CONSOLE.log(f"backbone: loaded {len(report['loaded'])} tensors, skipped {len(report['shape_mismatch'])} "
                        f"(shape), {len(report['unexpected'])} (unknown)")
        self.step = 0
        self.total_steps = cfg.total_steps
        self.ff_config = FeedForwardConfig(predictor=cfg.predictor, loss=cfg.loss, egd=cfg.egd, mtc=cfg.mtc)
        self.background_color = torch.zeros(3) if cfg.background_color == "black" else torch.ones(3)
        self.crop_box = None
        self._display: Optional[ViewSet] = None
        self._display_gaussians: Optional[Dict[str, torch.Tensor]] = None
        self.gauss_params = torch.nn.ParameterDict()  # no per-scene parameters
        meta = self.kwargs.get("metadata") or {}
        self.const_depth = meta.get("const_depth")
        self.class_names: List[str] = list(meta.get("class_names") or [])
        self.eval_labels = self.class_names[1:]
        self.text_encoder = None
        self.query_field = None
        if "cue_encoder" in meta:
            from unisem_ns.language.encoders import make_text_encoder
            from unisem_ns.language.query_field import LanguageQueryField
            from unisem_ns.ns.semantic import ViewerQueryControls

            self.text_encoder = make_text_encoder(meta["cue_encoder"])
            self.query_field = LanguageQueryField(self.text_encoder)  # labels set on first render (lazy model load)
            self._labels_pending = bool(self.eval_labels)
            self.query_controls = ViewerQueryControls(self.query_field, self.eval_labels)

    # -- training --------------------------------------------------------------------------------------------

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {"predictor": list(self.predictor.parameters())}

    def get_training_callbacks(self, attrs: TrainingCallbackAttributes) -> List[TrainingCallback]:
        def set_step(step: int) -> None:
            self.step = step
            if self.total_steps is None and attrs.trainer is not None:
                self.total_steps = int(attrs.trainer.config.max_num_iterations)

        return [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], set_step, args=[])]

    def step_cb(self, step):  # splatfacto API; unused
        self.step = step

    def update_to_step(self, step: int) -> None:
        self.step = step

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):  # type: ignore[override]
        if not any(k.startswith("predictor.") for k in state_dict):
            raise exit_on_input_error(InputError(
                "the checkpoint was written by another method (no predictor.* weights); load a unisem-feedforward "
                "run's config.yml"))
        return torch.nn.Module.load_state_dict(self, state_dict, strict=False)

    def forward(self, vs: ViewSet, *args, **kwargs) -> Dict:  # type: ignore[override]
        return self.get_outputs(vs)

    def get_outputs(self, vs) -> Dict:  # type: ignore[override]
        if isinstance(vs, Cameras):
            return self.get_outputs_for_camera(vs)
        total = self.total_steps or 1
        losses, stats = training_losses(self.predictor, vs, self.step, total, self.ff_config)
        return {"losses": losses, "stats": stats}

    def get_metrics_dict(self, outputs, batch) -> Dict[str, torch.Tensor]:
        return {k: torch.tensor(v) for k, v in outputs.get("stats", {}).items()}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        return dict(outputs["losses"])

    # -- display / viewer ------------------------------------------------------------------------------------

    def set_display(self, vs: ViewSet) -> None:
        self._display = vs
        self._display_gaussians = None

    def display_gaussians(self) -> Dict[str, torch.Tensor]:
        if self._display_gaussians is None:
            if self._display is None:
                raise RuntimeError("no display scene set")
            with torch.no_grad():
                was = self.predictor.training
                self.predictor.eval()
                self._display_gaussians = {k: v.detach() for k, v in self.predict_display(self._display.to(self.device)).items()}
                self.predictor.train(was)
        return self._display_gaussians

    def predict_display(self, vs: ViewSet) -> Dict[str, torch.Tensor]:
        """Flat Gaussians ([N, ...], the renderer's layout) of the displayed view set; a subclass with another
        predictor overrides this, :attr:`display_sh_degree` and :meth:`query_features`."""
        return predict(self.predictor, vs)

    @property
    def display_sh_degree(self) -> int:
        return self.config.predictor.sh_degree

    def query_features(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """What the query field scores per pixel ([H, W, D]); here :meth:`language_features`."""
        return self.language_features(outputs)

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box=None) -> Dict[str, torch.Tensor]:
        g = self.display_gaussians()
        cam = camera.to(self.device)
        viewmat = get_viewmat(cam.camera_to_worlds[:1])
        K = cam.get_intrinsics_matrices()[:1].to(self.device)
        w, h = int(cam.width[0]), int(cam.height[0])
        r = render_gaussians(g, viewmat, K, w, h, self.display_sh_degree, with_features=True)
        bg = self._get_background_color().to(self.device)
        rgb = (r["rgb"][0] + (1 - r["alpha"][0]) * bg).clamp(0, 1)
        out = {"rgb": rgb, "depth": r["depth"][0], "accumulation": r["alpha"][0], "features": r["feature"][0]}
        if self.query_field is not None and getattr(self, "_labels_pending", False):
            self._labels_pending = False
            if not self.query_field.has_labels():
                self.query_field.set_labels(self.eval_labels)
        if self.query_field is not None and (self.query_field.has_queries() or self.query_field.has_labels()):
            out.update(self.query_field.query_outputs(self.query_features(out), rgb))
        return out

    def language_features(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-pixel features in the cue encoder's space [H, W, D] (unit norm)."""
        f = self.predictor.expand_features(outputs["features"][None])[0]
        return torch.nn.functional.normalize(f, dim=-1)

    def get_image_metrics_and_images(self, outputs, batch):
        return {}, {"img": outputs["rgb"]}


# ---------------------------------------------------------------------------------------------------------------
# pipeline
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class FeedForwardPipelineConfig(VanillaPipelineConfig):
    _target: Type = field(default_factory=lambda: FeedForwardPipeline)
    datamanager: DataManagerConfig = field(default_factory=FeedForwardDataManagerConfig)
    model: ModelConfig = field(default_factory=FeedForwardModelConfig)


class FeedForwardPipeline(VanillaPipeline):
    """VanillaPipeline with held-out-scene evaluation and CPU-capable DDP."""

    def __init__(self, config: FeedForwardPipelineConfig, device: str, test_mode: Literal["test", "val", "inference"] = "val",
                 world_size: int = 1, local_rank: int = 0, grad_scaler=None):
        Pipeline.__init__(self)
        self.config = config
        self.test_mode = test_mode
        self.datamanager: FeedForwardDataManager = config.datamanager.setup(
            device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank)
        self.datamanager.to(device)
        ds = self.datamanager.train_dataset
        self._model = config.model.setup(scene_box=ds.scene_box, num_train_data=len(ds), metadata=ds.metadata,
                                         device=device, grad_scaler=grad_scaler, seed_points=None)
        self.model.to(device)
        self.model.set_display(self.datamanager.display_view_set)
        self.init_predictor()
        self.world_size = world_size
        if world_size > 1:
            on_cuda = torch.device(device).type == "cuda"
            self._model = typing.cast(typing.Any, DDP(self._model, device_ids=[local_rank] if on_cuda else None,
                                                      find_unused_parameters=True))
            dist.barrier()

    def init_predictor(self) -> None:
        """Predictor-specific start, before DDP wraps the model: UniSem's semantic subspace from training cues (a
        resumed run loads its own weights after this)."""
        rows = [torch.from_numpy(sc.cue_feats[:64].astype(np.float32)) for sc in self.datamanager.train_scenes
                if sc.cue_feats is not None and len(sc.cue_feats)]
        if rows and self.model.config.backbone_checkpoint is None:
            self.model.predictor.init_semantic_subspace(torch.cat(rows).to(self.model.device))

    def get_eval_loss_dict(self, step: int):
        self.eval()
        vs, batch = self.datamanager.next_eval(step)
        self.train()
        return {}, {}, {}

    def get_eval_image_metrics_and_images(self, step: int):
        return {}, {}

    @torch.no_grad()
    def get_average_eval_image_metrics(self, step: Optional[int] = None, output_path: Optional[Path] = None,
                                       get_std: bool = False) -> Dict[str, float]:
        """Held-out scenes, Uni3R protocol, per number of views (see :mod:`feedforward.evaluate`)."""
        self.eval()
        model = self.model
        const = model.const_depth
        if const is None:  # eval-only setup: the training scenes are not loaded; the cap of the trained run's data
            const = mean_training_depth(load_split(self.datamanager.config.data, "train",
                                                   min(16, len(self.datamanager.index["train"]))))
        results = evaluate_scenes(model.predictor, self.datamanager.eval_scenes(), model.config.evaluation,
                                  model.text_encoder, const, log=CONSOLE.log)
        if output_path is not None:
            atomic_write_json(output_path / "feedforward_eval.json", results)
        self.train()
        return flatten_results(results)
