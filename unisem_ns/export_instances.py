"""``unisem-export-instances``: a trained instance run's Gaussians to a PLY with per-Gaussian instance ids (and
class ids where the scene had language cues), e.g. for robotics pipelines or a point-cloud viewer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import tyro

from unisem_ns.capabilities import InstanceHead
from unisem_ns.data.scene_io import InputError, exit_on_input_error


@dataclass
class ExportArgs:
    """Write x, y, z, red, green, blue (instance colour), instance and class per Gaussian."""

    load_config: Path
    """config.yml of an instance run (ns-train unified-lift)."""
    output: Path = Path("outputs/instances.ply")
    """PLY file to write (binary; class names go into header comments)."""


def run_export(args: ExportArgs) -> Path:
    from unisem_ns.ns.trainer import load_run

    _, pipeline, _, _ = load_run(args.load_config, test_mode="inference")
    model = pipeline.model
    if not isinstance(model, InstanceHead):
        raise InputError(
            f"{args.load_config}: method '{type(model).__name__}' predicts no instances; export a unified-lift run"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    model.export_ply(args.output)
    return args.output


def main(argv: Optional[List[str]] = None) -> None:
    args = tyro.cli(ExportArgs, args=argv)
    try:
        path = run_export(args)
    except InputError as e:
        raise exit_on_input_error(e) from None
    print(f"unisem-export-instances: wrote {path}")


if __name__ == "__main__":
    main()
