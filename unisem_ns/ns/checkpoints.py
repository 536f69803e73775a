"""Importing this registers the torch allow-list for Nerfstudio checkpoints (see
:mod:`unisem_ns.utils.safe_globals`, which holds it without importing Nerfstudio)."""

from unisem_ns.utils.safe_globals import register_safe_globals, safe_checkpoint_globals

__all__ = ["register_safe_globals", "safe_checkpoint_globals"]
