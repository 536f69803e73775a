"""unisem-feedforward through Nerfstudio: ns-train, ns-eval (held-out scenes, per V), unisem-query, and
multi-process DDP on CPU (gloo)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import ns_bin

pytest.importorskip("nerfstudio")
pytestmark = pytest.mark.slow

METHOD = "unisem-feedforward=feedforward.method_config:unisem_feedforward"
TINY_FLAGS = [
    "--pipeline.model.predictor.enc-dim", "32", "--pipeline.model.predictor.enc-depth", "2",
    "--pipeline.model.predictor.enc-heads", "2", "--pipeline.model.predictor.dec-dim", "32",
    "--pipeline.model.predictor.dec-depth", "2", "--pipeline.model.predictor.dec-heads", "2",
    "--pipeline.model.predictor.head-feature-dim", "16", "--pipeline.model.predictor.sem-dim", "8",
    "--pipeline.model.evaluation.views", "2", "4", "--pipeline.model.evaluation.targets-per-scene", "1",
    "--pipeline.model.evaluation.pose-align-steps", "2", "--pipeline.model.egd.enabled", "True",
    "--pipeline.model.mtc.enabled", "True",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from feedforward.corpus import CorpusConfig, make_corpus

    out = tmp_path_factory.mktemp("ffns") / "corpus"
    make_corpus(CorpusConfig(out=out, num_train=2, num_val=0, num_test=1, views=32, width=32, height=24, progress=False))
    return out


def _env():
    return dict(os.environ, NERFSTUDIO_METHOD_CONFIGS=METHOD, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def test_train_eval_query(corpus, tmp_path):
    import subprocess

    out = tmp_path / "runs"
    proc = subprocess.run(
        [ns_bin("ns-train"), "unisem-feedforward", "--data", str(corpus), "--output-dir", str(out), "--experiment-name",
         "ff", "--timestamp", "t", "--max-num-iterations", "3", "--steps-per-save", "2", "--vis", "tensorboard",
         "--machine.device-type", "cpu", *TINY_FLAGS],
        capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = out / "ff" / "unisem-feedforward" / "t"
    assert list((run / "nerfstudio_models").glob("step-*.ckpt"))
    metrics = tmp_path / "metrics.json"
    proc = subprocess.run([ns_bin("ns-eval"), "--load-config", str(run / "config.yml"), "--output-path", str(metrics)],
                          capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(metrics.read_text())["results"]
    for v in ("v2", "v4"):
        for k in ("depth_abs_rel", "depth_delta_1.03", "miou", "macc", "macc_micro", "psnr", "const_depth_abs_rel",
                  "raw_cue_miou"):
            assert f"{v}_{k}" in res, f"{v}_{k}"
    assert 0.0 <= res["v2_miou"] <= 1.0 and res["v2_depth_abs_rel"] > 0
    # unisem-query renders the displayed prediction with queries and the label set
    qout = tmp_path / "query"
    proc = subprocess.run([sys.executable, "-m", "unisem_ns.query", "--load-config", str(run / "config.yml"),
                           "--queries", "chair;sofa", "--output", str(qout)],
                          capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    q = json.loads((qout / "metrics.json").read_text())
    assert q["views"] == 8 and "segmentation" in q and set(q["queries"]) == {"chair", "sofa"}
    assert len(list(qout.glob("*/relevancy_chair.png"))) == 8


def test_missing_corpus_is_one_line(tmp_path):
    import subprocess

    proc = subprocess.run([ns_bin("ns-train"), "unisem-feedforward", "--data", str(tmp_path / "nope"), "--vis",
                           "tensorboard", "--output-dir", str(tmp_path), "--machine.device-type", "cpu"],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode != 0
    line = [l for l in proc.stderr.splitlines() if l.startswith("unisem_ns: error:")]
    assert line and "index.json" in line[0] and "unisem-make-corpus" in line[0]


@pytest.mark.timeout(400)
def test_ddp_two_processes_gloo_cpu(corpus, tmp_path):
    """Nerfstudio's train_loop in 2 processes on gloo (feedforward.ddp; ns-train's own worker asserts CUDA)."""
    import subprocess

    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "feedforward.ddp", "unisem-feedforward", "--data", str(corpus), "--output-dir", str(out),
         "--experiment-name", "ddp", "--timestamp", "t", "--max-num-iterations", "2", "--steps-per-save", "1",
         "--vis", "tensorboard", "--machine.device-type", "cpu", "--machine.num-devices", "2", *TINY_FLAGS],
        capture_output=True, text=True, timeout=380, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpts = list((out / "ddp" / "unisem-feedforward" / "t" / "nerfstudio_models").glob("step-*.ckpt"))
    assert ckpts, proc.stdout[-2000:]
    import torch

    import unisem_ns.ns.checkpoints  # noqa: F401  (allow-list for weights_only loads)

    state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    # DDP wraps the model: keys carry the 'module.' prefix of the gloo-synchronised model
    assert any(k.startswith("_model.module.predictor.") for k in state["pipeline"])
