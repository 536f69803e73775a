"""``unisem-demo``: the main job on the embedded default scene.

1. generates the default scene once (cached) and simulates its 2D language cues (CLIP + SAM stand-in,
   default corruption) with ``unisem-preprocess``;
2. trains the feature-distillation baseline ``unisem-distill`` with ``ns-train``;
3. evaluates it with ``ns-eval`` (PSNR, SSIM, depth AbsRel, mIoU/mAcc; renders as PNGs);
4. runs ``unisem-query`` with a few free-text queries ("couch" is not a class name: MiniLM maps it to the
   sofas) and the scene's label set, writing relevancy maps, masks and segmentations to look at.

An interrupted run resumes from its latest checkpoint when started again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import tyro


@dataclass
class DemoArgs:
    """Train and evaluate unisem-splat on the embedded default scene (or --data)."""

    output_dir: Path = Path("outputs/demo")
    """Where the run, its metrics and renders go."""
    data: Optional[Path] = None
    """Scene folder; default: the embedded synthetic scene (generated once into the cache)."""
    iterations: int = 2000
    """Training iterations."""
    method: str = "unisem-distill"
    """Method to train (unisem-splat skips the cues and the queries)."""
    queries: str = "couch;lamp;potted plant;television"
    """Free-text queries for unisem-query (';' separated)."""
    fresh: bool = False
    """Start over instead of resuming from the run's latest checkpoint."""


def _bin(name: str) -> str:
    # Prefer the executables next to this interpreter (the project's venv), then PATH.
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _run(cmd: List[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"unisem-demo: `{cmd[0]}` failed with exit code {proc.returncode}")


def main(argv: Optional[List[str]] = None) -> None:
    args = tyro.cli(DemoArgs, args=argv)
    from unisem_ns.data.default_scene import default_scene_dir

    data = args.data or default_scene_dir()
    semantic = args.method != "unisem-splat"
    if semantic:
        _run([_bin("unisem-preprocess"), "--data", str(data), "--mode", "simulate", "--corruption", "default"])
    run_dir = args.output_dir / args.method / "run"
    ckpt_dir = run_dir / "nerfstudio_models"
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    train = [
        _bin("ns-train"), args.method,
        "--data", str(data),
        "--output-dir", str(args.output_dir.parent),
        "--experiment-name", args.output_dir.name,
        "--timestamp", "run",
        "--max-num-iterations", str(args.iterations),
        "--steps-per-save", "250",
        "--vis", "tensorboard",
    ]
    ckpts = sorted(ckpt_dir.glob("step-*.ckpt")) if ckpt_dir.exists() else []
    if ckpts:
        print(f"Resuming from {ckpts[-1]}", flush=True)
        train += ["--load-dir", str(ckpt_dir)]
    if not ckpts or int(ckpts[-1].stem.split("-")[1]) < args.iterations - 1:
        _run(train)
    metrics_path = args.output_dir / "metrics.json"
    renders = args.output_dir / "renders"
    _run([
        _bin("ns-eval"),
        "--load-config", str(run_dir / "config.yml"),
        "--output-path", str(metrics_path),
        "--render-output-path", str(renders),
    ])
    results = json.loads(metrics_path.read_text())["results"]
    query_dir = args.output_dir / "query"
    if semantic:
        _run([_bin("unisem-query"), "--load-config", str(run_dir / "config.yml"), "--output", str(query_dir),
              "--queries", args.queries])
    print("\nunisem-demo finished.")
    print(f"  scene:    {data}")
    print(f"  run:      {run_dir}  (view it: ns-viewer --load-config {run_dir / 'config.yml'})")
    print(f"  metrics:  {metrics_path}")
    print(f"  renders:  {renders}  (ground truth | prediction per held-out view)")
    if semantic:
        print(f"  queries:  {query_dir}/<view>/  (relevancy_*, composited_*, mask_*, segmentation.png)")
    for key in ("psnr", "ssim", "lpips", "depth_abs_rel", "depth_delta_1.25", "miou", "macc", "num_rays_per_sec"):
        if key in results:
            print(f"  {key:>18}: {results[key]:.4f}")


if __name__ == "__main__":
    main()
