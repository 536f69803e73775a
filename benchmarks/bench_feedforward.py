"""Benchmark of the UniSem feed-forward predictor (CPU scale): EGD on/off, MTC on/off, V = 2/8/16, held-out scenes.

1. makes (once, cached) the synthetic corpus: 64x48 px, 32 views per scene, default cue corruption;
2. trains the tiny predictor with the same seed and step budget per configuration (base, +EGD, +MTC, +EGD+MTC),
   through :func:`feedforward.training.training_losses` (the code ns-train runs);
3. scores every model on the held-out test scenes at V = 2, 8, 16 (Uni3R protocol, pose alignment), with the
   trivial baselines (constant mean-training depth aligned the same way; the target view's own raw cue);
4. writes ``--out`` (default ``benchmarks/results/feedforward.json``) and the same path with ``.md`` (a table for
   RESULTS.md).

    .venv/bin/python benchmarks/bench_feedforward.py [--steps 500] [--configs base,egd,mtc,egd+mtc]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from feedforward.config import EvalConfig, FeedForwardConfig
from feedforward.corpus import CorpusConfig, load_split, make_corpus
from feedforward.evaluate import evaluate_scenes, mean_training_depth
from feedforward.model import UniSemPredictor
from feedforward.sampling import random_view_set
from feedforward.training import lr_at, training_losses
from unisem_ns.data.default_scene import cache_root
from unisem_ns.language import make_text_encoder
from unisem_ns.utils.atomic import atomic_write_bytes, atomic_write_json

HERE = Path(__file__).resolve().parent


def cue_rows(scenes, per_scene: int = 64) -> torch.Tensor:
    """A sample of training cue embeddings (for the semantic bottleneck's PCA init)."""
    rows = [torch.from_numpy(s.cue_feats[:per_scene].astype(np.float32)) for s in scenes if s.cue_feats is not None]
    return torch.cat(rows)


def train(cfg: FeedForwardConfig, scenes, steps: int, seed: int, log) -> tuple:
    torch.manual_seed(seed)
    model = UniSemPredictor(cfg.predictor)
    model.init_semantic_subspace(cue_rows(scenes))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.schedule.lr, weight_decay=cfg.schedule.weight_decay)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    hist = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, cfg.schedule.lr, cfg.schedule.lr_final, cfg.schedule.warmup_fraction)
        vs = random_view_set(scenes, rng, cfg.schedule.views, cfg.schedule.targets)
        losses, stats = training_losses(model, vs, step, steps, cfg, gen)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        if cfg.schedule.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.schedule.grad_clip)
        opt.step()
        hist.append({k: float(v.detach()) for k, v in losses.items()} | stats)
        if step % 25 == 0 or step == steps - 1:
            recent = hist[-25:]
            keys = sorted({k for h in recent for k in h})
            log(f"    step {step} ({time.perf_counter() - t0:.0f} s): " + ", ".join(f"{k} {np.mean([h[k] for h in recent if k in h]):.4f}" for k in keys))
    return model, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--configs", default="base,egd,mtc")
    ap.add_argument("--train-scenes", type=int, default=160)
    ap.add_argument("--test-scenes", type=int, default=16)
    ap.add_argument("--views", default="2,8,16")
    ap.add_argument("--targets-per-scene", type=int, default=2,
                    help="targets per held-out scene and V (16 x 2 = 32 target views: macro mIoU over 16 classes is "
                         "dominated by the rare ones, and 8 views left some classes with ~50 pixels)")
    ap.add_argument("--pose-align-steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--lift-row", type=int, default=1,
                    help="1: also score the base model with its semantic head zeroed (context cues lifted on its geometry)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "feedforward.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, flush=True)  # noqa: E731

    corpus_cfg = CorpusConfig(out=args.corpus or cache_root() / "ff_corpus_64x48", num_train=160, num_val=8, num_test=16)
    t0 = time.perf_counter()
    make_corpus(corpus_cfg, log=log)
    log(f"corpus ready at {corpus_cfg.out} ({time.perf_counter() - t0:.0f} s)")
    train_scenes = load_split(corpus_cfg.out, "train", args.train_scenes)
    test_scenes = load_split(corpus_cfg.out, "test", args.test_scenes)
    const_depth = mean_training_depth(train_scenes)
    encoder = make_text_encoder("minilm")
    views = tuple(int(v) for v in args.views.split(","))
    ev = EvalConfig(views=views, targets_per_scene=args.targets_per_scene, pose_align_steps=args.pose_align_steps)

    runs = {}
    for name in args.configs.split(","):
        cfg = FeedForwardConfig()
        cfg.schedule.steps = args.steps
        cfg.egd.enabled = "egd" in name
        cfg.mtc.enabled = "mtc" in name
        log(f"[{name}] training {args.steps} steps on {len(train_scenes)} scenes")
        model, train_s = train(cfg, train_scenes, args.steps, cfg.seed, log)
        t1 = time.perf_counter()
        res = evaluate_scenes(model, test_scenes, ev, encoder, const_depth, log=log)
        runs[name] = {"train_s": train_s, "train_s_per_step": train_s / args.steps,
                      "eval_s": time.perf_counter() - t1, "results": res,
                      "egd": vars(cfg.egd), "mtc": vars(cfg.mtc)}
        if name != "base":
            continue

        def extra_row(label: str, row_model, row_ev: EvalConfig) -> None:
            """Score the trained base model once more under another evaluation setting (no new training)."""
            log(f"[{label}]")
            t1 = time.perf_counter()
            res = evaluate_scenes(row_model, test_scenes, row_ev, encoder, const_depth, log=log)
            runs[label] = {"train_s": train_s, "train_s_per_step": train_s / args.steps,
                           "eval_s": time.perf_counter() - t1, "results": res, "extra_eval": True}

        if args.lift_row:
            lifted = copy.deepcopy(model)
            lifted.drop_semantic_head()  # the context views' cues splatted on the model's geometry
            extra_row("base, lifted cue only", lifted, ev)
    out = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "threads": args.threads, "cuda": torch.cuda.is_available()},
        "corpus": {k: str(v) if isinstance(v, Path) else v for k, v in vars(corpus_cfg).items()},
        "train_scenes": len(train_scenes), "test_scenes": len(test_scenes), "steps": args.steps,
        "const_depth_m": const_depth, "eval": {"views": list(views), "targets_per_scene": args.targets_per_scene,
                                               "pose_align_steps": args.pose_align_steps, "depth_align": ev.depth_align},
        "predictor": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(FeedForwardConfig().predictor).items()},
        "loss": vars(FeedForwardConfig().loss),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)
    atomic_write_bytes(args.out.with_suffix(".md"), snippet(out).encode())
    log(f"wrote {args.out}")


def rewrite_snippet(path: Path = HERE / "results" / "feedforward.json") -> None:
    """Regenerate the markdown snippet from a results JSON (no training)."""
    atomic_write_bytes(HERE / "results" / "feedforward.md", snippet(json.loads(Path(path).read_text())).encode())


def snippet(out: dict) -> str:
    lines = [
        "## UniSem feed-forward predictor (CPU scale)",
        "",
        f"`benchmarks/bench_feedforward.py --steps {out['steps']}`: tiny predictor (ViT 96-d x4 enc / x4 dec, patch 8, "
        f"DPT 64), trained from scratch on {out['train_scenes']} synthetic scenes (64x48, 32-frame walks, default cue "
        f"corruption), {out['steps']} steps of 1 view set (V in 2-4, 2 targets, semantic loss on "
        f"{dict(targets='the target', all='all').get(out.get('loss', {}).get('semantic_views', 'all'))} views); scored on {out['test_scenes']} held-out "
        f"scenes with Uni3R's protocol ({out['eval']['targets_per_scene']} targets per scene and V, "
        f"{out['eval']['pose_align_steps']} pose-alignment steps, depth {out['eval']['depth_align']}-aligned, GT <= 10 m). "
        f"Machine: {out['machine']['platform']}, {out['machine']['threads']} threads, no GPU.",
        "",
        "| config | V | AbsRel | δ<1.25 | δ<1.03 | mIoU | mAcc | mIoU (micro) | mAcc (micro) | PSNR | predict s/scene |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    first = None
    for name, run in out["runs"].items():
        for v, r in run["results"].items():
            first = first or r
            lines.append(f"| {name} | {v[1:]} | {r['depth_abs_rel']:.3f} | {r['depth_delta_1.25']:.3f} | "
                         f"{r['depth_delta_1.03']:.3f} | {r.get('miou', float('nan')):.3f} | {r.get('macc', float('nan')):.3f} | "
                         f"{r.get('miou_micro', float('nan')):.3f} | {r.get('macc_micro', float('nan')):.3f} | {r['psnr']:.2f} | {r['predict_s_per_scene']:.3f} |")
    lines.append("")
    lines.append("Trivial baselines (same targets and pixels):")
    lines.append("")
    lines.append("| baseline | V | AbsRel | δ<1.25 | δ<1.03 | mIoU | mAcc | mIoU (micro) | mAcc (micro) |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    some = next(iter(out["runs"].values()))["results"]
    for v, r in some.items():
        lines.append(f"| constant depth {out['const_depth_m']:.2f} m / raw target cue | {v[1:]} | "
                     f"{r['const_depth_abs_rel']:.3f} | {r['const_depth_delta_1.25']:.3f} | {r['const_depth_delta_1.03']:.3f} | "
                     f"{r.get('raw_cue_miou', float('nan')):.3f} | {r.get('raw_cue_macc', float('nan')):.3f} | "
                     f"{r.get('raw_cue_miou_micro', float('nan')):.3f} | {r.get('raw_cue_macc_micro', float('nan')):.3f} |")
    lines.append("")
    lines.append("Training time: " + ", ".join(f"{n} {r['train_s']:.0f} s ({r['train_s_per_step']:.2f} s/step)"
                                             for n, r in out["runs"].items() if not r.get("extra_eval")) + ".")
    lines.append("")
    if "base, lifted cue only" in out["runs"]:
        lines.append("'base, lifted cue only' is the trained base model with its head's semantic channels zeroed: the "
                     "context views' cues splatted on the model's own geometry and rendered at the target.")
        lines.append("")
    if out["eval"]["targets_per_scene"] == 1:
        lines.append("The targets are the same frame for every V here (1 target per scene), so the baselines repeat.")
    else:
        lines.append("The 2-view protocol's targets (frames i % 8 in {1, 4}) differ from the V-view protocol's (odd frames "
                     "among the first 2V - 1), so each V has its own baseline row.")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
