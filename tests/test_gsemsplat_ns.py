"""GSemSplat through Nerfstudio (ns-train gsemsplat, ns-eval on held-out pairs, unisem-query) and the held-out
pair evaluation (``feedforward.gsemsplat.evaluate``) on a hand-built pair."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch

from conftest import ns_bin

pytestmark = pytest.mark.slow

METHOD = "gsemsplat=feedforward.gsemsplat.method_config:gsemsplat"
TINY_FLAGS = [
    "--pipeline.model.predictor.enc-dim", "32", "--pipeline.model.predictor.enc-heads", "2",
    "--pipeline.model.predictor.dec-dim", "32", "--pipeline.model.predictor.dec-heads", "2",
    "--pipeline.model.predictor.head-feature-dim", "16", "--pipeline.model.evaluation.pairs-per-scene", "1",
]


# ------------------------------------------------------------------------------------------ hand-built pair (no ns)


def _plane_pair(h=24, w=32, d=8):
    """3 views (2 context + target) of a fronto-parallel plane at z = 2 m, cameras shifted along x; left half class
    1 ("a"), right half class 2 ("b"); the target's 2D cue holds the exact class embeddings (one-hot)."""
    from feedforward.sampling import ViewSet

    K = torch.tensor([[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]]).expand(3, 3, 3).clone()
    vm = torch.eye(4).expand(3, 4, 4).clone()
    vm[1, 0, 3], vm[2, 0, 3] = -0.1, -0.05
    sem = torch.ones(3, h, w, dtype=torch.long)
    sem[..., w // 2:] = 2
    seg = (sem - 1)[:, None]  # [V, 1, H, W] rows 0 / 1 of cue_feats
    feats = torch.eye(d)[:2]
    return ViewSet(scene="plane", n_context=2, indices=[0, 2, 1], images=torch.rand(3, 3, h, w), Ks=K,
                   viewmats=vm, depths=torch.full((3, h, w), 2.0), cue_seg=seg[:, 0], cue_feats=feats,
                   semantic=sem), {"a": torch.eye(d)[0], "b": torch.eye(d)[1]}, torch.eye(d)[4:]


def test_evaluate_pair_hand_checked():
    from feedforward.gsemsplat.evaluate import GSemSplatEvalConfig, evaluate_pair, gt_queries, oracle_gaussians, predict_flat
    from feedforward.gsemsplat.model import GSemSplatConfig, GSemSplatPredictor

    torch.manual_seed(0)
    vs, emb, neg = _plane_pair()
    assert set(gt_queries(vs.semantic[2], ["void", "a", "b"])) == {"a", "b"}
    assert int(gt_queries(vs.semantic[2], ["void", "a", "b"])["a"].sum()) == 24 * 16
    model = GSemSplatPredictor(GSemSplatConfig(text_dim=8)).eval()
    g = predict_flat(model, vs)
    go = oracle_gaussians(g, vs)
    # the oracle's geometry is the GT: every context pixel at z = 2 m in its own camera
    assert go["means"].shape == (2 * 24 * 32, 3)
    m0, m1 = go["means"][: 24 * 32], go["means"][24 * 32:]
    assert torch.allclose(m0[:, 2], torch.full((24 * 32,), 2.0))
    cam1 = m1 @ vs.viewmats[1, :3, :3].T + vs.viewmats[1, :3, 3]
    assert torch.allclose(cam1[:, 2], torch.full((24 * 32,), 2.0))
    assert torch.equal(go["sem"], g["sem"])  # semantics are the prediction's
    rec = evaluate_pair(model, vs, ["void", "a", "b"], emb, neg, GSemSplatEvalConfig())
    assert set(rec["results"]) == {"region", "context", "dual", "raw_cue", "oracle_dual"}
    assert rec["n_queries"] == 2
    # a plane: the re-rendered oracle depth is the GT depth (expected depth of Gaussians all at z = 2)
    assert rec["oracle_context_depth_abs_rel"] < 1e-4 and rec["oracle_depth_abs_rel"] < 1e-4
    # the raw cue is the exact class embedding on each half: near-perfect masks, localisation always hits
    raw = rec["results"]["raw_cue"]
    for proto in ("gsemsplat", "langsplat"):
        assert raw[proto].miou > 0.8, (proto, raw[proto].miou)
        assert raw[proto].localization_accuracy == 1.0
    for row in rec["results"].values():
        for res in row.values():
            assert 0.0 <= res.miou <= 1.0
    assert rec["predict_s"] > 0 and math.isfinite(rec["psnr_masked"])


def test_dual_head_query_field_picks_the_better_head():
    from feedforward.gsemsplat.ns_pipeline import DualHeadQueryField
    from unisem_ns.language.encoders import make_text_encoder

    enc = make_text_encoder("minilm")
    field = DualHeadQueryField(enc)
    field.set_queries(["chair", "lamp"])
    e = torch.nn.functional.normalize(enc.encode(["chair", "lamp", "wall"]).float(), dim=-1)
    h, w = 16, 16
    region = e[2].expand(h, w, -1).clone()  # region head: all wall
    region[:, :8] = e[1]  # ... lamp on the left
    context = e[2].expand(h, w, -1).clone()
    context[:8] = e[0]  # context head: chair on top
    out = field.query_outputs(torch.cat([region, context], -1))
    assert field.last_heads == [1, 0]  # chair from the context head, lamp from the region head
    assert out["relevancy_0"][:8].mean() > out["relevancy_0"][8:].mean()
    assert out["relevancy_1"][:, :8].mean() > out["relevancy_1"][:, 8:].mean()


# ------------------------------------------------------------------------------------------ through Nerfstudio


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from feedforward.corpus import CorpusConfig, make_corpus

    out = tmp_path_factory.mktemp("gsns") / "corpus"
    make_corpus(CorpusConfig(out=out, num_train=2, num_val=0, num_test=1, views=32, width=32, height=24,
                             progress=False, dense=True))
    return out


def _env():
    return dict(os.environ, NERFSTUDIO_METHOD_CONFIGS=METHOD, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def test_train_eval_query(corpus, tmp_path):
    import subprocess

    assert (corpus / "scene_100000" / "dense_features" / "encoder.json").exists()
    out = tmp_path / "runs"
    proc = subprocess.run(
        [ns_bin("ns-train"), "gsemsplat", "--data", str(corpus), "--output-dir", str(out), "--experiment-name", "gs",
         "--timestamp", "t", "--max-num-iterations", "3", "--steps-per-save", "2", "--vis", "tensorboard",
         "--machine.device-type", "cpu", *TINY_FLAGS],
        capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = out / "gs" / "gsemsplat" / "t"
    assert list((run / "nerfstudio_models").glob("step-*.ckpt"))
    metrics = tmp_path / "metrics.json"
    proc = subprocess.run([ns_bin("ns-eval"), "--load-config", str(run / "config.yml"), "--output-path", str(metrics)],
                          capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(metrics.read_text())["results"]
    for row in ("region", "context", "dual", "raw_cue", "oracle_dual"):
        for proto in ("gsemsplat", "langsplat"):
            for m in ("miou", "loc"):
                key = f"{row}_{proto}_{m}"
                assert key in res and 0.0 <= res[key] <= 1.0, key
    assert res["n_pairs"] == 1 and res["predict_s_per_pair"] > 0 and "psnr_masked" in res
    qout = tmp_path / "query"
    proc = subprocess.run([sys.executable, "-m", "unisem_ns.query", "--load-config", str(run / "config.yml"),
                           "--queries", "chair;sofa", "--output", str(qout)],
                          capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    q = json.loads((qout / "metrics.json").read_text())
    assert q["views"] == 3 and "segmentation" in q and set(q["queries"]) == {"chair", "sofa"}
    assert len(list(qout.glob("*/relevancy_chair.png"))) == 3


def test_frozen_backbone_and_missing_checkpoint(corpus, tmp_path):
    import subprocess

    proc = subprocess.run(
        [ns_bin("ns-train"), "gsemsplat", "--data", str(corpus), "--output-dir", str(tmp_path), "--vis",
         "tensorboard", "--machine.device-type", "cpu", "--max-num-iterations", "1",
         "--pipeline.model.predictor.freeze-backbone", "True",
         "--pipeline.model.backbone-checkpoint", str(tmp_path / "nope.pth"), *TINY_FLAGS],
        capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode != 0
    line = [l for l in proc.stderr.splitlines() if l.startswith("unisem_ns: error:")]
    assert line and "nope.pth" in line[0] and "checkpoint not found" in line[0]
    # frozen backbone: a step trains only the heads
    from feedforward.gsemsplat.model import GSemSplatConfig, GSemSplatPredictor

    m = GSemSplatPredictor(GSemSplatConfig(freeze_backbone=True))
    assert not any(p.requires_grad for p in m.backbone_parameters())
    assert any(p.requires_grad for p in m.downstream_head1.gaussian_language.parameters())
