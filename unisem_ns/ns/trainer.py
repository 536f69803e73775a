"""Nerfstudio's trainer with two guarantees: a bad scene stops ``ns-train`` before anything is written, and a
checkpoint is never left half-written.

- ``ns-train`` saves ``config.yml`` (its first write) through :meth:`UnisemTrainerConfig.save_config`, which
  first runs the scene check (:mod:`unisem_ns.data.validate`) for what the method reads; a failing scene ends the
  command with every problem listed and no output folder.
- :meth:`UnisemTrainer.save_checkpoint` writes to a temporary file and renames it, so a run killed while saving
  keeps its previous checkpoint and resumes from it. The checkpoint also holds what Nerfstudio's does not and a
  continuation needs (:func:`training_state`): the random generators, the order of the training views still to
  come and the model's training state, so a run resumed from step ``k`` takes the same steps after ``k`` as a run
  that was never stopped.
- ``ns-eval``, ``ns-viewer``, ``unisem-query`` and ``unisem-export-instances`` ask the config for its checkpoint
  folder right before loading the newest file in it; :meth:`UnisemTrainerConfig.get_checkpoint_dir` checks that
  file first (:func:`check_checkpoint_dir`), so a missing, empty, truncated or foreign checkpoint is one line.
"""

from __future__ import annotations

import inspect
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Type

import numpy as np
import torch
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.decorators import check_main_thread

from unisem_ns.data.scene_io import InputError
from unisem_ns.ns.data import UnisemDatamanagerConfig
from unisem_ns.ns.dataparser import UnisemDataParserConfig, exit_on_input_error
from unisem_ns.ns.splat_model import UnisemSplatModel
from unisem_ns.utils.atomic import atomic_file, remove_stale_temps

__all__ = ["UnisemTrainerConfig", "UnisemTrainer", "check_checkpoint_dir", "latest_checkpoint", "training_state",
           "restore_training_state"]


def latest_checkpoint(folder: Path) -> Path:
    """The newest ``step-*.ckpt`` in ``folder``, checked to be a complete torch checkpoint; raises
    :class:`InputError` (one line naming the folder or file and the fix) otherwise."""
    folder = Path(folder)
    fix = "train the run (ns-train ... ) or point --load-config at a run that finished a save"
    if not folder.is_dir():
        raise InputError(f"{folder}: no checkpoint folder; {fix}")
    ckpts = sorted(folder.glob("step-*.ckpt"))
    if not ckpts:
        raise InputError(f"{folder}: no checkpoint in the folder (step-*.ckpt); {fix}")
    path = ckpts[-1]
    # torch.save writes a zip archive; a truncated or foreign file fails this without unpickling anything
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise InputError(f"{path}: not a complete torch checkpoint ({type(e).__name__}: truncated or another "
                         "kind of file); delete it to use the previous one, or retrain") from None
    if bad is not None or not any(n.endswith("data.pkl") for n in names):
        raise InputError(f"{path}: not a complete torch checkpoint (damaged entry {bad or 'data.pkl'}); delete it "
                         "to use the previous one, or retrain")
    return path


def check_checkpoint_dir(folder: Path) -> None:
    """:func:`latest_checkpoint`, ending the command with its one line on failure."""
    try:
        latest_checkpoint(folder)
    except InputError as e:
        raise exit_on_input_error(e) from None


@dataclass
class UnisemTrainerConfig(TrainerConfig):
    """Nerfstudio's TrainerConfig; checks the scene before the run folder is made (see the module docstring)."""

    _target: Type = field(default_factory=lambda: UnisemTrainer)

    def save_config(self) -> None:
        dm = self.pipeline.datamanager
        if isinstance(dm, UnisemDatamanagerConfig) and isinstance(dm.dataparser, UnisemDataParserConfig):
            if dm.data is not None:  # ns-train's --data alias lands here; the datamanager passes it on later
                dm.dataparser.data = Path(dm.data)
            dm.dataparser.check_before_run()
        super().save_config()

    def get_checkpoint_dir(self) -> Path:
        folder = super().get_checkpoint_dir()
        if _called_from_eval_setup():
            check_checkpoint_dir(folder)
        return folder


def _called_from_eval_setup() -> bool:
    """Whether Nerfstudio's ``eval_setup`` (which loads the newest checkpoint next) is asking; the trainer asks
    for the same folder to write into, where an empty folder is normal."""
    frame = inspect.currentframe()
    try:
        frame = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
        return frame is not None and frame.f_code.co_name == "eval_setup"
    finally:
        del frame


def training_state(pipeline) -> Dict[str, Any]:
    """What a continuation needs beyond the parameters, optimizers and schedulers Nerfstudio saves.

    The global generators (``random``, NumPy, torch: view picks, random backgrounds, sampled pixel pairs), the
    datamanager's queue of training views and its shuffling generator, and a splat model's
    :meth:`~unisem_ns.ns.splat_model.UnisemSplatModel.training_state` (densification statistics, a method's own
    generators). Only tensors, numbers and tuples, so the checkpoint still loads with ``weights_only``.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python_rng": random.getstate(),
        "numpy_rng": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch_rng": torch.get_rng_state(),
    }
    dm = pipeline.datamanager
    if isinstance(dm, FullImageDatamanager):
        state["train_unseen_cameras"] = list(dm.train_unseen_cameras)
        state["eval_unseen_cameras"] = list(dm.eval_unseen_cameras)
        if hasattr(dm, "random_generator"):  # Nerfstudio creates it on the first shuffle of the views
            state["camera_rng"] = dm.random_generator.getstate()
    if isinstance(pipeline.model, UnisemSplatModel):
        state["model"] = pipeline.model.training_state()
    return state


def restore_training_state(pipeline, state: Dict[str, Any]) -> None:
    """Put back what :func:`training_state` saved (a checkpoint written before it existed has none: no-op)."""
    if not state:
        return
    random.setstate(state["python_rng"])
    name, keys, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch_rng"])
    dm = pipeline.datamanager
    if isinstance(dm, FullImageDatamanager) and "train_unseen_cameras" in state:
        dm.train_unseen_cameras = list(state["train_unseen_cameras"])
        dm.eval_unseen_cameras = list(state["eval_unseen_cameras"])
        if "camera_rng" in state:
            dm.random_generator = random.Random()
            dm.random_generator.setstate(state["camera_rng"])
    if isinstance(pipeline.model, UnisemSplatModel) and "model" in state:
        pipeline.model.load_training_state(state["model"])


class UnisemTrainer(Trainer):
    """Nerfstudio's Trainer whose checkpoints are written atomically, checked before a resume, and carry the
    training state a continuation needs (:func:`training_state`)."""

    def _load_checkpoint(self) -> None:
        load_dir = self.config.load_dir
        if load_dir is not None:
            # Nerfstudio lists every file of the folder as a step number: a temporary must not be there
            remove_stale_temps(load_dir)
            if self.config.load_step is None:
                check_checkpoint_dir(load_dir)
        super()._load_checkpoint()
        path = self._loaded_checkpoint_path()
        if path is not None:
            pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
            restore_training_state(pipeline, torch.load(path, map_location="cpu").get("training_state"))

    def _loaded_checkpoint_path(self):
        """The file Nerfstudio's loader just read (same rule as its own), or None for a fresh run."""
        if self.config.load_dir is not None:
            step = self.config.load_step
            if step is None:
                step = int(latest_checkpoint(self.config.load_dir).stem.split("-")[1])
            return Path(self.config.load_dir) / f"step-{step:09d}.ckpt"
        return self.config.load_checkpoint

    @check_main_thread  # as Nerfstudio's: only the main process of a multi-process run writes
    def save_checkpoint(self, step: int) -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.checkpoint_dir)  # left by a run killed while saving
        ckpt_path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        state = {
            "step": step,
            "pipeline": pipeline.state_dict(),
            "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
            "training_state": training_state(pipeline),
        }
        with atomic_file(ckpt_path) as f:
            torch.save(state, f)
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("*.ckpt"):
                if old != ckpt_path:
                    old.unlink()


def load_run(config_path: Path, test_mode: str = "test"):
    """Nerfstudio's ``eval_setup`` for our tools, after checking the run: the config exists and is a run config,
    and its newest checkpoint is complete (a run config written before these checks has no hook of its own).

    Returns ``eval_setup``'s ``(config, pipeline, checkpoint_path, step)``; raises :class:`InputError`.
    """
    import yaml
    from nerfstudio.utils.eval_utils import eval_setup

    config_path = Path(config_path)
    if not config_path.is_file():
        raise InputError(f"{config_path}: no such run config; pass the config.yml that ns-train wrote in its run folder")
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError, ModuleNotFoundError) as e:
        raise InputError(f"{config_path}: not a readable run config ({type(e).__name__}); pass the config.yml "
                         "that ns-train wrote") from None
    if not isinstance(config, TrainerConfig):
        raise InputError(f"{config_path}: not a Nerfstudio run config; pass the config.yml that ns-train wrote")
    latest_checkpoint(config.get_checkpoint_dir())
    return eval_setup(config_path, test_mode=test_mode)
