"""Nerfstudio side of the feed-forward initialisation of per-scene training (docs/FEEDFORWARD_INIT.md): read the
training views the dataparser placed, run the predictor over them (``feedforward.scene_init``), and turn the
world-frame prediction into Splatfacto's parameters. :class:`~unisem_ns.ns.splat_model.UnisemSplatModel` calls
these from ``populate_modules`` when ``--pipeline.model.init-from-predictor`` is set."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from nerfstudio.models.splatfacto import num_sh_bases

from unisem_ns.data.scene_io import InputError


def pca_project(x: torch.Tensor, dim: int, max_rows: int = 20000) -> torch.Tensor:
    """Unit rows of ``x`` [N, C] projected on their top ``dim`` right-singular directions (uncentred PCA, fitted
    on at most ``max_rows`` rows drawn with a fixed seed) -> [N, dim]; zero-padded when C < dim."""
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    n, c = x.shape
    if c <= dim:
        return torch.cat([x, x.new_zeros(n, dim - c)], dim=1)
    fit = x
    if n > max_rows:
        fit = x[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_rows].to(x.device)]
    _, _, vh = torch.linalg.svd(fit, full_matrices=False)
    basis = vh[:dim].T  # [C, <=dim]
    out = x @ basis
    if out.shape[1] < dim:
        out = torch.cat([out, out.new_zeros(n, dim - out.shape[1])], dim=1)
    return out


def gaussian_params_from_prediction(pred, sh_degree: int) -> Dict[str, torch.Tensor]:
    """Splatfacto's parameters from world-frame predicted Gaussians: means, log scales, quats (wxyz), logit
    opacities [N, 1], and colour: SH DC plus the higher bands zero-padded (or cut) to ``sh_degree``; with
    ``sh_degree`` 0 the DC holds logit(rgb), as Splatfacto renders sigmoid(features_dc) then."""
    from nerfstudio.models.splatfacto import SH2RGB

    n = pred.num
    dim_sh = num_sh_bases(sh_degree)
    sh = pred.sh.float().cpu()
    if sh_degree > 0:
        dc = sh[:, 0].clone()
        rest = torch.zeros(n, dim_sh - 1, 3)
        k = min(dim_sh - 1, sh.shape[1] - 1)
        rest[:, :k] = sh[:, 1 : 1 + k]
    else:
        dc = torch.logit(SH2RGB(sh[:, 0]).clamp(1e-4, 1 - 1e-4))
        rest = torch.zeros(n, 0, 3)
    return {
        "means": pred.means.float().cpu().clone(),
        "scales": torch.log(pred.scales.float().cpu().clamp_min(1e-7)),
        "quats": torch.nn.functional.normalize(pred.quats.float().cpu(), dim=-1),
        "features_dc": dc,
        "features_rest": rest,
        "opacities": torch.logit(pred.opacities.float().cpu().clamp(1e-4, 1 - 1e-4))[:, None],
    }


def predict_scene_for_model(metadata: Dict[str, Any], cfg,
                             device) -> Tuple[Any, Optional[torch.Tensor]]:
    """See :meth:`~unisem_ns.ns.splat_model.UnisemSplatModel.predict_initial_gaussians` (``cfg``: its model config)."""
    import time

    from nerfstudio.utils.rich_utils import CONSOLE

    from feedforward.predictor import INIT_FLAG, load_unisem_predictor
    from feedforward.scene_init import evenly_spaced, input_size, predict_scene, read_rgb, scene_cues
    from unisem_ns.data.scene_io import load_depth

    t0 = time.time()
    views = metadata.get("train_views")
    if views is None:
        raise InputError(f"{INIT_FLAG}: the dataparser gave no training views (metadata 'train_views'); use "
                         "unisem-data or one of the real-scene dataparsers of unisem_ns")
    dev = "cuda" if str(device).startswith("cuda") and torch.cuda.is_available() else "cpu"
    predictor = load_unisem_predictor(Path(cfg.init_from_predictor), device=dev)
    chosen = evenly_spaced(len(views["image_filenames"]), cfg.init_views)
    images = [read_rgb(views["image_filenames"][i]) for i in chosen]
    size = input_size(predictor, *images[0].shape[-2:])
    depths = None
    if cfg.init_depth_align and views.get("depth_filenames"):
        unit = views["depth_unit_scale_factor"]
        depths = [torch.from_numpy(load_depth(views["depth_filenames"][i], unit)) for i in chosen]
    enc = metadata.get("cue_encoder")
    same_space = predictor.cue_dim > 0 and enc is not None and int(enc.get("dim", -1)) == predictor.cue_dim
    if predictor.cue_dim > 0 and enc is not None and not same_space:
        CONSOLE.log(f"[yellow]unisem_ns: warning: {INIT_FLAG}: the predictor's cue space ({predictor.cue_dim}-d) "
                    f"is not the scene's ({enc.get('dim')}-d); its semantics are not used")
    cues = None
    if same_space and metadata.get("scene_dir") is not None:
        cues = [scene_cues(Path(metadata["scene_dir"]), views["stems"][i], size) for i in chosen]
    pred = predict_scene(predictor, images, views["K"][chosen], views["c2w"][chosen],
                         dataparser_scale=float(metadata.get("dataparser_scale", 1.0)), depths=depths, cues=cues,
                         window=cfg.init_window, stride=cfg.init_pixel_stride, align_depth=cfg.init_depth_align)
    cue_features = None
    if same_space and pred.features.shape[1] > 0:
        with torch.no_grad():
            cue_features = predictor.features_to_cue_space(pred.features.to(dev)).float().cpu()
    ratios = [r for r in pred.info["depth_ratios"] if r is not None]
    scale_note = (f"depth-aligned (median ratio {sorted(ratios)[len(ratios) // 2]:.3g})" if ratios
                  else "predicted metric scale")
    CONSOLE.log(f"{INIT_FLAG}: {pred.num} Gaussians from {len(chosen)} training views in "
                f"{len(pred.info['windows'])} windows at {size[1]}x{size[0]}, {scale_note}, "
                f"{'with' if cues is not None else 'without'} the scene's cues, "
                f"{time.time() - t0:.1f} s")
    return pred, cue_features


def restoring_from_checkpoint() -> bool:
    """Whether the model being built is about to be overwritten by a checkpoint: Nerfstudio's evaluation/viewer
    set-up (the pipeline's ``test_mode`` is 'test' or 'inference') or a resumed ``ns-train`` (the trainer's
    ``--load-dir`` / ``--load-checkpoint``). Then the feed-forward initialisation is skipped: the run keeps
    loading when the predictor has moved. Read from the calling frames, as ``splat_model._checkpoint_path_from_callers``."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            local = frame.f_locals
            mode = local.get("test_mode")
            if isinstance(mode, str) and mode in ("test", "inference"):
                return True
            owner_cfg = getattr(local.get("self"), "config", None)
            if hasattr(owner_cfg, "load_dir") and hasattr(owner_cfg, "pipeline"):
                if owner_cfg.load_dir is not None or getattr(owner_cfg, "load_checkpoint", None) is not None:
                    return True
            frame = frame.f_back
    finally:
        del frame
    return False
