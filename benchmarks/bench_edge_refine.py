"""Cost of Unified-Lift's edge-aware refinement (``edge_aware_argmax``) against the plain argmax.

Score maps are softmaxes of distances to K random centres (blobs like an instance map, K = 35, about the live codes
of the default scene), guided by a random image, at the benchmark's 128x96 and at viewer sizes. Prints ms per map
for the plain argmax and the refined one, the ratio, and the share of pixels the refinement re-decides (those whose
window holds more than one plain id). Writes ``benchmarks/results/edge_refine.json``.
Usage: ``python benchmarks/bench_edge_refine.py [--repeats 5] [--ids 35]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from unisem_ns.unified_lift import boundary_band, edge_aware_argmax
from unisem_ns.utils.atomic import atomic_write_json
from unisem_ns.utils.system import machine_description

RESULTS = Path(__file__).parent / "results"
SIZES = [(96, 128), (480, 640), (720, 1280)]


def blob_scores(h: int, w: int, k: int, seed: int = 0) -> torch.Tensor:
    """[h, w, k] probabilities peaking on k random centres, with boundaries a few pixels wide."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(k, 2, generator=gen) * torch.tensor([float(h), float(w)])
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    dist = ((torch.stack([yy, xx], -1)[:, :, None] - centres) ** 2).sum(-1)
    return torch.softmax(-dist / (h * w / k / 10), dim=-1)


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ids", type=int, default=35)
    parser.add_argument("--out", type=Path, default=RESULTS / "edge_refine.json")
    args = parser.parse_args()
    rows = []
    print(f"{'size':>10} {'plain ms':>9} {'refined ms':>11} {'ratio':>6} {'re-decided':>11}")
    for h, w in SIZES:
        scores = blob_scores(h, w, args.ids)
        guide = torch.rand(h, w, 3, generator=torch.Generator().manual_seed(1))
        plain_ms = timed(lambda: scores.argmax(-1), args.repeats)
        refined_ms = timed(lambda: edge_aware_argmax(scores, guide, 2, 1.5, 0.1), args.repeats)
        share = float(boundary_band(scores.argmax(-1), 2).float().mean())
        rows.append({"height": h, "width": w, "ids": args.ids, "plain_ms": plain_ms, "refined_ms": refined_ms,
                     "ratio": refined_ms / plain_ms, "redecided_share": share})
        print(f"{f'{w}x{h}':>10} {plain_ms:9.1f} {refined_ms:11.1f} {refined_ms / plain_ms:6.1f} {share:11.1%}")
    atomic_write_json(args.out, {"machine": machine_description(), "torch_threads": torch.get_num_threads(),
                                 "radius": 2, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
