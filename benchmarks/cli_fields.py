"""How many settings each method's ``ns-train`` exposes: leaf fields of its config (every value a user can set on
the command line), in total and below ``pipeline.model`` / ``pipeline.datamanager``.

``python benchmarks/cli_fields.py [--json results/cli_fields.json]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Dict


def leaf_fields(obj, prefix: str = "") -> Dict[str, object]:
    """{dotted name: value} of every field below ``obj`` that is not itself a dataclass (and not ``_target``)."""
    out: Dict[str, object] = {}
    for f in dataclasses.fields(obj):
        if f.name == "_target":
            continue
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out.update(leaf_fields(v, prefix + f.name + "."))
        else:
            out[prefix + f.name] = v
    return out


def count_fields() -> Dict[str, Dict[str, int]]:
    """Counts per registered method. Entry points that do not load in this tree (an older checkout measured
    against today's install) are skipped."""
    from importlib.metadata import entry_points

    import unisem_ns.ns  # noqa: F401  (our Nerfstudio start-up patch, as ns-train has it)

    out = {}
    for ep in sorted(entry_points(group="nerfstudio.method_configs"), key=lambda e: e.name):
        try:
            config = ep.load().config
        except (ImportError, AttributeError):
            continue
        fields = leaf_fields(config)
        name = ep.name
        out[name] = {
            "total": len(fields),
            "model": sum(k.startswith("pipeline.model.") for k in fields),
            "datamanager": sum(k.startswith("pipeline.datamanager.") for k in fields),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the counts here")
    args = parser.parse_args()
    counts = count_fields()
    print(f"{'method':28s} {'total':>6s} {'model':>6s} {'datamanager':>12s}")
    for name, c in counts.items():
        print(f"{name:28s} {c['total']:6d} {c['model']:6d} {c['datamanager']:12d}")
    if args.json is not None:
        from unisem_ns.utils.atomic import atomic_write_json

        atomic_write_json(args.json, counts)


if __name__ == "__main__":
    main()
