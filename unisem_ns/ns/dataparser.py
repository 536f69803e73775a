"""Nerfstudio dataparser: transforms.json scenes checked up front, and the embedded default scene.

Kept free of datamanager imports: Nerfstudio loads dataparser entry points while its own datamanager
module is still importing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Type

from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from nerfstudio.utils.rich_utils import CONSOLE

from unisem_ns.data.scene_io import exit_on_input_error
from unisem_ns.data.validate import SceneInvalid, SceneNeeds, check_scene


def scene_needs(config: "UnisemDataParserConfig") -> SceneNeeds:
    """What a run with this dataparser reads from its scene."""
    return SceneNeeds(language_cues=config.require_language_cues, object_masks=config.require_object_masks)


_passed: set = set()


def validate_scene_for(config: "UnisemDataParserConfig") -> None:
    """The scene check for a run (:func:`~unisem_ns.data.validate.check_scene`): warnings are printed, errors end
    the command with every problem listed. A scene that passed is not checked again in the same process (the
    trainer checks before writing anything; the dataparser then runs once per split)."""
    if config.data is None:
        from unisem_ns.data.default_scene import default_scene_dir

        config.data = default_scene_dir()
        CONSOLE.log(f"No --data given: using the embedded default scene at {config.data}")
    needs = scene_needs(config)
    key = (str(Path(config.data).resolve()), needs)
    if key in _passed:
        return
    check = check_scene(Path(config.data), needs)
    for w in check.warnings:
        CONSOLE.log(f"[yellow]unisem_ns: warning: {w}")
    if check.errors:
        raise exit_on_input_error(SceneInvalid(check))
    _passed.add(key)


@dataclass
class UnisemDataParserConfig(NerfstudioDataParserConfig):
    """Nerfstudio transforms.json scenes (DATA.md layout), checked up front; no --data means the
    embedded default scene (generated once into the cache)."""

    _target: Type = field(default_factory=lambda: UnisemDataParser)
    data: Optional[Path] = None  # type: ignore[assignment]
    """Scene folder with transforms.json. Default: the embedded synthetic scene (made once, then cached)."""
    load_3D_points: bool = True
    """Initialise Gaussians from the scene's seed point cloud (ply_file_path) when it has one."""
    eval_mode: str = "filename"  # type: ignore[assignment]
    """Train/eval split: 'filename' uses transforms.json's train/test lists when present (else every 8th view)."""
    require_language_cues: bool = False
    """Fail up front when the scene has no 2D language cues (set by the semantic methods)."""
    require_object_masks: bool = False
    """Fail up front when the scene has no 2D instance masks in object_mask/ (set by the instance methods)."""

    def check_before_run(self) -> None:
        """Check the scene before a run writes anything (ns-train calls this before its first write)."""
        validate_scene_for(self)


class UnisemDataParser(Nerfstudio):
    config: UnisemDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs):
        validate_scene_for(self.config)
        eval_mode = self.config.eval_mode
        if eval_mode == "filename" and not _has_split_lists(self.config.data):
            self.config.eval_mode = "interval"
        listed = _split_list_for(self.config.data, split) if self.config.eval_mode == "filename" else split
        try:
            outputs = super()._generate_dataparser_outputs(listed, **kwargs)
        finally:
            self.config.eval_mode = eval_mode
        # Datasets need the scene root (cues, gt/) and whether ground truth may be read (never in training).
        scene = Path(self.config.data)
        outputs.metadata["scene_dir"] = scene
        outputs.metadata["split"] = split
        if (scene / "language_features").is_dir():
            from unisem_ns.cues.layout import CueError, read_encoder_json

            try:  # checked by validate_scene_for when the method needs the cues; optional otherwise
                outputs.metadata["cue_encoder"] = read_encoder_json(scene)
            except CueError:
                pass
        # The dataparser's frame change, and the training views as it placed them: what a feed-forward
        # initialisation (--pipeline.model.init-from-predictor, docs/FEEDFORWARD_INIT.md) needs. Cheap: no
        # image is read here.
        outputs.metadata["dataparser_transform"] = outputs.dataparser_transform
        outputs.metadata["dataparser_scale"] = float(outputs.dataparser_scale)
        if split == "train":
            outputs.metadata["train_views"] = train_views(outputs)
        classes = scene / "gt" / "classes.json"
        if classes.exists():  # the label set for evaluation only; no labels are read for training
            outputs.metadata["class_names"] = json.loads(classes.read_text())
        return outputs


def train_views(outputs) -> dict:
    """The training views of ``outputs`` for a feed-forward initialisation: ``image_filenames`` [N] paths,
    ``c2w`` [N, 3, 4] OpenGL camera-to-world after the dataparser transform and scale, ``K`` [N, 3, 3] pinhole
    intrinsics at the images' resolution, ``depth_filenames`` ([N] paths or None) with ``depth_unit_scale_factor``
    (scene depth units: metres per stored unit), ``stems`` [N] (cue file names)."""
    cams = outputs.cameras
    depth = outputs.metadata.get("depth_filenames")
    return {
        "image_filenames": [Path(f) for f in outputs.image_filenames],
        "c2w": cams.camera_to_worlds.detach().clone().float(),
        "K": cams.get_intrinsics_matrices().detach().clone().float(),
        "depth_filenames": [Path(f) for f in depth] if depth else None,
        "depth_unit_scale_factor": float(outputs.metadata.get("depth_unit_scale_factor", 1e-3)),
        "stems": [Path(f).stem for f in outputs.image_filenames],
    }


def _split_list_for(scene: Path, split: str) -> str:
    """The split whose file list serves ``split``: a scene that lists only test views (or only val views) uses
    that one list for both held-out splits (our corpus scenes list train and test only)."""
    if split not in ("val", "test"):
        return split
    meta = json.loads((Path(scene) / "transforms.json").read_text())
    other = "test" if split == "val" else "val"
    return other if f"{split}_filenames" not in meta and f"{other}_filenames" in meta else split


def _has_split_lists(scene: Path) -> bool:
    meta = json.loads((Path(scene) / "transforms.json").read_text())
    return "train_filenames" in meta and ("test_filenames" in meta or "val_filenames" in meta)


unisem_dataparser = DataParserSpecification(
    config=UnisemDataParserConfig(),
    description="transforms.json scene checked up front, with GT depth; the default scene when --data is omitted.",
)
