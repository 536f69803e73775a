"""Nerfstudio dataparsers for real datasets: convert on first use, then parse the scene as ``unisem-data``.

Each parser converts its raw dataset folder (``--data``) into our one scene layout (``shared/specs/DATA.md``)
with the converters in ``unisem_ns.data`` (cached in ``<data>/unisem`` or ``--cache-dir``; a conversion whose
inputs and options are unchanged is reused as it is), then delegates to :class:`UnisemDataParser`, so every
``unisem-data`` option (``--eval-mode``, ``--load-3D-points``, ...) applies unchanged. Bad input ends with one
line naming the file and the fix.

    ns-train unisem-splat replica-data --data Replica/room_0/Sequence_1 --frame-step 5 --image-downscale 2
    ns-train unisem-splat scannet-data --data scans/scene0000_00 --label-map scannetv2-labels.combined.tsv
    ns-train unisem-splat colmap-scene-data --data lerf_mask/figurines

Kept free of datamanager imports, like ``unisem_ns.ns.dataparser``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Tuple, Type

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from unisem_ns.data.colmap_scene import ColmapSceneConfig, convert_colmap_scene
from unisem_ns.data.replica import ReplicaConfig, convert_replica
from unisem_ns.data.scannet import ScanNetConfig, convert_scannet
from unisem_ns.data.scene_io import InputError
from unisem_ns.ns.dataparser import UnisemDataParser, UnisemDataParserConfig, exit_on_input_error

__all__ = [
    "ReplicaDataParserConfig",
    "ScanNetDataParserConfig",
    "ColmapSceneDataParserConfig",
    "RealDataParser",
    "replica_dataparser",
    "scannet_dataparser",
    "colmap_scene_dataparser",
]


class RealDataParser(UnisemDataParser):
    """Converts ``config.data`` once (per parser instance) and parses the converted scene."""

    config: Any
    _converter: Callable[..., Path]
    _converter_cfg: type
    _what: str = "dataset"

    def converted_scene(self) -> Path:
        """The converted scene folder (converting on first use)."""
        cached = getattr(self, "_scene", None)
        if cached is not None:
            return cached
        src = self.config.data
        if src is None:
            raise exit_on_input_error(InputError(f"no --data given; pass the {self._what} folder with --data DIR"))
        cfg = self._converter_cfg(**{f.name: getattr(self.config, f.name) for f in fields(self._converter_cfg)})
        dst = Path(self.config.cache_dir) if self.config.cache_dir is not None else None
        try:
            scene = type(self)._converter(Path(src), dst, cfg, force=self.config.reconvert)
        except InputError as e:
            raise exit_on_input_error(e) from None
        self._scene = scene
        return scene

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs):
        scene = self.converted_scene()
        src = self.config.data
        self.config.data = scene
        try:
            return super()._generate_dataparser_outputs(split, **kwargs)
        finally:
            self.config.data = src


class ReplicaDataParser(RealDataParser):
    _converter = staticmethod(convert_replica)
    _converter_cfg = ReplicaConfig
    _what = "Replica sequence (Semantic-NeRF layout: traj_w_c.txt, rgb/, depth/, semantic_class/)"


class ScanNetDataParser(RealDataParser):
    _converter = staticmethod(convert_scannet)
    _converter_cfg = ScanNetConfig
    _what = "ScanNet scene (SensReader export: color/ depth/ pose/ intrinsic/, or an LSM/Uni3R test scene)"


class ColmapSceneDataParser(RealDataParser):
    _converter = staticmethod(convert_colmap_scene)
    _converter_cfg = ColmapSceneConfig
    _what = "COLMAP scene (images/ + sparse/0, Gaussian-Grouping / LERF-Mask layout)"


@dataclass
class ReplicaDataParserConfig(UnisemDataParserConfig):
    """Replica in the Semantic-NeRF layout (traj_w_c.txt, rgb/, depth/, semantic_class/, semantic_instance/),
    converted once into a unisem scene (cache: <data>/unisem), then parsed as unisem-data."""

    _target: Type = field(default_factory=lambda: ReplicaDataParser)
    data: Optional[Path] = None  # type: ignore[assignment]
    """Replica sequence folder (Semantic-NeRF layout: traj_w_c.txt, rgb/rgb_<i>.png, depth/, semantic_class/)."""
    cache_dir: Optional[Path] = None
    """Where the converted scene goes (default: <data>/unisem)."""
    reconvert: bool = False
    """Convert again even when the cached conversion is current."""
    frame_step: int = 1
    """Keep every k-th frame (with split 'semantic-nerf': Semantic-NeRF's step, 5 in the paper)."""
    max_frames: Optional[int] = None
    """Keep at most this many frames, spread evenly over the sequence (None: all selected)."""
    split: Literal["interval", "semantic-nerf", "none"] = "interval"
    """'interval': every test-interval-th kept frame is test; 'semantic-nerf': train 0,k,2k,... test +k//2."""
    test_interval: int = 8
    """With split 'interval': kept frame number j is a test frame when j % test_interval == 0."""
    image_downscale: int = 1
    """Downscale images, depth and labels at conversion (2: 640x480 -> 320x240); not --downscale-factor."""
    hfov_deg: float = 90.0
    """Horizontal field of view of the Replica renders (Semantic-NeRF: 90)."""
    principal_point: Optional[Tuple[float, float]] = None
    """(cx, cy) at the source resolution, pixel centres at +0.5 (default: the image centre W/2, H/2)."""
    depth_scale: float = 1000.0
    """Depth PNG units per metre (Semantic-NeRF: 1000)."""
    class_names: Optional[Path] = None
    """Class-name file: JSON list, Replica info_semantic.json, {id: name} JSON or one name per line
    (default: an info_semantic.json next to or above the sequence, else class_<id>)."""
    compact_classes: bool = True
    """Renumber the class ids present in the converted frames to 1..K (else keep the raw ids)."""
    labels: bool = True
    """Convert semantic_class/ and semantic_instance/ into gt/ when present."""
    seed_points: int = 50000
    """Points in sparse_pc.ply back-projected from the train frames' depth (0: none)."""
    link_mode: Literal["symlink", "hardlink", "copy"] = "symlink"
    """How unchanged source images reach the converted scene."""


@dataclass
class ScanNetDataParserConfig(UnisemDataParserConfig):
    """ScanNet scene (SensReader export with label-filt/instance-filt, or an LSM/Uni3R test scene), converted
    once into a unisem scene (cache: <data>/unisem), then parsed as unisem-data."""

    _target: Type = field(default_factory=lambda: ScanNetDataParser)
    data: Optional[Path] = None  # type: ignore[assignment]
    """ScanNet scene folder (color/ depth/ pose/ intrinsic/ [label-filt/ instance-filt/]) or LSM test scene."""
    cache_dir: Optional[Path] = None
    """Where the converted scene goes (default: <data>/unisem)."""
    reconvert: bool = False
    """Convert again even when the cached conversion is current."""
    label_map: Optional[Path] = None
    """scannetv2-labels.combined.tsv (default: found in the scene folder or up to two folders above)."""
    label_set: Optional[Literal["scannet20", "lsm8", "nyu40"]] = None
    """Label set of the GT: scannet20 | lsm8 | nyu40 (default: scannet20; lsm8 for the LSM test layout)."""
    labels: bool = True
    """Convert label-filt/ and instance-filt/ (labels/ in the LSM layout) into gt/ when present."""
    frame_step: int = 10
    """Keep every k-th frame (ScanNet is 30 fps video; with split 'semantic-nerf': its step)."""
    max_frames: Optional[int] = None
    """Keep at most this many frames, spread evenly over the sequence (None: all selected)."""
    split: Literal["interval", "semantic-nerf", "none"] = "interval"
    """'interval': every test-interval-th kept frame is test; 'semantic-nerf': train 0,k,2k,... test +k//2."""
    test_interval: int = 8
    """With split 'interval': kept frame number j is a test frame when j % test_interval == 0."""
    resize_to: Literal["depth", "color"] = "depth"
    """Output size: the depth size (colour and labels resized) or the colour size (depth resized)."""
    image_downscale: int = 1
    """Further downscale of the output size at conversion; not --downscale-factor."""
    invalid_poses: Literal["skip", "error"] = "skip"
    """Frames whose pose holds -inf/nan (lost tracking): skip them with a warning, or fail."""
    seed_points: int = 50000
    """Points in sparse_pc.ply back-projected from the train frames' depth (0: none)."""
    link_mode: Literal["symlink", "hardlink", "copy"] = "symlink"
    """How unchanged source files reach the converted scene."""
    layout: Literal["auto", "sensreader", "lsm-test"] = "auto"
    """Source layout: SensReader export or an LSM/Uni3R test scene (auto: detected)."""
    lsm_llff_hold: int = 8
    """LSM test layout: test views are positions i with i % lsm-llff-hold in lsm-test-ids."""
    lsm_test_ids: Tuple[int, ...] = (1, 4)
    """LSM test layout: see lsm-llff-hold (Uni3R's defaults: 8 and 1 4)."""


@dataclass
class ColmapSceneDataParserConfig(UnisemDataParserConfig):
    """COLMAP scene in the Gaussian-Grouping / LERF-Mask layout (images/, sparse/0 or transforms.json,
    object_mask/, images_train/, test_mask/), converted once into a unisem scene (cache: <data>/unisem)."""

    _target: Type = field(default_factory=lambda: ColmapSceneDataParser)
    data: Optional[Path] = None  # type: ignore[assignment]
    """Scene folder with images/ and sparse/0 (COLMAP .bin or .txt) or a transforms.json."""
    cache_dir: Optional[Path] = None
    """Where the converted scene goes (default: <data>/unisem)."""
    reconvert: bool = False
    """Convert again even when the cached conversion is current."""
    images_dir: str = "images"
    """Image folder inside the scene (e.g. images_2; intrinsics follow the actual image size)."""
    image_downscale: int = 1
    """Downscale images, object masks and query masks at conversion; not --downscale-factor."""
    keep_original_world_coordinate: bool = False
    """Keep COLMAP's world axes (else re-axed like ns-process-data, recorded as applied_transform)."""
    split: Literal["auto", "images_train", "transforms", "test_mask", "llffhold", "none"] = "auto"
    """Train/test rule (auto: images_train/, then transforms.json lists, then test_mask stems, then llffhold)."""
    llffhold: int = 8
    """With the llffhold rule: image number i (name order) is test when i % llffhold == 0."""
    link_mode: Literal["symlink", "hardlink", "copy"] = "symlink"
    """How unchanged source files reach the converted scene."""


replica_dataparser = DataParserSpecification(
    config=ReplicaDataParserConfig(),
    description="Replica (Semantic-NeRF layout) converted once into a unisem scene with GT depth, classes and instances.",
)
scannet_dataparser = DataParserSpecification(
    config=ScanNetDataParserConfig(),
    description="ScanNet (SensReader export + label maps, or LSM/Uni3R test scene) converted once into a unisem scene.",
)
colmap_scene_dataparser = DataParserSpecification(
    config=ColmapSceneDataParserConfig(),
    description="COLMAP scene (Gaussian-Grouping / LERF-Mask layout) converted once into a unisem scene.",
)
