"""Benchmark of GSemSplat (CPU scale): train the tiny pair model on synthetic scenes, score held-out pairs.

1. makes (once, cached) a synthetic corpus with dense features (``unisem-make-corpus --dense True``; default
   64x48 px, 32-frame walks, default cue corruption) in ``$UNISEM_CACHE_DIR/gsemsplat_corpus_<W>x<H>``;
2. trains :class:`feedforward.gsemsplat.model.GSemSplatPredictor` (tiny config) from scratch with
   :func:`feedforward.gsemsplat.training.train_pairs` (the loss ``ns-train gsemsplat`` runs), or loads ``--load``;
3. scores the held-out test scenes with :func:`feedforward.gsemsplat.evaluate.evaluate_pairs`: rows region /
   context / dual (head by max relevancy) / raw target cue / oracle (GT geometry, predicted semantics), mIoU and
   localisation under GSemSplat's and LangSplat's protocols, masked PSNR, depth AbsRel, time per pair;
4. prints the table and writes ``--out`` (default ``benchmarks/results/gsemsplat.json``) atomically.

Defaults are sized for <= 20 min on one CPU core (measured: ~3 s per 64x48 corpus scene, ~0.85 s per training
step, ~1 s per scored pair; ~13 min on a cold cache)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_gsemsplat.py [--steps 600] [--train-scenes 48] [--test-scenes 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from feedforward.corpus import CorpusConfig, load_split, make_corpus
from feedforward.gsemsplat.checkpoint import load_gsemsplat_checkpoint, save_gsemsplat
from feedforward.gsemsplat.evaluate import GSemSplatEvalConfig, evaluate_pairs, format_table
from feedforward.gsemsplat.model import GSemSplatConfig, GSemSplatPredictor
from feedforward.gsemsplat.training import GSemSplatTrainConfig, train_pairs
from unisem_ns.data.default_scene import cache_root
from unisem_ns.language import make_text_encoder
from unisem_ns.utils.atomic import atomic_write_json
from unisem_ns.utils.system import machine_description

HERE = Path(__file__).resolve().parent


def _jsonable(d):
    return {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600, help="training steps (1 pair + --targets targets each)")
    ap.add_argument("--targets", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-scenes", type=int, default=48)
    ap.add_argument("--test-scenes", type=int, default=8)
    ap.add_argument("--pairs-per-scene", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=48)
    ap.add_argument("--freeze-backbone", type=int, default=0, help="1: freeze the ViT encoder/decoder (release)")
    ap.add_argument("--no-oracle", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--load", type=Path, default=None, help="score this save_gsemsplat checkpoint (no training)")
    ap.add_argument("--save", type=Path, default=None, help="write the trained model here (save_gsemsplat)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gsemsplat.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, flush=True)  # noqa: E731

    corpus_cfg = CorpusConfig(out=args.corpus or cache_root() / f"gsemsplat_corpus_{args.width}x{args.height}",
                              num_train=args.train_scenes, num_val=0, num_test=args.test_scenes, width=args.width,
                              height=args.height, dense=True, progress=True)
    t0 = time.perf_counter()
    make_corpus(corpus_cfg, log=log)
    corpus_s = time.perf_counter() - t0
    log(f"corpus ready at {corpus_cfg.out} ({corpus_s:.0f} s)")
    test_scenes = load_split(corpus_cfg.out, "test", args.test_scenes)
    train_cfg = GSemSplatTrainConfig(lr=args.lr)
    hist, train_s = [], 0.0
    if args.load is not None:
        model = load_gsemsplat_checkpoint(args.load)
        n_train = 0
    else:
        train_scenes = load_split(corpus_cfg.out, "train", args.train_scenes)
        n_train = len(train_scenes)
        torch.manual_seed(args.seed)
        model = GSemSplatPredictor(GSemSplatConfig(freeze_backbone=bool(args.freeze_backbone)))
        log(f"training {args.steps} steps on {n_train} scenes")
        t0 = time.perf_counter()
        hist = train_pairs(model, train_scenes, args.steps, train_cfg, targets=args.targets, seed=args.seed, log=log)
        train_s = time.perf_counter() - t0
        model.input_size = (args.height, args.width)
        if args.save is not None:
            save_gsemsplat(model, args.save)
    encoder = make_text_encoder("minilm")
    ev = GSemSplatEvalConfig(pairs_per_scene=args.pairs_per_scene, oracle=not args.no_oracle)
    t0 = time.perf_counter()
    res = evaluate_pairs(model, test_scenes, encoder, ev, log=None)
    eval_s = time.perf_counter() - t0
    log(format_table(res))
    last = hist[-min(25, len(hist)):] if hist else []
    out = {
        "machine": machine_description(), "threads": args.threads,
        "corpus": _jsonable(dataclasses.asdict(corpus_cfg)), "corpus_s": corpus_s,
        "train_scenes": n_train, "test_scenes": len(test_scenes), "steps": args.steps if args.load is None else 0,
        "targets": args.targets, "loaded": str(args.load) if args.load else None,
        "predictor": _jsonable(dataclasses.asdict(model.cfg)), "train": _jsonable(dataclasses.asdict(train_cfg)),
        "eval": _jsonable(dataclasses.asdict(ev)),
        "train_s": train_s, "train_s_per_step": train_s / max(len(hist), 1), "eval_s": eval_s,
        "final_train_stats": {k: float(np.mean([h[k] for h in last if k in h])) for k in (last[0] if last else {})},
        "results": res,
        "notes": "rows: region/context = one decoded head; dual = per query the head with the larger max smoothed "
                 "relevancy (GSemSplat); raw_cue = the target's own 2D per-mask cue; oracle_dual = predicted "
                 "semantics on GT geometry (GT depth + poses). Queries = GT classes visible in the target, text = "
                 "class name. Per-scene econSG on the same pairs: not run (optional, not implemented).",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)
    log(f"wrote {args.out} (train {train_s:.0f} s, eval {eval_s:.0f} s)")
    return out


if __name__ == "__main__":
    main()
