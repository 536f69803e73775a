"""Where one training iteration's time goes, for a per-scene method on the default scene.

Builds the method's trainer exactly as ``ns-train`` does (its MethodSpecification, the embedded default
scene or ``--data``), then profiles two windows of iterations with cProfile: early (after a short untimed warm-up, in which
the first iterations load compiled kernels) and late (after densification has grown the model). Each
phase below is the inclusive time of the functions that implement it, per iteration:

  render      the splat renderer (projection, compositing forward) inside the model's get_outputs
  backward    loss.backward(): compositing and projection backward
  ssim        the SSIM term of the RGB loss (forward; its backward is inside `backward`)
  losses      get_loss_dict + get_metrics_dict, excluding SSIM
  strategy    gsplat's densification strategy (step_pre_backward / step_post_backward)
  optimizer   optimizer and scheduler steps
  data        datamanager.next_train (image loading, cue lookup)
  other       the rest of the iteration (SH colours, Python overhead, method hooks)

Method-specific work (Hungarian matching, kNN) is listed separately when it shows up.
Prints a table and, with ``--out``, writes JSON.

Usage: ``python benchmarks/profile_step.py --method unisem-splat [--early 30] [--late 30 --late-start 600]``
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from unisem_ns.utils.atomic import atomic_write_json
from unisem_ns.utils.system import machine_description

# Phase -> groups of (file suffix, function name). A group's time is the largest inclusive time among its
# functions (an override and the base method it calls share a name: the outer one holds both); a phase
# adds its groups.
PHASES = {
    "render": [[("render/rasterization.py", "rasterization")]],
    "backward": [[("torch/_tensor.py", "backward")]],
    "ssim": [[("pytorch_msssim/ssim.py", "forward")]],
    "losses": [[("_model.py", "get_loss_dict"), ("splatfacto.py", "get_loss_dict")],
               [("_model.py", "get_metrics_dict"), ("splatfacto.py", "get_metrics_dict")]],
    "strategy": [[("gsplat/strategy/default.py", "step_pre_backward")],
                 [("gsplat/strategy/default.py", "step_post_backward")]],
    "optimizer": [[("nerfstudio/engine/optimizers.py", "optimizer_scaler_step_all"),
                   ("nerfstudio/engine/optimizers.py", "optimizer_scaler_step_some"),
                   ("nerfstudio/engine/optimizers.py", "optimizer_step_all")],
                  [("nerfstudio/engine/optimizers.py", "scheduler_step_all")]],
    "data": [[("full_images_datamanager.py", "next_train")]],
}
EXTRA = {
    "hungarian": [[("scipy/optimize/_lsap.py", "linear_sum_assignment")]],
    "knn": [[("unified_lift/knn_regulariser.py", "nearest_neighbours")]],
}


def _inclusive(stats: pstats.Stats, groups) -> float:
    """Seconds spent in a phase: per group, the largest cumulative time of its matching functions."""
    total = 0.0
    for group in groups:
        best = 0.0
        for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
            if any(name == fname and filename.endswith(suffix) for suffix, fname in group):
                best = max(best, ct)
        total += best
    return total


def build_trainer(method: str, data: Optional[Path], workdir: Path, iterations: int):
    from nerfstudio.configs.method_configs import all_methods

    from unisem_ns.data.default_scene import default_scene_dir

    config = all_methods[method]
    config.pipeline.datamanager.data = data or default_scene_dir()
    config.output_dir = workdir
    config.vis = "tensorboard"
    config.max_num_iterations = iterations
    config.steps_per_eval_image = 0
    config.steps_per_eval_batch = 0
    config.steps_per_eval_all_images = 0
    config.steps_per_save = iterations + 1
    config.set_timestamp()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def run_steps(trainer, start: int, stop: int) -> None:
    """Iterations [start, stop) as ``Trainer.train`` runs them (callbacks around each)."""
    from nerfstudio.engine.callbacks import TrainingCallbackLocation

    for step in range(start, stop):
        trainer.pipeline.train()
        for cb in trainer.callbacks:
            cb.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        trainer.train_iteration(step)
        for cb in trainer.callbacks:
            cb.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)


def torch_op_table(trainer, start: int, count: int, rows: int) -> None:
    """torch.profiler over ``count`` iterations: the aten ops (forward and autograd backward) by own time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run_steps(trainer, start, start + count)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=rows))


def profile_window(trainer, start: int, count: int, top: int = 0) -> Dict[str, float]:
    """cProfile ``count`` iterations from ``start``; returns seconds per iteration per phase.

    ``top`` > 0 also prints the functions with the most own time."""
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    run_steps(trainer, start, start + count)
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    if top:
        stats.sort_stats("tottime").print_stats(top)
    row = {name: _inclusive(stats, targets) / count for name, targets in PHASES.items()}
    row["losses"] = max(0.0, row["losses"] - row["ssim"])
    for name, targets in EXTRA.items():
        value = _inclusive(stats, targets) / count
        if value > 0:
            row[name] = value
    row["iteration"] = wall / count
    row["other"] = max(0.0, row["iteration"] - sum(row[k] for k in PHASES))
    row["gaussians"] = int(trainer.pipeline.model.num_points)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="unisem-splat")
    parser.add_argument("--data", type=Path, default=None, help="scene folder (default: the embedded scene)")
    parser.add_argument("--backend", default=None, help="override pipeline.model.render_backend (auto/numba/torch)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations before the early window")
    parser.add_argument("--early", type=int, default=30, help="iterations profiled after the warm-up")
    parser.add_argument("--late", type=int, default=30, help="iterations profiled from --late-start")
    parser.add_argument("--late-start", type=int, default=900)
    parser.add_argument("--top", type=int, default=0, help="also print the N functions with the most own time")
    parser.add_argument("--torch-ops", type=int, default=0,
                        help="after the late window, print the N aten ops with the most own time (torch.profiler)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        extra = 10 if args.torch_ops else 0
        trainer = build_trainer(args.method, args.data, Path(tmp), args.late_start + args.late + extra + 1)
        if args.backend:
            trainer.pipeline.model.config.render_backend = args.backend
        # untimed warm-up: the first iterations load compiled kernels and fill caches once per process
        run_steps(trainer, 0, args.warmup)
        early = profile_window(trainer, args.warmup, args.early)
        if args.late:
            run_steps(trainer, args.warmup + args.early, args.late_start)
        late = profile_window(trainer, args.late_start, args.late, args.top) if args.late else None
        if args.torch_ops:
            end = args.late_start + args.late
            torch_op_table(trainer, end, min(10, trainer.config.max_num_iterations - end), args.torch_ops)

    cols = ["iteration", *PHASES, "other", *EXTRA]
    print(f"{args.method} ({trainer.pipeline.model.config.render_backend} backend, {torch.get_num_threads()} threads), ms per iteration")
    print("window        " + " ".join(f"{c:>9}" for c in cols) + "  gaussians")
    for label, row in (("early", early), ("late", late)):
        if row is None:
            continue
        print(f"{label:<13} " + " ".join(f"{row.get(c, 0.0) * 1000:9.1f}" for c in cols) + f"  {row['gaussians']}")
    if args.out:
        report = dict(machine=machine_description(), threads=torch.get_num_threads(), method=args.method, warmup=args.warmup,
                      backend=trainer.pipeline.model.config.render_backend, early=early, late=late,
                      late_start=args.late_start, omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
        atomic_write_json(args.out, report)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
