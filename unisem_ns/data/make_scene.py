"""``unisem-make-scene``: write a procedural indoor scene with exact ground truth to disk.

Example::

    unisem-make-scene --seed 3 --views 64 --width 160 --height 120 --out outputs/scene-seed3
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import tyro

from unisem_ns.data.synthetic_scene import generate_scene


@dataclass
class MakeSceneArgs:
    """Generate a procedural indoor scene (Nerfstudio transforms.json layout + exact GT labels)."""

    out: Path = Path("outputs/unisem-synthetic")
    """Output folder; must be missing or empty unless --overwrite is given."""
    seed: int = 0
    """Scene seed (>= 0): room size, furniture, textures and camera poses."""
    views: int = 48
    """Number of rendered views."""
    width: int = 128
    """Image width in pixels."""
    height: int = 96
    """Image height in pixels."""
    test_every: int = 8
    """Every N-th view (index % N == 0) goes to the test (= val) split; the rest are train views."""
    fov_deg: float = 65.0
    """Horizontal field of view in degrees."""
    ply_points: int = 10000
    """Approximate number of points in the seed point cloud sparse_pc.ply."""
    overwrite: bool = False
    """Replace the generator's outputs in a non-empty --out folder."""
    progress: bool = True
    """Show a progress bar while rendering."""


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point (``argv`` defaults to ``sys.argv[1:]``)."""
    args = tyro.cli(MakeSceneArgs, args=argv, prog="unisem-make-scene")
    start = time.perf_counter()
    try:
        out = generate_scene(
            args.out,
            seed=args.seed,
            views=args.views,
            width=args.width,
            height=args.height,
            test_every=args.test_every,
            overwrite=args.overwrite,
            progress=args.progress,
            fov_deg=args.fov_deg,
            ply_points=args.ply_points,
        )
    except (FileExistsError, ValueError) as err:
        raise SystemExit(f"unisem-make-scene: error: {err}") from None
    print(
        f"Wrote scene (seed {args.seed}, {args.views} views, {args.width}x{args.height}) to {out.resolve()} "
        f"in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
