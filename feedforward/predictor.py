"""The declared interface of a feed-forward Gaussian predictor, and loading a trained UniSem predictor.

A :class:`Predictor` takes V views of a scene (no poses) and returns one :class:`PredictedGaussians` per call,
expressed in the *reference view's* (view 0's) camera frame with OpenCV axes (x right, y down, z forward) and the
predictor's own metric scale. :mod:`feedforward.scene_init` places such predictions in a scene's world frame to
initialise per-scene training (docs/FEEDFORWARD_INIT.md).

Nothing here imports nerfstudio: a run's ``config.yml`` is read with a YAML loader that ignores Python tags.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from unisem_ns.data.scene_io import InputError

__all__ = ["PredictedGaussians", "Predictor", "load_unisem_predictor", "save_unisem_predictor", "read_run_config",
           "INIT_FLAG"]

INIT_FLAG = "--pipeline.model.init-from-predictor"


@dataclass
class PredictedGaussians:
    """N predicted Gaussians (N = pixels of the input views, after any subsampling).

    Tensors (float32 unless noted, all on one device):
        means: [N, 3] centres.
        scales: [N, 3] standard deviations, linear (not log), > 0.
        quats: [N, 4] unit rotations, wxyz.
        opacities: [N] in (0, 1).
        sh: [N, K, 3] SH colour coefficients, K = (degree + 1)^2, DC first (gsplat convention:
            rgb = 0.5 + C0 * DC).
        features: [N, D] per-Gaussian semantic latent in ``feature_space`` (D may be 0).
        view_index: [N] long, which input view each Gaussian's pixel came from (index into the views given).
        pixel: [N, 2] long, (row, col) of that pixel at the predictor's input resolution.
        confidence: optional [N] predictor confidence (> 0; higher = surer).

    Other fields:
        feature_space: name of the latent space of ``features`` (e.g. ``"unisem-latent-24"``); a
            :class:`Predictor`'s :meth:`~Predictor.features_to_cue_space` maps it to its cue space.
        frame: ``"reference-opencv"`` (a predictor's output) or ``"world"`` (after :mod:`feedforward.scene_init`).
        info: free-form report (windows, depth-scale ratios, input size).
    """

    means: Tensor
    scales: Tensor
    quats: Tensor
    opacities: Tensor
    sh: Tensor
    features: Tensor
    view_index: Tensor
    pixel: Tensor
    feature_space: str = ""
    confidence: Optional[Tensor] = None
    frame: str = "reference-opencv"
    info: Dict[str, Any] = field(default_factory=dict)

    _PER_GAUSSIAN = ("means", "scales", "quats", "opacities", "sh", "features", "view_index", "pixel", "confidence")

    @property
    def num(self) -> int:
        return int(self.means.shape[0])

    def check(self) -> "PredictedGaussians":
        """Raise ``ValueError`` on inconsistent shapes (returns self)."""
        n = self.num
        want = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "view_index": (n,),
                "pixel": (n, 2)}
        for name, shape in want.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"PredictedGaussians.{name}: shape {tuple(getattr(self, name).shape)}, want {shape}")
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ValueError(f"PredictedGaussians.sh: shape {tuple(self.sh.shape)}, want ({n}, K, 3)")
        if self.features.ndim != 2 or self.features.shape[0] != n:
            raise ValueError(f"PredictedGaussians.features: shape {tuple(self.features.shape)}, want ({n}, D)")
        if self.confidence is not None and tuple(self.confidence.shape) != (n,):
            raise ValueError(f"PredictedGaussians.confidence: shape {tuple(self.confidence.shape)}, want ({n},)")
        return self

    def replace(self, **changes) -> "PredictedGaussians":
        return dataclasses.replace(self, **changes)

    def select(self, idx: Tensor) -> "PredictedGaussians":
        """The Gaussians at ``idx`` (a bool mask [N] or long indices)."""
        return self.replace(**{k: getattr(self, k)[idx] for k in self._PER_GAUSSIAN if getattr(self, k) is not None})

    def to(self, device) -> "PredictedGaussians":
        return self.replace(**{k: getattr(self, k).to(device) for k in self._PER_GAUSSIAN
                               if getattr(self, k) is not None})

    @staticmethod
    def cat(parts: Sequence["PredictedGaussians"]) -> "PredictedGaussians":
        """Concatenate predictions of one feature space and frame (``info`` of the first part is kept)."""
        if not parts:
            raise ValueError("PredictedGaussians.cat: nothing to concatenate")
        first = parts[0]
        out = {}
        for k in PredictedGaussians._PER_GAUSSIAN:
            vals = [getattr(p, k) for p in parts]
            out[k] = None if any(v is None for v in vals) else torch.cat(vals, dim=0)
        return first.replace(**out, info=dict(first.info))


class Predictor(ABC):
    """A feed-forward predictor of pixel-aligned Gaussians from a few unposed views.

    Implementations: :class:`feedforward.model.UniSemPredictor`.
    """

    @property
    @abstractmethod
    def image_size(self) -> Optional[Tuple[int, int]]:
        """(H, W) the predictor expects (its training resolution), or None: any size whose sides are multiples
        of :attr:`size_multiple`. Callers resize views (and scale intrinsics) to it."""

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (a ViT's patch size)."""
        return 1

    @property
    def cue_dim(self) -> int:
        """Width C of the cue space :meth:`features_to_cue_space` maps to (0 = no semantics)."""
        return 0

    @property
    def feature_space(self) -> str:
        """Name of the latent space of :attr:`PredictedGaussians.features`."""
        return ""

    @abstractmethod
    def predict(self, images: Tensor, intrinsics: Optional[Tensor] = None,
                cues: Optional[Tensor] = None) -> PredictedGaussians:
        """Gaussians of V views, in view 0's OpenCV camera frame, in the predictor's metric scale.

        Args:
            images: [V, 3, H, W] RGB in [0, 1]; view 0 is the reference.
            intrinsics: optional [V, 3, 3] pinhole intrinsics at this resolution.
            cues: optional [V, H, W, C] unit 2D semantic features in the cue space (zeros where none), for a
                predictor that takes a semantic input.

        Returns:
            :class:`PredictedGaussians` with ``frame="reference-opencv"``, one Gaussian per input pixel.
        """

    @abstractmethod
    def features_to_cue_space(self, features: Tensor) -> Tensor:
        """Per-Gaussian latents [N, D] -> cue-space features [N, C] (not normalised)."""


# ---------------------------------------------------------------------------------------------------------------
# loading a trained UniSem predictor: an ns-train run's config.yml, or a checkpoint written by save_unisem_predictor
# ---------------------------------------------------------------------------------------------------------------


def _tagless_loader():
    """A YAML loader that builds plain dicts/lists from Nerfstudio's Python-tagged config.yml (no imports)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct(loader, suffix, node):
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            seq = loader.construct_sequence(node, deep=True)
            if "apply:pathlib." in suffix:  # PosixPath(*parts)
                return str(Path(*[str(s) for s in seq])) if seq else "."
            return seq
        return loader.construct_scalar(node)

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", construct)
    return Loader


def read_run_config(path: Path) -> Dict[str, Any]:
    """A Nerfstudio ``config.yml`` as nested plain dicts (Python tags ignored)."""
    import yaml

    try:
        data = yaml.load(Path(path).read_text(), Loader=_tagless_loader())  # noqa: S506 (tag-free loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(f"{path}: unreadable run config ({type(e).__name__}); pass the config.yml that "
                         f"`ns-train unisem-feedforward` wrote to {INIT_FLAG}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a Nerfstudio run config; pass the config.yml of a unisem-feedforward run")
    return data


def _predictor_config(fields: Dict[str, Any]):
    from .config import PredictorConfig

    known = {f.name: f for f in dataclasses.fields(PredictorConfig)}
    kw = {}
    for k, v in fields.items():
        if k in known:
            kw[k] = tuple(v) if isinstance(v, list) else v
    return PredictorConfig(**kw)


def _corpus_image_size(data: Optional[str], base: Path) -> Optional[Tuple[int, int]]:
    """(H, W) of the first training scene of a corpus, from its transforms.json (None when unknown)."""
    if not data:
        return None
    for root in (Path(data), base / data):
        try:
            idx = json.loads((root / "index.json").read_text())
            meta = json.loads((root / idx["train"][0] / "transforms.json").read_text())
            h = meta.get("h") or meta["frames"][0].get("h")
            w = meta.get("w") or meta["frames"][0].get("w")
            return (int(h), int(w)) if h and w else None
        except (OSError, KeyError, IndexError, TypeError, ValueError):
            continue
    return None


def _load_weights(path: Path) -> Dict[str, Any]:
    import unisem_ns.utils.safe_globals  # noqa: F401  (numpy scalars of Nerfstudio checkpoints, weights_only)

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"{path}: not a loadable weights-only torch checkpoint ({type(e).__name__}); pass the "
                         f"config.yml of a unisem-feedforward run to {INIT_FLAG}") from None


def _strip_pipeline(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    out = {}
    for prefix in ("_model.module.predictor.", "_model.predictor."):
        out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if out:
            break
    return out


def load_unisem_predictor(path: Path, device: str = "cpu"):
    """A trained :class:`~feedforward.model.UniSemPredictor`, in eval mode, from

    - the ``config.yml`` of an ``ns-train unisem-feedforward`` run (its newest ``step-*.ckpt``; the predictor
      configuration and the corpus' image size are read from the yml), or a run folder holding one;
    - a Nerfstudio ``step-*.ckpt`` of such a run (its ``config.yml`` two folders up is read);
    - a file written by :func:`save_unisem_predictor` (weights + predictor configuration).

    Raises :class:`InputError` (one line naming ``--pipeline.model.init-from-predictor``) on anything else.
    """
    from .model import UniSemPredictor

    path = Path(path)
    hint = (f"pass {INIT_FLAG} the config.yml of an `ns-train unisem-feedforward` run, or a predictor checkpoint "
            "written by feedforward.predictor.save_unisem_predictor")
    if path.is_dir() and (path / "config.yml").exists():
        path = path / "config.yml"
    if not path.is_file():
        raise InputError(f"{path}: no such file; {hint}")
    image_size = None
    if path.suffix in (".yml", ".yaml"):
        run = read_run_config(path)
        try:
            model_cfg = run["pipeline"]["model"]
            fields = model_cfg["predictor"]
        except (KeyError, TypeError):
            raise InputError(f"{path}: not a unisem-feedforward run config (no pipeline.model.predictor); "
                             f"{hint}") from None
        cfg = _predictor_config(fields)
        ckpt_dir = path.parent / str(run.get("relative_model_dir") or "nerfstudio_models")
        ckpts = sorted(ckpt_dir.glob("step-*.ckpt"))
        if not ckpts:
            raise InputError(f"{ckpt_dir}: no step-*.ckpt; train the run first (ns-train unisem-feedforward) or {hint}")
        state = _strip_pipeline(_load_weights(ckpts[-1]).get("pipeline", {}))
        if not state:
            raise InputError(f"{ckpts[-1]}: holds no predictor weights; {hint}")
        data = (run.get("pipeline", {}).get("datamanager", {}) or {}).get("data")
        image_size = _corpus_image_size(data, path.parent)
        source = ckpts[-1]
    else:
        obj = _load_weights(path)
        if isinstance(obj, dict) and "pipeline" in obj:  # a Nerfstudio checkpoint: its config.yml is ../config.yml
            yml = path.parent.parent / "config.yml"
            if not yml.exists():
                raise InputError(f"{path}: a Nerfstudio checkpoint without its run's config.yml next to "
                                 f"nerfstudio_models/; {hint}")
            return load_unisem_predictor(yml, device)
        if not (isinstance(obj, dict) and isinstance(obj.get("predictor"), dict) and "predictor_config" in obj):
            raise InputError(f"{path}: not a predictor checkpoint (no 'predictor' weights with a 'predictor_config'); "
                             f"{hint}")
        cfg = _predictor_config(dict(obj["predictor_config"]))
        state = obj["predictor"]
        if obj.get("image_size"):
            image_size = tuple(int(s) for s in obj["image_size"])
        source = path
    model = UniSemPredictor(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise InputError(f"{source}: weights do not match the predictor configuration stored with them "
                         f"({first[:120]})") from None
    model.input_size = image_size
    return model.to(device).eval()


def save_unisem_predictor(model, path: Path) -> None:
    """Write a :class:`~feedforward.model.UniSemPredictor` with its configuration (and input size, when set), for
    :func:`load_unisem_predictor` (atomic)."""
    from .checkpoint_io import save_predictor

    extra: Dict[str, Any] = {"predictor_config": dataclasses.asdict(model.cfg)}
    if getattr(model, "input_size", None):
        extra["image_size"] = list(model.input_size)
    save_predictor(model, Path(path), extra=extra)
