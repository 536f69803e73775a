"""Per-scene training from the feed-forward predictor vs the usual initialisation: quality against steps and wall
time (docs/FEEDFORWARD_INIT.md).

For one method (``--method econsg`` or ``unified-lift``) and a trained ``unisem-feedforward`` predictor
(``--predictor``; without it a predictor is trained here with ``ns-train unisem-feedforward`` on a
``unisem-make-corpus`` corpus, made once and cached), on held-out scenes:

* ``--test-scenes`` test scenes of the corpus (same distribution as the predictor's training scenes), and
* one scene of the other generator (``unisem-make-scene``'s orbit rooms, ``--ood-seed``, ``--ood-size``) with
  simulated cues: another size, trajectory and room,

the method is trained twice per seed (``--seeds``): usual init, and ``--pipeline.model.init-from-predictor``.
Checkpoints are kept at ``--checkpoints`` (default 0, 50, 100, 300, 1000) and the final step: a run of 1
iteration gives step 0 (the initialisation after its first optimiser step: Nerfstudio's
trainer cannot run 0 iterations and never saves before step 1); the full run saves every gcd(checkpoints) steps
(``--steps-per-save``, ``--save-only-latest-checkpoint False``) and the others are deleted after it. Checkpoint
``step-N`` holds the model after N + 1 optimiser steps (Nerfstudio's numbering). A 1-step warm-up run per scene
first builds the method's cached preparation (econSG's CRR, fusion and autoencoder), which no timed run then pays for. Every kept checkpoint is scored
with ``ns-eval`` (a copy of the run's config.yml with ``load_step: N``): PSNR, depth AbsRel, mIoU (econsg), PQ^scene
(unified-lift). Wall time of a checkpoint = its file's time - the launch of its ns-train (start-up and the
predictor's pass included).

Writes ``--out`` (default ``benchmarks/results/feedforward_init.json``, atomically, after every run) and prints the
curve table and, per metric, the steps / wall time the predictor-initialised run needs to reach the usual init's
final quality.

    .venv/bin/python benchmarks/bench_feedforward_init.py --method econsg [--predictor RUN/config.yml] [--seeds 3]
    .venv/bin/python benchmarks/bench_feedforward_init.py --method econsg --max-steps 20 --seeds 1 --tiny  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from functools import reduce
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
INIT_FLAG = "--pipeline.model.init-from-predictor"
DEFAULT_STEPS = {"econsg": 3000, "unified-lift": 3000}  # ns-train's default lengths (method_configs/)
METRICS = {"psnr": "psnr", "depth_abs_rel": "depth_abs_rel", "miou": "miou", "pq_scene": "pq_scene"}
HIGHER_BETTER = {"psnr": True, "depth_abs_rel": False, "miou": True, "pq_scene": True}
# a predictor small enough to train in minutes on a CPU (the --tiny smoke run)
TINY_PREDICTOR = ["--pipeline.model.predictor.enc-dim", "32", "--pipeline.model.predictor.enc-depth", "2",
                  "--pipeline.model.predictor.enc-heads", "2", "--pipeline.model.predictor.dec-dim", "32",
                  "--pipeline.model.predictor.dec-depth", "2", "--pipeline.model.predictor.dec-heads", "2",
                  "--pipeline.model.predictor.head-feature-dim", "16", "--pipeline.model.predictor.sem-dim", "8"]


def log(msg: str) -> None:
    print(msg, flush=True)


def run(cmd: List[str], logfile: Path) -> None:
    """Run a command, its output into ``logfile``; on failure print the log's tail and stop."""
    log("$ " + " ".join(cmd))
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        tail = logfile.read_text()[-3000:]
        raise SystemExit(f"bench_feedforward_init: {cmd[0]} failed (rc {proc.returncode}); log {logfile}:\n{tail}")


def device_flags() -> List[str]:
    import torch

    return [] if torch.cuda.is_available() else ["--machine.device-type", "cpu"]


# ------------------------------------------------------------------------------------------------ inputs


def corpus_and_predictor(args) -> Path:
    """The predictor to start from: ``--predictor``, or one trained here on the (cached) corpus."""
    if args.predictor is not None:
        return args.predictor
    run_dir = args.workdir / "predictor" / "ff" / "unisem-feedforward" / "t"
    if (run_dir / "config.yml").exists() and sorted((run_dir / "nerfstudio_models").glob("step-*.ckpt")):
        log(f"predictor: reusing {run_dir / 'config.yml'}")
        return run_dir / "config.yml"
    make_corpus_if_needed(args)
    t0 = time.perf_counter()
    run([str(BIN / "ns-train"), "unisem-feedforward", "--data", str(args.corpus), "--output-dir",
         str(args.workdir / "predictor"), "--experiment-name", "ff", "--timestamp", "t", "--max-num-iterations",
         str(args.predictor_steps), "--steps-per-save", str(args.predictor_steps), "--vis", "tensorboard",
         *device_flags(), *(TINY_PREDICTOR if args.tiny else []),
         *(["--pipeline.model.evaluation.views", "2", "--pipeline.model.evaluation.targets-per-scene", "1",
            "--pipeline.model.evaluation.pose-align-steps", "2"] if args.tiny else []),
         *args.predictor_flags.split()], args.workdir / "logs" / "predictor.log")
    log(f"predictor: trained {args.predictor_steps} steps in {time.perf_counter() - t0:.0f} s")
    return run_dir / "config.yml"


def make_corpus_if_needed(args) -> None:
    from feedforward.corpus import CorpusConfig, make_corpus

    cfg = CorpusConfig(out=args.corpus, num_train=args.corpus_train, num_val=args.corpus_val,
                       num_test=args.corpus_test, progress=False)
    t0 = time.perf_counter()
    make_corpus(cfg, log=log)
    log(f"corpus ready at {args.corpus} ({time.perf_counter() - t0:.0f} s)")


def scene_copy(src: Path, dst: Path) -> Path:
    """A copy of a corpus scene for the runs to write into (econSG's cache), leaving the corpus as it was."""
    if (dst / "transforms.json").exists():
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("econsg", "ff_pack.npz"))
    tmp.rename(dst)
    return dst


def held_out_scenes(args) -> Dict[str, Path]:
    """Corpus test scenes (the predictor's distribution) and one scene of the other generator."""
    make_corpus_if_needed(args)
    idx = json.loads((args.corpus / "index.json").read_text())
    scenes = {f"corpus/{name}": scene_copy(args.corpus / name, args.workdir / "scenes" / name)
              for name in idx["test"][: args.test_scenes]}
    if args.ood_seed >= 0:
        w, h = (int(s) for s in args.ood_size.lower().split("x"))
        ood = args.workdir / "scenes" / f"other-seed{args.ood_seed}-{w}x{h}-v{args.ood_views}"
        if not (ood / "language_features").is_dir():
            from unisem_ns.cues.simulator import CueCorruption, simulate_cues
            from unisem_ns.data.synthetic_scene import generate_scene
            from unisem_ns.language.encoders import make_text_encoder

            if ood.exists():
                shutil.rmtree(ood)
            generate_scene(ood, seed=args.ood_seed, views=args.ood_views, width=w, height=h, progress=False)
            simulate_cues(ood, make_text_encoder("minilm"), CueCorruption.preset("default"), seed=0, progress=False)
        scenes[f"other/seed{args.ood_seed}-{w}x{h}"] = ood
    return scenes


# ------------------------------------------------------------------------------------------------ runs


def train(args, scene: Path, out: Path, name: str, steps: int, seed: int, init: bool, every: int,
          predictor: Path) -> Dict:
    """One ``ns-train`` run; returns the run folder and its launch time."""
    run_dir = out / "bench" / args.method / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    extra = [INIT_FLAG, str(predictor), "--pipeline.model.init-views", str(args.init_views)] if init else []
    t0 = time.time()
    run([str(BIN / "ns-train"), args.method, "--data", str(scene), "--output-dir", str(out), "--experiment-name",
         "bench", "--timestamp", name, "--max-num-iterations", str(steps), "--machine.seed", str(seed),
         "--vis", "tensorboard", "--steps-per-eval-all-images", "0", "--steps-per-eval-image", "0",
         "--steps-per-eval-batch", "0", "--steps-per-save", str(every), "--save-only-latest-checkpoint", "False",
         *device_flags(), *extra, *args.train_flags.split()], out / "logs" / f"{name}.log")
    return {"run": run_dir, "launch": t0, "train_seconds": time.time() - t0}


def evaluate(run_dir: Path, step: int) -> Dict[str, float]:
    """``ns-eval`` of checkpoint ``step`` of a run: its config.yml with ``load_step: step``."""
    cfg = (run_dir / "config.yml").read_text()
    if not re.search(r"^load_step: .*$", cfg, flags=re.M):
        raise SystemExit(f"{run_dir / 'config.yml'}: no top-level load_step to set")
    yml = run_dir / f"config_step{step}.yml"
    yml.write_text(re.sub(r"^load_step: .*$", f"load_step: {step}", cfg, count=1, flags=re.M))
    out = run_dir / f"eval_step{step}.json"
    run([str(BIN / "ns-eval"), "--load-config", str(yml), "--output-path", str(out)],
        run_dir / f"eval_step{step}.log")
    res = json.loads(out.read_text())["results"]
    return {k: float(res[src]) for k, src in METRICS.items() if src in res}


def ckpt_steps(run_dir: Path) -> Dict[int, Path]:
    return {int(p.stem.split("-")[1]): p for p in (run_dir / "nerfstudio_models").glob("step-*.ckpt")}


def curve(args, scene: Path, work: Path, tag: str, seed: int, init: bool, steps: int, predictor: Path) -> Dict:
    """Checkpoints at 0, the wanted steps below ``steps`` and ``steps - 1`` (the final one), each evaluated."""
    wanted = sorted({s for s in args.checkpoint_list if 0 < s < steps})
    every = reduce(math.gcd, wanted) if wanted else steps
    points: Dict[int, Dict] = {}
    if 0 in args.checkpoint_list:  # the initialisation: 1 iteration (ns-train cannot run 0: its stats need a step)
        r0 = train(args, scene, work, f"{tag}-init", 1, seed, init, steps, predictor)
        (s0, p0), = ckpt_steps(r0["run"]).items()
        points[0] = {"wall_s": p0.stat().st_mtime - r0["launch"], **evaluate(r0["run"], s0)}
        shutil.rmtree(r0["run"] / "nerfstudio_models")
    r = train(args, scene, work, tag, steps, seed, init, every, predictor)
    have = ckpt_steps(r["run"])
    final = max(have)
    for s, p in sorted(have.items()):
        if s in wanted or s == final:
            points[s if s != final else steps] = {"wall_s": p.stat().st_mtime - r["launch"], "ckpt_step": s}
        else:
            p.unlink()  # not a wanted point: keep the disk small
    for s in sorted(points):
        if s == 0:
            continue
        points[s].update(evaluate(r["run"], points[s]["ckpt_step"]))
    return {"train_seconds": r["train_seconds"], "points": {str(k): v for k, v in sorted(points.items())}}


# ------------------------------------------------------------------------------------------------ summary


def mean_curve(seeds: List[Dict]) -> Dict[str, Dict[str, float]]:
    steps = sorted({int(s) for c in seeds for s in c["points"]})
    out = {}
    for s in steps:
        rows = [c["points"][str(s)] for c in seeds if str(s) in c["points"]]
        keys = sorted({k for r in rows for k in r if k != "ckpt_step"})
        out[str(s)] = {k: float(np.nanmean([r.get(k, float("nan")) for r in rows])) for k in keys}
    return out


def time_to_reach(usual: Dict[str, Dict[str, float]], ff: Dict[str, Dict[str, float]]) -> Dict[str, Dict]:
    """Per metric: the usual init's final value, and the first checkpoint (step, wall s) of the predictor run that
    is at least as good (None: not reached)."""
    last = max(usual, key=int)
    out = {}
    for m in METRICS:
        target = usual[last].get(m)
        if target is None or target != target:
            continue
        hit = None
        for s in sorted(ff, key=int):
            v = ff[s].get(m)
            if v is not None and v == v and ((v >= target) if HIGHER_BETTER[m] else (v <= target)):
                hit = {"step": int(s), "wall_s": ff[s]["wall_s"]}
                break
        out[m] = {"usual_final": target, "usual_final_step": int(last), "usual_final_wall_s": usual[last]["wall_s"],
                  "predictor_reaches_at": hit}
    return out


def table(scene: str, curves: Dict[str, Dict]) -> str:
    lines = [f"\n[{scene}]", f"{'init':10} {'step':>6} {'wall s':>8} " + " ".join(f"{m:>14}" for m in METRICS)]
    for init, c in curves.items():
        for s, row in sorted(c.items(), key=lambda kv: int(kv[0])):
            vals = " ".join(f"{row.get(m, float('nan')):>14.4f}" for m in METRICS)
            lines.append(f"{init:10} {int(s):>6} {row['wall_s']:>8.1f} {vals}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=sorted(DEFAULT_STEPS), default="econsg")
    ap.add_argument("--predictor", type=Path, default=None,
                    help="config.yml of an ns-train unisem-feedforward run (or a save_unisem_predictor file); "
                         "default: train one here on --corpus")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=None, help="training length (default: the method's own)")
    ap.add_argument("--checkpoints", default="0,50,100,300,1000")
    ap.add_argument("--init-views", type=int, default=8)
    ap.add_argument("--test-scenes", type=int, default=3, help="corpus test scenes (the predictor's distribution)")
    ap.add_argument("--ood-seed", type=int, default=7, help="seed of the other-generator scene (-1: none)")
    ap.add_argument("--ood-size", default="128x96")
    ap.add_argument("--ood-views", type=int, default=48)
    ap.add_argument("--corpus", type=Path, default=None, help="default: <cache>/ff_corpus_64x48 (bench_feedforward's)")
    ap.add_argument("--corpus-train", type=int, default=160)
    ap.add_argument("--corpus-val", type=int, default=8)
    ap.add_argument("--corpus-test", type=int, default=16)
    ap.add_argument("--predictor-steps", type=int, default=1500, help="when training the predictor here")
    ap.add_argument("--predictor-flags", default="", help="extra ns-train unisem-feedforward flags")
    ap.add_argument("--train-flags", default="", help="extra ns-train flags for every per-scene run")
    ap.add_argument("--tiny", action="store_true",
                    help="smoke-test scale: a tiny predictor architecture when training one here")
    ap.add_argument("--workdir", type=Path, default=Path("outputs/bench_feedforward_init"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "feedforward_init.json")
    args = ap.parse_args()
    from unisem_ns.data.default_scene import cache_root
    from unisem_ns.utils.atomic import atomic_write_json
    from unisem_ns.utils.system import machine_description

    args.corpus = args.corpus or cache_root() / "ff_corpus_64x48"
    args.checkpoint_list = sorted({int(s) for s in args.checkpoints.split(",") if s.strip()})
    steps = args.max_steps or DEFAULT_STEPS[args.method]
    t_start = time.perf_counter()
    predictor = corpus_and_predictor(args)
    scenes = held_out_scenes(args)
    report = {"machine": machine_description(), "method": args.method, "predictor": str(predictor),
              "steps": steps, "checkpoints": args.checkpoint_list, "seeds": args.seeds, "init_views": args.init_views,
              "threads": os.environ.get("OMP_NUM_THREADS"), "scenes": {}}
    for scene_name, scene in scenes.items():
        entry = {"path": str(scene), "runs": {"usual": [], "predictor": []}}
        report["scenes"][scene_name] = entry
        work = args.workdir / "runs" / scene_name.replace("/", "_")
        # warm-up: a method's cached scene preparation (econSG's CRR / fusion / AE) is built here, so that no
        # timed run below pays for it
        t0 = time.perf_counter()
        shutil.rmtree(train(args, scene, work, "warmup", 1, 0, False, 1, predictor)["run"])
        entry["warmup_seconds"] = time.perf_counter() - t0
        for seed in range(args.seeds):
            for init in ("usual", "predictor"):
                c = curve(args, scene, work, f"{init}-s{seed}", seed, init == "predictor", steps, predictor)
                entry["runs"][init].append(c)
                atomic_write_json(args.out, report)  # partial results survive an interruption
        entry["mean"] = {k: mean_curve(v) for k, v in entry["runs"].items()}
        entry["reach_usual_final"] = time_to_reach(entry["mean"]["usual"], entry["mean"]["predictor"])
        atomic_write_json(args.out, report)
        log(table(scene_name, entry["mean"]))
        for m, r in entry["reach_usual_final"].items():
            hit = r["predictor_reaches_at"]
            where = (f"step {hit['step']} ({hit['wall_s']:.0f} s)" if hit else "not reached")
            log(f"  {m}: usual init's final {r['usual_final']:.4f} (step {r['usual_final_step']}, "
                f"{r['usual_final_wall_s']:.0f} s); predictor init reaches it at {where}")
    report["total_seconds"] = time.perf_counter() - t_start
    atomic_write_json(args.out, report)
    log(f"wrote {args.out} ({report['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
