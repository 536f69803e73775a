"""Renderer benchmark: forward + backward time of ``unisem_ns.render.rasterization``.

Measures, in one run on this machine:
- the sparse PyTorch backend at 128x128 and 256x256 with 10k and 50k Gaussians, RGB (3) vs 16 channels;
- the dense reference compositor (every pixel x every Gaussian) at 128x128 x 10k, and the ratio;
- gsplat CUDA at the same sizes when a GPU is visible.

Prints a table and writes ``benchmarks/results/render.json``.
Usage: ``python benchmarks/bench_render.py [--repeats 5] [--skip-dense]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from unisem_ns.render import rasterization
from unisem_ns.render.projection import project_gaussians, quat_scale_to_covar
from unisem_ns.utils.atomic import atomic_write_json
from unisem_ns.utils.system import machine_description, tune_malloc

RESULTS = Path(__file__).parent / "results"


def make_scene(n: int, size: int, channels: int, device: str, seed: int = 0):
    """Gaussians filling the view frustum at 3-6 m, sized for a median screen radius of 5 px at any image size."""
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(n, generator=g) * 3 + 3
    fov_half = 0.5
    xy = (torch.rand(n, 2, generator=g) * 2 - 1) * fov_half * depth[:, None]
    means = torch.cat([xy, depth[:, None]], 1)
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.3) * 0.04 * 128 / size
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    colors = torch.rand(n, channels, generator=g)
    f = size / (2 * fov_half)
    ks = torch.tensor([[[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]]])
    tensors = [means, quats, scales, opac, colors, torch.eye(4)[None], ks]
    return [t.to(device) for t in tensors]


def median_radius(scene, size: int) -> float:
    means, quats, scales, _, _, viewmats, ks = [t.cpu() for t in scene]
    radii, *_ = project_gaussians(means, quat_scale_to_covar(quats, scales), viewmats, ks, size, size)
    return float(radii[radii > 0].float().median())


def time_fwd_bwd(scene, size: int, backend: str, repeats: int):
    params = [t.clone().requires_grad_(True) for t in scene[:5]]
    times, info = [], None
    for i in range(repeats + 1):  # first call warms up
        for p in params:
            p.grad = None
        if scene[0].is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        render, alpha, info = rasterization(*params, *scene[5:], size, size, backend=backend)
        (render.square().mean() + alpha.mean()).backward()
        if scene[0].is_cuda:
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-dense", action="store_true", help="skip the (slow, ~7 GB) dense reference")
    parser.add_argument("--out", type=Path, default=RESULTS / "render.json")
    args = parser.parse_args()
    tuned = tune_malloc()

    rows = []
    configs = [(128, 10_000), (128, 50_000), (256, 10_000), (256, 50_000)]
    for size, n in configs:
        for ch in (3, 16):
            scene = make_scene(n, size, ch, "cpu")
            t, info = time_fwd_bwd(scene, size, "torch", args.repeats)
            rows.append(
                dict(backend="torch", device="cpu", size=size, n=n, channels=ch, seconds=t,
                     pairs=info["n_pairs"], median_radius_px=median_radius(scene, size))
            )
            print(f"torch  {size}^2 x {n:>6} Gaussians, D={ch:>2}: {t * 1000:8.1f} ms  ({info['n_pairs']} pairs)", flush=True)
    dense = None
    if not args.skip_dense:
        scene = make_scene(10_000, 128, 3, "cpu")
        t, _ = time_fwd_bwd(scene, 128, "dense", 1)
        dense = dict(backend="dense", device="cpu", size=128, n=10_000, channels=3, seconds=t)
        rows.append(dense)
        print(f"dense  128^2 x  10000 Gaussians, D= 3: {t * 1000:8.1f} ms", flush=True)
    if torch.cuda.is_available():
        for size, n in configs:
            for ch in (3, 16):
                scene = make_scene(n, size, ch, "cuda")
                t, _ = time_fwd_bwd(scene, size, "gsplat", args.repeats)
                rows.append(dict(backend="gsplat", device=torch.cuda.get_device_name(), size=size, n=n, channels=ch, seconds=t))
                print(f"gsplat {size}^2 x {n:>6} Gaussians, D={ch:>2}: {t * 1000:8.2f} ms", flush=True)

    def lookup(size, n, ch, backend="torch"):
        return next(r["seconds"] for r in rows if r["backend"] == backend and (r["size"], r["n"], r["channels"]) == (size, n, ch))

    ratios = {
        f"feat16_over_rgb_{s}_{n}": lookup(s, n, 16) / lookup(s, n, 3) for s, n in configs
    }
    if dense is not None:
        ratios["dense_over_torch_128_10000"] = dense["seconds"] / lookup(128, 10_000, 3)
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    report = dict(
        machine=machine_description(),
        torch=torch.__version__,
        python=platform.python_version(),
        threads=torch.get_num_threads(),
        malloc_tuned=tuned,
        rows=rows,
        ratios=ratios,
        targets={"dense_over_torch_128_10000": ">= 10", "feat16_over_rgb": "<= 1.5"},
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
