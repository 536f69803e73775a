"""``unisem-preprocess``: make the 2D cues a semantic splat is trained from.

Writes, for every image of a scene (``transforms.json`` frames)::

    DIR/language_features/<stem>_s.npy, <stem>_f.npy   per-pixel mask index per level + one embedding per mask
    DIR/language_features/encoder.json                  the text space of the embeddings
    DIR/language_features/manifest.json                 cache key + which views are done
    DIR/object_mask/<stem>.png                          per-view instance ids (not consistent across views)
    DIR/dense_features/<stem>.npy                       only with --dense: per-pixel features (LSeg / MaskCLIP
                                                        style) on a coarse grid, + encoder.json, manifest.json

Modes:
  simulate   the cue SIMULATOR: made from a synthetic scene's exact gt/ with controlled corruption
             (--corruption none|default|heavy); embeddings are text embeddings of the class names
             (--text-encoder).
  sam-clip   the real front end: SAM automatic masks at LangSplat's four levels + one OpenCLIP image
             embedding per mask (--sam-checkpoint, --sam-model, --clip).

--dense adds the dense features (simulate: from gt/ with --dense-corruption, stored at --dense-scale of
the image; sam-clip: MaskCLIP patch features of the --clip image tower, one cell per patch);
--dense-only writes nothing else (sam-clip then needs no SAM checkpoint).

Runs are resumable: a view is skipped when its files exist and the manifest's key (image list + every
setting) matches; changed settings recompute everything. All writes are atomic, so an interrupted run
completes correctly when rerun.

Examples::

    unisem-preprocess --data outputs/scene --mode simulate --corruption default
    unisem-preprocess --data my_scene --mode sam-clip --sam-checkpoint sam_vit_h_4b8939.pth
    unisem-preprocess --data outputs/scene --mode simulate --dense --dense-corruption default
    unisem-preprocess --data my_scene --mode sam-clip --dense-only --clip-checkpoint open_clip_pytorch_model.bin
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import tyro

from unisem_ns.cues.layout import CueError, CueRunReport
from unisem_ns.data.scene_io import InputError, exit_on_input_error

__all__ = ["PreprocessArgs", "encoder_spec", "load_encoder", "run", "main"]


@dataclass
class PreprocessArgs:
    """Make the 2D cues (per-mask language embeddings + per-view instance masks) of a scene, resumably.

    Writes DIR/language_features/ (LangSplat layout: <stem>_s.npy, <stem>_f.npy, encoder.json,
    manifest.json) and DIR/object_mask/<stem>.png. --mode simulate makes them from a synthetic scene's
    ground truth with controlled corruption (a simulator of CLIP + SAM, for benchmarking); --mode sam-clip
    runs SAM + OpenCLIP on the images. Reruns skip views already done with the same settings.
    """

    data: Path
    """Scene folder (transforms.json + images/; gt/ for --mode simulate)."""
    mode: Literal["simulate", "sam-clip"]
    """simulate: cues from gt/ with corruption (synthetic scenes); sam-clip: SAM masks + CLIP embeddings."""
    corruption: Literal["none", "default", "heavy"] = "default"
    """simulate: corruption preset. none = exact GT; default (the benchmark's) = feature noise 0.5, boundary
    jitter 2 px, confusion 0.15, drop 0.10, split 0.15, merge 0.10, min area 4 px; heavy = 1.0, 3 px, 0.30,
    0.20, 0.30, 0.20, 8 px. Object ids are random per view in all three."""
    levels: Optional[int] = None
    """simulate: levels in _s.npy, 1 or 4 (LangSplat default/s/m/l); default: the preset's (1)."""
    text_encoder: str = "minilm"
    """simulate: text space of the embeddings: minilm | open_clip:MODEL:PRETRAINED."""
    sam_checkpoint: Optional[Path] = None
    """sam-clip: SAM weights, e.g. sam_vit_h_4b8939.pth from the segment-anything release (never downloaded)."""
    sam_model: Literal["vit_h", "vit_l", "vit_b"] = "vit_h"
    """sam-clip: SAM variant matching --sam-checkpoint."""
    clip: str = "open_clip:ViT-B-16:laion2b_s34b_b88k"
    """sam-clip: OpenCLIP model for the per-mask embeddings, open_clip:MODEL:PRETRAINED (weights must be in
    the local Hugging Face / open_clip cache, or give --clip-checkpoint)."""
    clip_checkpoint: Optional[Path] = None
    """A local open_clip checkpoint file for the model named by --clip (or by an open_clip --text-encoder)."""
    points_per_side: int = 32
    """sam-clip: SAM point grid per side (LangSplat: 32)."""
    device: str = "auto"
    """sam-clip: device for SAM (auto = cuda if available)."""
    seed: int = 0
    """simulate: corruption seed (view seeds derive from it and the image name)."""
    dense: bool = False
    """Also write DIR/dense_features/<stem>.npy, LSeg / MaskCLIP-style per-pixel features in the same text space:
    simulate: from gt/ with --dense-corruption, stored at --dense-scale of the image size; sam-clip: MaskCLIP
    patch features of the --clip image tower ([h/16, w/16, 512] for ViT-B-16)."""
    dense_only: bool = False
    """Write only DIR/dense_features/ (implies --dense; sam-clip then needs no SAM checkpoint)."""
    dense_corruption: Literal["none", "default", "heavy"] = "default"
    """simulate --dense: dense corruption preset. none = GT class embeddings; default = edge blur sigma 2 px,
    low-frequency noise 0.6 (16 px cells), pixel noise 0.15, region confusion 0.05; heavy = 4 px, 1.2 (24 px),
    0.3, 0.20."""
    dense_scale: float = 0.5
    """simulate --dense: stored grid size as a fraction of the image size (0.5 = half resolution)."""
    progress: bool = True
    """Show a progress bar."""


def encoder_spec(spec: str, clip_checkpoint: Optional[Path] = None) -> str:
    """``spec`` with its open_clip pretrained part replaced by ``clip_checkpoint`` (when both apply)."""
    if clip_checkpoint is not None and spec.startswith("open_clip:"):
        model = spec.split(":")[1] if spec.count(":") >= 1 else "ViT-B-16"
        return f"open_clip:{model}:{Path(clip_checkpoint).expanduser().resolve()}"
    return spec


def load_encoder(spec: str, device: str = "cpu"):
    """``unisem_ns.language.encoders.make_text_encoder(spec, device)`` with one-line errors."""
    try:
        from unisem_ns.language.encoders import ModelUnavailableError, make_text_encoder
    except ImportError as e:
        raise CueError(f"text encoders unavailable: cannot import unisem_ns.language.encoders ({e}); reinstall unisem_ns") from None
    try:
        return make_text_encoder(spec, device=device)
    except (ModelUnavailableError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else f"text encoder {spec!r} unavailable"
        raise CueError(msg) from None


def run(args: PreprocessArgs, log=print) -> CueRunReport:
    """Run one preprocessing job; returns what was computed / reused."""
    from unisem_ns.data.validate import SceneNeeds, require_valid_scene

    scene = Path(args.data)
    require_valid_scene(scene, SceneNeeds(min_train_views=0))  # every problem of the scene, before any write
    if args.mode == "simulate":
        from unisem_ns.cues.simulator import CueCorruption, load_scene_labels, run_simulation

        load_scene_labels(scene)  # needs gt/
        try:
            corruption = CueCorruption.preset(args.corruption)
            if args.levels is not None:
                corruption = corruption.with_(levels=args.levels)
        except ValueError as e:
            raise CueError(f"--levels / --corruption: {e}") from None
        dense = None
        if args.dense or args.dense_only:
            from unisem_ns.cues.simulator import DenseCorruption

            dense = DenseCorruption.preset(args.dense_corruption)
            if not 0.0 < args.dense_scale <= 1.0:
                raise CueError(f"--dense-scale {args.dense_scale}: must be in (0, 1] (the stored grid is scale x the image)")
        encoder = load_encoder(encoder_spec(args.text_encoder, args.clip_checkpoint))
        report = None
        if not args.dense_only:
            report = run_simulation(scene, encoder, corruption, seed=args.seed, progress=args.progress, log=log)
        if dense is not None:
            from unisem_ns.cues.simulator import run_dense_simulation

            dense_report = run_dense_simulation(scene, encoder, dense, seed=args.seed, progress=args.progress, log=log,
                                                scale=args.dense_scale)
            report = _with_dense(report, dense_report)
        return report
    from unisem_ns.cues.sam_clip import LANGSPLAT_SAM_SETTINGS, SamClipConfig, check_sam_checkpoint, run_sam_clip

    generator = dict(LANGSPLAT_SAM_SETTINGS, points_per_side=args.points_per_side)
    config = SamClipConfig(sam_checkpoint=args.sam_checkpoint, sam_model=args.sam_model, generator=generator, device=args.device)
    if not args.dense_only:
        check_sam_checkpoint(args.sam_checkpoint, args.sam_model)  # the one-line "download ..." error, before CLIP loads
    encoder = load_encoder(encoder_spec(args.clip, args.clip_checkpoint), device=config.resolved_device())
    report = None
    if not args.dense_only:
        report = run_sam_clip(scene, encoder, config, progress=args.progress, log=log)
    if args.dense or args.dense_only:
        from unisem_ns.cues.sam_clip import run_maskclip

        report = _with_dense(report, run_maskclip(scene, encoder, max_height=config.max_height,
                                                  progress=args.progress, log=log))
    return report


def _with_dense(report: Optional[CueRunReport], dense: CueRunReport) -> CueRunReport:
    """The mask cues' report with the dense job's attached (or the dense job's alone with --dense-only)."""
    if report is None:
        return dense
    report.dense = dense
    return report


def main(argv: Optional[Sequence[str]] = None) -> None:
    """CLI entry point (``argv`` defaults to ``sys.argv[1:]``)."""
    args = tyro.cli(PreprocessArgs, args=argv, prog="unisem-preprocess")
    start = time.perf_counter()
    try:
        report = run(args)
    except InputError as err:
        raise exit_on_input_error(err, "unisem-preprocess") from None
    print(f"Cues for {report.summary()} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
