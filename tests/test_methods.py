"""The registered methods: their declared capabilities (unisem_ns.capabilities) and their named presets."""

from __future__ import annotations

import pytest
import torch

from unisem_ns.capabilities import InstanceHead, SemanticHead


def _methods():
    from nerfstudio.plugins.registry import discover_methods

    return discover_methods()[0]


def _model_class(method: str):
    return _methods()[method].pipeline.model._target


def _leaf_fields(obj, prefix=""):
    """{dotted name: value} of every non-dataclass field below ``obj``."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out.update(_leaf_fields(v, prefix + f.name + "."))
        elif f.name != "_target":
            out[prefix + f.name] = v
    return out


def _differences(preset: str, base: str):
    a, b = _leaf_fields(_methods()[preset]), _leaf_fields(_methods()[base])
    return {k: a[k] for k in a if k in b and a[k] != b[k] and k != "method_name"}


@pytest.mark.parametrize(
    "method, semantic, instances",
    [
        ("unisem-splat", False, False),
        ("unisem-distill", True, False),
        ("econsg", True, False),
        ("econsg-code", True, False),
        ("unified-lift", True, True),
        ("unified-lift-cluster", True, True),
        ("unisem-panoptic", True, True),
        ("unisem-feedforward", True, False),
        ("gsemsplat", True, False),
    ],
)
def test_each_method_declares_its_heads(method, semantic, instances):
    cls = _model_class(method)
    assert issubclass(cls, SemanticHead) is semantic
    assert issubclass(cls, InstanceHead) is instances


def test_a_head_without_its_methods_cannot_be_built():
    class HalfInstanceModel(InstanceHead, torch.nn.Module):
        def predict_instances(self, outputs):
            return outputs["ids"]

    with pytest.raises(TypeError, match="gaussian_instance_ids"):
        HalfInstanceModel()


def test_semantic_head_without_query_field_answers_no_text_queries():
    class Cueless(SemanticHead):
        query_field = None
        class_names: list = []
        eval_labels: list = []

        def language_features(self, outputs):
            return outputs["f"]

    assert not Cueless().answers_text_queries


@pytest.mark.parametrize(
    "preset, base, expected",
    [
        ("unified-lift-cluster", "unified-lift",
         {"pipeline.model.inference": "cluster", "pipeline.model.losses.use_codebook": False}),
        ("unified-lift-paper", "unified-lift",
         {"max_num_iterations": 30000, "pipeline.model.stop_split_at": 10000, "pipeline.model.feature_init_scale": 1.0,
          "pipeline.model.live_code_min_views": 0.0, "pipeline.model.duplicate_code_cos": 1.0,
          "pipeline.model.refine_radius": 0, "pipeline.model.knn_feature_weight": 0.0}),
        ("econsg-code", "econsg",
         {"pipeline.datamanager.prep.crr.vote_exclude_unlabelled": False, "pipeline.datamanager.prep.crr.fill_mode": "code",
          "pipeline.datamanager.prep.ae.loss_form": "code", "pipeline.datamanager.prep.feature_centres": "raw"}),
        ("unisem-feedforward-paper", "unisem-feedforward",
         {"pipeline.model.egd.enabled": True, "pipeline.model.mtc.enabled": True}),
    ],
)
def test_a_preset_differs_from_its_method_only_where_it_says(preset, base, expected):
    assert _differences(preset, base) == expected
