"""Generalizable feed-forward predictors. UniSem (``ns-train unisem-feedforward``): V unposed views -> pixel-aligned
semantic Gaussians in view 1's camera frame, in one pass; EGD and MTC behind flags.

Core (no nerfstudio import): corpus, sampling, model, heads, render, training, error_aware_dropout, curriculum,
pose_align, evaluate, checkpoint_io, scannet. Nerfstudio glue: ns_pipeline, method_config, ddp.
"""
