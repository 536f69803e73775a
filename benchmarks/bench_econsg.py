"""econSG on the default scene: held-out mIoU/mAcc against the raw cues and the unisem-distill baseline, the
ablations (no CRR, no AE, no latent init), latent d 6/16/32, and render + query speed on CPU.

Each row trains with ``ns-train`` on the train views and is scored by ``unisem-query`` on the held-out views
(one pooled confusion matrix, void ignored), like ``bench_semantic.py``. The econSG preparation (CRR, fusion,
autoencoder) is timed separately from training: it is cached per setting in ``scene/econsg/``.

Writes ``benchmarks/results/econsg.json``. Usage:
``python benchmarks/bench_econsg.py [--iterations 1000] [--rows full,distill,no_crr,...] [--corruptions default heavy]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from _scene_runs import RESULTS, cue_scene, query, raw_cue_scores, train
from unisem_ns.language.encoders import make_text_encoder
from unisem_ns.utils.atomic import atomic_write_json
from unisem_ns.utils.system import machine_description

ROWS = {
    "full": ("econsg", []),
    "distill": ("unisem-distill", []),
    "no_crr": ("econsg", ["--pipeline.datamanager.prep.use-crr", "False"]),
    "no_ae": ("econsg", ["--pipeline.datamanager.prep.use-ae", "False"]),
    "no_latent_init": ("econsg", ["--pipeline.model.latent-init", "False"]),
    "d16": ("econsg", ["--pipeline.datamanager.prep.ae.latent-dim", "16"]),
    "d32": ("econsg", ["--pipeline.datamanager.prep.ae.latent-dim", "32"]),
}


@torch.no_grad()
def speed(run_dir: Path, repeats: int = 5) -> dict:
    """Render and render+query (closed-set over the scene's labels) frames per second on one held-out view."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(run_dir / "config.yml", test_mode="test")
    model = pipeline.model
    camera, _ = next(iter(pipeline.datamanager.fixed_indices_eval_dataloader))
    out = {"gaussians": int(model.gauss_params["means"].shape[0]), "feature_dim": int(model.feature_dim)}
    for name, labels in (("render_fps", []), ("query_fps", list(model.eval_labels))):
        model.query_field.set_labels(labels)
        model.query_field.set_queries([])
        model.get_outputs_for_camera(camera)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            model.get_outputs_for_camera(camera)
        out[name] = repeats / (time.perf_counter() - t0)
    return out


def prep_summary(scene: Path) -> dict:
    """Timings and memory of every econSG preparation cached in this scene, by folder."""
    found = {}
    for manifest in sorted((scene / "econsg").glob("*/manifest.json")):
        s = json.loads(manifest.read_text()).get("summary", {})
        found[manifest.parent.name] = {"seconds": s.get("timings_s", {}).get("total"), "memory": s.get("memory"),
                                       "points": s.get("points"), "frac_changed_vs_raw": s.get("frac_changed_vs_raw")}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--corruptions", nargs="+", default=["default", "heavy"])
    parser.add_argument("--rows", default="full,distill,no_crr,no_ae,no_latent_init,d16,d32",
                        help="rows at the first corruption; later corruptions run only full and distill")
    parser.add_argument("--workdir", type=Path, default=Path("outputs/bench_econsg"))
    parser.add_argument("--out", type=Path, default=RESULTS / "econsg.json")
    args = parser.parse_args()
    encoder = make_text_encoder("minilm")
    report = {"machine": machine_description(), "iterations": args.iterations, "corruptions": {}}
    for i, preset in enumerate(args.corruptions):
        scene = cue_scene(args.workdir, preset, encoder)
        classes = json.loads((scene / "gt" / "classes.json").read_text())
        entry = {"raw_cues": raw_cue_scores(scene, encoder, classes), "rows": {}}
        print(f"[{preset}] raw cues: mIoU {entry['raw_cues']['miou']:.3f}  mAcc {entry['raw_cues']['macc']:.3f}", flush=True)
        rows = args.rows.split(",") if i == 0 else [r for r in ("full", "distill") if r in args.rows.split(",")]
        for row in rows:
            method, extra = ROWS[row]
            t = train(method, scene, args.workdir / preset / "runs", row, args.iterations, *extra)
            q = query(t["run"], args.workdir / preset / "query" / row, "couch")
            seg = q["segmentation"]
            entry["rows"][row] = {"method": method, "flags": extra, "miou": seg["miou"], "macc": seg["macc"],
                                  "train_seconds": t["train_seconds"], "couch": q["queries"]["couch"].get("best_class"),
                                  **speed(t["run"])}
            print(f"[{preset}] {row}: mIoU {seg['miou']:.3f}  mAcc {seg['macc']:.3f}  ({t['train_seconds']:.0f} s)", flush=True)
            report["corruptions"][preset] = {**entry, "preparations": prep_summary(scene)}
            atomic_write_json(args.out, report)  # partial results survive an interrupted run
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
