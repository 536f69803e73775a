"""Panoptic core without Nerfstudio: the named channel split, class votes per code on hand-built pixels, the
stuff / thing split and the (class, instance) composition rule, the panoptic PLY, and the instance head's state
(docs/methods/panoptic.md)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from unisem_ns.panoptic import (
    DEFAULT_STUFF_CLASSES,
    FeatureChannels,
    compose_panoptic,
    export_panoptic_ply,
    match_classes,
    panoptic_colours,
    read_panoptic_ply,
    split_stuff_things,
    thing_mask,
)
from unisem_ns.unified_lift import instance_head as head

CLASSES = ["void", "wall", "floor", "chair", "table", "door", "lamp"]  # stuff: wall, floor, door


def test_core_imports_without_nerfstudio():
    code = ("import sys; import unisem_ns.panoptic, unisem_ns.unified_lift.instance_head; "
            "assert not any(m.startswith('nerfstudio') for m in sys.modules), 'nerfstudio imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------- channels


def test_channel_split_names_columns_in_order():
    ch = FeatureChannels({"semantic": 6, "instance": 16})
    assert ch.total == 22 and list(ch) == ["semantic", "instance"] and ch["instance"] == 16
    assert ch.slice("semantic") == slice(0, 6) and ch.slice("instance") == slice(6, 22)
    x = torch.arange(2 * 3 * 22, dtype=torch.float32).reshape(2, 3, 22)
    parts = ch.split(x)
    assert torch.equal(parts["semantic"], x[..., :6]) and torch.equal(parts["instance"], x[..., 6:])
    assert torch.equal(ch.join(**parts), x)
    assert torch.equal(ch.channel(x, "instance"), x[..., 6:])


def test_channel_split_refuses_wrong_widths_and_names():
    ch = FeatureChannels({"semantic": 6, "instance": 16})
    with pytest.raises(ValueError):
        ch.channel(torch.zeros(4, 21), "semantic")  # one column short
    with pytest.raises(KeyError):
        ch.channel(torch.zeros(4, 22), "colour")
    with pytest.raises(ValueError):
        ch.join(semantic=torch.zeros(4, 6))  # instance missing
    with pytest.raises(ValueError):
        ch.join(semantic=torch.zeros(4, 5), instance=torch.zeros(4, 16))
    with pytest.raises(ValueError):
        FeatureChannels({"semantic": 0})


def test_channel_gradients_reach_only_their_own_columns():
    x = torch.zeros(5, 22, requires_grad=True)
    FeatureChannels({"semantic": 6, "instance": 16}).channel(x, "instance").sum().backward()
    assert (x.grad[:, :6] == 0).all() and (x.grad[:, 6:] == 1).all()


# ------------------------------------------------------------------------------------------------- class votes


def _state(L=4, K=3, decay=0.5):
    cfg = head.InstanceHeadConfig(codebook_size=L, feature_dim=2, class_decay=decay)
    return cfg, head.init_instance_state(cfg, language_dim=1, num_classes=K)


def test_class_votes_count_pixels_per_code_and_class():
    cfg, state = _state(decay=0.5)
    # 2x3 pixels: code 0 wins 3 pixels (classes 1, 1, 2), code 2 wins 2 (class 0, and one without a vote), code 3 one
    codes = torch.tensor([[0, 0, 0], [2, 2, 3]])
    classes = torch.tensor([[1, 1, 2], [0, -1, 2]])
    head.accumulate_classes(cfg, state, codes, classes)
    want = torch.tensor([[0, 2, 1], [0, 0, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float32)
    assert torch.equal(state.class_sum, want)
    # a second view: everything decays by 0.5 first, then its votes add
    head.accumulate_classes(cfg, state, torch.tensor([0, 1]), torch.tensor([2, 2]))
    want = 0.5 * want
    want[0, 2] += 1
    want[1, 2] += 1
    assert torch.allclose(state.class_sum, want)
    dist = head.code_class_distribution(state)
    assert torch.allclose(dist[0], torch.tensor([0.0, 0.5, 0.75]) / 1.25)
    assert torch.allclose(dist.sum(1), torch.tensor([1.0, 1.0, 1.0, 1.0]))
    assert head.code_classes(state).tolist() == [2, 2, 0, 2]


def test_code_without_votes_has_no_class():
    cfg, state = _state()
    head.accumulate_classes(cfg, state, torch.tensor([1, 1]), torch.tensor([2, -1]))
    assert head.code_classes(state).tolist() == [-1, 2, -1, -1]
    assert (head.code_class_distribution(state)[0] == 0).all()


def test_state_without_classes_refuses_votes():
    cfg = head.InstanceHeadConfig(codebook_size=4, feature_dim=2)
    state = head.init_instance_state(cfg)
    with pytest.raises(ValueError):
        head.accumulate_classes(cfg, state, torch.tensor([0]), torch.tensor([0]))


def test_registered_state_is_the_modules_buffers():
    """The head's running tensors live on the owner under fixed names (checkpoint keys), updates in place."""
    cfg, state = _state()
    module = torch.nn.Module()
    head.register_instance_state(module, state)
    keys = set(module.state_dict())
    assert keys == {"codebook.code", "language_sum", "language_weight", "code_usage", "class_sum"}
    head.track_usage(cfg, head.instance_state_of(module), {7: 2})
    assert module.code_usage[2] == pytest.approx(1 - cfg.code_usage_decay)
    plain = torch.nn.Module()
    head.register_instance_state(plain, head.init_instance_state(head.InstanceHeadConfig(codebook_size=4, feature_dim=2)))
    assert set(plain.state_dict()) == {"codebook.code", "language_sum", "language_weight", "code_usage"}


def test_live_codes_and_readout():
    cfg = head.InstanceHeadConfig(codebook_size=3, feature_dim=2, live_code_min_views=1.0, duplicate_code_cos=1.0,
                                  refine_radius=0)
    state = head.init_instance_state(cfg)
    state.codebook.code.data = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert head.live_codes(cfg, state, num_train_views=2) is None  # nothing tracked yet: all compete
    state.code_usage.copy_(torch.tensor([0.6, 0.1, 0.6]))  # codes 0 and 2 used in >= 1 of 2 views
    assert head.live_codes(cfg, state, 2).tolist() == [True, False, True]
    feats = torch.tensor([[0.1, 1.0], [-1.0, 0.2]])  # closest to code 1 (not live), then code 2
    assert head.instance_map(cfg, state, feats, 2).tolist() == [0, 2]


# ------------------------------------------------------------------------------------------------- composition


def test_stuff_and_things_from_names():
    stuff, things = split_stuff_things(CLASSES)
    assert stuff == [1, 2, 5] and things == [3, 4, 6]  # void is neither
    stuff, things = split_stuff_things(["void", "Wall", "floor_mat", "chair"], stuff=("wall", "floor mat"))
    assert stuff == [1, 2] and things == [3]
    assert {"wall", "floor", "ceiling", "window", "door"} <= set(DEFAULT_STUFF_CLASSES)
    assert thing_mask(7, [3, 4, 6]).tolist() == [False, False, False, True, True, False, True]


def test_composition_rule():
    is_thing = thing_mask(len(CLASSES), split_stuff_things(CLASSES)[1])
    # codes: 0 voted chair (3), 1 voted wall (1), 2 no class, 3 voted table (4)
    code_class = torch.tensor([3, 1, 0, 4])
    codes = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3])
    pixel = torch.tensor([3, 4, 2, 1, 6, 6, 1, 0, 0])
    classes, instances = compose_panoptic(pixel, codes, code_class, is_thing)
    # chair code: thing pixels become chair (the table pixel too), its floor pixel stays floor without instance
    # wall code: wall pixel stuff; a lamp pixel inside it keeps lamp and the wall code's id as instance
    # unnamed code: lamp pixel lamp + instance, wall pixel stuff, a pixel without class has nothing
    # table code, pixel without class: the code's class and instance
    assert classes.tolist() == [3, 3, 2, 1, 6, 6, 1, 0, 4]
    assert instances.tolist() == [1, 1, 0, 0, 2, 3, 0, 0, 4]


def test_composition_gives_one_segment_per_stuff_class_and_instances_per_thing():
    is_thing = thing_mask(len(CLASSES), split_stuff_things(CLASSES)[1])
    codes = torch.tensor([[5, 5, 7, 7], [5, 5, 7, 7]])
    pixel = torch.tensor([[1, 1, 1, 1], [3, 3, 3, 3]])  # wall on top across two codes, a chair in each code
    classes, instances = compose_panoptic(pixel, codes, torch.zeros(8, dtype=torch.long), is_thing)
    assert (instances[0] == 0).all() and (classes[0] == 1).all()  # one wall segment, whatever the codes
    assert instances[1].tolist() == [6, 6, 8, 8]  # two chairs: code + 1


def test_panoptic_colours_and_query_matching():
    classes = torch.tensor([[1, 3], [0, 3]])
    instances = torch.tensor([[0, 2], [0, 5]])
    col = panoptic_colours(classes, instances, num_classes=7, num_instances=8)
    assert col.shape == (2, 2, 3)
    assert (col[1, 0] == 0).all()  # void black
    assert not torch.equal(col[0, 1], col[1, 1])  # two instances of one class differ
    emb = torch.eye(3)
    assert match_classes(torch.tensor([[0.1, 0.9, 0.0]]), emb, label_ids=[4, 5, 6]).tolist() == [5]


def test_panoptic_ply_round_trip(tmp_path):
    n = 5
    means = torch.randn(n, 3)
    inst = torch.tensor([0, 1, 1, 4, 0])
    cls = torch.tensor([1, 3, 3, 4, -1])
    lat = torch.randn(n, 6)
    path = export_panoptic_ply(tmp_path / "p.ply", means, inst, cls, lat, class_names=CLASSES)
    base, latents = read_panoptic_ply(path)
    assert base.instance_ids.tolist() == inst.tolist() and base.class_ids.tolist() == cls.tolist()
    assert np.allclose(base.means, means.numpy()) and np.allclose(latents, lat.numpy())
    assert base.class_names[3] == "chair"
    with pytest.raises(ValueError):
        export_panoptic_ply(tmp_path / "bad.ply", means, inst, cls, lat[:4])
