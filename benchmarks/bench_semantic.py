"""Semantic benchmark on the default scene: held-out mIoU/mAcc of the raw 2D cues and of the baseline.

For each cue corruption preset (simulated CLIP + SAM cues, ``unisem_ns.cues.simulator``):
- raw cues: every held-out view's cue embedding per pixel, argmax over the scene's class names (MiniLM);
- unisem-distill: trained with ``ns-train`` on the train views, then ``unisem-query`` renders the held-out views
  and segments them over the same label set.
Both are scored with one pooled confusion matrix over the held-out views (void ignored).

Writes ``benchmarks/results/semantic.json``. Usage:
``python benchmarks/bench_semantic.py [--iterations 2000] [--corruptions default heavy]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from unisem_ns.cues.simulator import CueCorruption, raw_cue_predictions, simulate_cues
from unisem_ns.data.default_scene import default_scene_dir
from unisem_ns.data.scene_io import load_gt_maps
from unisem_ns.language.encoders import make_text_encoder
from unisem_ns.metrics.segmentation import ConfusionMatrix
from unisem_ns.utils.atomic import atomic_write_json
from unisem_ns.utils.system import machine_description

RESULTS = Path(__file__).parent / "results"


def held_out_stems(scene: Path) -> list:
    meta = json.loads((scene / "transforms.json").read_text())
    return [Path(f).stem for f in meta["test_filenames"]]


def raw_cue_scores(scene: Path, encoder, class_names: list) -> dict:
    stems = held_out_stems(scene)
    preds = raw_cue_predictions(scene, stems, encoder, class_names)
    cm = ConfusionMatrix(len(class_names), ignore_index=0)
    for stem in stems:
        cm.update(preds[stem].astype(np.int64), load_gt_maps(scene, stem)["semantic"])
    out = cm.compute()
    return {"miou": out["miou"], "macc": out["macc"], "views": len(stems)}


def run(cmd: list) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--corruptions", nargs="+", default=["default", "heavy"])
    parser.add_argument("--workdir", type=Path, default=Path("outputs/bench_semantic"))
    parser.add_argument("--out", type=Path, default=RESULTS / "semantic.json")
    args = parser.parse_args()
    bindir = Path(sys.executable).parent
    source = default_scene_dir()
    class_names = json.loads((source / "gt" / "classes.json").read_text())
    encoder = make_text_encoder("minilm")
    rows = []
    for preset in args.corruptions:
        scene = args.workdir / preset / "scene"
        if scene.exists():
            shutil.rmtree(scene)
        shutil.copytree(source, scene)
        simulate_cues(scene, encoder, CueCorruption.preset(preset), seed=0, progress=False)
        raw = raw_cue_scores(scene, encoder, class_names)
        print(f"[{preset}] raw cues: mIoU {raw['miou']:.3f}  mAcc {raw['macc']:.3f}", flush=True)
        out = args.workdir / preset / "runs"
        t0 = time.perf_counter()
        run([str(bindir / "ns-train"), "unisem-distill", "--data", str(scene), "--output-dir", str(out),
             "--experiment-name", "bench", "--timestamp", "run", "--max-num-iterations", str(args.iterations),
             "--vis", "tensorboard", "--steps-per-eval-all-images", "0", "--steps-per-eval-image", "0"])
        train_s = time.perf_counter() - t0
        config = out / "bench" / "unisem-distill" / "run" / "config.yml"
        query_dir = args.workdir / preset / "query"
        run([str(bindir / "unisem-query"), "--load-config", str(config), "--output", str(query_dir), "--queries", "couch"])
        q = json.loads((query_dir / "metrics.json").read_text())
        base = q["segmentation"]
        print(f"[{preset}] unisem-distill: mIoU {base['miou']:.3f}  mAcc {base['macc']:.3f}  ({train_s:.0f} s)", flush=True)
        rows.append({
            "corruption": preset,
            "corruption_values": dataclasses.asdict(CueCorruption.preset(preset)),
            "raw_cues": raw,
            "unisem_distill": {"miou": base["miou"], "macc": base["macc"], "iterations": args.iterations,
                               "train_seconds": train_s, "couch_query": q["queries"]["couch"].get("best_class"),
                               "couch_iou": q["queries"]["couch"].get("best_iou")},
        })
    report = {"machine": machine_description(), "scene": str(source), "held_out_views": rows[0]["raw_cues"]["views"] if rows else 0,
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
