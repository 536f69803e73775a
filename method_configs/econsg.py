"""``ns-train econsg``: econSG's semantic Gaussians (CRR-refined cues, 3D contextual latent space, latent AE)."""

from __future__ import annotations

import dataclasses

from nerfstudio.plugins.types import MethodSpecification

from method_configs.unisem_splat import splat_optimizers, unisem_splat
from unisem_ns.ns.econsg_model import EconSGDatamanagerConfig, EconSGModelConfig

_base = unisem_splat.config
econsg = MethodSpecification(
    config=dataclasses.replace(
        _base,
        method_name="econsg",
        pipeline=dataclasses.replace(
            _base.pipeline,
            datamanager=EconSGDatamanagerConfig(),
            model=EconSGModelConfig(),
        ),
        optimizers=splat_optimizers(feature_lr=2.5e-3),  # econSG: semantic lr 2.5e-3
    ),
    description="econSG: confidence-guided region regularisation of the 2D cues, a 3D contextual latent space "
    "and a low-dim latent autoencoder; needs language_features/ and object_mask/ (unisem-preprocess).",
)


def _code_variant() -> MethodSpecification:
    """econSG as its released code does the preparation, where that differs from the paper's wording: CRR's mask
    vote over all pixels with 'unlabelled' a candidate, every pixel of a mask filled with its label, feature
    centres from the raw argmax, and the autoencoder's MSE + cosine loss."""
    cfg = econsg.config
    dm = cfg.pipeline.datamanager
    prep = dataclasses.replace(
        dm.prep,
        crr=dataclasses.replace(dm.prep.crr, vote_exclude_unlabelled=False, fill_mode="code"),
        ae=dataclasses.replace(dm.prep.ae, loss_form="code"),
        feature_centres="raw",
    )
    pipeline = dataclasses.replace(cfg.pipeline, datamanager=dataclasses.replace(dm, prep=prep))
    return MethodSpecification(
        config=dataclasses.replace(cfg, method_name="econsg-code", pipeline=pipeline),
        description="econSG with the released code's forms of CRR (mask vote, fill) and of the autoencoder loss.",
    )


econsg_code = _code_variant()
