"""ScanNet (as LSM/Uni3R prepare it) for the feed-forward predictor.

The conversion itself is :mod:`unisem_ns.data.scannet` (LSM/Uni3R ``scannet_test`` folder -> a corpus of scenes in
our DATA.md layout with ``index.json``, labels in the 8-class ``lsm8`` set {wall, floor, ceiling, chair, table,
sofa, bed, other}). This module adds what the feed-forward loader needs on top: the 2D language cues (needed for
the ``cue`` semantic input and the semantic loss) and the packed ``ff_pack.npz`` per scene.

    corpus = prepare_scannet_corpus(Path("scannet_test"), Path("outputs/scannet_ff"), cues="sam-clip", ...)
    ns-train unisem-feedforward --data outputs/scannet_ff ...      # or ns-eval on a synthetic-trained run

Any folder of scenes already in our layout with an ``index.json`` loads through :func:`feedforward.corpus.load_split`
as is; this function is only the ScanNet path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from unisem_ns.data.scene_io import InputError

from .corpus import read_index, write_pack

__all__ = ["prepare_scannet_corpus"]


def prepare_scannet_corpus(
    root: Path,
    dst: Path,
    cues: Literal["simulate", "sam-clip", "existing"] = "existing",
    encoder=None,
    sam_checkpoint: Optional[Path] = None,
    corruption: str = "default",
) -> Path:
    """Convert an LSM/Uni3R ``scannet_test`` folder into a feed-forward corpus and pack every scene.

    Args:
        root: the ``scannet_test`` folder (scene folders with images/*.jpg + *.npz, depths/, labels/, the tsv).
        dst: corpus folder to write (scenes + index.json).
        cues: 'simulate' — cues simulated from the converted ground truth (for pipeline checks; not a real front
            end); 'sam-clip' — SAM + CLIP cues (needs ``sam_checkpoint`` and an open_clip encoder); 'existing' —
            use language_features/ already in the scenes (or none).
        encoder: text encoder for the cues (default MiniLM).
    """
    from unisem_ns.data.scannet import convert_scannet_lsm_corpus

    dst = convert_scannet_lsm_corpus(Path(root), Path(dst))
    names = [n for split in read_index(dst).values() for n in split]
    if cues != "existing":
        from unisem_ns.language import make_text_encoder

        enc = make_text_encoder(encoder or "minilm")
        for name in names:
            scene = dst / name
            if cues == "simulate":
                from unisem_ns.cues.simulator import CueCorruption, simulate_cues

                if not (scene / "gt" / "instance").is_dir():
                    raise InputError(f"{scene / 'gt' / 'instance'}: not found; cues='simulate' needs instance maps "
                                     "(LSM's test set has none): use cues='sam-clip' with --sam-checkpoint")
                simulate_cues(scene, enc, CueCorruption.preset(corruption), progress=False, log=lambda *_: None)
            elif cues == "sam-clip":
                from unisem_ns.cues.sam_clip import SamClipConfig, load_sam, make_mask_generator, run_sam_clip

                gen = make_mask_generator(load_sam(sam_checkpoint))
                run_sam_clip(scene, enc, SamClipConfig(), mask_generator=gen, progress=False, log=lambda *_: None)
            else:
                raise ValueError(f"unknown cues mode {cues!r}; use 'simulate', 'sam-clip' or 'existing'")
    for name in names:
        write_pack(dst / name)
    return dst
