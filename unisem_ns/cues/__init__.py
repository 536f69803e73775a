"""2D cues for semantic splatting: per-mask language embeddings and per-view instance masks.

* :mod:`unisem_ns.cues.layout` — read / write the cue files (LangSplat ``language_features/``, Gaussian
  Grouping ``object_mask/``, LSeg / MaskCLIP-style ``dense_features/``), atomically; the resumable
  manifest-keyed job runner.
* :mod:`unisem_ns.cues.simulator` — a SIMULATOR of CLIP + SAM cues made from a synthetic scene's exact
  ground truth with controlled corruption (:class:`CueCorruption`), plus the raw-cue baseline; its dense
  mode (:class:`DenseCorruption`, :func:`simulate_dense_features`) simulates LSeg / MaskCLIP-style maps.
* :mod:`unisem_ns.cues.sam_clip` — the real front end: SAM automatic masks at LangSplat's levels + one
  OpenCLIP embedding per mask; MaskCLIP dense patch features (:func:`~unisem_ns.cues.sam_clip.run_maskclip`).
* :mod:`unisem_ns.cues.preprocess` — the ``unisem-preprocess`` CLI.

Importing this package needs numpy only (torch / segment_anything / cv2 are imported when used).
"""

from unisem_ns.cues.layout import (
    LANGSPLAT_LEVELS,
    CueError,
    CueRunReport,
    dense_targets,
    level_names,
    load_language_cue,
    load_object_mask,
    read_dense_features,
    read_encoder_json,
    read_manifest,
    save_language_cue,
    save_object_mask,
    write_dense_features,
    write_encoder_json,
)
from unisem_ns.cues.simulator import (
    CueCorruption,
    DenseCorruption,
    raw_cue_predictions,
    run_simulation,
    simulate_cues,
    simulate_dense_features,
)

__all__ = [
    "LANGSPLAT_LEVELS",
    "CueCorruption",
    "CueError",
    "CueRunReport",
    "DenseCorruption",
    "dense_targets",
    "level_names",
    "load_language_cue",
    "load_object_mask",
    "raw_cue_predictions",
    "read_dense_features",
    "read_encoder_json",
    "read_manifest",
    "run_simulation",
    "save_language_cue",
    "save_object_mask",
    "simulate_cues",
    "simulate_dense_features",
    "write_dense_features",
    "write_encoder_json",
]
