"""What the per-scene benchmarks share: a copy of the default scene with simulated cues at a corruption preset,
``ns-train`` / ``unisem-query`` runs, and raw-cue scores on the held-out views."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from unisem_ns.cues.simulator import CueCorruption, raw_cue_predictions, simulate_cues
from unisem_ns.data.default_scene import default_scene_dir
from unisem_ns.data.scene_io import load_gt_maps
from unisem_ns.metrics.segmentation import ConfusionMatrix

RESULTS = Path(__file__).parent / "results"
BIN = Path(sys.executable).parent


def held_out_stems(scene: Path) -> List[str]:
    meta = json.loads((scene / "transforms.json").read_text())
    return [Path(f).stem for f in meta["test_filenames"]]


def cue_scene(workdir: Path, preset: str, encoder) -> Path:
    """``workdir/<preset>/scene``: the default scene with freshly simulated cues (seed 0) at ``preset``."""
    scene = workdir / preset / "scene"
    if scene.exists():
        shutil.rmtree(scene)
    shutil.copytree(default_scene_dir(), scene, ignore=shutil.ignore_patterns("econsg", "language_features", "object_mask"))
    simulate_cues(scene, encoder, CueCorruption.preset(preset), seed=0, progress=False)
    return scene


def raw_cue_scores(scene: Path, encoder, class_names: Sequence[str]) -> Dict:
    """Pooled mIoU/mAcc of the held-out views' own cues (argmax over the class names), void ignored."""
    stems = held_out_stems(scene)
    preds = raw_cue_predictions(scene, stems, encoder, list(class_names))
    cm = ConfusionMatrix(len(class_names), ignore_index=0)
    for stem in stems:
        cm.update(preds[stem].astype(np.int64), load_gt_maps(scene, stem)["semantic"])
    out = cm.compute()
    return {"miou": out["miou"], "macc": out["macc"], "views": len(stems)}


def run(cmd: List[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def train(method: str, scene: Path, out: Path, name: str, iterations: int, *extra: str) -> Dict:
    """``ns-train <method>`` on ``scene``; returns the run folder and the wall-clock training time."""
    t0 = time.perf_counter()
    run([str(BIN / "ns-train"), method, "--data", str(scene), "--output-dir", str(out), "--experiment-name", "bench",
         "--timestamp", name, "--max-num-iterations", str(iterations), "--vis", "tensorboard",
         "--steps-per-eval-all-images", "0", "--steps-per-eval-image", "0", "--steps-per-save", str(iterations),
         *extra])
    return {"run": out / "bench" / method / name, "train_seconds": time.perf_counter() - t0}


def query(run_dir: Path, out: Path, queries: str = "") -> Dict:
    """``unisem-query`` over the held-out views; returns its metrics.json."""
    args = [str(BIN / "unisem-query"), "--load-config", str(run_dir / "config.yml"), "--output", str(out)]
    if queries:
        args += ["--queries", queries]
    run(args)
    return json.loads((out / "metrics.json").read_text())
