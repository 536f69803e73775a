"""Renderer benchmark: forward + backward time of ``unisem_ns.render.rasterization``, backends side by side.

Measures, in one run on this machine:
- the compiled CPU backend (numba) and the sparse PyTorch backend at 128x128 x 10k, 256x256 x 50k and
  640x480 x 200k Gaussians, D = 3 / 16 / 32 channels, with 1 and 2 threads (calls alternate between the
  two backends, so both see the same machine state);
- the dense reference compositor (every pixel x every Gaussian) at 128x128 x 10k RGB;
- the compiled kernels' first-call compile time (a fresh process with an empty numba cache) and the start
  of a later process that finds the cache;
- gsplat CUDA at the same sizes when a GPU is visible.

Prints a table and the ratios, and writes ``benchmarks/results/render.json``.
Usage: ``python benchmarks/bench_render.py [--repeats 5] [--skip-dense] [--skip-large]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from unisem_ns.render import rasterization
from unisem_ns.render.projection import project_gaussians, quat_scale_to_covar
from unisem_ns.utils.atomic import atomic_write_json
from unisem_ns.utils.system import machine_description, tune_malloc

RESULTS = Path(__file__).parent / "results"
SIZES = [(128, 128, 10_000), (256, 256, 50_000), (640, 480, 200_000)]
CHANNELS = (3, 16, 32)
THREADS = (1, 2)


def make_scene(n: int, width: int, channels: int, device: str, seed: int = 0, height: int | None = None):
    """Gaussians filling the view frustum at 3-6 m, sized for a median screen radius of 5 px at any image size."""
    height = height or width
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(n, generator=g) * 3 + 3
    fov_half = 0.5
    xy = (torch.rand(n, 2, generator=g) * 2 - 1) * fov_half * depth[:, None]
    xy[:, 1] *= height / width
    means = torch.cat([xy, depth[:, None]], 1)
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.3) * 0.04 * 128 / width
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    colors = torch.rand(n, channels, generator=g)
    f = width / (2 * fov_half)
    ks = torch.tensor([[[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]])
    tensors = [means, quats, scales, opac, colors, torch.eye(4)[None], ks]
    return [t.to(device) for t in tensors]


def median_radius(scene, width: int, height: int) -> float:
    means, quats, scales, _, _, viewmats, ks = [t.cpu() for t in scene]
    radii, *_ = project_gaussians(means, quat_scale_to_covar(quats, scales), viewmats, ks, width, height)
    return float(radii[radii > 0].float().median())


def fwd_bwd(scene, width: int, height: int, backend: str):
    """One forward + backward; returns (seconds, info)."""
    params = [t.clone().requires_grad_(True) for t in scene[:5]]
    if scene[0].is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    render, alpha, info = rasterization(*params, *scene[5:], width, height, backend=backend)
    (render.square().mean() + alpha.mean()).backward()
    if scene[0].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, info


def time_backends(scene, width: int, height: int, backends, repeats: int):
    """Median seconds per backend; one warm-up call each, then the backends alternate call by call."""
    infos = {b: fwd_bwd(scene, width, height, b)[1] for b in backends}
    times = {b: [] for b in backends}
    for _ in range(repeats):
        for b in backends:
            times[b].append(fwd_bwd(scene, width, height, b)[0])
    return {b: statistics.median(t) for b, t in times.items()}, infos


STARTUP = """
import time, torch
t0 = time.perf_counter()
from unisem_ns.render import rasterization
n = 64
g = torch.Generator().manual_seed(0)
args = [torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 3.0]), torch.randn(n, 4, generator=g),
        torch.full((n, 3), 0.05), torch.full((n,), 0.5), torch.rand(n, 3, generator=g), torch.eye(4)[None],
        torch.tensor([[[32.0, 0, 16], [0, 32.0, 16], [0, 0, 1]]])]
for p in args[:5]:
    p.requires_grad_(True)
r, a, _ = rasterization(*args, 32, 32, backend="numba")
(r.sum() + a.sum()).backward()
print(time.perf_counter() - t0)
"""


def startup_times() -> dict:
    """Seconds to import and run the first render + backward in a new process: empty cache, then cached."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-c", STARTUP]
        cold = float(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.split()[-1])
        warm = float(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.split()[-1])
    return {"first_call_with_compile_s": cold, "first_call_cached_s": warm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-dense", action="store_true", help="skip the (slow, ~7 GB) dense reference")
    parser.add_argument("--skip-large", action="store_true", help="skip 640x480 x 200k")
    parser.add_argument("--out", type=Path, default=RESULTS / "render.json")
    args = parser.parse_args()
    tuned = tune_malloc()
    threads_before = torch.get_num_threads()

    startup = startup_times()
    print(f"numba first call in a new process: {startup['first_call_with_compile_s']:.1f} s with compilation, "
          f"{startup['first_call_cached_s']:.2f} s from the cache", flush=True)

    rows = []
    sizes = SIZES[:2] if args.skip_large else SIZES
    for threads in THREADS:
        torch.set_num_threads(threads)
        for width, height, n in sizes:
            for ch in CHANNELS:
                scene = make_scene(n, width, ch, "cpu", height=height)
                reps = args.repeats if n <= 50_000 else max(2, args.repeats // 2)
                secs, infos = time_backends(scene, width, height, ("numba", "torch"), reps)
                radius = median_radius(scene, width, height)
                for b in ("numba", "torch"):
                    rows.append(dict(backend=b, device="cpu", threads=threads, width=width, height=height, n=n,
                                     channels=ch, seconds=secs[b], pairs=infos[b]["n_pairs"], median_radius_px=radius))
                print(f"{threads} thr {width}x{height} x {n:>6}, D={ch:>2}: numba {secs['numba'] * 1000:8.1f} ms  "
                      f"torch {secs['torch'] * 1000:8.1f} ms  torch/numba {secs['torch'] / secs['numba']:5.2f}", flush=True)
    torch.set_num_threads(threads_before)
    dense = None
    if not args.skip_dense:
        scene = make_scene(10_000, 128, 3, "cpu")
        t, _ = fwd_bwd(scene, 128, 128, "dense")
        dense = dict(backend="dense", device="cpu", threads=threads_before, width=128, height=128, n=10_000,
                     channels=3, seconds=t)
        rows.append(dense)
        print(f"dense  128x128 x  10000, D= 3: {t * 1000:8.1f} ms ({threads_before} threads)", flush=True)
    if torch.cuda.is_available():
        for width, height, n in sizes:
            for ch in CHANNELS:
                scene = make_scene(n, width, ch, "cuda", height=height)
                secs, _ = time_backends(scene, width, height, ("gsplat",), args.repeats)
                rows.append(dict(backend="gsplat", device=torch.cuda.get_device_name(), width=width, height=height,
                                 n=n, channels=ch, seconds=secs["gsplat"]))
                print(f"gsplat {width}x{height} x {n:>6}, D={ch:>2}: {secs['gsplat'] * 1000:8.2f} ms", flush=True)

    def lookup(backend, threads, width, n, ch):
        return next(r["seconds"] for r in rows if r["backend"] == backend and r.get("threads") == threads
                    and (r["width"], r["n"], r["channels"]) == (width, n, ch))

    ratios = {}
    for threads in THREADS:
        for width, height, n in sizes:
            for ch in CHANNELS:
                ratios[f"torch_over_numba_{width}x{height}_{n}_d{ch}_t{threads}"] = (
                    lookup("torch", threads, width, n, ch) / lookup("numba", threads, width, n, ch))
        ratios[f"numba_d16_over_d3_128_t{threads}"] = (
            lookup("numba", threads, 128, 10_000, 16) / lookup("numba", threads, 128, 10_000, 3))
    ratios["numba_1thr_over_2thr_256"] = lookup("numba", 1, 256, 50_000, 3) / lookup("numba", 2, 256, 50_000, 3)
    if dense is not None:
        ratios["dense_over_torch_128_10000"] = dense["seconds"] / lookup("torch", threads_before, 128, 10_000, 3)
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    report = dict(
        machine=machine_description(),
        torch=torch.__version__,
        python=platform.python_version(),
        malloc_tuned=tuned,
        startup=startup,
        rows=rows,
        ratios=ratios,
        targets={"torch_over_numba_128x128_10000_d3": ">= 4 (compiled <= 1/4 of torch sparse)"},
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
