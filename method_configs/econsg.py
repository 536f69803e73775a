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
