"""Benchmark of the panoptic field (``ns-train unisem-panoptic``) against econSG alone and Unified-Lift alone.

For every scene (the default scene, seed 0, and generated scenes of other seeds), cue corruption and training
seed, the three methods train for the same number of steps on the same simulated cues, and ``unisem-query``
scores the held-out views with the scene protocol (``unisem_ns.metrics.scene``): category-aware panoptic PQ
(Panoptic Lifting's protocol), mIoU / mAcc pooled over the views, class-agnostic PQ^scene; plus training time and
peak memory (``/usr/bin/time``). Results go to ``--out`` (default ``results/panoptic.json``) after every run, so
an interrupted benchmark keeps what it measured (rerun with ``--resume`` to skip finished runs).

    .venv/bin/python benchmarks/bench_panoptic.py [--scene-seeds 0 3] [--corruptions default heavy] \
        [--seeds 42 1 2] [--iterations 3000] [--methods unisem-panoptic,econsg,unified-lift]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from _scene_runs import BIN, RESULTS, query
from unisem_ns.cues.simulator import CueCorruption, simulate_cues
from unisem_ns.data.default_scene import DEFAULT_SCENE_KWARGS, default_scene_dir
from unisem_ns.data.synthetic_scene import generate_scene
from unisem_ns.language import make_text_encoder
from unisem_ns.utils.atomic import atomic_write_json
from unisem_ns.utils.system import machine_description

METHODS = ("unisem-panoptic", "econsg", "unified-lift")


def scene_with_cues(workdir: Path, scene_seed: int, preset: str, encoder) -> Path:
    """``workdir/scene<seed>-<preset>``: a generated scene (the default one for seed 0) with simulated cues."""
    scene = workdir / f"scene{scene_seed}-{preset}"
    if (scene / "language_features" / "manifest.json").exists():
        return scene
    if scene.exists():
        shutil.rmtree(scene)
    if scene_seed == 0:
        shutil.copytree(default_scene_dir(), scene,
                        ignore=shutil.ignore_patterns("econsg", "language_features", "object_mask"))
    else:
        generate_scene(scene, progress=False, **{**DEFAULT_SCENE_KWARGS, "seed": scene_seed})
    simulate_cues(scene, encoder, CueCorruption.preset(preset), seed=0, progress=False)
    return scene


def train(method: str, scene: Path, out: Path, name: str, iterations: int, seed: int) -> Dict:
    """``ns-train`` under ``/usr/bin/time -v``: the run folder, wall-clock seconds and peak RSS (GiB)."""
    cmd = ["/usr/bin/time", "-v", str(BIN / "ns-train"), method, "--data", str(scene), "--output-dir", str(out),
           "--experiment-name", "bench", "--timestamp", name, "--max-num-iterations", str(iterations),
           "--machine.seed", str(seed), "--vis", "tensorboard", "--steps-per-eval-all-images", "0",
           "--steps-per-eval-image", "0", "--steps-per-save", str(iterations)]
    print("$ " + " ".join(cmd[2:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"ns-train {method} failed:\n{proc.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {"run": out / "bench" / method / name, "train_seconds": seconds,
            "peak_rss_gib": int(rss.group(1)) / 2**20 if rss else None}


def row_of(metrics: Dict) -> Dict:
    seg, inst, pan = metrics.get("segmentation", {}), metrics.get("instances", {}), metrics.get("panoptic", {})
    return {"panoptic_pq": pan.get("pq"), "panoptic_sq": pan.get("sq"), "panoptic_rq": pan.get("rq"),
            "panoptic_pq_things": pan.get("pq_things"), "panoptic_pq_stuff": pan.get("pq_stuff"),
            "miou": seg.get("miou"), "macc": seg.get("macc"), "pq_scene": inst.get("pq_scene")}


def summary(runs: List[Dict]) -> Dict:
    """Mean and sample std over seeds of every figure."""
    out: Dict = {}
    for key in runs[0]:
        vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if vals:
            out[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                        "n": len(vals)}
    return out


def fmt(s: Dict, key: str) -> str:
    if key not in s:
        return "–"
    return f"{s[key]['mean']:.3f} ± {s[key]['std']:.3f}" if s[key]["n"] > 1 else f"{s[key]['mean']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene-seeds", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--corruptions", nargs="+", default=["default", "heavy"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--iterations", type=int, default=3000, help="ns-train's default length for all three")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--workdir", type=Path, default=Path("outputs/bench_panoptic"))
    parser.add_argument("--out", type=Path, default=RESULTS / "panoptic.json")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --out")
    args = parser.parse_args()
    encoder = make_text_encoder("minilm")
    report = json.loads(args.out.read_text()) if args.resume and args.out.exists() else {}
    report.update({"machine": machine_description(), "iterations": args.iterations})
    report.setdefault("runs", {})
    for scene_seed in args.scene_seeds:
        for preset in args.corruptions:
            scene = scene_with_cues(args.workdir, scene_seed, preset, encoder)
            for method in args.methods.split(","):
                for seed in args.seeds:
                    key = f"scene{scene_seed}/{preset}/{method}/seed{seed}"
                    if key in report["runs"]:
                        continue
                    t = train(method, scene, args.workdir / "runs", f"s{scene_seed}-{preset}-seed{seed}",
                              args.iterations, seed)
                    q = query(t["run"], args.workdir / "query" / key.replace("/", "_"))
                    report["runs"][key] = {**row_of(q), "train_seconds": t["train_seconds"],
                                           "peak_rss_gib": t["peak_rss_gib"]}
                    print(f"{key}: {report['runs'][key]}", flush=True)
                    atomic_write_json(args.out, report)
    groups: Dict[str, List[Dict]] = {}
    for key, run in report["runs"].items():
        groups.setdefault(key.rsplit("/", 1)[0], []).append(run)
    report["summary"] = {g: summary(r) for g, r in groups.items()}
    atomic_write_json(args.out, report)
    print("| scene / corruption / method | seeds | panoptic PQ | mIoU | mAcc | PQ^scene | train s | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for g, s in report["summary"].items():
        n = max(v["n"] for v in s.values())
        print(f"| {g} | {n} | {fmt(s, 'panoptic_pq')} | {fmt(s, 'miou')} | {fmt(s, 'macc')} | {fmt(s, 'pq_scene')} | "
              f"{fmt(s, 'train_seconds')} | {fmt(s, 'peak_rss_gib')} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
